package station_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
	"github.com/meridian-telemetry/meridian/station"
)

// These tests drive the client's protocol v2 against the scripted peer,
// which speaks the gateway's side with the frame codec.

// TestV2Handshake: the first frame is a HELLO with the client's epoch,
// first = 1 and name; frames are numbered from the WELCOME's next and the
// ACKs are sequence numbers.
func TestV2Handshake(t *testing.T) {
	p := startPeer(t, nil)
	c := dial(t, p.addr(), station.WithEpoch(42), station.WithName("gs-1"))
	ctx := testCtx(t)
	const n = 100
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	hellos := p.helloList()
	want := frame.Hello{Version: frame.Version2, Epoch: 42, First: 1, Name: "gs-1"}
	if len(hellos) != 1 || hellos[0] != want {
		t.Fatalf("HELLOs %+v, want [%+v]", hellos, want)
	}
	for i, seq := range p.receivedSeqs() {
		if seq != uint64(i+1) {
			t.Fatalf("frame %d has sequence %d", i, seq)
		}
	}
	if len(p.received()) != n || c.Acked() != n || c.Epoch() != 42 || c.ProtocolVersion() != 2 {
		t.Fatalf("received %d, acked %d, epoch %d, version %d", len(p.received()), c.Acked(), c.Epoch(), c.ProtocolVersion())
	}
}

// TestV2RandomEpoch: without WithEpoch each client picks its own, non-zero.
func TestV2RandomEpoch(t *testing.T) {
	p := startPeer(t, nil)
	a, b := dial(t, p.addr()), dial(t, p.addr())
	if a.Epoch() == 0 || b.Epoch() == 0 || a.Epoch() == b.Epoch() {
		t.Fatalf("epochs %d and %d", a.Epoch(), b.Epoch())
	}
}

// TestV2ResumeFromWelcome: the first session stores 7 frames but
// acknowledges 3 (ACK 3, absolute) before the connection drops. The second
// HELLO says first = 4; the WELCOME says next = 8, so the client drops 4..7
// from its buffer without sending them again and resends only 8..10. The
// second session's ACKs (8, 9, 10) are sequence numbers: read as counts they
// would cover frames never written.
func TestV2ResumeFromWelcome(t *testing.T) {
	const n = 10
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i > 0 {
			p.serveNext(c, func(frame.Hello) uint64 { return 8 }, nil)
			return
		}
		br := bufio.NewReader(c)
		h, err := p.readHello(br)
		if err != nil {
			return
		}
		c.Write(frame.AppendWelcome(nil, frame.Version2, h.Epoch, 1))
		for range n {
			if _, err := readFrame(br); err != nil {
				return
			}
		}
		c.Write(frame.AppendAck(nil, 3))
	})
	var acks []uint64
	c := dial(t, p.addr(), fastReconnect, station.WithOnAck(func(a uint64) { acks = append(acks, a) }))
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
	hellos := p.helloList()
	if len(hellos) != 2 || hellos[1].First != 4 || hellos[1].Epoch != hellos[0].Epoch || hellos[0].First != 1 {
		t.Fatalf("HELLOs %+v: want first 1 then 4, one epoch", hellos)
	}
	got, seqs := p.received(), p.receivedSeqs()
	if len(got) != 3 {
		t.Fatalf("second session got %d frames, want 3 (8..10)", len(got))
	}
	for i, b := range got {
		if want := payloadN(7 + i); !bytes.Equal(b, want) || seqs[i] != uint64(8+i) {
			t.Errorf("resent frame %d = %q seq %d, want %q seq %d", i, b, seqs[i], want, 8+i)
		}
	}
	st := c.Stats()
	if st.Skipped != 4 || st.Resent != 3 || st.Acked != n || st.Reconnects != 1 {
		t.Errorf("stats %+v: want 4 skipped, 3 resent", st)
	}
	// OnAck saw the first session's ACK, the WELCOME's resume point, then
	// the second session's ACKs.
	if len(acks) < 3 || acks[0] != 3 || acks[1] != 7 || acks[len(acks)-1] != n {
		t.Errorf("OnAck saw %v", acks)
	}
}

