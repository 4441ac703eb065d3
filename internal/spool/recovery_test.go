package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/syncbuf"
)

// readWithin reads every synced record from from on, like readAll, in a
// goroutine bounded by a deadline: a reader that spins fails the test
// instead of hanging it. unstick is called on timeout to let the reader
// out. It returns the sequence numbers read, Through, and Next's error.
func readWithin(t *testing.T, s *Spool, from uint64, unstick func()) ([]uint64, uint64, error) {
	t.Helper()
	type result struct {
		seqs    []uint64
		through uint64
		err     error
	}
	done := make(chan result, 1)
	go func() {
		r := s.NewReader(from)
		defer r.Close()
		var res result
		for {
			rec, ok, err := r.Next()
			if err != nil || !ok {
				res.err, res.through = err, r.Through()
				done <- res
				return
			}
			res.seqs = append(res.seqs, rec.Seq)
		}
	}()
	select {
	case res := <-done:
		return res.seqs, res.through, res.err
	case <-time.After(10 * time.Second):
		unstick()
		<-done
		t.Fatal("Next did not return within 10 s (spinning)")
	}
	return nil, 0, nil
}

func seqRange(a, b uint64) []uint64 {
	var s []uint64
	for i := a; i <= b; i++ {
		s = append(s, i)
	}
	return s
}

// A damaged header on the newest segment of a file that holds records is
// damage, not a crash while creating it: the file is kept, readers skip
// it, its records are counted and logged, and the numbering goes on after
// the highest valid record in it.
func TestDamagedNewestHeader(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: MinSegmentBytes}
	s := openT(t, dir, o)
	appendN(t, s, 20, 500) // segments 1, 9, 17: the newest holds 17..20
	s.Close()
	newest := lastSegment(t, dir)
	flip(t, newest, 3)

	var log syncbuf.Buffer
	o.Log = debugLogger(&log)
	s2 := openT(t, dir, o)
	if _, err := os.Stat(newest); err != nil {
		t.Fatalf("the damaged newest segment is gone: %v", err)
	}
	if st := s2.Stats(); st.Last != 20 || st.Synced != 20 || st.Corrupt != 4 || st.Segments != 4 {
		t.Fatalf("after open: %+v", st)
	}
	want := fmt.Sprintf("spool: %s has a damaged header; its records 17..20 are skipped", filepath.Base(newest))
	if !strings.Contains(log.String(), want) || !strings.Contains(log.String(), "level=ERROR") {
		t.Fatalf("log %s\nlacks %q", log.String(), want)
	}
	got, through, err := readWithin(t, s2, 1, func() {})
	if err != nil || fmt.Sprint(got) != fmt.Sprint(seqRange(1, 16)) || through != 20 {
		t.Fatalf("read %v, Through %d, %v; want 1..16, Through 20", got, through, err)
	}
	if seq, err := s2.Append(context.Background(), nil); err != nil || seq != 21 {
		t.Fatalf("Append: %d %v, want 21", seq, err)
	}
	s2.Sync()
	wantSeqs := append(seqRange(1, 16), 21)
	if got := seqsOf(readAll(t, s2, 1)); fmt.Sprint(got) != fmt.Sprint(wantSeqs) {
		t.Fatalf("read %v, want %v", got, wantSeqs)
	}
	s2.Close()
	s3 := openT(t, dir, Options{SegmentBytes: MinSegmentBytes})
	if st := s3.Stats(); st.Last != 21 || st.Corrupt != 4 {
		t.Fatalf("reopened: %+v", st)
	}
	if got := seqsOf(readAll(t, s3, 1)); fmt.Sprint(got) != fmt.Sprint(wantSeqs) {
		t.Fatalf("reopened, read %v", got)
	}
	s3.Close()
	if st, err := Inspect(dir); err != nil || st.Last != 21 {
		t.Fatalf("Inspect: %+v %v", st, err)
	}
}

