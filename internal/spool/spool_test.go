package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/syncbuf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// debugLogger logs everything into b, for tests that assert on the lines.
func debugLogger(b *syncbuf.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func openT(t *testing.T, dir string, o Options) *Spool {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// payloadFor is the payload of record seq in these tests: its length
// varies with seq, its bytes name it.
func payloadFor(seq uint64, size int) []byte {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(seq*7 + uint64(i))
	}
	if size >= 8 {
		copy(p, fmt.Sprintf("%08d", seq%100000000))
	}
	return p
}

func appendN(t *testing.T, s *Spool, n int, size int) []uint64 {
	t.Helper()
	var seqs []uint64
	for range n {
		next := s.Stats().Last + 1
		seq, err := s.Append(context.Background(), payloadFor(next, size))
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
		if seq != next {
			t.Fatalf("Append gave %d, want %d", seq, next)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

// readAll reads every synced record from from on, copying the payloads.
func readAll(t *testing.T, s *Spool, from uint64) []Record {
	t.Helper()
	r := s.NewReader(from)
	defer r.Close()
	var out []Record
	for {
		rec, ok, err := r.Next()
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if !ok {
			return out
		}
		rec.Payload = bytes.Clone(rec.Payload)
		out = append(out, rec)
	}
}

func seqsOf(recs []Record) []uint64 {
	var s []uint64
	for _, r := range recs {
		s = append(s, r.Seq)
	}
	return s
}

// waitFor polls cond until it holds, failing the test after a few
// seconds: for what the background goroutine does.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func segPaths(t *testing.T, dir string) []string {
	t.Helper()
	files, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var p []string
	for _, f := range files {
		p = append(p, filepath.Join(dir, f.name))
	}
	return p
}

func sizeFor(seq uint64) int { return int(seq % 300) }

func TestRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := openT(t, dir, Options{})
	epoch := s.Epoch()
	if epoch == 0 {
		t.Fatal("epoch 0")
	}
	before := time.Now()
	const n = 1000
	for i := uint64(1); i <= n; i++ {
		seq, err := s.Append(context.Background(), payloadFor(i, sizeFor(i)))
		if err != nil || seq != i {
			t.Fatalf("Append %d: %d, %v", i, seq, err)
		}
	}
	after := time.Now()
	if got, err := s.Sync(); err != nil || got != n {
		t.Fatalf("Sync: %d, %v", got, err)
	}
	recs := readAll(t, s, 0)
	if len(recs) != n {
		t.Fatalf("read %d records, want %d", len(recs), n)
	}
	for i, r := range recs {
		seq := uint64(i + 1)
		if r.Seq != seq || !bytes.Equal(r.Payload, payloadFor(seq, sizeFor(seq))) {
			t.Fatalf("record %d: seq %d, payload %q", seq, r.Seq, r.Payload)
		}
		if r.Time.Before(before.Add(-time.Millisecond)) || r.Time.After(after.Add(time.Millisecond)) {
			t.Fatalf("record %d: time %v not within [%v, %v]", seq, r.Time, before, after)
		}
	}
	mid := readAll(t, s, 500)
	if len(mid) != 501 || mid[0].Seq != 500 {
		t.Fatalf("from 500: %d records, first %v", len(mid), seqsOf(mid[:1]))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Append(context.Background(), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}

	s2 := openT(t, dir, Options{})
	if s2.Epoch() != epoch {
		t.Fatalf("epoch %d after reopen, want %d", s2.Epoch(), epoch)
	}
	st := s2.Stats()
	if st.Last != n || st.Synced != n || st.Oldest != 1 || st.CutBytes != 0 || st.Corrupt != 0 {
		t.Fatalf("stats after reopen: %+v", st)
	}
	if seq, err := s2.Append(context.Background(), []byte("next")); err != nil || seq != n+1 {
		t.Fatalf("Append after reopen: %d, %v", seq, err)
	}
	s2.Sync()
	if recs := readAll(t, s2, n); len(recs) != 2 || string(recs[1].Payload) != "next" {
		t.Fatalf("after reopen: %v", seqsOf(recs))
	}
}

func TestUnread(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	appendN(t, s, 3, 10)
	s.Sync()
	r := s.NewReader(1)
	defer r.Close()
	a, _, _ := r.Next()
	r.Unread()
	b, ok, err := r.Next()
	if !ok || err != nil || b.Seq != a.Seq || !bytes.Equal(a.Payload, b.Payload) {
		t.Fatalf("after Unread: %d %v %v, want %d", b.Seq, ok, err, a.Seq)
	}
	c, _, _ := r.Next()
	if c.Seq != 2 {
		t.Fatalf("next after the unread one: %d", c.Seq)
	}
	s.Close()
	if _, _, err := r.Next(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
}

func TestRolloverAndAck(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Millisecond})
	appendN(t, s, 100, 500)
	s.Sync()
	st := s.Stats()
	if st.Segments < 10 {
		t.Fatalf("%d segments after 100 records of 500 bytes in 4 KiB segments", st.Segments)
	}
	var total int64
	for _, p := range segPaths(t, dir) {
		fi, _ := os.Stat(p)
		total += fi.Size()
	}
	if total != st.Bytes {
		t.Fatalf("Stats.Bytes %d, files hold %d", st.Bytes, total)
	}
	if recs := readAll(t, s, 1); len(recs) != 100 {
		t.Fatalf("read %d across segments", len(recs))
	}

	s.Ack(50)
	waitFor(t, "segments up to 50 deleted", func() bool { return s.Stats().Oldest > 42 })
	st = s.Stats()
	if st.Oldest > 51 {
		t.Fatalf("Oldest %d after Ack(50): unacknowledged records deleted", st.Oldest)
	}
	if recs := readAll(t, s, 1); recs[0].Seq != st.Oldest || recs[len(recs)-1].Seq != 100 {
		t.Fatalf("after Ack(50) read %d..%d, Oldest %d", recs[0].Seq, recs[len(recs)-1].Seq, st.Oldest)
	}
	if n := len(segPaths(t, dir)); n != st.Segments {
		t.Fatalf("%d segment files, Stats says %d", n, st.Segments)
	}

	s.Ack(100)
	waitFor(t, "everything deleted", func() bool {
		st := s.Stats()
		return st.Segments == 1 && st.Oldest == 101
	})
	if recs := readAll(t, s, 1); len(recs) != 0 {
		t.Fatalf("read %d records after all were acknowledged", len(recs))
	}
	s.Close()
	s2 := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	if st := s2.Stats(); st.Last != 100 || st.Oldest != 101 {
		t.Fatalf("empty spool reopened: %+v", st)
	}
	if seq, err := s2.Append(context.Background(), nil); err != nil || seq != 101 {
		t.Fatalf("Append: %d, %v", seq, err)
	}
}

// A reader holding a segment that is deleted under it reads it to its end
// and goes on with the next one.
func TestReaderSurvivesDeletion(t *testing.T) {
	s := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Millisecond})
	appendN(t, s, 40, 500)
	s.Sync()
	r := s.NewReader(1)
	defer r.Close()
	if rec, ok, err := r.Next(); !ok || err != nil || rec.Seq != 1 {
		t.Fatalf("first: %d %v %v", rec.Seq, ok, err)
	}
	s.Ack(20)
	waitFor(t, "deletion", func() bool { return s.Stats().Oldest > 10 })
	oldest := s.Stats().Oldest
	var got []uint64
	for {
		rec, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, rec.Seq)
	}
	if got[0] != oldest || got[len(got)-1] != 40 {
		t.Fatalf("read %v, Oldest %d", got, oldest)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("gap in %v", got)
		}
	}
}

