package gateway_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
)

// Protocol v2 over real TCP (docs/protocol.md, "Protocol v2"): the
// handshake, resume, supersede, identity, control errors, PONG, and v1
// unchanged beside it.

// hello says HELLO.
func (s *testStation) hello(epoch, first uint64, name string) {
	s.t.Helper()
	if err := s.raw(frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: epoch, First: first, Name: name})); err != nil {
		s.t.Fatalf("HELLO: %v", err)
	}
}

// welcome reads up to the WELCOME and checks its version and epoch.
func (s *testStation) welcome(epoch uint64) frame.Control {
	s.t.Helper()
	c := s.expect(frame.TypeWelcome, wait)
	if c.Version != frame.Version2 || c.Epoch != epoch {
		s.t.Fatalf("WELCOME version %d epoch %d, want 2 and %d", c.Version, c.Epoch, epoch)
	}
	return c
}

// handshake says HELLO and returns the WELCOME's next.
func (s *testStation) handshake(epoch, first uint64, name string) uint64 {
	s.t.Helper()
	s.hello(epoch, first, name)
	return s.welcome(epoch).Next
}

// refused reads to EOF and checks the CLOSE reason and the final ACK.
func (s *testStation) refused(want frame.Reason, wantAck uint64) {
	s.t.Helper()
	last, cl := s.drainToEOF(wait)
	switch {
	case cl == nil:
		s.t.Fatalf("got no CLOSE (final ACK %d), want CLOSE(%d)", last, want)
	case cl.Reason != want:
		s.t.Fatalf("got CLOSE(%d %q), want CLOSE(%d)", cl.Reason, cl.Text, want)
	case last != wantAck:
		s.t.Fatalf("final ACK %d, want %d", last, wantAck)
	}
}

// v2Payloads are the payloads of a station's frames from..to.
func v2Payloads(from, to uint64) [][]byte {
	var out [][]byte
	for i := from; i <= to; i++ {
		out = append(out, fmt.Appendf(nil, "v2 frame %d", i))
	}
	return out
}

// v2Observer counts what the gateway reports of protocol v2.
type v2Observer struct {
	countingObserver
	superseded, gaps, gapFrames, rtts, unauthorized atomic.Int64
}

func (o *v2Observer) Rejected(r frame.Reason) {
	if r == frame.ReasonUnauthorized {
		o.unauthorized.Add(1)
	}
}

func (o *v2Observer) Superseded()                { o.superseded.Add(1) }
func (o *v2Observer) Gap(frames uint64)          { o.gaps.Add(1); o.gapFrames.Add(int64(frames)) }
func (o *v2Observer) HeartbeatRTT(time.Duration) { o.rtts.Add(1) }

var _ gateway.V2Observer = (*v2Observer)(nil)

// ofStation returns the stored frames of one identity, in commit order.
func ofStation(mem *sink.Memory, station string) []pipeline.Frame {
	var out []pipeline.Frame
	for _, f := range mem.Frames() {
		if f.Station == station {
			out = append(out, f)
		}
	}
	return out
}

// checkSeqs asserts that frames are exactly seqs from..to of epoch, once
// each and in order, with their payloads.
func checkSeqs(t *testing.T, frames []pipeline.Frame, epoch, from, to uint64) {
	t.Helper()
	if want := int(to - from + 1); len(frames) != want {
		t.Fatalf("%d frames stored, want %d (seqs %d..%d)", len(frames), want, from, to)
	}
	for i, f := range frames {
		seq := from + uint64(i)
		if f.Seq != seq || f.Epoch != epoch {
			t.Fatalf("frame %d: seq %d epoch %d, want seq %d epoch %d", i, f.Seq, f.Epoch, seq, epoch)
		}
		if want := fmt.Sprintf("v2 frame %d", seq); string(f.Payload) != want {
			t.Fatalf("frame %d: payload %q, want %q", i, f.Payload, want)
		}
	}
}

// snapshotOfConn finds the live session of a station's connection.
func snapshotOfConn(g *gatewaytest.Gateway, st *testStation) (gateway.Snapshot, bool) {
	for _, s := range g.Server.Sessions() {
		if s.RemoteAddr == st.conn.LocalAddr().String() {
			return s, true
		}
	}
	return gateway.Snapshot{}, false
}

// snapshotOf finds the live session of an identity.
func snapshotOf(g *gatewaytest.Gateway, station string) (gateway.Snapshot, bool) {
	for _, s := range g.Server.Sessions() {
		if s.Station == station {
			return s, true
		}
	}
	return gateway.Snapshot{}, false
}