// A newest segment with a damaged header and bytes after it, but no valid
// record: kept, counted as one damaged record numbered from its name, and
// the numbering goes on after it (the new segment cannot take its name).
func TestDamagedNewestHeaderNoRecord(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	appendN(t, s, 20, 100)
	s.Ack(20)
	waitFor(t, "the acked hint", func() bool { st, _ := Inspect(dir); return st.Acked == 20 })
	s.Close()
	bad := filepath.Join(dir, segName(21))
	junk := make([]byte, SegmentHeaderSize+100)
	copy(junk, "not a header")
	if err := os.WriteFile(bad, junk, 0o640); err != nil {
		t.Fatal(err)
	}
	if st, err := Inspect(dir); err != nil || st.Last != 20 {
		t.Fatalf("Inspect: %+v %v", st, err)
	}
	s2 := openT(t, dir, Options{})
	if _, err := os.Stat(bad); err != nil {
		t.Fatal(err)
	}
	if st := s2.Stats(); st.Last != 21 || st.Corrupt != 1 {
		t.Fatalf("%+v", st)
	}
	if seq, err := s2.Append(context.Background(), nil); err != nil || seq != 22 {
		t.Fatalf("Append: %d %v, want 22", seq, err)
	}
}

// With no segment left at all, the acked hint is the floor of the
// numbering: the gateway may hold every number up to it.
func TestAckedHintIsNumberingFloor(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Millisecond})
	appendN(t, s, 20, 500)
	s.Sync()
	s.Ack(20)
	waitFor(t, "everything deleted", func() bool { st := s.Stats(); return st.Segments == 1 && st.Oldest == 21 })
	s.Close()
	for _, p := range segPaths(t, dir) {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	s2 := openT(t, dir, Options{})
	if seq, err := s2.Append(context.Background(), nil); err != nil || seq != 21 {
		t.Fatalf("Append: %d %v, want 21", seq, err)
	}
}

// Through: where a reader starts, and how far it has passed once it read
// everything synced.
func TestThrough(t *testing.T) {
	s := openT(t, t.TempDir(), Options{SyncInterval: time.Hour})
	r := s.NewReader(5)
	defer r.Close()
	if r.Through() != 4 {
		t.Fatalf("Through %d from 5, want 4", r.Through())
	}
	if r0 := s.NewReader(0); r0.Through() != 0 {
		t.Fatalf("Through %d from 0", r0.Through())
	}
	appendN(t, s, 10, 10)
	if _, ok, _ := r.Next(); ok || r.Through() != 4 {
		t.Fatalf("nothing synced: ok %v, Through %d", ok, r.Through())
	}
	s.Sync()
	appendN(t, s, 3, 10) // not synced: not passed
	for i := uint64(5); i <= 10; i++ {
		if rec, ok, _ := r.Next(); !ok || rec.Seq != i || r.Through() != i {
			t.Fatalf("read %d %v, Through %d; want %d", rec.Seq, ok, r.Through(), i)
		}
	}
	if _, ok, _ := r.Next(); ok || r.Through() != 10 {
		t.Fatalf("caught up: ok %v, Through %d, want 10", ok, r.Through())
	}
	r.Unread()
	if rec, ok, _ := r.Next(); !ok || rec.Seq != 10 || r.Through() != 10 {
		t.Fatalf("unread: %d %v, Through %d", rec.Seq, ok, r.Through())
	}
}

// A power failure just after a rollover: the newest segment kept only
// its header, the one before lost its last record. No record follows the
// hole, yet Through shows it.
func TestThroughTrailingHole(t *testing.T) {
	dir, o, segs := closedSegments(t)
	if err := os.Truncate(segs[len(segs)-1], SegmentHeaderSize); err != nil {
		t.Fatal(err)
	}
	prev := segs[len(segs)-2] // records 9..16
	fi, _ := os.Stat(prev)
	if err := os.Truncate(prev, fi.Size()-100); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, dir, o)
	if st := s2.Stats(); st.Last != 16 || st.Synced != 16 {
		t.Fatalf("%+v", st)
	}
	got, through, err := readWithin(t, s2, 1, func() {})
	if err != nil || fmt.Sprint(got) != fmt.Sprint(seqRange(1, 15)) || through != 16 {
		t.Fatalf("read %v, Through %d, %v; want 1..15, Through 16", got, through, err)
	}
}