// TestV2FirstSeq: a spool resuming its epoch after a restart numbers from
// WithFirstSeq, and its HELLO says so.
func TestV2FirstSeq(t *testing.T) {
	p := startPeer(t, nil)
	c := dial(t, p.addr(), station.WithEpoch(9), station.WithFirstSeq(101))
	ctx := testCtx(t)
	for i := range 5 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if h := p.helloList(); len(h) != 1 || h[0].First != 101 || h[0].Epoch != 9 {
		t.Fatalf("HELLOs %+v", h)
	}
	if s := p.receivedSeqs(); len(s) != 5 || s[0] != 101 || s[4] != 105 {
		t.Fatalf("sequences %v", s)
	}
	if c.Sent() != 105 || c.Acked() != 105 {
		t.Errorf("sent %d acked %d, want 105", c.Sent(), c.Acked())
	}
}

// TestV2SpoolResumesPastWhatItNumbered: a restarted spool (its own epoch,
// first 101) whose frames 101..105 the stream already holds — stored, the
// ACK lost in the crash — gets WELCOME next 106: Send completes those five
// at once, as skipped, and only 106..110 go on the wire, numbered so.
func TestV2SpoolResumesPastWhatItNumbered(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		p.serveNext(c, func(frame.Hello) uint64 { return 106 }, nil)
	})
	c := dial(t, p.addr(), station.WithEpoch(9), station.WithFirstSeq(101))
	ctx := testCtx(t)
	for i := range 10 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if s := p.receivedSeqs(); len(s) != 5 || s[0] != 106 || s[4] != 110 {
		t.Fatalf("sequences on the wire %v, want 106..110", s)
	}
	if got := p.received(); !bytes.Equal(got[0], payloadN(5)) {
		t.Fatalf("first frame on the wire %q, want %q", got[0], payloadN(5))
	}
	if st := c.Stats(); st.Acked != 110 || st.Skipped != 5 {
		t.Fatalf("stats %+v", st)
	}
}

// TestV2StoredThroughHoldsForItsSessionOnly: what one WELCOME said stored
// (frames the resumed spool had not handed over yet) does not outlive its
// session: the next gateway numbers frames from its own next, so the
// client sends them and each carries its own number.
func TestV2StoredThroughHoldsForItsSessionOnly(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i == 0 {
			br := bufio.NewReader(c)
			h, err := p.readHello(br)
			if err != nil {
				return
			}
			c.Write(frame.AppendWelcome(nil, frame.Version2, h.Epoch, 106))
			c.Close() // the link drops before the spool sent anything
			return
		}
		p.serve(c, nil) // resumes at the HELLO's first
	})
	c := dial(t, p.addr(), fastReconnect, station.WithEpoch(9), station.WithFirstSeq(101))
	ctx := testCtx(t)
	for c.Stats().Reconnects < 1 && ctx.Err() == nil {
		runtime.Gosched()
	}
	for i := range 10 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got, seqs := p.received(), p.receivedSeqs()
	if len(got) != 10 {
		t.Fatalf("%d frames on the wire, want 10", len(got))
	}
	for i := range got {
		if seqs[i] != uint64(101+i) || !bytes.Equal(got[i], payloadN(i)) {
			t.Fatalf("frame %d: seq %d payload %q, want seq %d %q", i, seqs[i], got[i], 101+i, payloadN(i))
		}
	}
}