func TestV2Handshake(t *testing.T) {
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem)
	const epoch uint64 = 0xfeedface12345678
	st := dial(t, g.Addr)
	if next := st.handshake(epoch, 1, ""); next != 1 {
		t.Fatalf("WELCOME next %d, want 1", next)
	}
	st.send(v2Payloads(1, 10)...)
	st.ackAtLeast(10, wait) // absolute: the station's seq 10
	snap, ok := snapshotOfConn(g, st)
	if !ok || snap.Station != "127.0.0.1" || snap.Epoch != epoch || snap.AckedSeq != 10 {
		t.Fatalf("Sessions: %+v (found %v), want epoch %d acked seq 10", snap, ok, epoch)
	}
	if last, cl := st.finish(wait); last != 10 || cl != nil {
		t.Fatalf("final ACK %d CLOSE %v, want ACK 10 and no CLOSE", last, cl)
	}
	frames := mem.Frames()
	checkSeqs(t, frames, epoch, 1, 10)
	var prev uint64
	for i, f := range frames {
		if f.Station != "127.0.0.1" || f.Gap != 0 {
			t.Fatalf("frame %d: station %q gap %d", i, f.Station, f.Gap)
		}
		if f.Acked >= f.Seq || f.Acked < prev {
			t.Fatalf("frame %d: Acked %d (previous %d) for seq %d: must be below the seq and never go back", i, f.Acked, prev, f.Seq)
		}
		prev = f.Acked
	}
}

func TestV2ResumeFromTheGatewaysFloor(t *testing.T) {
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem)
	const epoch = 42
	a := dial(t, g.Addr)
	a.handshake(epoch, 1, "")
	a.send(v2Payloads(1, 10)...)
	if last, _ := a.finish(wait); last != 10 {
		t.Fatalf("session 1: final ACK %d, want 10", last)
	}
	// The station still holds everything (first 1): the gateway knows what
	// its last session here acknowledged, and wants 11 next.
	b := dial(t, g.Addr)
	if next := b.handshake(epoch, 1, ""); next != 11 {
		t.Fatalf("session 2: WELCOME next %d, want 11", next)
	}
	b.send(v2Payloads(11, 15)...)
	b.ackAtLeast(15, wait)
	if last, cl := b.finish(wait); last != 15 || cl != nil {
		t.Fatalf("session 2: final ACK %d CLOSE %v, want 15", last, cl)
	}
	frames := mem.Frames()
	checkSeqs(t, frames, epoch, 1, 15)
	for _, f := range frames[10:] {
		if f.Acked < 10 || f.Acked >= f.Seq {
			t.Fatalf("seq %d of session 2 carries Acked %d, want in [10, %d)", f.Seq, f.Acked, f.Seq)
		}
	}
	// A station that lost 16..19 says first 20: the gap is counted from
	// what this gateway knows stored (15).
	lost := dial(t, g.Addr)
	if next := lost.handshake(epoch, 20, ""); next != 20 {
		t.Fatalf("after a loss: WELCOME next %d, want 20", next)
	}
	lost.send(v2Payloads(20, 20)...)
	if last, _ := lost.finish(wait); last != 20 {
		t.Fatalf("after a loss: final ACK %d, want 20", last)
	}
	if f := mem.Frames()[15]; f.Seq != 20 || f.Gap != 4 {
		t.Fatalf("the first frame after the loss: seq %d gap %d, want 20 and 4", f.Seq, f.Gap)
	}
	// The floor is of one epoch: a new epoch starts at its first.
	c := dial(t, g.Addr)
	if next := c.handshake(epoch+1, 1, ""); next != 1 {
		t.Fatalf("new epoch: WELCOME next %d, want 1", next)
	}
	if last, _ := c.finish(wait); last != 0 {
		t.Fatalf("new epoch, nothing sent: final ACK %d, want 0", last)
	}
}

// fakeResume is the stream's last message per identity, as the test says.
type fakeResume struct {
	mu    sync.Mutex
	stamp map[string]gateway.Stored
	err   map[string]error
	calls atomic.Int64
}

func (f *fakeResume) set(id string, st gateway.Stored, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stamp == nil {
		f.stamp, f.err = make(map[string]gateway.Stored), make(map[string]error)
	}
	f.stamp[id], f.err[id] = st, err
}

func (f *fakeResume) resume(_ context.Context, id string) (gateway.Stored, error) {
	f.calls.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stamp[id], f.err[id]
}