func TestReaderStopsAtSynced(t *testing.T) {
	s := openT(t, t.TempDir(), Options{SyncInterval: time.Hour, SegmentBytes: MinSegmentBytes})
	r := s.NewReader(1)
	defer r.Close()
	if _, ok, err := r.Next(); ok || err != nil {
		t.Fatalf("empty spool: %v %v", ok, err)
	}
	appendN(t, s, 20, 500) // across segments, none synced
	if _, ok, err := r.Next(); ok || err != nil {
		t.Fatalf("read an unsynced record: %v %v", ok, err)
	}
	if s.Synced() != 0 {
		t.Fatalf("Synced %d before any sync", s.Synced())
	}
	if got, err := s.Sync(); got != 20 || err != nil {
		t.Fatalf("Sync: %d %v", got, err)
	}
	for i := uint64(1); i <= 20; i++ {
		rec, ok, err := r.Next()
		if !ok || err != nil || rec.Seq != i {
			t.Fatalf("after Sync: %d %v %v, want %d", rec.Seq, ok, err, i)
		}
	}
	appendN(t, s, 1, 10)
	if _, ok, _ := r.Next(); ok {
		t.Fatal("read the unsynced 21st record")
	}
}

func TestOnSyncedInterval(t *testing.T) {
	got := make(chan uint64, 100)
	s := openT(t, t.TempDir(), Options{SyncInterval: time.Millisecond, OnSynced: func(seq uint64) { got <- seq }})
	appendN(t, s, 5, 10)
	select {
	case seq := <-got:
		if seq < 1 || seq > 5 {
			t.Fatalf("OnSynced(%d)", seq)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no OnSynced")
	}
	waitFor(t, "Synced 5", func() bool { return s.Synced() == 5 })
}

func TestSyncAlways(t *testing.T) {
	var synced sync.Map
	s := openT(t, t.TempDir(), Options{SyncAlways: true, SegmentBytes: MinSegmentBytes,
		OnSynced: func(seq uint64) { synced.Store(seq, true) }})
	const workers, each = 8, 50
	var wg sync.WaitGroup
	seqs := make(chan uint64, workers*each)
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				seq, err := s.Append(context.Background(), payloadFor(uint64(w*1000+i), 100))
				if err != nil {
					errs <- err
					return
				}
				if sy := s.Synced(); sy < seq {
					errs <- fmt.Errorf("Append(%d) returned with Synced %d", seq, sy)
				}
				seqs <- seq
			}
		})
	}
	wg.Wait()
	close(seqs)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for seq := range seqs {
		if seen[seq] {
			t.Fatalf("seq %d given twice", seq)
		}
		seen[seq] = true
	}
	for i := uint64(1); i <= workers*each; i++ {
		if !seen[i] {
			t.Fatalf("seq %d missing", i)
		}
	}
	if recs := readAll(t, s, 1); len(recs) != workers*each {
		t.Fatalf("read %d", len(recs))
	}
	if _, ok := synced.Load(uint64(workers * each)); !ok {
		t.Fatal("OnSynced never saw the last record")
	}
}

