package station_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// peer is a scripted gateway on loopback: enough of the protocol, v1 and
// v2, to drive the client into the cases the real gateway produces rarely
// or never (unknown frame types, withheld ACKs, a refusal on connect,
// silence, a resume point of its choosing).
type peer struct {
	t  *testing.T
	ln net.Listener

	// onConn, when set, runs on each new connection instead of the
	// default serve loop (index counts connections from 0).
	onConn func(p *peer, c net.Conn, index int)

	mu       sync.Mutex
	conns    int
	payloads [][]byte      // every data frame received, in arrival order
	seqs     []uint64      // v2: the sequence number of each of payloads (0 in v1)
	hellos   []frame.Hello // every HELLO received, in order
	pongs    int           // PONGs received
	cond     chan struct{} // closed and replaced when payloads grows
	open     []net.Conn

	wg sync.WaitGroup
}

func startPeer(t *testing.T, onConn func(p *peer, c net.Conn, index int)) *peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, ln: ln, onConn: onConn, cond: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *peer) addr() string { return p.ln.Addr().String() }

func (p *peer) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *peer) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		i := p.conns
		p.conns++
		p.open = append(p.open, c)
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			if p.onConn != nil {
				p.onConn(p, c, i)
				return
			}
			p.serve(c, nil)
		}()
	}
}

func (p *peer) record(payload []byte) { p.recordSeq(payload, 0) }

func (p *peer) recordSeq(payload []byte, seq uint64) {
	p.mu.Lock()
	p.payloads = append(p.payloads, append([]byte(nil), payload...))
	p.seqs = append(p.seqs, seq)
	close(p.cond)
	p.cond = make(chan struct{})
	p.mu.Unlock()
}

func (p *peer) received() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.payloads...)
}

func (p *peer) receivedSeqs() []uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]uint64(nil), p.seqs...)
}

func (p *peer) helloList() []frame.Hello {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]frame.Hello(nil), p.hellos...)
}

func (p *peer) pongCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pongs
}

func (p *peer) connCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}

// serve reads frames and acknowledges each read batch; before each ACK it
// calls extra (if set) to write anything else first. It returns at EOF
// after sending the final ACK, like the gateway on a clean half-close.
// A HELLO as the first frame makes the session v2: the peer answers with a
// WELCOME resuming at the HELLO's first, numbers frames from there and
// acknowledges sequence numbers instead of counts.
func (p *peer) serve(c net.Conn, extra func(w io.Writer)) {
	p.serveNext(c, func(h frame.Hello) uint64 { return h.First }, extra)
}

// serveNext is serve whose v2 WELCOME resumes where next says.
func (p *peer) serveNext(c net.Conn, next func(frame.Hello) uint64, extra func(w io.Writer)) {
	br := bufio.NewReader(c)
	first, ctl, err := readAny(br)
	if err != nil {
		return
	}
	if !ctl {
		p.serveV1(c, br, first, 0, extra)
		return
	}
	h, err := p.hello(first)
	if err != nil {
		c.Write(frame.AppendClose(nil, frame.ReasonControl, err.Error()))
		return
	}
	n := next(h)
	if _, err := c.Write(frame.AppendWelcome(nil, frame.Version2, h.Epoch, n)); err != nil {
		return
	}
	p.serveV2(c, br, n-1, extra)
}

// hello decodes and records a HELLO.
func (p *peer) hello(payload []byte) (frame.Hello, error) {
	sc, err := frame.ParseStationControl(payload)
	if err != nil {
		return frame.Hello{}, err
	}
	if sc.Type != frame.CtlHello {
		return frame.Hello{}, errors.New("first control frame is not a HELLO")
	}
	p.mu.Lock()
	p.hellos = append(p.hellos, sc.Hello)
	p.mu.Unlock()
	return sc.Hello, nil
}

// serveFrom is serve for a v1 connection on which count frames were
// already read and acknowledged.
func (p *peer) serveFrom(c net.Conn, count uint64, extra func(w io.Writer)) {
	br := bufio.NewReader(c)
	p.serveV1(c, br, nil, count, extra)
}

// serveV1 acknowledges per-connection counts; pending, if not nil, is a
// data payload already read.
func (p *peer) serveV1(c net.Conn, br *bufio.Reader, pending []byte, count uint64, extra func(w io.Writer)) {
	var out []byte
	for {
		payload := pending
		pending = nil
		if payload == nil {
			var ctl bool
			var err error
			payload, ctl, err = readAny(br)
			if errors.Is(err, io.EOF) {
				c.Write(frame.AppendAck(nil, count))
				return
			}
			if err != nil {
				return
			}
			if ctl {
				c.Write(frame.AppendClose(nil, frame.ReasonControl, "control frame in a v1 session"))
				return
			}
		}
		if len(payload) == 0 {
			continue // keepalive
		}
		count++
		p.record(payload)
		if br.Buffered() > 0 {
			continue // acknowledge the whole read batch at once
		}
		if extra != nil {
			extra(c)
		}
		out = frame.AppendAck(out[:0], count)
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// serveV2 numbers data frames from acked+1 and acknowledges the highest
// sequence number read; it counts PONGs.
func (p *peer) serveV2(c net.Conn, br *bufio.Reader, acked uint64, extra func(w io.Writer)) {
	var out []byte
	seq := acked
	for {
		payload, ctl, err := readAny(br)
		if errors.Is(err, io.EOF) {
			c.Write(frame.AppendAck(nil, seq))
			return
		}
		if err != nil {
			return
		}
		if ctl {
			sc, err := frame.ParseStationControl(payload)
			if err != nil || sc.Type != frame.CtlPong {
				c.Write(frame.AppendClose(nil, frame.ReasonControl, "unexpected control frame"))
				return
			}
			p.mu.Lock()
			p.pongs++
			p.mu.Unlock()
			continue
		}
		if len(payload) == 0 {
			continue // keepalive
		}
		seq++
		p.recordSeq(payload, seq)
		if br.Buffered() > 0 {
			continue
		}
		if extra != nil {
			extra(c)
		}
		out = frame.AppendAck(out[:0], seq)
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// readAny reads one station frame, data or control (ctl). A keepalive is
// an empty payload.
func readAny(r io.Reader) (payload []byte, ctl bool, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, false, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n&frame.ControlBit != 0 {
		n &^= frame.ControlBit
		ctl = true
		if n > frame.MaxControl {
			return nil, true, errors.New("control frame too large")
		}
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, ctl, err
	}
	return b, ctl, nil
}

// readFrame reads one v1 station frame; a keepalive comes back as nil. A
// control frame is an error.
func readFrame(r io.Reader) ([]byte, error) {
	b, ctl, err := readAny(r)
	switch {
	case err != nil:
		return nil, err
	case ctl:
		return nil, errors.New("control frame where a v1 data frame was expected")
	case len(b) == 0:
		return nil, nil
	}
	return b, nil
}

// readHello reads a v2 connection's first frame, which must be a HELLO.
func (p *peer) readHello(r io.Reader) (frame.Hello, error) {
	b, ctl, err := readAny(r)
	if err != nil {
		return frame.Hello{}, err
	}
	if !ctl {
		return frame.Hello{}, errors.New("first frame is not a control frame")
	}
	return p.hello(b)
}