func TestV2ResumeFromTheStream(t *testing.T) {
	fr := &fakeResume{}
	obs := &v2Observer{}
	mem := sink.NewMemory()
	cfg := gatewaytest.Config()
	// The handshake bound: a resume read that keeps failing is asked again
	// until it ends (the "stream unavailable" case).
	cfg.TLSHandshakeTimeout = time.Second
	g := gatewaytest.Start(t, cfg, mem, gateway.WithResume(fr.resume), gateway.WithObserver(obs))
	const epoch = 7

	// Each case is its own identity, so that no floor of another case
	// plays a part.
	t.Run("same epoch, station holds the overlap", func(t *testing.T) {
		fr.set("gs-same", gateway.Stored{Found: true, Station: "gs-same", Epoch: epoch, Seq: 20, Acked: 17}, nil)
		st := dial(t, g.Addr)
		st.t = t
		// Next is Acked+1, not Seq+1: 18..20 may hide a hole; their resend
		// is dropped by Nats-Msg-Id.
		if next := st.handshake(epoch, 1, "gs-same"); next != 18 {
			t.Fatalf("WELCOME next %d, want 18", next)
		}
		st.send(v2Payloads(18, 22)...)
		if last, cl := st.finish(wait); last != 22 || cl != nil {
			t.Fatalf("final ACK %d CLOSE %v, want 22", last, cl)
		}
		frames := ofStation(mem, "gs-same")
		checkSeqs(t, frames, epoch, 18, 22)
		for _, f := range frames {
			if f.Gap != 0 || f.Acked < 17 {
				t.Fatalf("seq %d: gap %d acked %d, want no gap and acked ≥ 17", f.Seq, f.Gap, f.Acked)
			}
		}
	})
	t.Run("same epoch, station lost frames", func(t *testing.T) {
		fr.set("gs-lost", gateway.Stored{Found: true, Station: "gs-lost", Epoch: epoch, Seq: 20, Acked: 17}, nil)
		gaps := obs.gapFrames.Load()
		st := dial(t, g.Addr)
		st.t = t
		if next := st.handshake(epoch, 25, "gs-lost"); next != 25 {
			t.Fatalf("WELCOME next %d, want 25", next)
		}
		st.send(v2Payloads(25, 27)...)
		if last, _ := st.finish(wait); last != 27 {
			t.Fatalf("final ACK %d, want 27", last)
		}
		frames := ofStation(mem, "gs-lost")
		checkSeqs(t, frames, epoch, 25, 27)
		// 21..24 are lost: 25-1-20 frames, marked on the first stored.
		for i, f := range frames {
			if want := map[bool]uint64{true: 4, false: 0}[i == 0]; f.Gap != want {
				t.Fatalf("seq %d: gap %d, want %d", f.Seq, f.Gap, want)
			}
		}
		if got := obs.gapFrames.Load() - gaps; got != 4 {
			t.Fatalf("gap counted %d frames, want 4", got)
		}
	})
	t.Run("another epoch", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			first, gap uint64
		}{{"gs-new-1", 1, 0}, {"gs-new-7", 7, 6}} {
			fr.set(tc.name, gateway.Stored{Found: true, Station: tc.name, Epoch: epoch + 100, Seq: 20, Acked: 20}, nil)
			st := dial(t, g.Addr)
			st.t = t
			if next := st.handshake(epoch, tc.first, tc.name); next != tc.first {
				t.Fatalf("%s: WELCOME next %d, want its first %d", tc.name, next, tc.first)
			}
			st.send(v2Payloads(tc.first, tc.first+1)...)
			if last, _ := st.finish(wait); last != tc.first+1 {
				t.Fatalf("%s: final ACK %d, want %d", tc.name, last, tc.first+1)
			}
			frames := ofStation(mem, tc.name)
			checkSeqs(t, frames, epoch, tc.first, tc.first+1)
			if frames[0].Gap != tc.gap || frames[1].Gap != 0 {
				t.Fatalf("%s: gaps %d, %d, want %d, 0", tc.name, frames[0].Gap, frames[1].Gap, tc.gap)
			}
		}
	})
	t.Run("another identity's message", func(t *testing.T) {
		// Two identities mapped to one subject token: the last message is
		// not this station's, so it tells nothing of this station.
		fr.set("gs-shared", gateway.Stored{Found: true, Station: "gs-other", Epoch: epoch, Seq: 500, Acked: 499}, nil)
		st := dial(t, g.Addr)
		st.t = t
		if next := st.handshake(epoch, 1, "gs-shared"); next != 1 {
			t.Fatalf("WELCOME next %d, want 1 (the station's first)", next)
		}
		st.send(v2Payloads(1, 3)...)
		if last, _ := st.finish(wait); last != 3 {
			t.Fatalf("final ACK %d, want 3", last)
		}
		// Its own floor on this gateway still counts.
		again := dial(t, g.Addr)
		again.t = t
		if next := again.handshake(epoch, 1, "gs-shared"); next != 4 {
			t.Fatalf("after a session that stored 1..3: WELCOME next %d, want 4", next)
		}
		if last, cl := again.finish(wait); last != 3 || cl != nil {
			t.Fatalf("final ACK %d CLOSE %v, want 3", last, cl)
		}
		frames := ofStation(mem, "gs-shared")
		checkSeqs(t, frames, epoch, 1, 3)
		if frames[0].Gap != 0 {
			t.Fatalf("gap %d on the first frame", frames[0].Gap)
		}
	})
	t.Run("stream unavailable", func(t *testing.T) {
		fr.set("gs-nostream", gateway.Stored{}, fmt.Errorf("%w: no JetStream leader", gateway.ErrResumeTransient))
		calls := fr.calls.Load()
		st := dial(t, g.Addr)
		st.t = t
		// An impatient station sends without waiting for the WELCOME:
		// none of it may be stored.
		buf := frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: epoch, First: 1, Name: "gs-nostream"})
		for _, p := range v2Payloads(1, 3) {
			buf = frame.AppendData(buf, p)
		}
		if err := st.raw(buf); err != nil {
			t.Fatal(err)
		}
		st.refused(frame.ReasonBusy, 0)
		if fr.calls.Load() < calls+2 {
			t.Fatalf("the resume point was read %d times, want it asked again after the failure", fr.calls.Load()-calls)
		}
		if fr.calls.Load() == calls {
			t.Fatal("the resume point was never asked for")
		}
		if n := len(ofStation(mem, "gs-nostream")); n != 0 {
			t.Fatalf("%d frames stored of a session refused at its HELLO", n)
		}
	})
	t.Run("resume read refused for good", func(t *testing.T) {
		fr.set("gs-denied", gateway.Stored{}, errors.New("permissions violation"))
		calls := fr.calls.Load()
		st := dial(t, g.Addr)
		st.t = t
		st.hello(epoch, 1, "gs-denied")
		st.refused(frame.ReasonBusy, 0)
		if n := fr.calls.Load() - calls; n != 1 {
			t.Fatalf("the resume point was read %d times; an error that asking again cannot fix is not retried", n)
		}
	})
}