func TestBlock(t *testing.T) {
	s := openT(t, t.TempDir(), Options{MaxBytes: 16 << 10, SyncInterval: time.Millisecond})
	p := make([]byte, 1000)
	var full error
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := s.Append(ctx, p)
		cancel()
		if err != nil {
			full = err
			break
		}
	}
	if !errors.Is(full, context.DeadlineExceeded) {
		t.Fatalf("a full spool's Append gave %v, want the context's error", full)
	}
	st := s.Stats()
	if st.Bytes > 16<<10 || st.Bytes+RecordHeaderSize+1000 <= 16<<10 {
		t.Fatalf("blocked at %d bytes of %d", st.Bytes, 16<<10)
	}
	last := st.Last

	done := make(chan error, 1)
	go func() {
		seq, err := s.Append(context.Background(), p)
		if err == nil && seq != last+1 {
			err = fmt.Errorf("got seq %d, want %d", seq, last+1)
		}
		done <- err
	}()
	waitFor(t, "the Append to block", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.blocked == 1
	})
	select {
	case err := <-done:
		t.Fatalf("Append on a full spool returned before any Ack: %v", err)
	default:
	}
	s.Ack(last)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Append still blocked after Ack freed the spool")
	}
	if st := s.Stats(); st.Dropped != 0 || st.Last != last+1 {
		t.Fatalf("after: %+v", st)
	}

	// Close wakes a blocked Append with ErrClosed.
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_, err := s.Append(ctx, p)
		cancel()
		if err != nil {
			break
		}
	}
	go func() {
		_, err := s.Append(context.Background(), p)
		done <- err
	}()
	waitFor(t, "the Append to block", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.blocked == 1
	})
	s.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("blocked Append at Close: %v", err)
	}
}

