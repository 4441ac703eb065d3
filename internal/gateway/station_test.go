package gateway_test

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// testStation is the smallest station that follows the protocol: the
// gateway's tests drive the wire byte by byte through it.
type testStation struct {
	t    testing.TB
	conn halfConn
	r    *bufio.Reader
	w    *bufio.Writer
	sent uint64
}

// halfConn is a connection a station can half-close: TCP, or TLS (whose
// CloseWrite sends close_notify, which the gateway reads as EOF).
type halfConn interface {
	net.Conn
	CloseWrite() error
}

func dial(t testing.TB, addr string) *testStation {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return wrap(t, c.(*net.TCPConn))
}

// dialTLS connects with TLS and completes the handshake.
func dialTLS(t testing.TB, addr string, cfg *tls.Config) (*testStation, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	return wrap(t, c), nil
}

func wrap(t testing.TB, c halfConn) *testStation {
	t.Cleanup(func() { c.Close() })
	return &testStation{t: t, conn: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}
}

// send writes data frames and flushes.
func (s *testStation) send(payloads ...[]byte) {
	s.t.Helper()
	for _, p := range payloads {
		if _, err := s.w.Write(frame.AppendData(nil, p)); err != nil {
			s.t.Fatalf("send: %v", err)
		}
		s.sent++
	}
	if err := s.w.Flush(); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

func (s *testStation) raw(b []byte) error {
	_, err := s.conn.Write(b)
	return err
}

// next reads the next gateway frame within the deadline.
func (s *testStation) next(timeout time.Duration) (frame.Control, error) {
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	var hdr [4]byte
	if _, err := io.ReadFull(s.r, hdr[:]); err != nil {
		return frame.Control{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > 1024 {
		return frame.Control{}, fmt.Errorf("gateway frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(s.r, p); err != nil {
		return frame.Control{}, err
	}
	return frame.ParseControl(p)
}

// expect reads frames, skipping heartbeats, until one of type typ arrives.
func (s *testStation) expect(typ frame.Type, timeout time.Duration) frame.Control {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := s.next(time.Until(deadline))
		if err != nil {
			s.t.Fatalf("waiting for %v: %v", typ, err)
		}
		if c.Type == typ {
			return c
		}
		if c.Type == frame.TypeClose && typ != frame.TypeClose {
			s.t.Fatalf("waiting for %v: got CLOSE(%d %q)", typ, c.Reason, c.Text)
		}
	}
}

// ackAtLeast reads until an ACK of at least n arrives.
func (s *testStation) ackAtLeast(n uint64, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c := s.expect(frame.TypeAck, time.Until(deadline))
		if c.Ack >= n {
			if c.Ack > n {
				s.t.Fatalf("ACK %d beyond the %d frames sent", c.Ack, n)
			}
			return
		}
	}
}

// finish half-closes and collects everything up to the gateway's FIN: the
// last ACK, a CLOSE if any, and the EOF.
func (s *testStation) finish(timeout time.Duration) (lastAck uint64, closeFrame *frame.Control) {
	s.t.Helper()
	if err := s.conn.CloseWrite(); err != nil {
		s.t.Fatalf("CloseWrite: %v", err)
	}
	return s.drainToEOF(timeout)
}

// drainToEOF reads until the gateway closes.
func (s *testStation) drainToEOF(timeout time.Duration) (lastAck uint64, closeFrame *frame.Control) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := s.next(time.Until(deadline))
		if errors.Is(err, io.EOF) {
			return lastAck, closeFrame
		}
		if err != nil {
			s.t.Fatalf("waiting for EOF: %v", err)
		}
		switch c.Type {
		case frame.TypeAck:
			if c.Ack < lastAck {
				s.t.Fatalf("ACK went back from %d to %d", lastAck, c.Ack)
			}
			lastAck = c.Ack
		case frame.TypeClose:
			cc := c
			closeFrame = &cc
		}
	}
}
