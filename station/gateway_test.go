package station_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/station"
)

// These tests run the client against the real gateway on loopback, with the
// memory sink standing in for the durable stream.

var fastReconnect = station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond, Max: 50 * time.Millisecond})

func TestGatewaySendAck(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	var disconnect atomic.Value
	c := dial(t, gw.Addr, station.WithOnDisconnect(func(err error) { disconnect.Store(err) }))
	ctx := testCtx(t)
	const n = 2000
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if c.Acked() != n {
		t.Fatalf("Acked = %d, want %d", c.Acked(), n)
	}
	frames := mem.Frames()
	if len(frames) != n {
		t.Fatalf("sink holds %d frames, want %d; client stats %+v, disconnect %v", len(frames), n, c.Stats(), disconnect.Load())
	}
	for i, f := range frames {
		if !bytes.Equal(f.Payload, payloadN(i)) || f.Seq != uint64(i+1) || f.Session != frames[0].Session {
			t.Fatalf("frame %d: session %s seq %d payload %q", i, f.Session, f.Seq, f.Payload)
		}
	}
}

func TestGatewayWindowBackPressure(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	resume := mem.Hold() // the store is down: nothing is acknowledged
	defer resume()
	const window = 8
	c := dial(t, gw.Addr, station.WithWindow(window))
	ctx := testCtx(t)
	for i := range window {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err := c.Send(short, payloadN(window))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send into a full window = %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Send(ctx, payloadN(window)) }()
	resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if mem.Len() != window+1 {
		t.Fatalf("sink holds %d frames, want %d", mem.Len(), window+1)
	}
}

func TestGatewayFrameTooLarge(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.MaxFrame = 100
	gw := gatewaytest.Start(t, cfg, sink.NewMemory())
	// The client's limit is above the gateway's: only the gateway can refuse.
	c := dial(t, gw.Addr, station.WithMaxFrame(1000))
	ctx := testCtx(t)
	if err := c.Send(ctx, make([]byte, 500)); err != nil {
		t.Fatal(err)
	}
	err := c.WaitAcked(ctx, 1)
	if !errors.Is(err, station.ErrFrameTooLarge) {
		t.Fatalf("WaitAcked = %v, want ErrFrameTooLarge", err)
	}
	var ce *station.CloseError
	if !errors.As(err, &ce) || ce.Reason != station.ReasonTooLarge {
		t.Fatalf("err = %#v, want a *CloseError", err)
	}
	if err := c.Send(ctx, []byte("x")); !errors.Is(err, station.ErrFrameTooLarge) {
		t.Errorf("Send after a fatal close = %v", err)
	}
}