// TestV2BadWelcome: a WELCOME or ACK that cannot be right ends the session
// as a protocol violation (the client reconnects, here to a peer that
// behaves), and a WELCOME past what the client numbered stops it with
// ErrEpochConflict.
func TestV2BadWelcome(t *testing.T) {
	f := func(name string, write func(c net.Conn, h frame.Hello), opts []station.Option, want error, fatal bool) {
		t.Helper()
		p := startPeer(t, func(p *peer, c net.Conn, i int) {
			if i > 0 {
				p.serve(c, nil)
				return
			}
			br := bufio.NewReader(c)
			h, err := p.readHello(br)
			if err != nil {
				return
			}
			write(c, h)
			io.Copy(io.Discard, br)
		})
		disconnects := make(chan error, 10)
		opts = append(opts, fastReconnect,
			station.WithOnDisconnect(func(err error) {
				select {
				case disconnects <- err:
				default:
				}
			}))
		c := dial(t, p.addr(), opts...)
		ctx := testCtx(t)
		// Send may already see a fatal end: the WELCOME can come first.
		err := c.Send(ctx, []byte("x"))
		if err == nil {
			err = c.WaitAcked(ctx, c.Sent())
		}
		if fatal {
			if !errors.Is(err, want) || !errors.Is(c.Err(), want) || len(disconnects) != 0 || p.connCount() != 1 {
				t.Errorf("%s: WaitAcked = %v after %d connections, want %v, fatal", name, err, p.connCount(), want)
			}
			return
		}
		if err != nil {
			t.Fatalf("%s: WaitAcked = %v", name, err)
		}
		if err := <-disconnects; !errors.Is(err, want) {
			t.Errorf("%s: disconnect %v, want %v", name, err, want)
		}
	}
	welcome := func(epochDelta, next uint64) func(net.Conn, frame.Hello) {
		return func(c net.Conn, h frame.Hello) {
			c.Write(frame.AppendWelcome(nil, frame.Version2, h.Epoch+epochDelta, next))
		}
	}
	f("wrong epoch", welcome(1, 1), nil, station.ErrProtocol, false)
	f("next below first", welcome(0, 5), []station.Option{station.WithFirstSeq(10)}, station.ErrProtocol, false)
	f("next past the last frame", welcome(0, 50), nil, station.ErrEpochConflict, true)
	f("ACK past what was written", func(c net.Conn, h frame.Hello) {
		c.Write(frame.AppendAck(frame.AppendWelcome(nil, frame.Version2, h.Epoch, 1), 5))
	}, nil, station.ErrProtocol, false)
	f("ACK before WELCOME", func(c net.Conn, h frame.Hello) {
		c.Write(frame.AppendAck(nil, 1))
	}, nil, station.ErrProtocol, false)
	f("second WELCOME", func(c net.Conn, h frame.Hello) {
		c.Write(frame.AppendWelcome(frame.AppendWelcome(nil, frame.Version2, h.Epoch, 1), frame.Version2, h.Epoch, 1))
	}, nil, station.ErrProtocol, false)
}

// TestV2Pong: every HEARTBEAT gets a PONG, also while nothing else is
// written; a v1 client never sends one (the v1 peer would refuse it with
// CLOSE(5), fatal, in TestUnknownFrameTypesSkipped's v1 run).
func TestV2Pong(t *testing.T) {
	const beats = 3
	ponged := make(chan error, 1)
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		br := bufio.NewReader(c)
		h, err := p.readHello(br)
		if err != nil {
			ponged <- err
			return
		}
		var out []byte
		out = frame.AppendWelcome(out, frame.Version2, h.Epoch, h.First)
		for range beats {
			out = frame.AppendHeartbeat(out)
		}
		c.Write(out)
		for range beats {
			b, ctl, err := readAny(br)
			if err == nil && (!ctl || !bytes.Equal(b, []byte{byte(frame.CtlPong)})) {
				err = errors.New("not a PONG")
			}
			if err != nil {
				ponged <- err
				return
			}
		}
		ponged <- nil
		p.serveV2(c, br, h.First-1, func(w io.Writer) { w.Write(frame.AppendHeartbeat(nil)) })
	})
	c := dial(t, p.addr(), station.WithKeepalive(0))
	ctx := testCtx(t)
	select {
	case err := <-ponged:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("no PONGs")
	}
	// Then heartbeats between ACKs: their PONGs go out with the frames.
	for i := range 50 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitAcked(ctx, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The peer sent a heartbeat before each of 50 ACKs; the client read
	// them before the ACKs and answered each before its next frame.
	if n := p.pongCount(); n < 49 {
		t.Errorf("%d PONGs for 50 heartbeats", n)
	}
}

