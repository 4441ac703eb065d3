package session

import (
	"sync"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// inbuf holds what a station sent that is not yet framed. It knows bytes,
// not sockets: the session reads into room() and reports with wrote().
//
// Memory follows what arrived, never what a peer announced. A session
// waits on a small inline buffer; the buffer moves up one size class at a
// time, and only when a read filled all the room it was given, so a
// connection holds at most about twice the bytes it has sent of the frame
// in progress (and at least smallBufSize). A header announcing 16 MiB costs
// nothing until the 16 MiB arrive.
type inbuf struct {
	small [smallBufSize]byte
	// pooled is the class buffer in use, or nil for small or an oversize
	// buffer of the session's own.
	pooled *[]byte
	class  int // index into bufClasses while pooled != nil
	buf    []byte
	r, w   int
	// full reports that the last read filled all the room it was given:
	// more is on its way, so the next read gets a bigger buffer.
	full bool
}

// smallBufSize is the buffer an idle session blocks on: a header and a
// keepalive or two fit, and 10,000 idle sessions cost little.
const smallBufSize = 256

// bufClasses are the pooled read buffers, smallest first. The largest is
// the buffer of a busy session: one read then takes hundreds of frames.
var bufClasses = [...]int{4 << 10, 16 << 10, 64 << 10, 256 << 10}

var bufPools [len(bufClasses)]sync.Pool

func init() {
	for i, size := range bufClasses {
		bufPools[i].New = func() any { b := make([]byte, size); return &b }
	}
}

func (b *inbuf) init() { b.buf = b.small[:] }

// buffered is the number of bytes not yet framed.
func (b *inbuf) buffered() int { return b.w - b.r }

// next frames one station→gateway frame at the front of the buffer and
// consumes it. The payload aliases the buffer until the next room call.
// frame.ErrShort means the buffer holds no whole frame; other errors are
// protocol violations and consume nothing.
func (b *inbuf) next(max uint32) (payload []byte, control bool, err error) {
	payload, n, control, err := frame.SplitAny(b.buf[b.r:b.w], max)
	if err != nil {
		return nil, false, err
	}
	b.r += n
	return payload, control, nil
}

// discard drops everything buffered.
func (b *inbuf) discard() { b.r = b.w }

// lingering reports whether the buffer is larger than the small one while
// the station paused: at a frame boundary after a read that did not fill
// it. The session then keeps it for a short while (bufLinger), so that a
// station sending bursts reads each burst in one go instead of growing
// from the small buffer again every time.
func (b *inbuf) lingering() bool {
	return b.r == b.w && !b.full && len(b.buf) > len(b.small)
}

// room makes space for the next read and returns it; never empty. keep
// keeps a larger buffer at a frame boundary after a read that did not fill
// it; otherwise the station has gone quiet and the session waits on the
// small one.
func (b *inbuf) room(keep bool) []byte {
	if b.r == b.w {
		b.r, b.w = 0, 0
		switch {
		case !b.full && keep:
		case !b.full:
			b.release()
		case len(b.buf) < bufClasses[len(bufClasses)-1]:
			b.grow(2 * len(b.buf))
		}
		return b.buf
	}
	// A frame has begun. Its size is known once its header is in; the
	// buffer grows towards it only as fast as its bytes arrive.
	have := b.w - b.r
	total := have
	if l, ok := frame.Length(b.buf[b.r:b.w]); ok && l&frame.ControlBit == 0 {
		total = frame.HeaderSize + int(l) // next has bounded l by the maximum
	}
	switch {
	case b.full && len(b.buf) < bufClasses[len(bufClasses)-1]:
		// A full read in the middle of a stream of frames: more is on its
		// way, so the next read takes twice as much. Within the pooled
		// sizes only: the read just filled len(b.buf) bytes.
		b.grow(2 * len(b.buf))
	case b.r+total > len(b.buf) || b.w == len(b.buf):
		// The frame would run past the end: move it to the front.
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	if b.w == len(b.buf) {
		// Full of this frame's own bytes (its start is at the front):
		// grow by them, towards the frame's size. Beyond the pooled sizes
		// this is the only growth, so a buffer of the session's own holds
		// at most twice what arrived of the frame in progress.
		b.grow(min(total, 2*len(b.buf)))
	}
	return b.buf[b.w:]
}

// wrote records n bytes read into the slice room returned.
func (b *inbuf) wrote(n int) {
	b.full = n == len(b.buf)-b.w
	b.w += n
}

// grow moves what is buffered into a buffer of at least size bytes: the
// smallest class that holds it, or one of the session's own above them.
func (b *inbuf) grow(size int) {
	var nb []byte
	var pooled *[]byte
	class := -1
	for i, c := range bufClasses {
		if size <= c {
			class = i
			break
		}
	}
	if class >= 0 {
		if b.pooled != nil && class <= b.class {
			return // already at least that big
		}
		pooled = bufPools[class].Get().(*[]byte)
		nb = *pooled
	} else {
		if len(b.buf) >= size {
			return
		}
		nb = make([]byte, size)
	}
	n := copy(nb, b.buf[b.r:b.w])
	b.putPooled()
	b.pooled, b.class = pooled, class
	b.buf, b.r, b.w = nb, 0, n
}

// release returns to the small buffer, keeping what is buffered when it
// fits; what does not fit is dropped (the session is ending).
func (b *inbuf) release() {
	if b.pooled == nil && len(b.buf) == len(b.small) {
		return
	}
	n := copy(b.small[:], b.buf[b.r:b.w])
	b.putPooled()
	b.buf, b.r, b.w = b.small[:], 0, n
}

func (b *inbuf) putPooled() {
	if b.pooled != nil {
		bufPools[b.class].Put(b.pooled)
		b.pooled = nil
	}
}

// countWhole counts the whole data frames buffered, without consuming
// them: frames the gateway took from the station but never queued when a
// forced stop cuts the session.
func (b *inbuf) countWhole(max uint32) (n uint64) {
	rest := b.buf[b.r:b.w]
	for {
		p, used, control, err := frame.SplitAny(rest, max)
		if err != nil {
			return n // a partial frame, or the violation that ends the session
		}
		if len(p) > 0 && !control {
			n++
		}
		rest = rest[used:]
	}
}
