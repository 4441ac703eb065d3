package gateway_test

import (
	"errors"
	"net"
	"sync"
)

// pipeListener hands the gateway one end of a net.Pipe per dial. Inside a
// testing/synctest bubble the whole gateway then runs on the fake clock, so
// a test can state back-off delays and lame-duck spacing exactly; and since
// a net.Pipe write returns only once the reader took every byte, a station
// knows exactly which frames the gateway has read.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once

	// fail, when set, is called by Accept first; a non-nil error is
	// returned instead of a connection.
	mu   sync.Mutex
	fail func() error
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fail
	l.mu.Unlock()
	if fail != nil {
		if err := fail(); err != nil {
			return nil, err
		}
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) setFail(f func() error) {
	l.mu.Lock()
	l.fail = f
	l.mu.Unlock()
}

// dial connects a station; the gateway accepts the other end.
func (l *pipeListener) dial() (net.Conn, error) {
	station, gw := net.Pipe()
	select {
	case l.conns <- gw:
		return station, nil
	case <-l.closed:
		station.Close()
		gw.Close()
		return nil, errors.New("pipe listener closed")
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }
