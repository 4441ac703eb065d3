// Package spool is a station's store-and-forward log on disk: the frames a
// station handed over and the gateway has not yet acknowledged, kept in
// segment files so that neither a crash of the station process nor a long
// backhaul outage loses them.
//
// A spool is a directory. It holds a lock file (one process at a time), a
// meta file with the spool's epoch, and segments named by the sequence
// number of their first record. Records are numbered 1, 2, 3, … in the
// order Append accepted them, under the epoch, for the life of the
// directory. Every record carries its length, its sequence number, the time
// it was appended and a CRC-32C over all of it, so that a record torn by a
// crash or damaged on disk is found and never read back as data. The byte
// layout is in docs/station.md.
//
// Durability follows the sync policy. Append always hands the record to the
// kernel (write(2)) before it returns, so a record survives a crash of the
// process. With an interval, a background goroutine calls fdatasync at that
// interval when there is something new (group commit); with Always, Append
// returns only once an fdatasync covered its record. Synced says how far the
// log is on disk; a reader never goes past it, so that the gateway never
// holds a frame the spool could lose in a power failure.
//
// A number is never given twice, so that a spool reopened after a crash or
// a power failure never numbers a new frame with a number the stream
// already has. Open numbers on after every record it finds: in the newest
// segment, and in a newest segment whose header is damaged; after a record
// cut at the end that is whole but damaged (it may have been synced and
// sent before it rotted: its number is burnt; a record running past the
// end of the file was never whole, so never sent, and its number is
// free); after the name of a segment
// deleted as a crash while creating it; and, when it begins a new segment
// (always when none is left), never at or below the acked hint.
// What it cannot see it cannot number past: this holds as long as the disk
// keeps what an fdatasync covered, or its damage leaves either the newest
// records' headers or the acked hint (not synced) covering what was sent.
//
// Ack tells the spool what the gateway stored; whole segments at or below it
// are deleted in the background. When the log reaches MaxBytes, Append
// blocks until acknowledgements free space (Block), or the oldest segments
// are deleted unacknowledged, counted in Stats.Dropped (DropOldest).
package spool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of the options.
const (
	DefaultSyncInterval = 100 * time.Millisecond
	DefaultMaxBytes     = 1 << 30
	DefaultSegmentBytes = 64 << 20
	// MinSegmentBytes bounds how small a segment may be made; a record
	// larger than the segment size gets a segment of its own.
	MinSegmentBytes = 4 << 10
	// defaultMaxRecord is what MaxRecord 0 means.
	defaultMaxRecord = 16 << 20
	// RecordHeaderSize is the size of a record's header on disk.
	RecordHeaderSize = 24
	// SegmentHeaderSize is the size of a segment's header on disk.
	SegmentHeaderSize = 32
)

// Full says what Append does when the log holds MaxBytes.
type Full uint8

const (
	// Block makes Append wait until acknowledgements free space, or its
	// context ends.
	Block Full = iota
	// DropOldest deletes the oldest segments, acknowledged or not, until
	// the record fits; the unacknowledged records deleted are counted in
	// Stats.Dropped and logged, and a Reader skips past them.
	DropOldest
)

func (f Full) String() string {
	switch f {
	case Block:
		return "block"
	case DropOldest:
		return "drop-oldest"
	}
	return "full(?)"
}

// Errors. Callers match them with errors.Is.
var (
	// ErrLocked: another process (or another Spool in this one) holds the
	// directory. The error's text names the holder's PID when known.
	ErrLocked = errors.New("spool: directory is in use")
	// ErrClosed: the spool was closed.
	ErrClosed = errors.New("spool: closed")
	// ErrTooLarge: a record above Options.MaxRecord, or one that cannot fit
	// in MaxBytes at all.
	ErrTooLarge = errors.New("spool: record too large")
	// ErrBroken: an fdatasync failed. What it covered may not be on disk
	// and cannot be retried safely (the kernel may have dropped the dirty
	// pages), so the spool takes no more records; the ones synced before
	// stay readable. Reopening the spool scans it again.
	ErrBroken = errors.New("spool: sync failed")
	// ErrNotSpool: the directory holds files that are not a spool's (a
	// meta file of another format, a segment of another epoch).
	ErrNotSpool = errors.New("spool: not a spool directory")
)

