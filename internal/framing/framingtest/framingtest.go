// Package framingtest drives a framing.Decoder the way a link's reader does,
// with a bounded buffer and reads of arbitrary sizes, and checks the
// decoder's contract on every result. The decoders' tests and fuzzers share
// it; it is not used outside tests.
package framingtest

import (
	"bytes"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/meridian-telemetry/meridian/internal/framing"
)

// Event is one outcome, its unit copied out of the buffer. Consecutive pure
// discards are merged, since how many bytes one search skips depends on how
// much input was buffered; everything else is independent of the chunking.
type Event struct {
	Unit         []byte
	Wire         int
	Meta         framing.Meta
	Reject       framing.Reject
	Discarded    int
	Fatal        bool
	SyncLost     bool
	SyncRegained bool
	Finish       bool // from Finish, at the end of the stream
}

func (e Event) String() string {
	return fmt.Sprintf("{wire %d unit %d reject %v discarded %d fatal %v lost %v regained %v finish %v meta %+v}",
		e.Wire, len(e.Unit), e.Reject, e.Discarded, e.Fatal, e.SyncLost, e.SyncRegained, e.Finish, e.Meta)
}

// Counters are the totals a link keeps.
type Counters struct {
	Good         int // units with RejectNone
	Rejects      map[framing.Reject]int
	Stored       int // units with bytes (good, or bad with a Unit)
	Discarded    int
	SyncLosses   int
	SyncRegained int
	Fatal        bool
	Consumed     int // Wire + Discarded over all results
}

// Outcome is what a stream decoded to.
type Outcome struct {
	Events   []Event
	Counters Counters
}

// Good returns the good units, in order.
func (o Outcome) Good() [][]byte {
	var u [][]byte
	for _, e := range o.Events {
		if e.Reject == framing.RejectNone && e.Wire > 0 {
			u = append(u, e.Unit)
		}
	}
	return u
}

// Run decodes the concatenation of chunks through a buffer of exactly
// dec.MaxUnit() bytes, each chunk arriving as one read (split further when
// the buffer has less room), then calls Finish on what is left unless the
// stream went Fatal, until it returns N == 0. It returns an error when the
// decoder breaks its contract.
func Run(dec framing.Decoder, chunks [][]byte) (Outcome, error) {
	return run(dec, chunks, false)
}

// RunFlat decodes data as one slice with no buffer bound, as a caller that
// had read everything would: the outcome must be the one Run gives, which
// shows that no decision depends on bytes beyond MaxUnit.
func RunFlat(dec framing.Decoder, data []byte) (Outcome, error) {
	return run(dec, [][]byte{data}, true)
}