func TestDropOldest(t *testing.T) {
	var log syncbuf.Buffer
	const max = 16 << 10
	s := openT(t, t.TempDir(), Options{MaxBytes: max, Full: DropOldest, Log: debugLogger(&log), SyncInterval: time.Hour})
	appendN(t, s, 5, 500)
	s.Sync()
	r := s.NewReader(1)
	defer r.Close()
	for i := uint64(1); i <= 3; i++ {
		if rec, ok, _ := r.Next(); !ok || rec.Seq != i {
			t.Fatalf("first reads: %d %v", rec.Seq, ok)
		}
	}
	const acked = 2
	s.Ack(acked)
	appendN(t, s, 195, 500)
	s.Sync()
	st := s.Stats()
	if st.Bytes > max {
		t.Fatalf("%d bytes held, max %d", st.Bytes, max)
	}
	if st.Oldest <= acked+1 {
		t.Fatalf("nothing dropped: %+v", st)
	}
	if want := st.Oldest - 1 - acked; st.Dropped != want {
		t.Fatalf("Dropped %d, want %d (records %d..%d)", st.Dropped, want, acked+1, st.Oldest-1)
	}
	if !strings.Contains(log.String(), fmt.Sprintf("dropped records %d..", acked+1)) ||
		!strings.Contains(log.String(), "level=WARN") {
		t.Fatalf("log: %s", log.String())
	}
	recs := readAll(t, s, 1)
	if recs[0].Seq != st.Oldest || recs[len(recs)-1].Seq != 200 || uint64(len(recs)) != 200-st.Oldest+1 {
		t.Fatalf("read %d..%d (%d), Oldest %d", recs[0].Seq, recs[len(recs)-1].Seq, len(recs), st.Oldest)
	}
	// The reader that was in the dropped segment skips to the oldest
	// record left: the caller sees the gap.
	rec, ok, err := r.Next()
	if !ok || err != nil || rec.Seq != st.Oldest {
		t.Fatalf("old reader: %d %v %v, want %d", rec.Seq, ok, err, st.Oldest)
	}
	if _, err := s.Append(context.Background(), make([]byte, max)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a record larger than the spool: %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	s := openT(t, t.TempDir(), Options{MaxRecord: 100})
	if _, err := s.Append(context.Background(), make([]byte, 101)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("101 bytes with MaxRecord 100: %v", err)
	}
	if seq, err := s.Append(context.Background(), make([]byte, 100)); err != nil || seq != 1 {
		t.Fatalf("100 bytes: %d %v", seq, err)
	}
}

// A record larger than the segment size gets a segment of its own.
func TestBigRecord(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	appendN(t, s, 2, 10)
	big := payloadFor(3, 3*MinSegmentBytes)
	if seq, err := s.Append(context.Background(), big); err != nil || seq != 3 {
		t.Fatal(seq, err)
	}
	appendN(t, s, 1, 10)
	s.Sync()
	if n := len(segPaths(t, dir)); n != 3 {
		t.Fatalf("%d segments, want 3", n)
	}
	recs := readAll(t, s, 1)
	if len(recs) != 4 || !bytes.Equal(recs[2].Payload, big) {
		t.Fatalf("read %v", seqsOf(recs))
	}
}

func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	p := segPaths(t, dir)
	return p[len(p)-1]
}

