package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Record is one record read back.
type Record struct {
	Seq     uint64
	Time    time.Time // when it was appended
	Payload []byte    // valid until the Reader's next call
}

// Reader reads records in sequence order, up to Synced. It is for one
// goroutine. Records that were dropped (DropOldest) or found damaged are
// skipped: the next record's Seq is then more than one past the previous
// one, and the caller sees the gap; Through shows a gap that no record
// follows yet.
//
// It reads with pread through a file descriptor of its own, so a segment
// deleted under it (acknowledged, or dropped) stays readable to its end.
type Reader struct {
	s       *Spool
	from    uint64 // the lowest sequence number still wanted
	first   uint64 // first of the open segment; 0: none open
	path    string
	f       *os.File
	sc      scanner
	off     int64  // where the next record begins
	prev    uint64 // the last record's seq in this segment (first-1: none)
	final   bool   // sc.limit is the segment's whole size
	damaged int64  // offset of the damage reported last in this segment; -1: none
	through uint64 // see Through
	synced  uint64 // Synced as of sc.limit, when !final
	last    Record
	unread  bool
	closed  bool
}

// NewReader returns a reader positioned at the first record with a
// sequence number at or above from.
func (s *Spool) NewReader(from uint64) *Reader {
	from = max(from, 1)
	return &Reader{s: s, from: from, through: from - 1, damaged: -1}
}

// Through returns the highest sequence number the reader has passed:
// every record up to it was returned by Next, or skipped (below from,
// dropped or deleted, damaged, in a segment with a damaged header or whose
// file is missing, a number burnt by a cut at open), or does not exist. It
// starts at from-1 and only grows; Unread does not lower it.
//
// When Next returns ok false because the reader consumed everything
// synced, Through is the spool's Synced value as of that moment: every
// record up to Synced lies before the synced offset the reader reached. So
// a caller that finds Through above the Seq of the last record Next
// returned knows that the records in between are missing, even when no
// record follows them yet (a burnt number at the end of the spool; the
// end of an older segment lost in a power failure after a rollover).
func (r *Reader) Through() uint64 { return r.through }

// caughtUp is Next's ok false return when the reader reached what is
// synced.
func (r *Reader) caughtUp() (Record, bool, error) {
	r.through = max(r.through, r.synced)
	return Record{}, false, nil
}

// Next returns the next record, or ok false when none is synced yet beyond
// the last one returned. err is ErrClosed after Close, or an I/O error.
func (r *Reader) Next() (rec Record, ok bool, err error) {
	if r.closed || r.s.isClosed.Load() {
		return Record{}, false, ErrClosed
	}
	if r.unread {
		r.unread = false
		return r.last, true, nil
	}
	for {
		if o := r.s.oldest.Load(); r.from < o {
			// Records were dropped or deleted: go straight to the
			// segment holding the oldest one left.
			r.from = o
			r.through = max(r.through, o-1)
			if r.f != nil && r.first < o {
				r.closeFile()
			}
		}
		if r.f == nil {
			ok, err := r.open(r.s.segmentFor(r.from))
			if err != nil || !ok {
				return Record{}, false, err
			}
		}
		if r.off >= r.sc.limit {
			if err := r.refresh(); err != nil {
				return Record{}, false, err
			}
			if r.off >= r.sc.limit {
				if !r.final {
					return r.caughtUp()
				}
				if err := r.nextSegment(); err != nil {
					return Record{}, false, err
				}
				continue
			}
		}
		got, ok, err := r.sc.at(r.off, r.prev, ^uint64(0))
		if err != nil {
			return Record{}, false, r.ioErr(err)
		}
		if ok {
			r.off += got.size
			r.prev = got.seq
			r.through = max(r.through, got.seq)
			if got.seq < r.from {
				continue
			}
			r.from = got.seq + 1
			r.last = got.record()
			return r.last, true, nil
		}
		if r.damaged != r.off {
			r.damaged = r.off
			r.s.corrupt.Add(1)
			r.s.log.Error(fmt.Sprintf("spool: record at %s offset %d is damaged; skipped", filepath.Base(r.path), r.off))
		}
		next, found, err := r.sc.resync(r.off, r.prev)
		if err != nil {
			return Record{}, false, r.ioErr(err)
		}
		switch {
		case found:
			r.off = next
		case r.final:
			if err := r.nextSegment(); err != nil {
				return Record{}, false, err
			}
		default:
			// The damage runs to what is synced of the active segment:
			// look again once more is.
			limit := r.sc.limit
			if err := r.refresh(); err != nil {
				return Record{}, false, err
			}
			if r.sc.limit == limit && !r.final {
				return r.caughtUp()
			}
		}
	}
}

