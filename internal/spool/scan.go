package spool

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"time"
)

// scanner reads the records of one segment file through a buffer, with
// pread, never past limit. Open, Inspect and Reader share it, so that all
// three agree on what is a record and where a damaged region ends.
type scanner struct {
	f         *os.File
	limit     int64 // bytes of f that may be read
	maxRecord int
	buf       []byte // holds the file's bytes [bufOff, bufOff+len(buf))
	bufOff    int64
}

// view returns the file's bytes [off, off+n); off+n must be within limit.
// The slice is valid until the next call.
func (sc *scanner) view(off int64, n int) ([]byte, error) {
	if off >= sc.bufOff && off+int64(n) <= sc.bufOff+int64(len(sc.buf)) {
		i := off - sc.bufOff
		return sc.buf[i : i+int64(n)], nil
	}
	want := max(n, readBufSize)
	if rest := sc.limit - off; int64(want) > rest {
		want = int(rest)
	}
	if want < n {
		return nil, io.ErrUnexpectedEOF
	}
	if cap(sc.buf) < want {
		sc.buf = make([]byte, want, max(want, readBufSize))
	}
	sc.buf = sc.buf[:want]
	got, err := sc.f.ReadAt(sc.buf, off)
	if got < n {
		sc.buf = sc.buf[:0]
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	sc.buf = sc.buf[:got]
	sc.bufOff = off
	return sc.buf[:n], nil
}

// rec is a record found by a scanner.
type rec struct {
	seq     uint64
	nanos   int64
	payload []byte
	size    int64 // on disk, header included
}

func (r rec) record() Record {
	return Record{Seq: r.seq, Time: time.Unix(0, r.nanos), Payload: r.payload}
}

// at returns the record at off and true when it is valid: complete within
// limit, of a plausible length, with a matching CRC and a sequence number
// above prev (and at most maxSeq). false with a nil error: no valid record
// there.
func (sc *scanner) at(off int64, prev, maxSeq uint64) (rec, bool, error) {
	if sc.limit-off < RecordHeaderSize {
		return rec{}, false, nil
	}
	h, err := sc.view(off, RecordHeaderSize)
	if err != nil {
		return rec{}, false, err
	}
	n := int64(binary.BigEndian.Uint32(h[0:4]))
	seq := binary.BigEndian.Uint64(h[8:16])
	if n > int64(sc.maxRecord) || n > sc.limit-off-RecordHeaderSize || seq <= prev || seq > maxSeq {
		return rec{}, false, nil
	}
	b, err := sc.view(off, RecordHeaderSize+int(n))
	if err != nil {
		return rec{}, false, err
	}
	if binary.BigEndian.Uint32(b[4:8]) != recordCRC(b, b[RecordHeaderSize:]) {
		return rec{}, false, nil
	}
	return rec{
		seq:     seq,
		nanos:   int64(binary.BigEndian.Uint64(b[16:24])),
		payload: b[RecordHeaderSize:],
		size:    RecordHeaderSize + n,
	}, true, nil
}

// resync looks for the first valid record after the invalid one at off,
// whose predecessor had sequence number prev. It tries first where the
// invalid record says it ends (a damaged payload or CRC leaves its length
// right), then every byte offset. In the byte scan a candidate's sequence
// number must also be within what could fit in the damaged bytes (records
// in a segment are consecutive; each takes at least RecordHeaderSize
// bytes): this keeps the scan of random bytes linear instead of checking
// a CRC over every plausible length. found false: no valid record follows
// within limit.
func (sc *scanner) resync(off int64, prev uint64) (next int64, found bool, err error) {
	if sc.limit-off >= RecordHeaderSize {
		h, err := sc.view(off, RecordHeaderSize)
		if err != nil {
			return 0, false, err
		}
		n := int64(binary.BigEndian.Uint32(h[0:4]))
		if n <= int64(sc.maxRecord) {
			if p := off + RecordHeaderSize + n; p < sc.limit {
				if _, ok, err := sc.at(p, prev, ^uint64(0)); err != nil || ok {
					return p, ok, err
				}
			}
		}
	}
	for p := off + 1; sc.limit-p >= RecordHeaderSize; p++ {
		maxSeq := prev + uint64(p-off)/RecordHeaderSize + 1
		if maxSeq < prev { // overflow: no bound
			maxSeq = ^uint64(0)
		}
		if _, ok, err := sc.at(p, prev, maxSeq); err != nil || ok {
			return p, ok, err
		}
	}
	return 0, false, nil
}

// seqAt returns the sequence number of a whole record at off (its header
// and its length within limit) whose checksum need not match; 0 when no
// whole record lies there.
func (sc *scanner) seqAt(off int64) (uint64, error) {
	if sc.limit-off < RecordHeaderSize {
		return 0, nil
	}
	h, err := sc.view(off, RecordHeaderSize)
	if err != nil {
		return 0, err
	}
	// A record that runs past the end of the file was cut short by an
	// interrupted write (a kill between two pages of one write(2), or a
	// power failure before the write reached the disk): it was never
	// whole, so never synced, so never sent, and its number is free.
	if n := int64(binary.BigEndian.Uint32(h[0:4])); n > int64(sc.maxRecord) || sc.limit-off-RecordHeaderSize < n {
		return 0, nil
	}
	return binary.BigEndian.Uint64(h[8:16]), nil
}