// A torn tail is cut. When the cut bytes hold the whole next record with a
// wrong checksum, its number is burnt (the record may have been synced and
// sent before it was damaged): the next record gets the one after. A
// record that runs past the end was an interrupted write, never sent, and
// its number is given again.
func TestTornTail(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tear  func(path string, size int64) error
		last  uint64 // what survives
		burnt bool   // record last+1 is lost and its number burnt
	}{
		// An interrupted write (a kill between two pages of one write(2)):
		// the record runs past the end, it was never whole, never sent,
		// and its number is given again.
		{"truncated", func(path string, size int64) error { return os.Truncate(path, size-100) }, 9, false},
		{"header only", func(path string, size int64) error { return os.Truncate(path, size-524+10) }, 9, false},
		{"garbage", func(path string, size int64) error {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write(bytes.Repeat([]byte{0xa5, 0x00, 0x17}, 40))
			return err
		}, 10, false},
		{"payload flipped", func(path string, size int64) error {
			// A delivered record rotted on disk: its header is whole.
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{0xff}, size-3)
			return err
		}, 9, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, Options{})
			appendN(t, s, 10, 500)
			s.Close()
			path := lastSegment(t, dir)
			fi, _ := os.Stat(path)
			if err := tc.tear(path, fi.Size()); err != nil {
				t.Fatal(err)
			}
			torn, _ := os.Stat(path)

			var log syncbuf.Buffer
			s2 := openT(t, dir, Options{Log: debugLogger(&log)})
			st := s2.Stats()
			wantCut := torn.Size() - (SegmentHeaderSize + int64(tc.last)*524)
			if st.CutBytes != wantCut || wantCut <= 0 {
				t.Fatalf("CutBytes %d, want %d", st.CutBytes, wantCut)
			}
			wantLast, wantCorrupt := tc.last, uint64(0)
			want := fmt.Sprintf("cut %d bytes of a torn record at the end of %s, offset %d (a crash during a write)",
				wantCut, filepath.Base(path), SegmentHeaderSize+int64(tc.last)*524)
			if tc.burnt {
				wantLast, wantCorrupt = tc.last+1, 1
				want = fmt.Sprintf("cut %d bytes of a torn or damaged record at the end of %s, offset %d; record %d lost, its number is not given again",
					wantCut, filepath.Base(path), SegmentHeaderSize+int64(tc.last)*524, tc.last+1)
			}
			if st.Last != wantLast || st.Synced != wantLast || s2.Last() != wantLast || st.Corrupt != wantCorrupt {
				t.Fatalf("Last %d Synced %d Corrupt %d, want %d, %d", st.Last, st.Synced, st.Corrupt, wantLast, wantCorrupt)
			}
			if !strings.Contains(log.String(), want) || !strings.Contains(log.String(), "level=WARN") {
				t.Fatalf("log %q lacks %q", log.String(), want)
			}
			if cut, _ := os.Stat(path); cut.Size() != torn.Size()-wantCut {
				t.Fatalf("file is %d bytes after the cut", cut.Size())
			}
			// Before anything is appended, a reader sees the burnt number
			// as passed: the trailing hole is visible.
			r := s2.NewReader(1)
			defer r.Close()
			for i := uint64(1); i <= tc.last; i++ {
				if rec, ok, err := r.Next(); !ok || err != nil || rec.Seq != i {
					t.Fatalf("read %d %v %v, want %d", rec.Seq, ok, err, i)
				}
			}
			if _, ok, err := r.Next(); ok || err != nil {
				t.Fatalf("read past the cut: %v %v", ok, err)
			}
			if r.Through() != wantLast {
				t.Fatalf("Through %d after the cut, want %d", r.Through(), wantLast)
			}
			if seq, err := s2.Append(context.Background(), []byte("after")); err != nil || seq != wantLast+1 {
				t.Fatalf("Append after the cut: %d %v, want %d", seq, err, wantLast+1)
			}
			s2.Sync()
			recs := readAll(t, s2, 1)
			if len(recs) != int(tc.last)+1 || string(recs[tc.last].Payload) != "after" || recs[tc.last].Seq != wantLast+1 {
				t.Fatalf("read %v", seqsOf(recs))
			}
			if st := s2.Stats(); st.Corrupt != wantCorrupt {
				t.Fatalf("Corrupt %d, want %d", st.Corrupt, wantCorrupt)
			}
			// Reopened, the numbering still goes on past the burnt one.
			s2.Close()
			s3 := openT(t, dir, Options{})
			if st := s3.Stats(); st.Last != wantLast+1 || st.CutBytes != 0 {
				t.Fatalf("reopened: %+v", st)
			}
			if got := seqsOf(readAll(t, s3, 1)); fmt.Sprint(got) != fmt.Sprint(seqsOf(recs)) {
				t.Fatalf("reopened, read %v, want %v", got, seqsOf(recs))
			}
		})
	}
}