// TestGatewayKeepalive: a client sending keepalives outlives the idle
// timeout; a client without them, connected later, is closed for idleness
// first, which proves the idle timeout elapsed for both.
func TestGatewayKeepalive(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.IdleTimeout = 200 * time.Millisecond
	cfg.Heartbeat = 0
	gw := gatewaytest.Start(t, cfg, sink.NewMemory())
	ctx := testCtx(t)

	// Named: unnamed v2 clients from one IP would be one station, and
	// the second would supersede the first.
	alive := dial(t, gw.Addr, station.WithKeepalive(40*time.Millisecond), station.WithDeadTimeout(0), station.WithName("alive"))
	if err := alive.Send(ctx, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := alive.WaitAcked(ctx, 1); err != nil {
		t.Fatal(err)
	}
	idleClosed := make(chan error, 1)
	dial(t, gw.Addr, station.WithKeepalive(0), station.WithDeadTimeout(0), station.WithName("quiet"),
		station.WithOnDisconnect(func(err error) {
			select {
			case idleClosed <- err:
			default:
			}
		}))
	select {
	case err := <-idleClosed:
		if !errors.Is(err, station.ErrIdleTimeout) {
			t.Fatalf("quiet client disconnected with %v, want ErrIdleTimeout", err)
		}
	case <-ctx.Done():
		t.Fatal("quiet client was not closed for idleness")
	}
	if r := alive.Stats().Reconnects; r != 0 {
		t.Fatalf("keepalive client reconnected %d times", r)
	}
	if err := alive.Send(ctx, []byte("second")); err != nil {
		t.Fatal(err)
	}
	if err := alive.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if r := alive.Stats().Reconnects; r != 0 {
		t.Fatalf("keepalive client reconnected %d times", r)
	}
}

// sendAll sends frames 0..n-1 from a goroutine; the channel yields Send's
// first error (or nil) once all are queued.
func sendAll(ctx context.Context, c *station.Client, n int) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := range n {
			if err := c.Send(ctx, payloadN(i)); err != nil {
				done <- fmt.Errorf("send %d: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	return done
}

func frameIndex(t *testing.T, p []byte) int {
	t.Helper()
	i, err := strconv.Atoi(string(bytes.TrimPrefix(p, []byte("frame-"))))
	if err != nil {
		t.Fatalf("payload %q: %v", p, err)
	}
	return i
}

// TestGatewayGracefulRestartUnderLoad is a rolling restart: the gateway
// shuts down gracefully while the client sends, a new one comes up on the
// same address, and the sink must hold every frame exactly once.
func TestGatewayGracefulRestartUnderLoad(t *testing.T) {
	mem := sink.NewMemory() // the durable store, shared by both gateways
	cfg := gatewaytest.Config()
	first := gatewaytest.Start(t, cfg, mem)
	var disconnects atomic.Int32
	c := dial(t, first.Addr, fastReconnect, station.WithWindow(256),
		station.WithOnDisconnect(func(err error) {
			disconnects.Add(1)
		}))
	ctx := testCtx(t)
	const n = 20000
	sent := sendAll(ctx, c, n)
	if err := c.WaitAcked(ctx, 2000); err != nil {
		t.Fatal(err)
	}
	if err := first.Shutdown(t, 5*time.Second); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	gatewaytest.StartAt(t, first.Addr, cfg, mem)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	seen := make([]int, n)
	for _, f := range mem.Frames() {
		seen[frameIndex(t, f.Payload)]++
	}
	for i, k := range seen {
		if k != 1 {
			t.Errorf("frame %d stored %d times", i, k)
		}
	}
	st := c.Stats()
	if st.Reconnects < 1 || st.Resent != 0 || disconnects.Load() < 1 {
		t.Errorf("stats %+v: want a reconnect and nothing resent", st)
	}
	t.Logf("stats %+v", st)
}

// TestGatewayCrashRestart kills the gateway without a drain while the client
// sends: whatever was not acknowledged is resent to its successor, so the
// sink holds every frame at least once, and each session in order.
func TestGatewayCrashRestart(t *testing.T) {
	mem := sink.NewMemory()
	cfg := gatewaytest.Config()
	first := gatewaytest.Start(t, cfg, mem)
	c := dial(t, first.Addr, fastReconnect, station.WithWindow(256))
	ctx := testCtx(t)
	const n = 20000
	sent := sendAll(ctx, c, n)
	if err := c.WaitAcked(ctx, 2000); err != nil {
		t.Fatal(err)
	}
	first.Server.Close()
	gatewaytest.StartAt(t, first.Addr, cfg, mem)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	seen := make([]int, n)
	dups := 0
	for session, frames := range mem.BySession() {
		prev := -1
		for _, f := range frames {
			i := frameIndex(t, f.Payload)
			if i <= prev {
				t.Fatalf("session %s: frame %d after %d", session, i, prev)
			}
			prev = i
			seen[i]++
			if seen[i] > 1 {
				dups++
			}
		}
	}
	for i, k := range seen {
		if k == 0 {
			t.Errorf("frame %d lost", i)
		}
	}
	st := c.Stats()
	if st.Reconnects < 1 {
		t.Errorf("stats %+v: want a reconnect", st)
	}
	t.Logf("stats %+v, %d duplicates", st, dups)
}