func TestV2Supersede(t *testing.T) {
	obs := &v2Observer{}
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem, gateway.WithObserver(obs))
	const epoch = 99
	a := dial(t, g.Addr)
	a.handshake(epoch, 1, "gs-a")
	a.send(v2Payloads(1, 5)...)
	a.ackAtLeast(5, wait)
	// Three more frames that the store holds back: A's final ACK must wait
	// for them, and B's WELCOME for A's end.
	release := mem.Hold()
	defer release()
	a.send(v2Payloads(6, 8)...)
	eventually(t, "session A to read 8 frames", func() bool {
		s, ok := snapshotOf(g, "gs-a")
		return ok && s.Frames == 8
	})

	// order numbers what the two stations see. It is causal, not a race of
	// readers: A closes its socket only after it read its CLOSE, and the
	// gateway writes B's WELCOME only once A's session has ended, which
	// waits (up to its linger) for that close.
	var order atomic.Int64
	type aEnd struct {
		acks   []uint64
		cl     *frame.Control
		closeN int64
		err    error
	}
	aDone := make(chan aEnd, 1)
	go func() {
		var res aEnd
		defer func() { aDone <- res }()
		for {
			c, err := a.next(wait)
			if err != nil {
				res.err = err
				a.conn.Close() // EOF: the station's side is done too
				return
			}
			switch c.Type {
			case frame.TypeAck:
				res.acks = append(res.acks, c.Ack)
			case frame.TypeClose:
				res.closeN = order.Add(1)
				cc := c
				res.cl = &cc
			}
		}
	}()

	b := dial(t, g.Addr)
	b.hello(epoch, 1, "gs-a")
	type bWelcome struct {
		c   frame.Control
		n   int64
		err error
	}
	bDone := make(chan bWelcome, 1)
	go func() {
		for {
			c, err := b.next(wait)
			if err != nil || c.Type != frame.TypeHeartbeat {
				bDone <- bWelcome{c, order.Add(1), err}
				return
			}
		}
	}()
	// While A's last frames are not stored, A cannot end, and B waits.
	hold := time.NewTimer(300 * time.Millisecond)
	select {
	case w := <-bDone:
		t.Fatalf("B got %v (next %d) while A's frames were not stored yet", w.c.Type, w.c.Next)
	case r := <-aDone:
		t.Fatalf("A ended (CLOSE %v, ACKs %v) while its frames were not stored yet", r.cl, r.acks)
	case <-hold.C:
	}
	release()

	ra := <-aDone
	if ra.cl == nil || ra.cl.Reason != frame.ReasonSuperseded {
		t.Fatalf("A: CLOSE %v, want superseded", ra.cl)
	}
	if len(ra.acks) == 0 || ra.acks[len(ra.acks)-1] != 8 {
		t.Fatalf("A: ACKs %v, want a final ACK 8 before its CLOSE", ra.acks)
	}
	if !errors.Is(ra.err, io.EOF) {
		t.Fatalf("A: ended with %v, want EOF after the CLOSE", ra.err)
	}
	rb := <-bDone
	if rb.err != nil || rb.c.Type != frame.TypeWelcome || rb.c.Next != 9 {
		t.Fatalf("B: got %v next %d err %v, want WELCOME next 9", rb.c.Type, rb.c.Next, rb.err)
	}
	if ra.closeN > rb.n {
		t.Fatalf("B's WELCOME (event %d) came before A's CLOSE (event %d)", rb.n, ra.closeN)
	}
	b.send(v2Payloads(9, 10)...)
	if last, cl := b.finish(wait); last != 10 || cl != nil {
		t.Fatalf("B: final ACK %d CLOSE %v, want 10", last, cl)
	}
	frames := ofStation(mem, "gs-a")
	checkSeqs(t, frames, epoch, 1, 10)
	if frames[7].Session == frames[8].Session {
		t.Fatalf("seqs 8 and 9 both from session %s", frames[8].Session)
	}
	if n := obs.superseded.Load(); n != 1 {
		t.Fatalf("%d supersedes counted, want 1", n)
	}
}

