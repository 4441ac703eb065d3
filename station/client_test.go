package station_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/station"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait in these tests: generous, so that a slow
// machine does not fail them, and finite, so that a bug does not hang them.
const testTimeout = 10 * time.Second

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, addr string, opts ...station.Option) *station.Client {
	t.Helper()
	if os.Getenv("MERIDIAN_TEST_LOG") != "" {
		h := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
		opts = append([]station.Option{station.WithLogger(slog.New(h))}, opts...)
	}
	c, err := station.Dial(testCtx(t), addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

func payloadN(i int) []byte { return fmt.Appendf(nil, "frame-%06d", i) }

// v1 pins a client to protocol v1, for the tests whose peer scripts v1.
var v1 = station.WithProtocol(station.ProtocolV1)

func TestSendAckClose(t *testing.T) {
	for _, proto := range []station.Protocol{station.ProtocolV1, station.ProtocolV2} {
		t.Run(proto.String(), func(t *testing.T) { testSendAckClose(t, proto) })
	}
}

func testSendAckClose(t *testing.T, proto station.Protocol) {
	p := startPeer(t, nil)
	var onAck atomic.Uint64
	c := dial(t, p.addr(), station.WithProtocol(proto), station.WithOnAck(func(n uint64) { onAck.Store(n) }))
	ctx := testCtx(t)
	const n = 1000
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if got := c.Sent(); got != n {
		t.Errorf("Sent = %d, want %d", got, n)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Callbacks run on the client's reader, which Close waits for.
	if got := onAck.Load(); got != n {
		t.Errorf("OnAck saw %d, want %d", got, n)
	}
	got := p.received()
	if len(got) != n {
		t.Fatalf("peer received %d frames, want %d", len(got), n)
	}
	for i, b := range got {
		if string(b) != string(payloadN(i)) {
			t.Fatalf("frame %d = %q, want %q", i, b, payloadN(i))
		}
	}
	if err := c.Send(ctx, []byte("late")); !errors.Is(err, station.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
	wantVersion := 2
	if proto == station.ProtocolV1 {
		wantVersion = 1
	}
	if v := c.ProtocolVersion(); v != wantVersion || len(p.helloList()) != wantVersion-1 {
		t.Errorf("version %d after %d HELLOs, want %d", v, len(p.helloList()), wantVersion)
	}
}

func TestPayloadTooLarge(t *testing.T) {
	p := startPeer(t, nil)
	c := dial(t, p.addr(), station.WithMaxFrame(16))
	err := c.Send(testCtx(t), make([]byte, 17))
	if !errors.Is(err, station.ErrPayloadTooLarge) {
		t.Fatalf("Send = %v, want ErrPayloadTooLarge", err)
	}
	if c.Sent() != 0 {
		t.Errorf("Sent = %d after a refused payload", c.Sent())
	}
	if err := c.Send(testCtx(t), nil); !errors.Is(err, station.ErrEmptyPayload) {
		t.Fatalf("Send(nil) = %v, want ErrEmptyPayload", err)
	}
	if err := c.Send(testCtx(t), make([]byte, 16)); err != nil {
		t.Fatalf("Send at the limit: %v", err)
	}
}

func TestInvalidOptions(t *testing.T) {
	_, err := station.Dial(testCtx(t), "127.0.0.1:1", station.WithWindow(0), station.WithMaxFrame(0))
	if !errors.Is(err, station.ErrInvalidOption) {
		t.Fatalf("Dial = %v, want ErrInvalidOption", err)
	}
}

func TestDialUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = station.Dial(testCtx(t), addr)
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Fatalf("Dial = %v, want a *net.OpError", err)
	}
}

func TestWindowBackPressure(t *testing.T) {
	const window = 4
	got := make(chan struct{})
	release := make(chan struct{})
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		for range window {
			if _, err := readFrame(c); err != nil {
				return
			}
		}
		close(got)
		<-release
		c.Write(frame.AppendAck(nil, window))
		p.serveFrom(c, window, nil)
	})
	c := dial(t, p.addr(), v1, station.WithWindow(window))
	ctx := testCtx(t)
	for i := range window {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("peer did not receive the window")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err := c.Send(short, payloadN(window))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send with a full window = %v, want DeadlineExceeded", err)
	}
	if c.Sent() != window {
		t.Fatalf("Sent = %d, want %d", c.Sent(), window)
	}
	sent := make(chan error, 1)
	go func() { sent <- c.Send(ctx, payloadN(window)) }()
	close(release)
	if err := <-sent; err != nil {
		t.Fatalf("Send after the ACK: %v", err)
	}
	if err := c.WaitAcked(ctx, window+1); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCloseReasons(t *testing.T) {
	f := func(reason station.Reason, want error, fatal bool) {
		t.Helper()
		p := startPeer(t, func(_ *peer, c net.Conn, _ int) {
			c.Write(frame.AppendClose(nil, frame.Reason(reason), "scripted"))
		})
		disconnects := make(chan error, 10)
		c := dial(t, p.addr(), v1,
			station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond, MaxAttempts: 2}),
			station.WithOnDisconnect(func(err error) { disconnects <- err }))
		select {
		case <-c.Done():
		case <-testCtx(t).Done():
			t.Fatalf("%s: client still running", reason)
		}
		err := c.Err()
		if !errors.Is(err, want) {
			t.Errorf("%s: Err = %v, want %v", reason, err, want)
		}
		var ce *station.CloseError
		if !errors.As(err, &ce) || ce.Reason != reason || ce.Text != "scripted" {
			t.Errorf("%s: Err = %#v, want a *CloseError with the reason and text", reason, err)
		}
		if reason.Fatal() != fatal {
			t.Errorf("%s: Fatal = %v, want %v", reason, reason.Fatal(), fatal)
		}
		if fatal {
			if len(disconnects) != 0 || p.connCount() != 1 {
				t.Errorf("%s: reconnected (%d connections) on a fatal reason", reason, p.connCount())
			}
		} else if !errors.Is(err, station.ErrReconnectGaveUp) || p.connCount() != 2 {
			t.Errorf("%s: err %v after %d connections, want a retry then ErrReconnectGaveUp", reason, err, p.connCount())
		}
		if err := c.Send(testCtx(t), []byte("x")); !errors.Is(err, want) {
			t.Errorf("%s: Send after the end = %v", reason, err)
		}
		if err := c.Close(testCtx(t)); !errors.Is(err, want) {
			t.Errorf("%s: Close = %v", reason, err)
		}
	}
	f(station.ReasonTooLarge, station.ErrFrameTooLarge, true)
	f(station.ReasonUnauthorized, station.ErrNotAuthorized, true)
	f(station.ReasonControl, station.ErrUnsupportedControl, true)
	f(station.ReasonBusy, station.ErrServerBusy, false)
	f(station.ReasonShutdown, station.ErrShutdown, false)
	f(station.ReasonInternalError, station.ErrInternal, false)
}