// A reader whose next segment was dropped (DropOldest) passes its
// records.
func TestThroughDropped(t *testing.T) {
	s := openT(t, t.TempDir(), Options{MaxBytes: 16 << 10, Full: DropOldest, SyncInterval: time.Hour})
	r := s.NewReader(1)
	defer r.Close()
	appendN(t, s, 100, 500)
	s.Sync()
	oldest := s.Stats().Oldest
	if oldest <= 1 {
		t.Fatal("nothing dropped")
	}
	rec, ok, err := r.Next()
	if !ok || err != nil || rec.Seq != oldest || r.Through() != oldest {
		t.Fatalf("read %d %v %v, Through %d; want %d", rec.Seq, ok, err, r.Through(), oldest)
	}
}

// A segment file deleted by hand while the spool is open: readers skip
// it (logged and counted once) and never spin.
func TestMissingSegment(t *testing.T) {
	dir := t.TempDir()
	var log syncbuf.Buffer
	s := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Hour, Log: debugLogger(&log)})
	appendN(t, s, 40, 500) // segments 1, 9, 17, 25, 33
	s.Sync()
	segs := segPaths(t, dir)
	for _, i := range []int{0, 2} {
		if err := os.Remove(segs[i]); err != nil {
			t.Fatal(err)
		}
	}
	unstick := func() {
		for _, i := range []int{0, 2} {
			os.WriteFile(segs[i], nil, 0o640)
		}
	}
	want := append(seqRange(9, 16), seqRange(25, 40)...)
	for range 2 {
		got, through, err := readWithin(t, s, 1, unstick)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) || through != 40 {
			t.Fatalf("read %v, Through %d, %v\nwant %v, Through 40", got, through, err, want)
		}
	}
	if st := s.Stats(); st.Corrupt != 16 {
		t.Fatalf("Corrupt %d, want 16", st.Corrupt)
	}
	for _, i := range []int{0, 2} {
		line := fmt.Sprintf("spool: %s is missing", filepath.Base(segs[i]))
		if n := strings.Count(log.String(), line); n != 1 {
			t.Fatalf("logged %d times %q:\n%s", n, line, log.String())
		}
	}
	// Acknowledging past them deletes them from the list as usual.
	s.Ack(30)
	waitFor(t, "deletion", func() bool { return s.Stats().Oldest == 25 })

	// The active segment's file gone: an error, not a spin.
	if err := os.Remove(segs[len(segs)-1]); err != nil {
		t.Fatal(err)
	}
	_, _, err := readWithin(t, s, 1, func() { os.WriteFile(segs[len(segs)-1], nil, 0o640) })
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("newest segment missing: %v", err)
	}
}

// A segment file deleted by hand while the spool is closed: the reader
// passes the hole.
func TestMissingSegmentAtOpen(t *testing.T) {
	dir := t.TempDir()
	o := Options{SegmentBytes: MinSegmentBytes}
	s := openT(t, dir, o)
	appendN(t, s, 40, 500)
	s.Close()
	segs := segPaths(t, dir)
	if err := os.Remove(segs[1]); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, dir, o)
	got, through, err := readWithin(t, s2, 1, func() { os.WriteFile(segs[1], nil, 0o640) })
	want := append(seqRange(1, 8), seqRange(17, 40)...)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) || through != 40 {
		t.Fatalf("read %v, Through %d, %v", got, through, err)
	}
}

// Inspect's lock probe takes the lock for an instant; an Open landing in
// that instant retries instead of failing with ErrLocked.
func TestOpenWhileInspecting(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	s.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var probes int
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := Inspect(dir); err != nil {
				t.Error(err)
				return
			}
			probes++
		}
	})
	for i := range 300 {
		s, err := Open(dir, Options{})
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("Open %d during Inspect: %v", i, err)
		}
		s.Close()
	}
	close(stop)
	wg.Wait()
	if probes == 0 {
		t.Fatal("no Inspect ran during the Opens")
	}
}

// dirSyncs records, at each SyncDir of dir, whether each of paths existed.
type dirSyncs struct {
	mu    sync.Mutex
	paths []string
	seen  [][]bool
}

func watchDirSyncs(t *testing.T, dir string, paths ...string) *dirSyncs {
	d := &dirSyncs{paths: paths}
	syncDirHook = func(got string) {
		if got != dir {
			return
		}
		var ex []bool
		for _, p := range paths {
			_, err := os.Stat(p)
			ex = append(ex, err == nil)
		}
		d.mu.Lock()
		d.seen = append(d.seen, ex)
		d.mu.Unlock()
	}
	t.Cleanup(func() { syncDirHook = nil })
	return d
}

func (d *dirSyncs) calls() [][]bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]bool(nil), d.seen...)
}

// Open syncs the directory: segments a crashed process left count as
// synced, so their entries must be durable.
func TestOpenSyncsDir(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	appendN(t, s, 3, 10)
	s.Close()
	d := watchDirSyncs(t, dir)
	openT(t, dir, Options{})
	if len(d.calls()) == 0 {
		t.Fatal("reopening did not sync the directory")
	}
}

// When collect rolls an acknowledged active segment over to delete it,
// the new segment's entry is made durable before the old one is removed:
// never a directory without a segment.
func TestCollectSyncsDirBeforeDelete(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{SegmentBytes: MinSegmentBytes, SyncInterval: time.Hour})
	appendN(t, s, 5, 500) // one segment, above rollAt
	s.Sync()
	old, nu := filepath.Join(dir, segName(1)), filepath.Join(dir, segName(6))
	d := watchDirSyncs(t, dir, old, nu)
	s.Ack(5)
	waitFor(t, "the old segment deleted", func() bool {
		_, err := os.Stat(old)
		return errors.Is(err, fs.ErrNotExist)
	})
	for _, c := range d.calls() {
		if c[0] && c[1] {
			return
		}
	}
	t.Fatalf("no directory sync with both segments present: %v", d.calls())
}

// Last takes no lock: it answers while an Append would hold the spool's.
func TestLastLockFree(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	appendN(t, s, 7, 10)
	s.mu.Lock()
	got := make(chan uint64, 1)
	go func() { got <- s.Last() }()
	select {
	case n := <-got:
		s.mu.Unlock()
		if n != 7 || n != s.Stats().Last {
			t.Fatalf("Last %d, want 7", n)
		}
	case <-time.After(10 * time.Second):
		s.mu.Unlock()
		t.Fatal("Last blocked on the spool's lock")
	}
}

// TestAckedTailLengthRot: the gateway acknowledged every record, then the
// length field of the last one rotted so that it seems to run past the end
// of the file, like an interrupted write. The acked hint says it was
// delivered: its number is burnt, never given to a new record (the gateway
// would take that record for stored).
func TestAckedTailLengthRot(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	appendN(t, s, 10, 500)
	s.Ack(10)
	s.Close() // records the hint
	if b, err := os.ReadFile(filepath.Join(dir, ackedName)); err != nil || len(b) != 8 || binary.BigEndian.Uint64(b) != 10 {
		t.Fatalf("acked hint %v (%v), want 10", b, err)
	}
	path := lastSegment(t, dir)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Record 10's length 500 becomes 500 + 65536: past the end.
	if _, err := f.WriteAt([]byte{0x01}, fi.Size()-(RecordHeaderSize+500)+1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s2 := openT(t, dir, Options{})
	if st := s2.Stats(); st.Last != 10 || st.Corrupt != 1 {
		t.Fatalf("reopened: Last %d Corrupt %d, want 10 and 1", st.Last, st.Corrupt)
	}
	if seq, err := s2.Append(context.Background(), []byte("new")); err != nil || seq != 11 {
		t.Fatalf("Append = %d, %v; want 11", seq, err)
	}
}

// TestInspectWhileCreating: Inspect runs while a process creates the spool
// and its first segment's header is not written yet. It reports the empty
// spool instead of failing (or panicking, as it once did).
func TestInspectWhileCreating(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{})
	s.Close()
	if err := os.Truncate(filepath.Join(dir, segName(1)), 0); err != nil {
		t.Fatal(err)
	}
	st, err := Inspect(dir)
	if err != nil || st.Segments != 1 || st.Last != 0 || st.Waiting != 0 {
		t.Fatalf("Inspect = %+v, %v; want one segment, nothing waiting", st, err)
	}
}