// Options configure Open. The zero value means the defaults.
type Options struct {
	// SyncInterval is the group-commit interval; 0 means
	// DefaultSyncInterval. Ignored with SyncAlways.
	SyncInterval time.Duration
	// SyncAlways makes Append return only after an fdatasync covered its
	// record; concurrent Appends share one fdatasync.
	SyncAlways bool
	// MaxBytes bounds the segment files' total size; 0 means
	// DefaultMaxBytes.
	MaxBytes int64
	// Full is the policy when the log holds MaxBytes.
	Full Full
	// SegmentBytes is the size at which a segment is closed and a new one
	// begun; 0 means DefaultSegmentBytes, capped at MaxBytes/4 so that
	// space is freed in steps of at most a quarter. At least
	// MinSegmentBytes.
	SegmentBytes int64
	// MaxRecord is the largest payload Append takes; 0 means 16 MiB.
	MaxRecord int
	// Log receives what open cut or found damaged, drops and sync
	// failures. nil: discard.
	Log *slog.Logger
	// OnSynced, when set, is called with the new Synced value each time it
	// grows, by whichever goroutine ran the fdatasync: the spool's own
	// goroutine (the interval sync, and collect's sync after it rolled an
	// acknowledged segment over), a caller of Sync (Close included), or an
	// Append with SyncAlways that ran the group's fdatasync. Calls never
	// overlap and their values only grow (the syncer's lock is held). It
	// must be quick and must not call Append, Sync or Close.
	OnSynced func(seq uint64)
}

// Stats are the spool's counters and gauges.
type Stats struct {
	Epoch    uint64
	Oldest   uint64 // sequence number of the oldest record held (Last+1 when empty)
	Last     uint64 // sequence number of the newest record (0: none yet)
	Synced   uint64 // highest sequence number on disk per the sync policy
	Acked    uint64 // highest sequence number Ack was given
	Bytes    int64  // total size of the segment files
	Segments int
	Dropped  uint64 // records deleted unacknowledged by DropOldest
	Corrupt  uint64 // records lost to damage: skipped by a reader, in a segment whose header is damaged (at open) or whose file went missing, or cut at open with their number burnt
	CutBytes int64  // bytes cut from the last segment's torn tail at open
}