// flip xors one byte of a file.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedRecord(t *testing.T) {
	const recSize = RecordHeaderSize + 500
	for _, tc := range []struct {
		name    string
		segment int   // which segment file: 0 the oldest; -1 the newest
		off     int64 // in the record
	}{
		{"payload newest", -1, RecordHeaderSize + 100},
		{"payload older", 0, RecordHeaderSize + 100},
		{"length newest", -1, 1},
		{"length older", 0, 2},
		{"crc newest", -1, 5},
		{"seq older", 0, 15},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := Options{SegmentBytes: MinSegmentBytes}
			s := openT(t, dir, o)
			appendN(t, s, 30, 500) // 8 records a segment: 4 segments
			s.Close()
			segs := segPaths(t, dir)
			i := tc.segment
			if i < 0 {
				i += len(segs)
			}
			first, _ := parseSegName(filepath.Base(segs[i]))
			damaged := first + 2 // the third record of that segment
			flip(t, segs[i], SegmentHeaderSize+2*recSize+tc.off)

			var log syncbuf.Buffer
			o.Log = debugLogger(&log)
			s2 := openT(t, dir, o)
			if tc.segment < 0 {
				// Counted once, by the reader that skips it (below).
				if st := s2.Stats(); st.Corrupt != 0 || st.Last != 30 || st.CutBytes != 0 {
					t.Fatalf("after open: %+v", st)
				}
				if !strings.Contains(log.String(), "damaged record in "+filepath.Base(segs[i])) {
					t.Fatalf("open did not log the damage: %s", log.String())
				}
			}
			recs := readAll(t, s2, 1)
			var want []uint64
			for seq := uint64(1); seq <= 30; seq++ {
				if seq != damaged {
					want = append(want, seq)
				}
			}
			if got := seqsOf(recs); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("read %v\nwant %v", got, want)
			}
			for _, r := range recs {
				if !bytes.Equal(r.Payload, payloadFor(r.Seq, 500)) {
					t.Fatalf("record %d has a wrong payload", r.Seq)
				}
			}
			wantLog := fmt.Sprintf("spool: record at %s offset %d is damaged; skipped", filepath.Base(segs[i]), SegmentHeaderSize+2*recSize)
			if !strings.Contains(log.String(), wantLog) || !strings.Contains(log.String(), "level=ERROR") {
				t.Fatalf("log %s\nlacks %q", log.String(), wantLog)
			}
			if st := s2.Stats(); st.Corrupt != 1 {
				t.Fatalf("Corrupt = %d, want 1", st.Corrupt)
			}
			if seq, err := s2.Append(context.Background(), nil); err != nil || seq != 31 {
				t.Fatalf("Append: %d %v", seq, err)
			}
		})
	}
}

// A damaged header on an older segment: its records are skipped; on the
// newest one, in a file too short for a record: a crash while creating
// it, the file is deleted.
func TestDamagedHeader(t *testing.T) {
	dir, o, segs := closedSegments(t)
	flip(t, segs[1], 3)
	torn := filepath.Join(dir, segName(21))
	if err := os.WriteFile(torn, []byte(segMagic), 0o640); err != nil {
		t.Fatal(err)
	}
	var log syncbuf.Buffer
	o.Log = debugLogger(&log)
	s2 := openT(t, dir, o)
	// Deleted, and made again whole: the numbering goes on from its name.
	if err := readSegHeader(torn, s2.Epoch(), 21); err != nil {
		t.Fatalf("the torn newest segment: %v", err)
	}
	if !strings.Contains(log.String(), "deleted "+filepath.Base(torn)) || !strings.Contains(log.String(), "damaged header") {
		t.Fatalf("log: %s", log.String())
	}
	if seq, err := s2.Append(context.Background(), nil); err != nil || seq != 21 {
		t.Fatalf("Append: %d %v", seq, err)
	}
	s2.Sync()
	got := seqsOf(readAll(t, s2, 1))
	want := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 17, 18, 19, 20, 21}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read %v, want %v", got, want)
	}
	if st := s2.Stats(); st.Corrupt != 8 {
		t.Fatalf("Corrupt %d, want 8", st.Corrupt)
	}
}

func TestNotSpool(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, metaName), []byte(`{"format":2,"epoch":"5"}`), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNotSpool) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("format 2: %v", err)
	}
	os.WriteFile(filepath.Join(dir, metaName), []byte(`not json`), 0o640)
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNotSpool) {
		t.Fatalf("unparsable meta: %v", err)
	}
	if _, err := Inspect(dir); !errors.Is(err, ErrNotSpool) {
		t.Fatalf("Inspect: %v", err)
	}

	dir = t.TempDir()
	s := openT(t, dir, Options{})
	s.Close()
	os.WriteFile(filepath.Join(dir, metaName), []byte(`{"format":1,"epoch":"12345"}`), 0o640)
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNotSpool) || !strings.Contains(err.Error(), "epoch") {
		t.Fatalf("segment of another epoch: %v", err)
	}

	dir = t.TempDir()
	os.WriteFile(filepath.Join(dir, segName(1)), nil, 0o640)
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrNotSpool) {
		t.Fatalf("segments without meta: %v", err)
	}
}

