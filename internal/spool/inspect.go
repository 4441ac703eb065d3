package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Status is what Inspect reads of a spool, in use or not.
type Status struct {
	Dir           string
	Epoch         uint64
	Oldest        uint64    // oldest record held
	Last          uint64    // newest record
	Acked         uint64    // the last acknowledgement the owner recorded (a hint, not synced)
	Waiting       uint64    // records after Acked
	OldestWaiting time.Time // append time of the oldest record after Acked; zero when none
	Bytes         int64
	Segments      int
	Locked        bool // a process holds the lock now
	LockPID       int  // its PID, when Locked and known
}

// Inspect reads the state of the spool in dir without taking its lock and
// without changing anything: for `meridian station --status`.
//
// It reads what the owner has written, synced or not. A torn tail is not
// cut, only not counted; a segment deleted while Inspect reads is skipped.
func Inspect(dir string) (Status, error) {
	st := Status{Dir: dir}
	epoch, err := readMeta(dir)
	if err != nil {
		return st, err
	}
	st.Epoch = epoch
	if b, err := os.ReadFile(filepath.Join(dir, ackedName)); err == nil && len(b) >= 8 {
		st.Acked = binary.BigEndian.Uint64(b)
	}
	files, err := listSegments(dir)
	if err != nil {
		return st, fmt.Errorf("spool %s: %w", dir, err)
	}
	// Segments whose header is bad are counted in the bytes but hold no
	// records one could read.
	var good []segFile
	for _, sf := range files {
		st.Bytes += sf.size
		err := readSegHeader(filepath.Join(dir, sf.name), epoch, sf.first)
		switch {
		case err == nil:
			good = append(good, sf)
		case errors.Is(err, errOtherEpoch):
			return st, fmt.Errorf("%w: %s: %w", ErrNotSpool, filepath.Join(dir, sf.name), err)
		case errors.Is(err, errBadHeader), errors.Is(err, os.ErrNotExist):
		default:
			return st, fmt.Errorf("spool %s: %w", dir, err)
		}
	}
	st.Segments = len(files)
	st.Locked, st.LockPID, err = lockHolder(dir)
	if err != nil {
		return st, fmt.Errorf("spool %s: lock: %w", dir, err)
	}
	if len(files) == 0 {
		return st, nil
	}
	st.Oldest = files[0].first
	if len(good) == 0 {
		// A spool being created: its first segment's header is not
		// written yet (or is damaged).
		st.Last = files[len(files)-1].first - 1
	} else {
		newest := good[len(good)-1]
		st.Last = newest.first - 1
		err := scanSegment(filepath.Join(dir, newest.name), newest.first, defaultMaxRecord, func(r rec) bool {
			st.Last = r.seq
			return true
		})
		if err != nil {
			return st, err
		}
	}
	// Segments with a damaged header after the newest good one: Open
	// keeps one that holds records and numbers on after its highest valid
	// record, or deletes one too short for a record and numbers on from
	// its name.
	for _, sf := range files {
		if len(good) > 0 && sf.first <= good[len(good)-1].first {
			continue
		}
		st.Last = max(st.Last, sf.first-1)
		err := scanSegment(filepath.Join(dir, sf.name), sf.first, defaultMaxRecord, func(r rec) bool {
			st.Last = max(st.Last, r.seq)
			return true
		})
		if err != nil {
			return st, err
		}
	}
	if st.Last+1 < st.Oldest { // an empty spool: its segment names the next number
		st.Oldest = st.Last + 1
	}
	from := max(st.Acked+1, st.Oldest)
	if st.Last >= from {
		st.Waiting = st.Last - from + 1
	}
	// The oldest waiting record: in the last segment beginning at or
	// before it, or a later one if that one holds it no more.
	start := 0
	for i, sf := range good {
		if sf.first <= from {
			start = i
		}
	}
	for _, sf := range good[start:] {
		if st.Waiting == 0 {
			break
		}
		err := scanSegment(filepath.Join(dir, sf.name), sf.first, defaultMaxRecord, func(r rec) bool {
			if r.seq >= from {
				st.OldestWaiting = time.Unix(0, r.nanos)
				return false
			}
			return true
		})
		if err != nil {
			return st, err
		}
		if !st.OldestWaiting.IsZero() {
			break
		}
	}
	return st, nil
}

// scanSegment calls fn with each valid record of a segment file, as a
// Reader would find them, until fn returns false. A missing file (deleted
// meanwhile) holds no record.
func scanSegment(path string, first uint64, maxRecord int, fn func(rec) bool) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	sc := scanner{f: f, limit: fi.Size(), maxRecord: maxRecord}
	off, prev := int64(SegmentHeaderSize), first-1
	for off < sc.limit {
		r, ok, err := sc.at(off, prev, ^uint64(0))
		if err != nil {
			return fmt.Errorf("spool: read %s: %w", filepath.Base(path), err)
		}
		if ok {
			if !fn(r) {
				return nil
			}
			prev, off = r.seq, off+r.size
			continue
		}
		next, found, err := sc.resync(off, prev)
		if err != nil {
			return fmt.Errorf("spool: read %s: %w", filepath.Base(path), err)
		}
		if !found {
			return nil
		}
		off = next
	}
	return nil
}