func (r *Reader) ioErr(err error) error {
	return fmt.Errorf("spool: read %s: %w", filepath.Base(r.path), err)
}

// refresh sets how far the open segment may be read: to the synced
// offset in the active segment; the whole file once a later segment is
// synced (the syncer fdatasyncs the older ones first); only its header
// when nothing in it is synced yet.
func (r *Reader) refresh() error {
	seg, off, synced := r.s.syncedPos()
	r.synced = synced
	switch {
	case r.first == seg:
		r.sc.limit, r.final = off, false
	case r.first < seg:
		fi, err := r.f.Stat()
		if err != nil {
			return r.ioErr(err)
		}
		r.sc.limit, r.final = fi.Size(), true
	default:
		r.sc.limit, r.final = SegmentHeaderSize, false
	}
	return nil
}

// nextSegment moves to the segment after the open one.
func (r *Reader) nextSegment() error {
	first := r.first
	seg := r.s.segmentAfter(first)
	if seg == nil {
		return nil // the open segment is the newest: stay
	}
	r.closeFile()
	_, err := r.open(seg)
	return err
}

// open opens the segment seg. A segment deleted by the spool meanwhile
// makes it look again from the spool's current list; one whose file is
// gone while the spool still lists it (deleted by hand) is marked to be
// skipped, and the reader goes on with the next one.
func (r *Reader) open(seg *segment) (bool, error) {
	for seg != nil {
		f, err := os.Open(seg.path)
		if errors.Is(err, fs.ErrNotExist) {
			if !r.s.markMissing(seg) {
				return false, fmt.Errorf("spool: the newest segment is missing: %w", err)
			}
			r.from = max(r.from, seg.first)
			if after := r.s.segmentAfter(seg.first); after != nil {
				r.from = max(r.from, after.first)
			}
			seg = r.s.segmentFor(r.from)
			continue
		}
		if err != nil {
			return false, fmt.Errorf("spool: %w", err)
		}
		r.f, r.first, r.path = f, seg.first, seg.path
		r.off, r.prev, r.damaged = SegmentHeaderSize, seg.first-1, -1
		r.sc = scanner{f: f, maxRecord: r.s.scanMax(), buf: r.sc.buf[:0]}
		return true, r.refresh()
	}
	return false, nil
}

func (r *Reader) closeFile() {
	if r.f != nil {
		r.f.Close()
	}
	r.f, r.first = nil, 0
	r.sc.f = nil
}

// segmentFor returns the segment a reader wanting from should start in:
// the last one beginning at or before it (or the oldest held), past any
// with a damaged header.
func (s *Spool) segmentFor(from uint64) *segment {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for j, seg := range s.segs {
		if seg.first <= from {
			i = j
		}
	}
	for ; i < len(s.segs); i++ {
		if !s.segs[i].bad {
			return s.segs[i]
		}
	}
	return nil
}

// segmentAfter returns the first readable segment beginning after first.
func (s *Spool) segmentAfter(first uint64) *segment {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs {
		if seg.first > first && !seg.bad {
			return seg
		}
	}
	return nil
}

// Unread makes the next call of Next return the record just returned
// again (its Payload stays valid). Only one record can be unread.
func (r *Reader) Unread() {
	if r.last.Seq != 0 {
		r.unread = true
	}
}

// Close releases the reader's files.
func (r *Reader) Close() error {
	r.closed = true
	r.closeFile()
	return nil
}