func TestLock(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	_, err := Open(dir, Options{})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v", err)
	}
	want := fmt.Sprintf("spool %s: directory is in use by process %d", dir, os.Getpid())
	if err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
	st, err := Inspect(dir)
	if err != nil || !st.Locked || st.LockPID != os.Getpid() {
		t.Fatalf("Inspect while open: %+v %v", st, err)
	}
	s.Close()
	st, err = Inspect(dir)
	if err != nil || st.Locked {
		t.Fatalf("Inspect after Close: %+v %v", st, err)
	}
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Millisecond})
	appendN(t, s, 30, 500)
	s.Sync()
	recs := readAll(t, s, 1)
	s.Ack(12)
	waitFor(t, "the acked hint", func() bool {
		st, err := Inspect(dir)
		return err == nil && st.Acked == 12
	})
	waitFor(t, "deletion", func() bool { return s.Stats().Oldest == 9 })
	check := func(locked bool) {
		t.Helper()
		st, err := Inspect(dir)
		if err != nil {
			t.Fatal(err)
		}
		want := Status{
			Dir: dir, Epoch: s.Epoch(), Oldest: 9, Last: 30, Acked: 12, Waiting: 18,
			OldestWaiting: recs[12].Time, Bytes: s.Stats().Bytes, Segments: s.Stats().Segments,
			Locked: locked,
		}
		if locked {
			want.LockPID = os.Getpid()
		}
		if !st.OldestWaiting.Equal(want.OldestWaiting) {
			t.Fatalf("OldestWaiting %v, want %v", st.OldestWaiting, want.OldestWaiting)
		}
		st.OldestWaiting = want.OldestWaiting
		if st != want {
			t.Fatalf("Inspect\n got %+v\nwant %+v", st, want)
		}
	}
	check(true)
	s.Close()
	check(false)

	s2 := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Millisecond})
	s2.Ack(30)
	waitFor(t, "all acknowledged", func() bool {
		st, _ := Inspect(dir)
		return st.Acked == 30 && st.Segments == 1 && st.Oldest == 31
	})
	st, _ := Inspect(dir)
	if st.Waiting != 0 || !st.OldestWaiting.IsZero() || st.Oldest != 31 || st.Last != 30 {
		t.Fatalf("empty: %+v", st)
	}
	if _, err := Inspect(t.TempDir()); err == nil {
		t.Fatal("Inspect of an empty directory: no error")
	}
}

func TestAppendAllocs(t *testing.T) {
	s := openT(t, t.TempDir(), Options{SyncInterval: time.Hour})
	p := make([]byte, 1024)
	ctx := context.Background()
	for range 10 {
		s.Append(ctx, p)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := s.Append(ctx, p); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations per Append", n)
	}
}

func TestFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 64<<10), 0o640); err != nil {
		t.Fatal(err)
	}
	spoolDir := filepath.Join(dir, "spool")
	s := openT(t, spoolDir, Options{SyncInterval: time.Millisecond})
	var full error
	for i := uint64(1); i < 1000; i++ {
		seq, err := s.Append(context.Background(), payloadFor(i, 1000))
		if err != nil {
			full = err
			break
		}
		if seq != i {
			t.Fatalf("seq %d, want %d", seq, i)
		}
	}
	if !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("filling the disk: %v, want ENOSPC", full)
	}
	last := s.Stats().Last
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	check := func(n uint64) {
		t.Helper()
		recs := readAll(t, s, 1)
		if uint64(len(recs)) != n {
			t.Fatalf("read %d, want %d", len(recs), n)
		}
		for i, r := range recs {
			if r.Seq != uint64(i+1) || !bytes.Equal(r.Payload, payloadFor(r.Seq, 1000)) {
				t.Fatalf("record %d damaged", i+1)
			}
		}
	}
	check(last)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if seq, err := s.Append(context.Background(), payloadFor(last+1, 1000)); err != nil || seq != last+1 {
		t.Fatalf("Append once space is free: %d %v, want %d", seq, err, last+1)
	}
	s.Sync()
	check(last + 1)
	s.Close()
	s2 := openT(t, spoolDir, Options{})
	if st := s2.Stats(); st.Last != last+1 || st.CutBytes != 0 || st.Corrupt != 0 {
		t.Fatalf("reopened: %+v", st)
	}
	s2.Close()
}

