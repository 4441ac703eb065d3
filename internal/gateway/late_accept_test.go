package gateway_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// lateListener models the window in which Accept has already returned
// a connection when Shutdown closes the listener (Serve preempted between
// ln.Accept and s.accept): the connection is handed over only on request.
type lateListener struct {
	accepting chan struct{} // receives once Serve is blocked in Accept
	deliver   chan net.Conn
	closeOnce sync.Once
	closed    chan struct{}
}

func (l *lateListener) Accept() (net.Conn, error) {
	select {
	case l.accepting <- struct{}{}:
	default:
	}
	if c, ok := <-l.deliver; ok {
		return c, nil
	}
	return nil, net.ErrClosed
}
func (l *lateListener) Close() error { l.closeOnce.Do(func() { close(l.closed) }); return nil }
func (l *lateListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7777}
}

type countingObserver struct{ started, acceptErrors, tlsFailures atomic.Int64 }

func (o *countingObserver) SessionStarted()              { o.started.Add(1) }
func (o *countingObserver) SessionEnded(frame.Reason)    {}
func (o *countingObserver) AcceptError()                 { o.acceptErrors.Add(1) }
func (o *countingObserver) Rejected(frame.Reason)        {}
func (o *countingObserver) TLSHandshakeFailed()          { o.tlsFailures.Add(1) }
func (o *countingObserver) Received(int, int)            {}
func (o *countingObserver) ObserveFrameSize(int)         {}
func (o *countingObserver) Committed(int, time.Duration) {}
func (o *countingObserver) HeartbeatSent()               {}
func (o *countingObserver) AckSent()                     {}
func (o *countingObserver) HeartbeatRTT(time.Duration)   {}

// A connection that Accept returns just as Shutdown begins must not start a
// session: Server.accept checks for shutdown under the lock that
// beginShutdown holds, so no connection goroutine is added after Shutdown
// may have started waiting for them, and none starts after Shutdown
// reported a clean stop (net/http and nats refuse the same way).
func TestNoSessionStartsAfterShutdown(t *testing.T) {
	obs := &countingObserver{}
	srv, err := gateway.New(gatewaytest.Config(), sink.NewDiscard(), gatewaytest.Logger(), gateway.WithObserver(obs))
	if err != nil {
		t.Fatal(err)
	}
	ln := &lateListener{accepting: make(chan struct{}), deliver: make(chan net.Conn), closed: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	<-ln.accepting

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	<-ln.closed
	// The connection Accept had in hand when the listener closed.
	gwSide, station := net.Pipe()
	ln.deliver <- gwSide
	close(ln.deliver)
	if err := <-served; !errors.Is(err, gateway.ErrServerClosed) {
		t.Errorf("Serve = %v", err)
	}
	io.Copy(io.Discard, station) // until the gateway closes its end
	station.Close()
	srv.Close() // waits for whatever goroutine the late connection got
	if n := obs.started.Load(); n != 0 {
		t.Fatalf("%d session(s) started after Shutdown returned nil", n)
	}
}
