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

// peer is a scripted gateway on loopback: enough of the protocol to drive
// the client into the cases the real gateway produces rarely or never
// (unknown frame types, withheld ACKs, a refusal on connect, silence).
type peer struct {
	t  *testing.T
	ln net.Listener

	// onConn, when set, runs on each new connection instead of the
	// default serve loop (index counts connections from 0).
	onConn func(p *peer, c net.Conn, index int)

	mu       sync.Mutex
	conns    int
	payloads [][]byte      // every data frame received, in arrival order
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

func (p *peer) record(payload []byte) {
	p.mu.Lock()
	p.payloads = append(p.payloads, append([]byte(nil), payload...))
	close(p.cond)
	p.cond = make(chan struct{})
	p.mu.Unlock()
}

func (p *peer) received() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.payloads...)
}

func (p *peer) connCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}

// serve reads frames and acknowledges each read batch; before each ACK it
// calls extra (if set) to write anything else first. It returns at EOF
// after sending the final ACK, like the gateway on a clean half-close.
func (p *peer) serve(c net.Conn, extra func(w io.Writer)) { p.serveFrom(c, 0, extra) }

// serveFrom is serve for a connection on which count frames were already
// read and acknowledged.
func (p *peer) serveFrom(c net.Conn, count uint64, extra func(w io.Writer)) {
	br := bufio.NewReader(c)
	var out []byte
	for {
		payload, err := readFrame(br)
		if errors.Is(err, io.EOF) {
			c.Write(frame.AppendAck(nil, count))
			return
		}
		if err != nil {
			return
		}
		if payload == nil {
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

// readFrame reads one station frame; a keepalive comes back as nil.
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}
