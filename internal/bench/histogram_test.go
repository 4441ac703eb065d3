package bench

import (
	"testing"
	"time"
)

func TestBucketsContiguous(t *testing.T) {
	prevEnd := uint64(0)
	for i := range numBuckets {
		low, width := bucketBounds(i)
		if i > 0 && low != prevEnd {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, low, prevEnd)
		}
		if bucketOf(low) != i || bucketOf(low+width-1) != i {
			t.Fatalf("bucket %d: bounds [%d, %d) map to %d and %d", i, low, low+width, bucketOf(low), bucketOf(low+width-1))
		}
		prevEnd = low + width
		if prevEnd == 0 { // wrapped past 2^64: the last bucket
			break
		}
	}
}

func TestQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 1000; i++ {
		h.RecordN(time.Duration(i)*time.Microsecond, 1)
	}
	f := func(q float64, want time.Duration) {
		t.Helper()
		got := h.Quantile(q)
		if got < want || float64(got) > float64(want)*1.04 {
			t.Errorf("Quantile(%v) = %v, want %v within 4%%", q, got, want)
		}
	}
	f(0.5, 500*time.Microsecond)
	f(0.9, 900*time.Microsecond)
	f(0.99, 990*time.Microsecond)
	f(0.999, 999*time.Microsecond)
	f(1, 1000*time.Microsecond)
	if h.Max() != time.Millisecond || h.Count() != 1000 {
		t.Errorf("Max %v Count %d", h.Max(), h.Count())
	}
	if m := h.Mean(); m != 500500*time.Nanosecond {
		t.Errorf("Mean = %v", m)
	}
	var sum uint64
	for _, b := range h.Coarse() {
		sum += b.Count
	}
	if sum != 1000 {
		t.Errorf("coarse rows hold %d values", sum)
	}
	var o Histogram
	o.RecordN(time.Second, 10)
	h.Merge(&o)
	if h.Count() != 1010 || h.Max() != time.Second || h.Quantile(1) != time.Second {
		t.Errorf("after Merge: count %d max %v", h.Count(), h.Max())
	}
}

func TestRecordNAllocs(t *testing.T) {
	var h Histogram
	if n := testing.AllocsPerRun(100, func() { h.RecordN(123*time.Microsecond, 3) }); n != 0 {
		t.Errorf("RecordN allocates %v times", n)
	}
}

func TestCoarse(t *testing.T) {
	var h Histogram
	h.RecordN(700*time.Nanosecond, 1) // ≤ 1µs
	h.RecordN(3*time.Microsecond, 2)  // ≤ 5µs
	h.RecordN(40*time.Millisecond, 4) // ≤ 50ms
	h.RecordN(50*time.Millisecond, 8) // ≤ 50ms (within the bucket's 3%)
	rows := h.Coarse()
	want := map[time.Duration]uint64{time.Microsecond: 1, 5 * time.Microsecond: 2, 50 * time.Millisecond: 12}
	var sum uint64
	for i, r := range rows {
		if i > 0 && r.Upper <= rows[i-1].Upper {
			t.Fatalf("rows not increasing: %v", rows)
		}
		if r.Count != want[r.Upper] {
			t.Errorf("row ≤ %v holds %d, want %d", r.Upper, r.Count, want[r.Upper])
		}
		sum += r.Count
	}
	if sum != h.Count() || rows[0].Upper != time.Microsecond || rows[len(rows)-1].Upper != 50*time.Millisecond {
		t.Errorf("rows %v", rows)
	}
	if len(rows) != 15 { // 1µs … 50ms in 1-2-5 steps
		t.Errorf("%d rows, want 15: %v", len(rows), rows)
	}
}