// TestV1Fallback: a gateway that answers HELLO with CLOSE(5) speaks v1. The
// client logs it once, reconnects at once with v1, and stays on v1 through a
// later reconnect (the peer would refuse a second HELLO, fatally).
func TestV1Fallback(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		switch i {
		case 0:
			br := bufio.NewReader(c)
			if _, err := p.readHello(br); err != nil {
				return
			}
			// What a v1 gateway does with a control frame.
			c.Write(frame.AppendClose(nil, frame.ReasonControl, "unsupported control frame"))
		case 1:
			for range 3 {
				b, err := readFrame(c)
				if err != nil {
					return
				}
				p.record(b)
			}
			c.Write(frame.AppendAck(nil, 3))
		default:
			p.serveFrom(c, 0, nil)
		}
	})
	var logs syncbuf.Buffer
	disconnects := make(chan error, 10)
	c := dial(t, p.addr(), station.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond}),
		station.WithOnDisconnect(func(err error) { disconnects <- err }))
	ctx := testCtx(t)
	for i := range 10 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if c.ProtocolVersion() != 1 || len(p.helloList()) != 1 || p.connCount() != 3 {
		t.Fatalf("version %d, %d HELLOs, %d connections", c.ProtocolVersion(), len(p.helloList()), p.connCount())
	}
	got := p.received()
	if len(got) != 10 {
		t.Fatalf("received %d frames, want 10", len(got))
	}
	for i, b := range got {
		if !bytes.Equal(b, payloadN(i)) {
			t.Fatalf("frame %d = %q", i, b)
		}
	}
	if n := strings.Count(logs.String(), "speaks protocol v1 only"); n != 1 {
		t.Errorf("fallback logged %d times:\n%s", n, logs.String())
	}
	// The fallback is not a disconnect; the v1 session's drop is.
	if len(disconnects) != 1 {
		t.Errorf("%d disconnects reported, want 1", len(disconnects))
	}
}

// TestV2OnlyNoFallback: with ProtocolV2Only a CLOSE(5) to the HELLO is
// fatal, like any CLOSE(5).
func TestV2OnlyNoFallback(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		if _, err := p.readHello(c); err == nil {
			c.Write(frame.AppendClose(nil, frame.ReasonControl, ""))
		}
	})
	c := dial(t, p.addr(), station.WithProtocol(station.ProtocolV2Only))
	select {
	case <-c.Done():
	case <-testCtx(t).Done():
		t.Fatal("client still running")
	}
	if err := c.Err(); !errors.Is(err, station.ErrUnsupportedControl) || p.connCount() != 1 || c.ProtocolVersion() != 2 {
		t.Fatalf("Err = %v after %d connections, version %d", err, p.connCount(), c.ProtocolVersion())
	}
}

// TestV2Superseded: CLOSE(9) is not fatal: the client reconnects and
// resumes, and nothing is lost.
func TestV2Superseded(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i > 0 {
			p.serve(c, nil)
			return
		}
		br := bufio.NewReader(c)
		h, err := p.readHello(br)
		if err != nil {
			return
		}
		c.Write(frame.AppendWelcome(nil, frame.Version2, h.Epoch, h.First))
		for seq := uint64(1); seq <= 2; seq++ {
			b, err := readFrame(br)
			if err != nil {
				return
			}
			p.recordSeq(b, seq)
		}
		var out []byte
		out = frame.AppendAck(out, 2)
		out = frame.AppendClose(out, frame.ReasonSuperseded, "")
		c.Write(out)
	})
	disconnect := make(chan error, 10)
	c := dial(t, p.addr(), fastReconnect, station.WithOnDisconnect(func(err error) { disconnect <- err }))
	ctx := testCtx(t)
	for i := range 5 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-disconnect
	var ce *station.CloseError
	if !errors.Is(err, station.ErrSuperseded) || !errors.As(err, &ce) || ce.Reason != station.ReasonSuperseded || ce.Reason.Fatal() {
		t.Fatalf("disconnect %v, want a non-fatal CLOSE(9)", err)
	}
	if ce.Reason.String() != "superseded" {
		t.Errorf("reason name %q", ce.Reason)
	}
	if s := p.receivedSeqs(); len(s) != 5 || s[2] != 3 || s[4] != 5 {
		t.Errorf("sequences %v, want 1..5 once each", s)
	}
}

// TestV2SupersededBacksOff: a client superseded on every session counts
// each as a failed attempt although it got its WELCOME, so its back-off
// grows and a bounded policy gives up instead of fighting forever.
func TestV2SupersededBacksOff(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, _ int) {
		h, err := p.readHello(c)
		if err != nil {
			return
		}
		c.Write(frame.AppendClose(frame.AppendWelcome(nil, frame.Version2, h.Epoch, h.First), frame.ReasonSuperseded, ""))
	})
	c := dial(t, p.addr(), station.WithReconnect(station.ReconnectPolicy{Initial: time.Millisecond, MaxAttempts: 3}))
	select {
	case <-c.Done():
	case <-testCtx(t).Done():
		t.Fatal("client still running")
	}
	if err := c.Err(); !errors.Is(err, station.ErrReconnectGaveUp) || !errors.Is(err, station.ErrSuperseded) || p.connCount() != 3 {
		t.Fatalf("Err = %v after %d connections", err, p.connCount())
	}
}