// A station that reconnects while its old session is still reading (the
// old connection looks alive to the gateway: a NAT dropped it) supersedes
// it without waiting for the old one's idle timeout.
func TestV2SupersedeAWaitingSession(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.TLSHandshakeTimeout = 2 * time.Second // bounds B's wait for A
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)
	a := dial(t, g.Addr)
	a.handshake(5, 1, "gs-nat")
	a.send(v2Payloads(1, 3)...)
	a.ackAtLeast(3, wait)
	b := dial(t, g.Addr)
	if next := b.handshake(5, 1, "gs-nat"); next != 4 {
		t.Fatalf("WELCOME next %d, want 4", next)
	}
	last, cl := a.drainToEOF(wait)
	if last != 3 || cl == nil || cl.Reason != frame.ReasonSuperseded {
		t.Fatalf("A: final ACK %d CLOSE %v, want 3 and superseded", last, cl)
	}
	b.send(v2Payloads(4, 4)...)
	if last, _ := b.finish(wait); last != 4 {
		t.Fatalf("B: final ACK %d, want 4", last)
	}
	checkSeqs(t, ofStation(mem, "gs-nat"), 5, 1, 4)
}

func TestV2Identity(t *testing.T) {
	t.Run("a HELLO name is the identity", func(t *testing.T) {
		mem := sink.NewMemory()
		g := gatewaytest.Start(t, gatewaytest.Config(), mem)
		st := dial(t, g.Addr)
		st.handshake(1, 1, "gs-named")
		st.send(v2Payloads(1, 2)...)
		st.ackAtLeast(2, wait)
		if snap, ok := snapshotOf(g, "gs-named"); !ok || snap.Epoch != 1 {
			t.Fatalf("Sessions: %+v (found %v)", snap, ok)
		}
		st.finish(wait)
		if frames := ofStation(mem, "gs-named"); len(frames) != 2 || mem.Len() != 2 {
			t.Fatalf("%d frames of gs-named among %d", len(frames), mem.Len())
		}
	})

	t.Run("allow-list", func(t *testing.T) {
		cfg := gatewaytest.Config()
		cfg.IdleTimeout = 300 * time.Millisecond
		mem := sink.NewMemory()
		obs := &v2Observer{}
		g := gatewaytest.Start(t, cfg, mem, gateway.WithObserver(obs), gateway.WithAllow(func(id string) bool { return id == "gs-ok" }))
		t.Run("allowed name from a refused IP", func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			st.handshake(1, 1, "gs-ok")
			st.send(v2Payloads(1, 2)...)
			st.ackAtLeast(2, wait)
			if snap, ok := snapshotOfConn(g, st); !ok || snap.Station != "gs-ok" || snap.Unverified {
				t.Fatalf("Sessions: %+v (found %v), want station gs-ok, verified", snap, ok)
			}
			if last, cl := st.finish(wait); last != 2 || cl != nil {
				t.Fatalf("final ACK %d CLOSE %v", last, cl)
			}
		})
		t.Run("name not allowed", func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			st.hello(1, 1, "gs-no")
			st.refused(frame.ReasonUnauthorized, 0)
		})
		t.Run("no name from a refused IP", func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			st.hello(1, 1, "")
			st.refused(frame.ReasonUnauthorized, 0)
		})
		t.Run("v1 from a refused IP", func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			st.send([]byte("must not be stored"))
			st.refused(frame.ReasonUnauthorized, 0)
		})
		t.Run("v1 keepalive from a refused IP", func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			if err := st.raw(frame.AppendHeader(nil, 0)); err != nil {
				t.Fatal(err)
			}
			st.refused(frame.ReasonUnauthorized, 0)
		})
		t.Run("silent station from a refused IP", func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			st.refused(frame.ReasonUnauthorized, 0) // at the idle timeout, not CLOSE(2)
		})
		// Each refusal is counted once, with those refused at connect.
		eventually(t, "5 refusals counted", func() bool { return obs.unauthorized.Load() >= 5 })
		if n := obs.unauthorized.Load(); n != 5 {
			t.Fatalf("%d refusals counted, want 5", n)
		}
		frames := mem.Frames()
		if len(frames) != 2 {
			t.Fatalf("sink holds %d frames, want only gs-ok's 2", len(frames))
		}
		for _, f := range frames {
			if f.Station != "gs-ok" {
				t.Fatalf("a frame of %q was stored", f.Station)
			}
		}
	})

	t.Run("mTLS", func(t *testing.T) {
		ca := tlstest.NewCA(t, "meridian test CA")
		g, mem := tlsGateway(t, gatewaytest.Config(), ca, true)
		const certID = "gs-kiruna.example.net"
		dialCert := func(t *testing.T) *testStation {
			st, err := dialTLS(t, g.Addr, ca.ClientConfig(ca.Client(t, certID)))
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
		t.Run("a name other than the certificate's", func(t *testing.T) {
			st := dialCert(t)
			st.hello(1, 1, "gs-other.example.net")
			st.refused(frame.ReasonUnauthorized, 0)
		})
		for i, name := range []string{certID, ""} {
			t.Run(fmt.Sprintf("name %q", name), func(t *testing.T) {
				st := dialCert(t)
				epoch := uint64(10 + i)
				if next := st.handshake(epoch, 1, name); next != 1 {
					t.Fatalf("WELCOME next %d", next)
				}
				st.send(v2Payloads(1, 1)...)
				if last, cl := st.finish(wait); last != 1 || cl != nil {
					t.Fatalf("final ACK %d CLOSE %v", last, cl)
				}
			})
		}
		frames := mem.Frames()
		if len(frames) != 2 {
			t.Fatalf("sink holds %d frames, want 2", len(frames))
		}
		for _, f := range frames {
			if f.Station != certID {
				t.Fatalf("frame stored as %q, want the certificate's %q", f.Station, certID)
			}
		}
	})
}

