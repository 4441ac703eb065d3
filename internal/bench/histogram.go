package bench

import (
	"math"
	"math/bits"
	"time"
)

// Histogram counts durations in log-linear buckets, HDR style: values below
// 64ns have a bucket each; above, each power of two is split into 32 equal
// buckets, so a bucket is at most ~3% wide. Memory is fixed (about 15 KiB)
// whatever the number or range of the values. The zero value is ready to use;
// a Histogram is not safe for concurrent use.
type Histogram struct {
	counts [numBuckets]uint64
	total  uint64
	sum    float64 // nanoseconds, for the mean
	max    int64
}

const (
	subBits    = 5
	subCount   = 1 << subBits              // buckets per power of two
	numBuckets = (64 - subBits) * subCount // enough for any int64
)

func bucketOf(v uint64) int {
	if v < 2*subCount {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1)
	return shift*subCount + int(v>>shift)
}

// bucketBounds returns the smallest value of bucket i and its width.
func bucketBounds(i int) (low, width uint64) {
	if i < 2*subCount {
		return uint64(i), 1
	}
	shift := i/subCount - 1
	mant := uint64(i%subCount + subCount)
	return mant << shift, 1 << shift
}

// RecordN counts n values of d. Negative durations count as 0.
func (h *Histogram) RecordN(d time.Duration, n uint64) {
	if n == 0 {
		return
	}
	v := max(int64(d), 0)
	h.counts[bucketOf(uint64(v))] += n
	h.total += n
	h.sum += float64(v) * float64(n)
	h.max = max(h.max, v)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count returns how many values were recorded.
func (h *Histogram) Count() uint64 { return h.total }

// Max returns the largest value recorded, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean of the values recorded.
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.total))
}

// Quantile returns the value below which a fraction q (0..1) of the values
// lie: the upper end of the bucket holding that rank, never above Max.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	rank = min(max(rank, 1), h.total)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			low, width := bucketBounds(i)
			return time.Duration(min(int64(low+width-1), h.max))
		}
	}
	return time.Duration(h.max)
}

// Bucket is one row of a coarse view of the histogram.
type Bucket struct {
	Upper time.Duration // values in the row are ≤ Upper (and > the previous row's)
	Count uint64
}

// Coarse folds the buckets into rows bounded by 1-2-5 steps (1µs, 2µs, 5µs,
// 10µs, …), from the first non-empty row to the last, empty ones between
// included: a short table for a text histogram. A fine bucket goes to the row
// of its lower end, so a row may hold values up to ~3% above its bound.
func (h *Histogram) Coarse() []Bucket {
	var rows []Bucket
	next := time.Microsecond // the smallest row bound
	step := 0                // position in 1, 2, 5
	advance := func() {
		if step == 1 {
			next = next / 2 * 5
		} else {
			next *= 2
		}
		step = (step + 1) % 3
	}
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		low, _ := bucketBounds(i)
		v := time.Duration(min(low, uint64(math.MaxInt64)))
		for v > next && next < math.MaxInt64/5 {
			if n := len(rows); n > 0 && rows[n-1].Upper != next {
				rows = append(rows, Bucket{Upper: next}) // keep gaps visible
			}
			advance()
		}
		if n := len(rows); n > 0 && rows[n-1].Upper == next {
			rows[n-1].Count += c
		} else {
			rows = append(rows, Bucket{Upper: next, Count: c})
		}
	}
	return rows
}