func run(dec framing.Decoder, chunks [][]byte, flat bool) (Outcome, error) {
	var o Outcome
	o.Counters.Rejects = map[framing.Reject]int{}
	total := 0
	for _, c := range chunks {
		total += len(c)
	}
	size := dec.MaxUnit()
	if flat {
		size = max(size, total)
	}
	buf := make([]byte, 0, size)
	record := func(r framing.Result, view []byte, finish bool) error {
		if r.N < 0 || r.N > len(view) {
			return fmt.Errorf("consumed %d of %d bytes", r.N, len(view))
		}
		if r.N != r.Discarded+r.Wire {
			return fmt.Errorf("consumed %d != discarded %d + wire %d", r.N, r.Discarded, r.Wire)
		}
		if r.Fatal && r.N != 0 {
			return fmt.Errorf("fatal result consumed %d bytes", r.N)
		}
		if r.Unit != nil {
			if r.Wire == 0 || len(r.Unit) > r.Wire {
				return fmt.Errorf("unit of %d bytes for a wire length of %d", len(r.Unit), r.Wire)
			}
			if !within(r.Unit, view[:r.N]) {
				return fmt.Errorf("unit does not alias the consumed input")
			}
		}
		if r.Reject == framing.RejectNone && r.Wire > 0 && r.Unit == nil {
			return fmt.Errorf("good unit without bytes")
		}
		if r.SyncRegained && (r.Reject != framing.RejectNone || r.Wire == 0) {
			return fmt.Errorf("sync regained on %+v", r)
		}
		c := &o.Counters
		c.Consumed += r.N
		c.Discarded += r.Discarded
		if r.SyncLost {
			c.SyncLosses++
		}
		if r.SyncRegained {
			c.SyncRegained++
		}
		if r.Fatal {
			c.Fatal = true
			c.Rejects[r.Reject]++
		} else if r.Reject != framing.RejectNone {
			c.Rejects[r.Reject]++
		} else if r.Wire > 0 {
			c.Good++
		}
		if r.Unit != nil {
			c.Stored++
		}
		e := Event{Unit: bytes.Clone(r.Unit), Wire: r.Wire, Meta: r.Meta, Reject: r.Reject,
			Discarded: r.Discarded, Fatal: r.Fatal, SyncLost: r.SyncLost, SyncRegained: r.SyncRegained, Finish: finish}
		pure := r.Wire == 0 && r.Reject == framing.RejectNone && !r.Fatal
		if n := len(o.Events); pure && n > 0 {
			last := &o.Events[n-1]
			if last.Wire == 0 && last.Reject == framing.RejectNone && !last.Fatal && last.Finish == finish {
				last.Discarded += r.Discarded
				last.SyncLost = last.SyncLost || r.SyncLost
				return nil
			}
		}
		if pure && r.N == 0 {
			return nil
		}
		o.Events = append(o.Events, e)
		return nil
	}
	decodeAll := func() (bool, error) {
		start := 0
		for {
			r := dec.Decode(buf[start:])
			if err := record(r, buf[start:], false); err != nil {
				return false, err
			}
			start += r.N
			if r.Fatal {
				return true, nil
			}
			if r.N == 0 {
				break
			}
		}
		if len(buf)-start == cap(buf) {
			return false, fmt.Errorf("a full buffer of %d bytes made no progress", cap(buf))
		}
		buf = buf[:copy(buf, buf[start:])]
		return false, nil
	}
	for _, c := range chunks {
		for len(c) > 0 {
			n := min(len(c), cap(buf)-len(buf))
			buf = append(buf, c[:n]...)
			c = c[n:]
			fatal, err := decodeAll()
			if err != nil {
				return o, err
			}
			if fatal {
				return o, nil
			}
		}
	}
	start := 0
	for {
		r := dec.Finish(buf[start:])
		if err := record(r, buf[start:], true); err != nil {
			return o, err
		}
		if r.Fatal {
			return o, fmt.Errorf("finish returned Fatal")
		}
		start += r.N
		if r.N == 0 {
			break
		}
	}
	if start != len(buf) {
		return o, fmt.Errorf("finish left %d of %d bytes", len(buf)-start, len(buf))
	}
	if o.Counters.Consumed != total {
		return o, fmt.Errorf("accounted for %d of %d bytes", o.Counters.Consumed, total)
	}
	return o, nil
}

func within(sub, b []byte) bool {
	if len(sub) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	lo := uintptr(unsafe.Pointer(&b[0]))
	p := uintptr(unsafe.Pointer(&sub[0]))
	return p >= lo && p+uintptr(len(sub)) <= lo+uintptr(len(b))
}

// Split cuts data into chunks at points taken from cuts: each cut byte is
// the next chunk's length modulo what is left plus one (so 0 makes an empty
// read). The last chunk takes the rest.
func Split(data, cuts []byte) [][]byte {
	var chunks [][]byte
	for _, c := range cuts {
		if len(data) == 0 {
			break
		}
		n := int(c) % (len(data) + 1)
		chunks = append(chunks, data[:n])
		data = data[n:]
	}
	return append(chunks, data)
}

// Equal compares two outcomes' events and says where they differ.
func Equal(a, b Outcome) error {
	for i := 0; i < len(a.Events) || i < len(b.Events); i++ {
		if i >= len(a.Events) || i >= len(b.Events) {
			return fmt.Errorf("%d events vs %d", len(a.Events), len(b.Events))
		}
		x, y := a.Events[i], b.Events[i]
		if !bytes.Equal(x.Unit, y.Unit) || (x.Unit == nil) != (y.Unit == nil) {
			return fmt.Errorf("event %d: units differ: %v vs %v", i, x, y)
		}
		x.Unit, y.Unit = nil, nil
		if !reflect.DeepEqual(x, y) {
			return fmt.Errorf("event %d: %v vs %v", i, x, y)
		}
	}
	return nil
}