// helloBytes is a HELLO frame with its fields as given, however wrong.
func helloBytes(version uint8, epoch, first uint64, nameLen uint16, name string) []byte {
	p := []byte{byte(frame.CtlHello), version}
	p = binary.BigEndian.AppendUint64(p, epoch)
	p = binary.BigEndian.AppendUint64(p, first)
	p = binary.BigEndian.AppendUint16(p, nameLen)
	return controlFrame(append(p, name...))
}

// controlFrame frames p as a station control frame.
func controlFrame(p []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, frame.ControlBit|uint32(len(p))), p...)
}

func TestV2ControlErrors(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.FrameTimeout = 2 * time.Second // a header judged late would get CLOSE(3)
	cfg.Heartbeat = 0
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)
	data := frame.AppendData(nil, []byte("one data frame"))
	for _, tc := range []struct {
		name string
		v2   bool // says a good HELLO first
		send []byte
		ack  uint64
	}{
		{"unknown control type first", false, controlFrame([]byte{0x7f}), 0},
		{"unknown control type in v2", true, append(append([]byte(nil), data...), controlFrame([]byte{0x7f})...), 1},
		{"empty control frame", false, controlFrame(nil), 0},
		{"HELLO after a data frame", false, append(append([]byte(nil), data...), frame.AppendHello(nil, frame.Hello{Version: 2, Epoch: 1, First: 1})...), 1},
		{"a second HELLO", true, frame.AppendHello(nil, frame.Hello{Version: 2, Epoch: 1, First: 1}), 0},
		{"PONG first", false, frame.AppendPong(nil), 0},
		{"PONG in a v1 session", false, append(append([]byte(nil), data...), frame.AppendPong(nil)...), 1},
		{"HELLO epoch 0", false, helloBytes(2, 0, 1, 0, ""), 0},
		{"HELLO first 0", false, helloBytes(2, 1, 0, 0, ""), 0},
		{"HELLO version 3", false, helloBytes(3, 1, 1, 0, ""), 0},
		{"HELLO short", false, controlFrame([]byte{byte(frame.CtlHello), 2, 0, 0, 0, 0, 0, 0, 0, 1}), 0},
		{"HELLO name length beyond the payload", false, helloBytes(2, 1, 1, 10, "abc"), 0},
		{"HELLO name of 256 bytes", false, helloBytes(2, 1, 1, 256, ""), 0},
		{"HELLO name not UTF-8", false, helloBytes(2, 1, 1, 2, "\xff\xfe"), 0},
		{"control length above MaxControl", false, binary.BigEndian.AppendUint32(nil, frame.ControlBit|(frame.MaxControl+1)), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			name := fmt.Sprintf("gs-ctl-%p", st)
			if tc.v2 {
				st.handshake(1, 1, name)
			}
			before := mem.Len()
			if err := st.raw(tc.send); err != nil {
				t.Fatal(err)
			}
			st.refused(frame.ReasonControl, tc.ack)
			if got := mem.Len() - before; uint64(got) != tc.ack {
				t.Fatalf("%d frames stored, want %d", got, tc.ack)
			}
		})
	}
	t.Run("HELLO with the longest name", func(t *testing.T) {
		st := dial(t, g.Addr)
		st.t = t
		name := make([]byte, frame.MaxName)
		for i := range name {
			name[i] = 'a' + byte(i%26)
		}
		b := frame.AppendHello(nil, frame.Hello{Version: 2, Epoch: 1, First: 1, Name: string(name)})
		if l, _ := frame.Length(b); l&^frame.ControlBit != frame.MaxControl {
			t.Fatalf("HELLO of %d bytes, want MaxControl", l&^frame.ControlBit)
		}
		if err := st.raw(b); err != nil {
			t.Fatal(err)
		}
		st.welcome(1)
		if _, ok := snapshotOf(g, string(name)); !ok {
			t.Fatal("no session with the 255-byte name as its identity")
		}
		st.finish(wait)
	})
}