// Spool is an open spool directory. Its methods are safe for concurrent
// use.
//
// Locks, in the order they may be taken: syncMu (one syncer at a time,
// held across fdatasync), mu (the appenders'), posMu (what is synced).
type Spool struct {
	dir    string
	o      Options
	log    *slog.Logger
	epoch  uint64
	lockF  *os.File
	ackF   *os.File
	rollAt int64 // an acknowledged active segment this big is rolled over to be deleted

	mu       sync.Mutex
	segs     []*segment    // oldest first; the last one is the active one. Guarded by mu.
	f        *os.File      // the active segment's file; guarded by mu
	pending  []*os.File    // files of rolled-over segments not yet fdatasync'd; guarded by mu
	rolled   bool          // a segment was created since the last sync: the directory needs one too; guarded by mu
	last     uint64        // guarded by mu
	lastSeen atomic.Uint64 // last, for Ack, which takes no lock; written under mu
	bytes    int64         // sum of segs' sizes; guarded by mu
	buf      []byte        // the record being appended; guarded by mu
	broken   error         // set when an fdatasync failed or a partial record could not be cut; guarded by mu
	closed   bool          // guarded by mu
	shut     bool          // the files are closed; guarded by mu
	blocked  int           // Appends waiting for space; guarded by mu
	space    chan struct{} // closed (and replaced) when space is freed and blocked > 0; guarded by mu
	closedCh chan struct{} // closed by Close

	syncMu sync.Mutex

	posMu     sync.Mutex
	syncedSeg uint64        // first seq of the segment holding the last synced record; guarded by posMu
	syncedOff int64         // offset in it just past that record; guarded by posMu
	synced    atomic.Uint64 // written under posMu
	waiters   int           // Appends in waitSynced; guarded by posMu
	syncedCh  chan struct{} // closed and replaced after a sync when waiters > 0; guarded by posMu

	acked    atomic.Uint64
	dropped  atomic.Uint64
	corrupt  atomic.Uint64
	oldest   atomic.Uint64 // written under mu
	isClosed atomic.Bool
	cutBytes int64 // immutable after Open
	hintMu   sync.Mutex
	hinted   uint64 // the value in the acked file; guarded by hintMu

	wake      chan struct{} // pokes the background goroutine; capacity 1
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// segment is one segment file of an open spool.
type segment struct {
	first uint64 // from its name (and header)
	path  string
	size  int64  // guarded by Spool.mu; fixed once it is not the active one
	last  uint64 // newest record in it (first-1: none); guarded by Spool.mu
	bad   bool   // readers skip it: its header was damaged at open, or its file went missing; guarded by Spool.mu
}

func (o Options) withDefaults() Options {
	if o.SyncInterval <= 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	o.SegmentBytes = min(o.SegmentBytes, o.MaxBytes/4)
	o.SegmentBytes = max(o.SegmentBytes, MinSegmentBytes)
	if o.MaxRecord <= 0 {
		o.MaxRecord = defaultMaxRecord
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// Open opens the spool in dir, creating the directory and a new epoch if
// there is none. It takes the directory's lock (ErrLocked if another holds
// it after a retry of 250 ms), reads the epoch, and scans the newest
// segment: a torn record at its end, left by a crash mid-write, is cut and
// logged, with Stats.CutBytes saying how much; when the cut bytes hold a
// whole record whose checksum fails (damage, not an interrupted write),
// its number is burnt (counted in Corrupt) and never given again. Damage found before the end is logged and
// counted, and left for readers to skip. A newest segment whose header is
// damaged is deleted when too short to hold a record (a crash while
// creating it), else kept for readers to skip, its records counted in
// Corrupt, and the numbering goes on after the highest valid one in it.
func Open(dir string, o Options) (*Spool, error) {
	o = o.withDefaults()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool %s: %w", dir, err)
	}
	lockF, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{
		dir:      dir,
		o:        o,
		log:      o.Log,
		lockF:    lockF,
		rollAt:   min(o.SegmentBytes/2, 1<<20),
		space:    make(chan struct{}),
		closedCh: make(chan struct{}),
		syncedCh: make(chan struct{}),
		wake:     make(chan struct{}, 1),
		buf:      make([]byte, 0, RecordHeaderSize+4096),
	}
	if err := s.load(); err != nil {
		s.closeFiles()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go s.run(ctx)
	return s, nil
}

// load reads or creates the directory's contents; on error the caller
// closes what it opened.
func (s *Spool) load() error {
	epoch, err := readMeta(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		segs, lerr := listSegments(s.dir)
		if lerr != nil {
			return fmt.Errorf("spool %s: %w", s.dir, lerr)
		}
		if len(segs) > 0 {
			return fmt.Errorf("%w: %s: segments without %s", ErrNotSpool, s.dir, metaName)
		}
		epoch, err = writeMeta(s.dir)
		if err != nil {
			return fmt.Errorf("spool %s: create: %w", s.dir, err)
		}
	} else if err != nil {
		return err
	}
	s.epoch = epoch

	s.ackF, err = os.OpenFile(filepath.Join(s.dir, ackedName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("spool %s: %w", s.dir, err)
	}
	var hint [8]byte
	if n, _ := s.ackF.ReadAt(hint[:], 0); n == len(hint) {
		s.hinted = binary.BigEndian.Uint64(hint[:])
	}

	files, err := listSegments(s.dir)
	if err != nil {
		return fmt.Errorf("spool %s: %w", s.dir, err)
	}
	// A bad header on the newest segment of a file too short to hold a
	// record is a crash while creating it (the header is its first
	// write): it holds nothing, delete it. The numbering goes on from its
	// name so that no number is given twice. A newest segment with a bad
	// header and room for records is damage, not a crash: it is kept for
	// readers to skip (below), and the numbering goes on after the highest
	// valid record found in it.
	var next uint64 // non-zero: begin a new active segment there
	var badLast uint64
	badNewest := false
	for len(files) > 0 {
		sf := files[len(files)-1]
		path := filepath.Join(s.dir, sf.name)
		err := readSegHeader(path, s.epoch, sf.first)
		if errors.Is(err, errBadHeader) && sf.size < SegmentHeaderSize+RecordHeaderSize {
			s.log.Warn(fmt.Sprintf("spool: deleted %s: its header is incomplete (a crash while creating it)", sf.name))
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("spool %s: %w", s.dir, err)
			}
			next = max(next, sf.first)
			files = files[:len(files)-1]
			continue
		}
		if errors.Is(err, errBadHeader) {
			badNewest, badLast = true, sf.first-1
			err = scanSegment(path, sf.first, s.scanMax(), func(r rec) bool {
				badLast = r.seq
				return true
			})
			if err != nil {
				return fmt.Errorf("spool %s: %w", s.dir, err)
			}
			// With no valid record found, the bytes after the header are
			// taken as a damaged record numbered first: the new active
			// segment cannot take this one's name anyway.
			badLast = max(badLast, sf.first)
			next = max(next, badLast+1)
		} else if err != nil {
			return s.headerErr(sf.name, err)
		}
		break
	}
	for i, sf := range files {
		seg := &segment{first: sf.first, path: filepath.Join(s.dir, sf.name), size: sf.size, last: sf.first - 1}
		if i < len(files)-1 || next != 0 { // not to be scanned as the active one
			switch {
			case i < len(files)-1:
				seg.last = files[i+1].first - 1
			case badNewest:
				seg.last = badLast
			}
			if err := checkSegFile(seg.path, s.epoch, sf.first, true); errors.Is(err, errBadHeader) {
				// Its records cannot be trusted; readers skip it. The
				// numbering of the next segment (or, for the newest, its
				// highest valid record) says how many it held.
				seg.bad = true
				s.corrupt.Add(seg.last - seg.first + 1)
				s.log.Error(fmt.Sprintf("spool: %s has a damaged header; its records %d..%d are skipped", sf.name, seg.first, seg.last))
			} else if err != nil {
				return s.headerErr(sf.name, err)
			}
		}
		s.segs = append(s.segs, seg)
		s.bytes += sf.size
	}
	if next == 0 && len(s.segs) > 0 {
		burnt, err := s.scanActive()
		if err != nil {
			return err
		}
		if burnt != 0 {
			// Within a segment the numbers follow one another: the
			// number after a burnt one begins a segment of its own.
			if err := s.f.Close(); err != nil {
				return fmt.Errorf("spool %s: %w", s.dir, err)
			}
			s.f = nil
			next = burnt + 1
		}
	}
	if next != 0 || len(s.segs) == 0 {
		// The acked hint is a floor: with no segment left (all
		// acknowledged and deleted, then the newest lost), the gateway
		// may hold numbers up to it.
		next = max(next, s.hinted+1)
		if n := len(s.segs); n > 0 && !s.segs[n-1].bad {
			// Not scanned (a deleted newest segment followed it), or
			// scanned and ended by a burnt number: its records end
			// before next.
			s.segs[n-1].last = next - 1
		}
		if err := s.createActive(next); err != nil {
			return err
		}
	}
	// Segments a crashed process left (and what this open created,
	// deleted or cut) count as synced below: their directory entries
	// must be durable first.
	if err := SyncDir(s.dir); err != nil {
		return fmt.Errorf("spool %s: %w", s.dir, err)
	}
	act := s.segs[len(s.segs)-1]
	s.last = act.last
	s.lastSeen.Store(s.last)
	s.oldest.Store(s.segs[0].first)
	s.synced.Store(s.last)
	s.syncedSeg, s.syncedOff = act.first, act.size
	return nil
}

func (s *Spool) headerErr(name string, err error) error {
	if errors.Is(err, errOtherEpoch) {
		return fmt.Errorf("%w: %s: %w", ErrNotSpool, filepath.Join(s.dir, name), err)
	}
	return fmt.Errorf("spool %s: %s: %w", s.dir, name, err)
}

// createActive creates an empty active segment whose first record will
// be first, its file synced (load syncs the directory after).
func (s *Spool) createActive(first uint64) error {
	path := filepath.Join(s.dir, segName(first))
	f, err := createSegment(path, s.epoch, first)
	if err == nil {
		if err = fdatasync(f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("spool %s: %w", s.dir, err)
	}
	s.f = f
	s.segs = append(s.segs, &segment{first: first, path: path, size: SegmentHeaderSize, last: first - 1})
	s.bytes += SegmentHeaderSize
	return nil
}

// createSegment creates a segment file holding only its header.
func createSegment(path string, epoch, first uint64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	var h [SegmentHeaderSize]byte
	putSegHeader(h[:], epoch, first)
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return f, nil
}

// scanActive opens the newest segment, checks every record in it, cuts a
// torn tail and makes what is left durable. It returns the highest number
// it burnt (0: none): that of a cut record that is whole but fails its
// checksum (it may have been synced and delivered before it rotted), and
// any number up to the acked hint (delivered for certain). A cut record
// that runs past the end of the file, above the hint, was an interrupted
// write, never sent: its number is given again.
func (s *Spool) scanActive() (burnt uint64, err error) {
	seg := s.segs[len(s.segs)-1]
	name := filepath.Base(seg.path)
	f, err := os.OpenFile(seg.path, os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return 0, fmt.Errorf("spool %s: %w", s.dir, err)
	}
	s.f = f
	sc := scanner{f: f, limit: seg.size, maxRecord: s.scanMax()}
	off, prev := int64(SegmentHeaderSize), seg.first-1
	for off < seg.size {
		r, ok, err := sc.at(off, prev, ^uint64(0))
		if err != nil {
			return 0, fmt.Errorf("spool %s: scan %s: %w", s.dir, name, err)
		}
		if ok {
			prev = r.seq
			off += r.size
			continue
		}
		next, found, err := sc.resync(off, prev)
		if err != nil {
			return 0, fmt.Errorf("spool %s: scan %s: %w", s.dir, name, err)
		}
		if !found {
			cut := seg.size - off
			if seq, err := sc.seqAt(off); err != nil {
				return 0, fmt.Errorf("spool %s: scan %s: %w", s.dir, name, err)
			} else if seq == prev+1 {
				burnt = seq
			}
			if s.hinted > prev {
				// The gateway acknowledged numbers up to the hint: the
				// records cut were delivered (a length field that rotted
				// looks like an interrupted write), so none of those
				// numbers may be given again.
				burnt = max(burnt, s.hinted)
			}
			if err := f.Truncate(off); err != nil {
				return 0, fmt.Errorf("spool %s: cut %s: %w", s.dir, name, err)
			}
			if burnt != 0 {
				s.corrupt.Add(burnt - prev)
				s.log.Warn(fmt.Sprintf("spool: cut %d bytes of a torn or damaged record at the end of %s, offset %d; record %d lost, its number is not given again", cut, name, off, burnt))
			} else {
				s.log.Warn(fmt.Sprintf("spool: cut %d bytes of a torn record at the end of %s, offset %d (a crash during a write)", cut, name, off))
			}
			s.cutBytes += cut
			s.bytes -= cut
			seg.size = off
			break
		}
		// Counted when a reader skips it, so that it is counted once.
		s.log.Error(fmt.Sprintf("spool: damaged record in %s at offset %d (%d bytes skipped, after record %d); readers skip it", name, off, next-off, prev))
		off = next
	}
	seg.last = max(prev, burnt)
	// What survived the crash may still be only in the page cache; the
	// numbering and Synced start from it, so make it durable first.
	if err := fdatasync(f); err != nil {
		return 0, fmt.Errorf("spool %s: %w", s.dir, err)
	}
	return burnt, nil
}

// scanMax is the largest record length a scan takes as plausible: the
// records of a spool written with a larger MaxRecord stay readable when it
// is reopened with the default.
func (s *Spool) scanMax() int { return max(s.o.MaxRecord, defaultMaxRecord) }

// Epoch returns the spool's epoch: non-zero, fixed when the directory was
// created.
func (s *Spool) Epoch() uint64 { return s.epoch }

// Append writes payload as the next record and returns its sequence
// number. It returns once write(2) returned (and, with SyncAlways, once an
// fdatasync covered it). A full spool blocks it (Block) until ctx ends, or
// drops the oldest segments (DropOldest). A failed write (a full disk:
// ENOSPC) leaves no partial record behind and returns the error wrapped;
// the records before it are untouched. Steady-state Appends do not
// allocate. An empty payload is allowed.
func (s *Spool) Append(ctx context.Context, payload []byte) (uint64, error) {
	size := int64(RecordHeaderSize + len(payload))
	if len(payload) > s.o.MaxRecord || SegmentHeaderSize+size > s.o.MaxBytes {
		return 0, fmt.Errorf("%w: %d bytes (max record %d, max bytes %d)", ErrTooLarge, len(payload), s.o.MaxRecord, s.o.MaxBytes)
	}
	// mu is held across the write(2) on purpose: the order of the log is
	// the order of the writes, and the numbers must follow it.
	s.mu.Lock()
	var act *segment
	for {
		if s.closed {
			s.mu.Unlock()
			return 0, ErrClosed
		}
		if s.broken != nil {
			err := s.broken
			s.mu.Unlock()
			return 0, err
		}
		act = s.segs[len(s.segs)-1]
		roll := act.size > SegmentHeaderSize && (act.size >= s.o.SegmentBytes || size > s.o.SegmentBytes)
		need := size
		if roll {
			need += SegmentHeaderSize
		}
		if s.bytes+need <= s.o.MaxBytes {
			if roll {
				if err := s.rollLocked(); err != nil {
					s.mu.Unlock()
					return 0, fmt.Errorf("spool %s: new segment: %w", s.dir, err)
				}
				act = s.segs[len(s.segs)-1]
			}
			break
		}
		if s.o.Full == DropOldest {
			if err := s.dropOldestLocked(); err != nil {
				s.mu.Unlock()
				return 0, err
			}
			continue
		}
		s.blocked++
		ch := s.space
		s.mu.Unlock()
		s.poke() // an acknowledged active segment may be rolled over and freed
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = fmt.Errorf("spool: full (max %d bytes): %w", s.o.MaxBytes, ctx.Err())
		case <-s.closedCh:
			err = ErrClosed
		}
		s.mu.Lock()
		s.blocked--
		if err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
	seq := s.last + 1
	if cap(s.buf) < int(size) {
		s.buf = make([]byte, size)
	}
	b := s.buf[:size]
	copy(b[RecordHeaderSize:], payload)
	putRecordHeader(b, seq, time.Now().UnixNano(), b[RecordHeaderSize:])
	if n, err := s.f.Write(b); err != nil {
		if n > 0 {
			// O_APPEND: once cut back, the next write goes where this
			// one began.
			if terr := s.f.Truncate(act.size); terr != nil {
				s.broken = fmt.Errorf("%w: cannot cut a partial record: %w", ErrBroken, terr)
				s.log.Error(fmt.Sprintf("spool: %s: a write failed (%v) and its partial record cannot be cut (%v); the spool takes no more records", filepath.Base(act.path), err, terr))
			}
		}
		s.mu.Unlock()
		return 0, fmt.Errorf("spool %s: append: %w", s.dir, err)
	}
	act.size += size
	act.last = seq
	s.bytes += size
	s.last = seq
	s.lastSeen.Store(seq)
	s.mu.Unlock()
	if s.o.SyncAlways {
		if err := s.waitSynced(seq); err != nil {
			return 0, err
		}
	}
	return seq, nil
}

// rollLocked begins a new active segment. s.mu is held.
func (s *Spool) rollLocked() error {
	first := s.last + 1
	path := filepath.Join(s.dir, segName(first))
	f, err := createSegment(path, s.epoch, first)
	if err != nil {
		return err
	}
	// The old file stays open until the syncer has fdatasync'd it: Synced
	// must only cover records really on disk.
	s.pending = append(s.pending, s.f)
	s.f = f
	s.segs = append(s.segs, &segment{first: first, path: path, size: SegmentHeaderSize, last: first - 1})
	s.bytes += SegmentHeaderSize
	s.rolled = true
	return nil
}

// dropOldestLocked deletes the oldest segment, rolling the active one over
// first when it is the only one. s.mu is held.
func (s *Spool) dropOldestLocked() error {
	if len(s.segs) == 1 {
		if s.segs[0].size <= SegmentHeaderSize {
			return fmt.Errorf("%w: does not fit in max bytes %d", ErrTooLarge, s.o.MaxBytes)
		}
		if err := s.rollLocked(); err != nil {
			return fmt.Errorf("spool %s: new segment: %w", s.dir, err)
		}
		// As in collect: the new segment's entry is durable before the
		// old one's goes. Rare (a record as big as a quarter of the
		// spool), so done under mu.
		if err := SyncDir(s.dir); err != nil {
			return fmt.Errorf("spool %s: new segment: %w", s.dir, err)
		}
	}
	victim := s.removeOldestLocked()
	if !victim.bad {
		a, b := max(victim.first, s.acked.Load()+1), s.segs[0].first-1
		if a <= b {
			s.dropped.Add(b - a + 1)
			s.log.Warn(fmt.Sprintf("spool: full (max %d bytes): dropped records %d..%d unacknowledged", s.o.MaxBytes, a, b))
		}
	}
	if err := os.Remove(victim.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Error(fmt.Sprintf("spool: delete %s: %v", filepath.Base(victim.path), err))
	}
	return nil
}

// removeOldestLocked takes the oldest segment off the list (there are at
// least two). s.mu is held.
func (s *Spool) removeOldestLocked() *segment {
	victim := s.segs[0]
	s.segs[0] = nil
	s.segs = s.segs[1:]
	s.bytes -= victim.size
	s.oldest.Store(s.segs[0].first)
	if s.blocked > 0 {
		close(s.space)
		s.space = make(chan struct{})
	}
	return victim
}

// Sync makes everything appended so far durable now and returns the new
// Synced value (used on Close, and by tests).
func (s *Spool) Sync() (uint64, error) {
	s.syncMu.Lock()
	n, err := s.syncLocked()
	s.syncMu.Unlock()
	s.broadcast()
	return n, err
}

// syncLocked fdatasyncs what was appended and publishes it. s.syncMu is
// held, s.mu is not: appenders go on during the fdatasync, and a record
// they write then waits for the next one.
func (s *Spool) syncLocked() (uint64, error) {
	s.mu.Lock()
	if s.broken != nil || s.shut {
		err := s.broken
		if err == nil {
			err = ErrClosed
		}
		s.mu.Unlock()
		return s.synced.Load(), err
	}
	prev := s.synced.Load()
	target := s.last
	act := s.segs[len(s.segs)-1]
	f, first, off := s.f, act.first, act.size
	pend := s.pending
	s.pending = nil
	rolled := s.rolled
	s.rolled = false
	s.mu.Unlock()
	if target == prev && len(pend) == 0 {
		return prev, nil
	}
	var err error
	for i, pf := range pend {
		if err == nil {
			err = fdatasync(pf)
		}
		pf.Close()
		pend[i] = nil
	}
	if err == nil && rolled {
		err = SyncDir(s.dir)
	}
	if err == nil {
		err = fdatasync(f)
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrBroken, err)
		s.mu.Lock()
		s.broken = err
		s.mu.Unlock()
		s.log.Error(fmt.Sprintf("spool: %v; the spool takes no more records (records up to %d are on disk)", err, prev))
		return prev, err
	}
	s.posMu.Lock()
	s.syncedSeg, s.syncedOff = first, off
	s.synced.Store(target)
	s.posMu.Unlock()
	if target > prev && s.o.OnSynced != nil {
		s.o.OnSynced(target)
	}
	return target, nil
}

// waitSynced returns once Synced ≥ seq: group commit. The first Append
// to find no sync under way runs one, which covers every record written
// before it began; the others wait for it to end, all woken at once, and
// look again. (Queueing on syncMu instead makes a covered Append wait
// behind the next sync, and the groups shrink to two or three.)
func (s *Spool) waitSynced(seq uint64) error {
	for s.synced.Load() < seq {
		s.posMu.Lock()
		ch := s.syncedCh
		s.waiters++
		s.posMu.Unlock()
		if s.syncMu.TryLock() {
			s.posMu.Lock()
			s.waiters--
			s.posMu.Unlock()
			_, err := s.syncLocked()
			s.syncMu.Unlock()
			s.broadcast()
			if err != nil && s.synced.Load() < seq {
				return err
			}
			continue
		}
		// Whoever holds syncMu broadcasts after releasing it, and this
		// waiter is counted: ch will be closed.
		<-ch
		s.posMu.Lock()
		s.waiters--
		s.posMu.Unlock()
	}
	return nil
}

// broadcast wakes the Appends waiting in waitSynced; called after syncMu
// was released.
func (s *Spool) broadcast() {
	s.posMu.Lock()
	if s.waiters > 0 {
		close(s.syncedCh)
		s.syncedCh = make(chan struct{})
	}
	s.posMu.Unlock()
}

// Last returns the sequence number of the newest record (0: none yet), as
// Stats().Last, without taking the spool's lock (which Append holds across
// write(2)): for callers that hold locks of their own. A record numbered
// Last may be only in the page cache still; see Synced.
func (s *Spool) Last() uint64 { return s.lastSeen.Load() }

// Synced returns the highest sequence number on disk per the sync policy:
// every record up to it survives a power failure. Readers stop there.
func (s *Spool) Synced() uint64 { return s.synced.Load() }

// syncedPos returns the segment and offset the synced records end at,
// and Synced as of that position: every record up to it lies before it.
func (s *Spool) syncedPos() (uint64, int64, uint64) {
	s.posMu.Lock()
	defer s.posMu.Unlock()
	return s.syncedSeg, s.syncedOff, s.synced.Load()
}

// markMissing is what a reader does on finding that the file of seg, still
// listed, is gone (deleted by hand): the segment is skipped from now on,
// by every reader, and its records are counted in Corrupt and logged
// once. The newest segment is not marked (appends go on in it); ok false
// then.
func (s *Spool) markMissing(seg *segment) (ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.Index(s.segs, seg)
	switch {
	case i < 0:
		return true // deleted by the spool: acknowledged or dropped
	case i == len(s.segs)-1:
		return false
	case seg.bad:
		return true
	}
	seg.bad = true
	if seg.last >= seg.first {
		s.corrupt.Add(seg.last - seg.first + 1)
	}
	s.log.Error(fmt.Sprintf("spool: %s is missing (deleted by hand?); its records %d..%d are skipped", filepath.Base(seg.path), seg.first, seg.last))
	return true
}

// Ack says that every record up to seq is stored at the gateway: segments
// whose records are all at or below it are deleted, in the background, and
// an Append blocked on a full spool can go on. Ack never blocks on I/O.
func (s *Spool) Ack(seq uint64) {
	// An acknowledgement beyond the newest record (a confused peer) must
	// not delete records appended later.
	seq = min(seq, s.lastSeen.Load())
	for {
		cur := s.acked.Load()
		if seq <= cur {
			return
		}
		if s.acked.CompareAndSwap(cur, seq) {
			break
		}
	}
	s.poke()
}

func (s *Spool) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the background goroutine: interval syncs, deleting acknowledged
// segments, the acked hint. It ends with ctx (Close).
func (s *Spool) run(ctx context.Context) {
	defer s.wg.Done()
	var tick <-chan time.Time
	if !s.o.SyncAlways {
		t := time.NewTicker(s.o.SyncInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			s.mu.Lock()
			dirty := s.last > s.synced.Load() || len(s.pending) > 0
			s.mu.Unlock()
			if dirty {
				s.Sync() // a failure is logged and breaks the spool
			}
		case <-s.wake:
			s.collect()
		}
	}
}

// collect deletes the segments whose records are all acknowledged, one
// file at a time (s.mu is not held across the unlink of many), and rolls
// an acknowledged active segment over when it is big enough to be worth
// deleting, or when an Append waits for space.
func (s *Spool) collect() {
	acked := s.acked.Load()
	s.writeHint(acked)
	for {
		s.mu.Lock()
		if s.shut {
			s.mu.Unlock()
			return
		}
		if len(s.segs) >= 2 && s.segs[1].first <= acked+1 {
			victim := s.removeOldestLocked()
			s.mu.Unlock()
			if err := os.Remove(victim.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Error(fmt.Sprintf("spool: delete %s: %v", filepath.Base(victim.path), err))
			}
			continue
		}
		act := s.segs[len(s.segs)-1]
		if len(s.segs) == 1 && !s.closed && s.broken == nil && act.size > SegmentHeaderSize &&
			act.last <= acked && (act.size >= s.rollAt || s.blocked > 0) {
			err := s.rollLocked()
			s.mu.Unlock()
			if err != nil {
				s.log.Warn(fmt.Sprintf("spool: new segment: %v", err))
				break
			}
			// The new segment's directory entry must be durable before
			// the old segment's is removed: a power failure must not
			// leave the directory without a segment, whose numbering
			// would then restart from the acked hint (not synced). The
			// sync also lets readers move on to the new segment.
			if _, err := s.Sync(); err != nil {
				break
			}
			continue
		}
		s.mu.Unlock()
		break
	}
}

// writeHint records acked in the acked file for Inspect, when it grew. A
// hint: it is not synced, and a failed write loses nothing.
func (s *Spool) writeHint(acked uint64) {
	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	if acked <= s.hinted {
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], acked)
	if _, err := s.ackF.WriteAt(b[:], 0); err == nil {
		s.hinted = acked
	}
}

// Stats returns the spool's counters.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	st := Stats{
		Last:     s.last,
		Bytes:    s.bytes,
		Segments: len(s.segs),
		Oldest:   s.segs[0].first,
	}
	s.mu.Unlock()
	st.Epoch = s.epoch
	st.Synced = s.synced.Load()
	st.Acked = s.acked.Load()
	st.Dropped = s.dropped.Load()
	st.Corrupt = s.corrupt.Load()
	st.CutBytes = s.cutBytes
	return st
}

// Close syncs what was appended, stops the background goroutine, closes
// the files and releases the lock. Appends blocked in Append fail with
// ErrClosed. Close is idempotent.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.closedCh)
		s.mu.Unlock()
		s.isClosed.Store(true)
		_, err := s.Sync()
		if errors.Is(err, ErrBroken) {
			err = nil // reported when it happened; Close still releases everything
		}
		s.cancel()
		s.wg.Wait()
		s.writeHint(s.acked.Load())
		s.closeErr = errors.Join(err, s.closeFiles())
	})
	return s.closeErr
}

// closeFiles closes every file of the spool and releases the lock.
func (s *Spool) closeFiles() error {
	s.mu.Lock()
	s.shut = true
	files := append(s.pending, s.f)
	s.pending, s.f = nil, nil
	s.mu.Unlock()
	var errs []error
	for _, f := range files {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	if s.ackF != nil {
		errs = append(errs, s.ackF.Close())
	}
	errs = append(errs, unlockDir(s.lockF))
	return errors.Join(errs...)
}