// TestV2HandshakeTimeout: a peer that takes the HELLO and never answers is
// given up on after the dial timeout.
func TestV2HandshakeTimeout(t *testing.T) {
	p := startPeer(t, func(p *peer, c net.Conn, i int) {
		if i > 0 {
			p.serve(c, nil)
			return
		}
		io.Copy(io.Discard, c)
	})
	disconnect := make(chan error, 10)
	c := dial(t, p.addr(), fastReconnect, station.WithDialTimeout(50*time.Millisecond),
		station.WithOnDisconnect(func(err error) { disconnect <- err }))
	ctx := testCtx(t)
	if err := c.Send(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAcked(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-disconnect; !errors.Is(err, station.ErrGatewayDead) || !strings.Contains(err.Error(), "WELCOME") {
		t.Errorf("disconnect %v, want ErrGatewayDead for a missing WELCOME", err)
	}
}

func TestV2InvalidOptions(t *testing.T) {
	for name, opt := range map[string]station.Option{
		"epoch 0":        station.WithEpoch(0),
		"first seq 0":    station.WithFirstSeq(0),
		"long name":      station.WithName(strings.Repeat("n", frame.MaxName+1)),
		"name not UTF-8": station.WithName("\xff"),
		"protocol 7":     station.WithProtocol(7),
	} {
		if _, err := station.Dial(testCtx(t), "127.0.0.1:1", opt); !errors.Is(err, station.ErrInvalidOption) {
			t.Errorf("%s: Dial = %v, want ErrInvalidOption", name, err)
		}
	}
}

// TestV2GapCarriedAcrossEmptySessions: a station says HELLO with a higher
// first twice in a row and stores nothing between (what a spool's client
// does when drop-oldest opens a second hole before the frame after the
// first could go out). The gap the first of them was told is still to be
// marked: the frame finally stored carries both.
func TestV2GapCarriedAcrossEmptySessions(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	ctx := testCtx(t)
	const epoch = 777
	for _, first := range []uint64{1, 682} {
		c := dial(t, gw.Addr, fastReconnect, station.WithName("gs-gap"), station.WithEpoch(epoch), station.WithFirstSeq(first))
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	c := dial(t, gw.Addr, fastReconnect, station.WithName("gs-gap"), station.WithEpoch(epoch), station.WithFirstSeq(1136))
	if err := c.Send(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	frames := mem.Frames()
	if len(frames) != 1 || frames[0].Seq != 1136 || frames[0].Gap != 1135 {
		t.Fatalf("stored %+v, want frame 1136 alone with Meridian-Gap 1135", frames)
	}
}

// TestV2GapOwedReachesALowerFirst: a station is told a gap, stores nothing
// in that session, and says HELLO again with a lower first (a spool
// reopened on its oldest file). The gateway resumes it after the frames it
// was told were lost, and the frame stored next still carries that gap.
func TestV2GapOwedReachesALowerFirst(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	ctx := testCtx(t)
	const epoch = 4242
	session := func(first uint64, frames int) {
		t.Helper()
		c := dial(t, gw.Addr, fastReconnect, station.WithName("gs-low"), station.WithEpoch(epoch), station.WithFirstSeq(first))
		for i := range frames {
			if err := c.Send(ctx, payloadN(int(first)-1+i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	session(1, 50)  // 1..50 stored
	session(100, 0) // told: 51..99 lost; stores nothing
	session(51, 50) // 51..99 complete as stored-or-lost, 100 goes out
	frames := mem.Frames()
	if len(frames) != 51 {
		t.Fatalf("stored %d frames, want 51", len(frames))
	}
	if f := frames[50]; f.Seq != 100 || f.Gap != 49 {
		t.Fatalf("frame after the gap: seq %d Meridian-Gap %d, want 100 with 49", f.Seq, f.Gap)
	}
}