func TestV2LeavesV1Unchanged(t *testing.T) {
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem)
	for round, n := range []int{5, 3} {
		st := dial(t, g.Addr)
		st.raw(frame.AppendHeader(nil, 0)) // a keepalive first is v1 too
		var ps [][]byte
		for i := range n {
			ps = append(ps, payload(round, i))
		}
		st.send(ps...)
		st.ackAtLeast(uint64(n), wait) // per connection: a reconnect counts from 0
		if snap, ok := snapshotOfConn(g, st); !ok || snap.Epoch != 0 || snap.AckedSeq != 0 || snap.Acked != uint64(n) {
			t.Fatalf("round %d: Sessions %+v (found %v), want a v1 session: epoch 0, acked %d", round, snap, ok, n)
		}
		if last, cl := st.finish(wait); last != uint64(n) || cl != nil {
			t.Fatalf("round %d: final ACK %d CLOSE %v", round, last, cl)
		}
	}
	by := mem.BySession()
	if len(by) != 2 {
		t.Fatalf("%d sessions in the sink, want 2", len(by))
	}
	for _, frames := range by {
		var round int
		fmt.Sscanf(string(frames[0].Payload), "station-%d", &round)
		want := make([][]byte, []int{5, 3}[round])
		for i := range want {
			want[i] = payload(round, i)
		}
		checkPrefix(t, frames, want) // per-session Seq from 1
		if len(frames) != len(want) {
			t.Fatalf("round %d: %d frames stored, want %d", round, len(frames), len(want))
		}
		for _, f := range frames {
			// Epoch 0 is what makes the stream sink name it <boot>/<session>/<seq>.
			if f.Epoch != 0 || f.Acked != 0 || f.Gap != 0 || f.Station != "127.0.0.1" {
				t.Fatalf("v1 frame with v2 fields: %+v", f)
			}
		}
	}
}

func TestV2PongTimesTheLink(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.Heartbeat = 20 * time.Millisecond
	obs := &v2Observer{}
	g := gatewaytest.Start(t, cfg, sink.NewDiscard(), gateway.WithObserver(obs))
	st := dial(t, g.Addr)
	const epoch = 3
	st.handshake(epoch, 1, "gs-pong")
	// A PONG before any HEARTBEAT answers nothing and is no error.
	if err := st.raw(frame.AppendPong(nil)); err != nil {
		t.Fatal(err)
	}

	var wmu sync.Mutex  // the answering reader and the test both write
	var halfClosed bool // guarded by wmu: no PONG after the half-close
	write := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		if halfClosed {
			return nil
		}
		return st.raw(b)
	}
	var heartbeats, lastAck atomic.Int64
	type end struct {
		cl  *frame.Control
		err error
	}
	ended := make(chan end, 1)
	go func() {
		for {
			c, err := st.next(wait)
			if err != nil {
				ended <- end{nil, err}
				return
			}
			switch c.Type {
			case frame.TypeHeartbeat:
				heartbeats.Add(1)
				if err := write(frame.AppendPong(nil)); err != nil {
					ended <- end{nil, err}
					return
				}
			case frame.TypeAck:
				lastAck.Store(int64(c.Ack))
			case frame.TypeClose:
				cc := c
				ended <- end{&cc, nil}
				return
			}
		}
	}()
	for _, p := range v2Payloads(1, 3) {
		if err := write(frame.AppendData(nil, p)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a timed round trip, epoch and acked seq in Sessions", func() bool {
		s, ok := snapshotOf(g, "gs-pong")
		return ok && s.RTT > 0 && s.Epoch == epoch && s.AckedSeq == 3 && heartbeats.Load() >= 3
	})
	if obs.rtts.Load() == 0 {
		t.Fatal("no round trip reported to the observer")
	}
	wmu.Lock()
	halfClosed = true
	err := st.conn.CloseWrite()
	wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if e := <-ended; e.cl != nil || !errors.Is(e.err, io.EOF) {
		t.Fatalf("the session ended with CLOSE %v, err %v; want EOF without CLOSE", e.cl, e.err)
	}
	if got := lastAck.Load(); got != 3 {
		t.Fatalf("final ACK %d, want 3", got)
	}
}