// The public reason codes and limits are the protocol's.
func TestMatchesFrame(t *testing.T) {
	pairs := map[station.Reason]frame.Reason{
		station.ReasonShutdown: frame.ReasonShutdown, station.ReasonIdleTimeout: frame.ReasonIdleTimeout,
		station.ReasonFrameTimeout: frame.ReasonFrameTimeout, station.ReasonTooLarge: frame.ReasonTooLarge,
		station.ReasonControl: frame.ReasonControl, station.ReasonBusy: frame.ReasonBusy,
		station.ReasonUnauthorized: frame.ReasonUnauthorized, station.ReasonInternalError: frame.ReasonInternalError,
		station.ReasonSuperseded: frame.ReasonSuperseded,
	}
	for s, f := range pairs {
		if uint16(s) != uint16(f) || s.String() != f.String() {
			t.Errorf("station reason %d (%s) vs frame %d (%s)", s, s, f, f)
		}
	}
	if station.DefaultMaxFrame != config.Default().MaxFrame {
		t.Errorf("DefaultMaxFrame %d, the gateway's default --max-frame %d", station.DefaultMaxFrame, config.Default().MaxFrame)
	}
}

func TestCloseErrorText(t *testing.T) {
	err := error(&station.CloseError{Reason: station.ReasonBusy})
	if got, want := err.Error(), "gateway closed the session: server busy (server_busy)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	unknown := &station.CloseError{Reason: 42, Text: "new"}
	if errors.Is(unknown, station.ErrServerBusy) || unknown.Reason.Fatal() {
		t.Errorf("unknown reason matched a sentinel or is fatal")
	}
}

func TestUnknownFrameTypesSkipped(t *testing.T) {
	for _, proto := range []station.Protocol{station.ProtocolV1, station.ProtocolV2} {
		t.Run(proto.String(), func(t *testing.T) { testUnknownFrameTypesSkipped(t, proto) })
	}
}

// testUnknownFrameTypesSkipped also proves that a v1 client sends no PONG
// for the HEARTBEATs: the v1 peer would refuse it with CLOSE(5), fatal.
func testUnknownFrameTypesSkipped(t *testing.T, proto station.Protocol) {
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		p.serve(c, func(w io.Writer) {
			var b []byte
			b = append(frame.AppendHeader(b, 5), 0x7f, 1, 2, 3, 4) // a future type with a body
			b = append(frame.AppendHeader(b, 1), 0x10)             // and one without
			b = frame.AppendHeartbeat(b)
			w.Write(b)
		})
	})
	c := dial(t, p.addr(), station.WithProtocol(proto))
	ctx := testCtx(t)
	for i := range 10 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitAcked(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if p.connCount() != 1 {
		t.Errorf("%d connections, want 1", p.connCount())
	}
}