// A reader following live appends across rollovers, acknowledging as it
// goes, sees every record once, in order.
func TestConcurrentReadWrite(t *testing.T) {
	const n = 2000
	synced := make(chan struct{}, 1)
	s := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Millisecond,
		OnSynced: func(uint64) {
			select {
			case synced <- struct{}{}:
			default:
			}
		}})
	errc := make(chan error, 1)
	go func() {
		for i := uint64(1); i <= n; i++ {
			if _, err := s.Append(context.Background(), payloadFor(i, sizeFor(i))); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	r := s.NewReader(1)
	defer r.Close()
	next := uint64(1)
	deadline := time.After(20 * time.Second)
	for next <= n {
		rec, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			select {
			case <-synced:
			case <-deadline:
				t.Fatalf("stuck at %d", next)
			}
			continue
		}
		if rec.Seq != next || !bytes.Equal(rec.Payload, payloadFor(next, sizeFor(next))) {
			t.Fatalf("got %d, want %d", rec.Seq, next)
		}
		next++
		if next%100 == 0 {
			s.Ack(next - 50)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Corrupt != 0 || st.Dropped != 0 {
		t.Fatalf("%+v", st)
	}
}

// A failed fdatasync breaks the spool: no more records, the synced ones
// stay readable. The failure is made by closing the active file under
// the spool.
func TestSyncFailureBreaks(t *testing.T) {
	var log syncbuf.Buffer
	s := openT(t, t.TempDir(), Options{SyncInterval: time.Hour, Log: debugLogger(&log)})
	appendN(t, s, 3, 10)
	s.Sync()
	appendN(t, s, 1, 10)
	s.mu.Lock()
	s.f.Close()
	s.mu.Unlock()
	if _, err := s.Sync(); !errors.Is(err, ErrBroken) {
		t.Fatalf("Sync: %v", err)
	}
	if _, err := s.Append(context.Background(), nil); !errors.Is(err, ErrBroken) {
		t.Fatalf("Append on a broken spool: %v", err)
	}
	if s.Synced() != 3 {
		t.Fatalf("Synced %d", s.Synced())
	}
	if got := seqsOf(readAll(t, s, 1)); fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("read %v", got)
	}
	if !strings.Contains(log.String(), "level=ERROR") || !strings.Contains(log.String(), "sync failed") {
		t.Fatalf("log: %s", log.String())
	}
	s.Close()
}

// An older segment that ends inside a record (a power failure after a
// rollover whose segment was not synced): readers skip the torn record,
// count it, and go on with the next segment.
func TestTornOlderSegment(t *testing.T) {
	dir, o, segs := closedSegments(t)
	fi, _ := os.Stat(segs[0])
	if err := os.Truncate(segs[0], fi.Size()-100); err != nil {
		t.Fatal(err)
	}
	var log syncbuf.Buffer
	o.Log = debugLogger(&log)
	s2 := openT(t, dir, o)
	got := seqsOf(readAll(t, s2, 1))
	want := []uint64{1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read %v, want %v", got, want)
	}
	if st := s2.Stats(); st.Corrupt != 1 || st.CutBytes != 0 {
		t.Fatalf("%+v", st)
	}
	if !strings.Contains(log.String(), "is damaged; skipped") {
		t.Fatalf("log: %s", log.String())
	}
}

func TestFullString(t *testing.T) {
	for f, want := range map[Full]string{Block: "block", DropOldest: "drop-oldest", 7: "full(?)"} {
		if f.String() != want {
			t.Errorf("%d: %q", f, f.String())
		}
	}
}

// An Ack beyond the newest record covers only what exists: records
// appended after it are kept.
func TestAckBeyondLast(t *testing.T) {
	s := openT(t, t.TempDir(), Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Hour})
	appendN(t, s, 3, 500)
	s.Ack(1000)
	if a := s.Stats().Acked; a != 3 {
		t.Fatalf("Acked %d after Ack(1000) with 3 records", a)
	}
	appendN(t, s, 20, 500)
	s.collect() // what the background goroutine does on Ack, now
	s.Sync()
	recs := readAll(t, s, 1)
	if len(recs) == 0 || recs[0].Seq > 4 || recs[len(recs)-1].Seq != 23 {
		t.Fatalf("read %v", seqsOf(recs))
	}
}

// closedSegments makes a closed spool of 20 records of 500 bytes in
// segments of MinSegmentBytes (several of them), for tests that damage its
// files: its directory, options and segment paths, oldest first.
func closedSegments(t *testing.T) (dir string, o Options, segs []string) {
	t.Helper()
	dir = t.TempDir()
	o = Options{SegmentBytes: MinSegmentBytes}
	s := openT(t, dir, o)
	appendN(t, s, 20, 500)
	s.Close()
	return dir, o, segPaths(t, dir)
}