// A station that reconnects twice in a row while its first session still
// has frames in flight: the second session is superseded while it waits for
// the first, and the third must still wait for the first to end (one
// writer per station, and a resume point read only once the old session's
// frames are stored), not only for the second.
func TestV2SupersedeDuringTheHandshake(t *testing.T) {
	obs := &v2Observer{}
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem, gateway.WithObserver(obs))
	const epoch = 11
	a := dial(t, g.Addr)
	a.handshake(epoch, 1, "gs-chain")
	a.send(v2Payloads(1, 5)...)
	a.ackAtLeast(5, wait)
	release := mem.Hold()
	defer release()
	a.send(v2Payloads(6, 8)...)
	eventually(t, "session A to read 8 frames", func() bool {
		s, ok := snapshotOf(g, "gs-chain")
		return ok && s.Frames == 8
	})

	b := dial(t, g.Addr)
	b.hello(epoch, 1, "gs-chain")
	eventually(t, "B to supersede A", func() bool { return obs.superseded.Load() == 1 })
	c := dial(t, g.Addr)
	c.hello(epoch, 1, "gs-chain")
	// B never gets its WELCOME: it is told another session of it is live,
	// before or after A's end.
	bDone := make(chan *frame.Control, 1)
	go func() {
		var cl *frame.Control
		for {
			ctl, err := b.next(wait)
			if err != nil {
				b.conn.Close()
				bDone <- cl
				return
			}
			if ctl.Type == frame.TypeClose || ctl.Type == frame.TypeWelcome {
				cc := ctl
				cl = &cc
			}
		}
	}()
	cDone := make(chan frame.Control, 1)
	go func() {
		for {
			ctl, err := c.next(wait)
			if err != nil || ctl.Type != frame.TypeHeartbeat {
				cDone <- ctl // the zero Control on error
				return
			}
		}
	}()
	hold := time.NewTimer(300 * time.Millisecond)
	select {
	case ctl := <-cDone:
		t.Fatalf("C got %v (next %d) while A, superseded, still had frames in flight", ctl.Type, ctl.Next)
	case <-hold.C:
	}
	release()
	if last, cl := a.drainToEOF(wait); last != 8 || cl == nil || cl.Reason != frame.ReasonSuperseded {
		t.Fatalf("A: final ACK %d CLOSE %v, want 8 and superseded", last, cl)
	}
	a.conn.Close()
	if cl := <-bDone; cl == nil || cl.Type != frame.TypeClose || cl.Reason != frame.ReasonSuperseded {
		t.Fatalf("B: got %+v, want CLOSE superseded and no WELCOME", cl)
	}
	if ctl := <-cDone; ctl.Type != frame.TypeWelcome || ctl.Next != 9 {
		t.Fatalf("C: got %v next %d, want WELCOME next 9", ctl.Type, ctl.Next)
	}
	if last, _ := c.finish(wait); last != 8 {
		t.Fatalf("C: final ACK %d, want 8", last)
	}
	checkSeqs(t, ofStation(mem, "gs-chain"), epoch, 1, 8)
}

// A graceful shutdown drains a v2 session like a v1 one, with its final ACK
// absolute; a HELLO that comes during the drain is refused with CLOSE(1).
func TestV2Shutdown(t *testing.T) {
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem)
	x := dial(t, g.Addr)
	x.handshake(21, 1, "gs-drain")
	x.send(v2Payloads(1, 3)...)
	x.ackAtLeast(3, wait)
	late := dial(t, g.Addr) // says nothing before the shutdown
	eventually(t, "both sessions to be registered", func() bool { return len(g.Server.Sessions()) == 2 })

	done := make(chan error, 1)
	go func() { done <- g.Shutdown(t, wait) }()
	x.expect(frame.TypeGoAway, wait)
	x.send(v2Payloads(4, 5)...) // still taken after GOAWAY
	last, cl := x.finish(wait)
	if last != 5 || cl == nil || cl.Reason != frame.ReasonShutdown {
		t.Fatalf("drained v2 session: final ACK %d CLOSE %v, want 5 and shutdown", last, cl)
	}
	late.expect(frame.TypeGoAway, wait)
	late.hello(22, 1, "gs-late")
	late.refused(frame.ReasonShutdown, 0)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	checkSeqs(t, mem.Frames(), 21, 1, 5)
}