// TestReconnectResendsUnacked drops the first connection after acknowledging
// only part of what it read: the client must resend the rest, in order, on
// the second, and map its per-session ACK counts onto its own sequence.
func TestReconnectResendsUnacked(t *testing.T) {
	const n, firstAck = 6, 2
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i > 0 {
			p.serve(c, nil)
			return
		}
		for range n {
			if _, err := readFrame(c); err != nil {
				return
			}
		}
		c.Write(frame.AppendAck(nil, firstAck))
		// Close without reading further: the client sees EOF.
	})
	var disconnects atomic.Int32
	c := dial(t, p.addr(), v1,
		station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond}),
		station.WithOnDisconnect(func(error) { disconnects.Add(1) }))
	ctx := testCtx(t)
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := p.received()
	if len(got) != n-firstAck {
		t.Fatalf("second session got %d frames, want %d", len(got), n-firstAck)
	}
	for i, b := range got {
		if want := payloadN(firstAck + i); string(b) != string(want) {
			t.Errorf("resent frame %d = %q, want %q", i, b, want)
		}
	}
	st := c.Stats()
	if st.Reconnects != 1 || st.Resent != n-firstAck || st.Acked != n || disconnects.Load() != 1 {
		t.Errorf("stats %+v, %d disconnects; want 1 reconnect, %d resent", st, disconnects.Load(), n-firstAck)
	}
}

// TestGoAway follows the protocol's drain: after GOAWAY the client stops,
// half-closes, takes the final ACK and resends nothing that was accepted.
func TestGoAway(t *testing.T) {
	const before = 5
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i > 0 {
			p.serve(c, nil)
			return
		}
		var count uint64
		for range before {
			b, err := readFrame(c)
			if err != nil {
				return
			}
			p.record(b)
			count++
		}
		c.Write(frame.AppendGoAway(nil))
		for {
			b, err := readFrame(c)
			if errors.Is(err, io.EOF) {
				break // the client half-closed
			}
			if err != nil {
				return
			}
			if b != nil {
				p.record(b)
				count++
			}
		}
		var out []byte
		out = frame.AppendAck(out, count)
		out = frame.AppendClose(out, frame.ReasonShutdown, "")
		c.Write(out)
	})
	disconnect := make(chan error, 1)
	c := dial(t, p.addr(), v1,
		station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond}),
		station.WithOnDisconnect(func(err error) { disconnect <- err }))
	ctx := testCtx(t)
	const n = 50
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	// The drain always ends the first session, whether or not the final
	// ACK covers everything; Close is called after it so that the client
	// is not already done by then.
	select {
	case err := <-disconnect:
		if !errors.Is(err, station.ErrShutdown) {
			t.Errorf("disconnect reason %v, want ErrShutdown", err)
		}
	case <-ctx.Done():
		t.Fatal("the drained session did not end")
	}
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := p.received()
	if len(got) != n {
		t.Fatalf("received %d frames, want exactly %d", len(got), n)
	}
	for i, b := range got {
		if string(b) != string(payloadN(i)) {
			t.Fatalf("frame %d = %q, want %q", i, b, payloadN(i))
		}
	}
	if r := c.Stats().Resent; r != 0 {
		t.Errorf("resent %d frames after a drain", r)
	}
}

// TestKeepaliveCounted checks with a peer that counts them that an idle
// client sends keepalives.
func TestKeepaliveCounted(t *testing.T) {
	kas := make(chan struct{}, 100)
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		for {
			b, err := readFrame(c)
			if err != nil {
				return
			}
			if b == nil {
				kas <- struct{}{}
			}
		}
	})
	c := dial(t, p.addr(), v1, station.WithKeepalive(5*time.Millisecond))
	ctx := testCtx(t)
	for range 5 {
		select {
		case <-kas:
		case <-ctx.Done():
			t.Fatal("no keepalive")
		}
	}
	// Nothing to acknowledge: the half-close and the peer's EOF suffice.
	if err := c.Close(ctx); err != nil {
		t.Errorf("Close = %v", err)
	}
}

// TestDeadGateway: a peer that accepts and then says nothing is given up on
// after the dead-gateway timeout, and the client reconnects.
func TestDeadGateway(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i > 0 {
			p.serve(c, nil)
			return
		}
		io.Copy(io.Discard, c) // read everything, answer nothing
	})
	disconnects := make(chan error, 10)
	c := dial(t, p.addr(), v1,
		station.WithDeadTimeout(100*time.Millisecond),
		station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond}),
		station.WithOnDisconnect(func(err error) { disconnects <- err }))
	ctx := testCtx(t)
	if err := c.Send(ctx, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAcked(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-disconnects; !errors.Is(err, station.ErrGatewayDead) {
		t.Errorf("disconnect = %v, want ErrGatewayDead", err)
	}
}

func TestReconnectGivesUp(t *testing.T) {
	p := startPeer(t, func(*peer, net.Conn, int) {}) // accept and hang up
	c := dial(t, p.addr(), v1, station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond, MaxAttempts: 3}))
	select {
	case <-c.Done():
	case <-testCtx(t).Done():
		t.Fatal("client still running")
	}
	if err := c.Err(); !errors.Is(err, station.ErrReconnectGaveUp) || !errors.Is(err, io.EOF) {
		t.Errorf("Err = %v, want ErrReconnectGaveUp wrapping EOF", err)
	}
	if err := c.WaitAcked(testCtx(t), 1); !errors.Is(err, station.ErrReconnectGaveUp) {
		t.Errorf("WaitAcked = %v", err)
	}
}
