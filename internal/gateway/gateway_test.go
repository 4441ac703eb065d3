package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 10 * time.Second

// eventually polls cond until it holds or the test's patience runs out.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// framesRead sums the frames that live sessions have read.
func framesRead(g *gatewaytest.Gateway) (sessions int, frames uint64) {
	for _, s := range g.Server.Sessions() {
		sessions++
		frames += s.Frames
	}
	return sessions, frames
}

func payload(station, i int) []byte { return fmt.Appendf(nil, "station-%d frame-%d", station, i) }

// checkPrefix asserts that the frames stored for one session are exactly the
// first len(got) of want, in order, with sequence numbers 1..n.
func checkPrefix(t *testing.T, got []pipeline.Frame, want [][]byte) {
	t.Helper()
	if len(got) > len(want) {
		t.Fatalf("sink holds %d frames of a session that sent %d", len(got), len(want))
	}
	for i, f := range got {
		if f.Seq != uint64(i+1) {
			t.Fatalf("frame %d has seq %d", i, f.Seq)
		}
		if !bytes.Equal(f.Payload, want[i]) {
			t.Fatalf("frame %d = %q, want %q", i, f.Payload, want[i])
		}
	}
}

func TestSendAckAndCleanHalfClose(t *testing.T) {
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem)
	st := dial(t, g.Addr)
	var want [][]byte
	for i := range 100 {
		want = append(want, payload(0, i))
	}
	st.send(want[:50]...)
	st.ackAtLeast(50, wait)
	st.send(want[50:]...)
	st.raw(frame.AppendHeader(nil, 0)) // keepalive: not forwarded
	last, cl := st.finish(wait)
	if last != 100 {
		t.Fatalf("final ACK %d, want 100", last)
	}
	if cl != nil {
		t.Fatalf("clean half-close got CLOSE(%d)", cl.Reason)
	}
	frames := mem.Frames()
	checkPrefix(t, frames, want)
	if len(frames) != 100 {
		t.Fatalf("sink holds %d frames, want 100", len(frames))
	}
	if f := frames[0]; f.Station != "127.0.0.1" || f.Session == "" || f.Received.IsZero() {
		t.Fatalf("frame metadata: %+v", f)
	}
}

func TestSessionOutcomes(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.MaxFrame = 1024
	cfg.IdleTimeout = 300 * time.Millisecond
	cfg.FrameTimeout = 200 * time.Millisecond
	cfg.Heartbeat = 0
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)

	f := func(name string, act func(st *testStation), wantAck uint64, wantClose frame.Reason) {
		t.Run(name, func(t *testing.T) {
			st := dial(t, g.Addr)
			st.t = t
			act(st)
			last, cl := st.drainToEOF(wait)
			if last != wantAck {
				t.Errorf("final ACK %d, want %d", last, wantAck)
			}
			switch {
			case wantClose == 0 && cl != nil:
				t.Errorf("got CLOSE(%d %q), want none", cl.Reason, cl.Text)
			case wantClose != 0 && cl == nil:
				t.Errorf("got no CLOSE, want %d", wantClose)
			case wantClose != 0 && cl.Reason != wantClose:
				t.Errorf("got CLOSE(%d %q), want %d", cl.Reason, cl.Text, wantClose)
			}
		})
	}
	one := frame.AppendData(nil, []byte("kept"))
	f("oversized", func(st *testStation) {
		st.raw(append(one, frame.AppendHeader(nil, 1025)...))
	}, 1, frame.ReasonTooLarge)
	f("oversized, with more behind it", func(st *testStation) {
		// The bytes after the bad header are never read by the session;
		// the gateway must still end with FIN, not RST, so that the final
		// ACK and CLOSE are not lost.
		junk := make([]byte, 64*1024)
		st.raw(append(append(one, frame.AppendHeader(nil, 1025)...), junk...))
	}, 1, frame.ReasonTooLarge)
	f("control bit", func(st *testStation) {
		st.raw(append(one, 0x80, 0, 0, 1, 0x42))
	}, 1, frame.ReasonControl)
	f("idle timeout", func(st *testStation) {
		st.raw(one)
	}, 1, frame.ReasonIdleTimeout)
	f("frame timeout", func(st *testStation) {
		st.raw(append(one, frame.AppendHeader(nil, 10)[:4]...)) // header, no payload
	}, 1, frame.ReasonFrameTimeout)
	f("EOF inside header", func(st *testStation) {
		st.raw(append(one, 0, 0))
		st.conn.CloseWrite()
	}, 1, 0)
	f("EOF inside payload", func(st *testStation) {
		st.raw(append(one, append(frame.AppendHeader(nil, 10), "abc"...)...))
		st.conn.CloseWrite()
	}, 1, 0)
	f("keepalives hold the session open", func(st *testStation) {
		// Five keepalives 100 ms apart span past the 300 ms idle timeout;
		// each resets it, so the session ends only by the half-close.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for range 5 {
			<-tick.C
			st.raw(frame.AppendHeader(nil, 0))
		}
		st.raw(one)
		st.conn.CloseWrite()
	}, 1, 0)
}

func TestLargeFrames(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.MaxFrame = 1 << 20
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)
	st := dial(t, g.Addr)
	var want [][]byte
	for i, n := range []int{1 << 20, 100, 64*1024 - 4, 64 * 1024, 70000, 1, 300000} {
		p := bytes.Repeat([]byte{byte(i + 1)}, n)
		want = append(want, p)
	}
	st.send(want...)
	last, _ := st.finish(wait)
	if last != uint64(len(want)) {
		t.Fatalf("final ACK %d, want %d", last, len(want))
	}
	checkPrefix(t, mem.Frames(), want)
}

func TestHeartbeats(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.Heartbeat = 50 * time.Millisecond
	g := gatewaytest.Start(t, cfg, sink.NewDiscard())
	st := dial(t, g.Addr)
	for range 3 {
		st.expect(frame.TypeHeartbeat, wait)
	}
}

func TestBackPressureWithoutLoss(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.Queue = 8
	mem := sink.NewMemory()
	resume := mem.Hold()
	g := gatewaytest.Start(t, cfg, mem)
	st := dial(t, g.Addr)
	var want [][]byte
	for i := range 2000 {
		want = append(want, payload(0, i))
	}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for _, p := range want {
			if _, err := st.conn.Write(frame.AppendData(nil, p)); err != nil {
				return
			}
		}
	}()
	// While the store is unavailable the queue fills and the session is
	// pushed back: it stops reading, and nothing is acknowledged.
	eventually(t, "the queue to fill and the session to block", func() bool {
		st := g.Server.Aggregator().Stats()
		return st.Waiting == 1
	})
	if _, read := framesRead(g); read > uint64(2*cfg.Queue) {
		t.Fatalf("the session queued %d frames with a queue of %d held by the sink", read, cfg.Queue)
	}
	if c, err := st.next(300 * time.Millisecond); err == nil {
		t.Fatalf("got %v (ack %d) while the sink held everything", c.Type, c.Ack)
	}
	for _, s := range g.Server.Sessions() {
		if s.Acked != 0 {
			t.Fatalf("session acknowledged %d frames while the sink held everything", s.Acked)
		}
	}
	resume()
	<-sent
	last, _ := st.finish(wait)
	if last != 2000 {
		t.Fatalf("final ACK %d, want 2000", last)
	}
	checkPrefix(t, mem.Frames(), want)
}

func TestManyStations(t *testing.T) {
	const stations, frames = 500, 20
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem)
	var wg sync.WaitGroup
	errs := make(chan error, stations)
	for i := range stations {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", g.Addr, wait)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			var buf []byte
			for j := range frames {
				buf = frame.AppendData(buf, payload(i, j))
			}
			if _, err := c.Write(buf); err != nil {
				errs <- err
				return
			}
			c.(*net.TCPConn).CloseWrite()
			st := &testStation{t: t, conn: c.(*net.TCPConn), r: newReader(c)}
			var last uint64
			_ = c.SetReadDeadline(time.Now().Add(wait))
			for {
				cf, err := st.next(wait)
				if err != nil {
					break
				}
				if cf.Type == frame.TypeAck {
					last = cf.Ack
				}
			}
			if last != frames {
				errs <- fmt.Errorf("station %d: final ACK %d, want %d", i, last, frames)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	by := mem.BySession()
	if len(by) != stations {
		t.Fatalf("sink has %d sessions, want %d", len(by), stations)
	}
	for id, fs := range by {
		if len(fs) != frames {
			t.Fatalf("%s: %d frames", id, len(fs))
		}
		var idx int
		fmt.Sscanf(string(fs[0].Payload), "station-%d", &idx)
		want := make([][]byte, frames)
		for j := range want {
			want[j] = payload(idx, j)
		}
		checkPrefix(t, fs, want)
	}
}

// TestShutdownLosesNothing runs stations that keep sending through a graceful
// shutdown. Half of them cooperate (half-close on GOAWAY); the others ignore
// GOAWAY and are cut at the drain deadline.
func TestShutdownLosesNothing(t *testing.T) {
	const stations = 40
	cfg := gatewaytest.Config()
	cfg.DrainTimeout = 3 * time.Second
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)

	type result struct {
		idx      int
		sent     int
		lastAck  uint64
		closeR   frame.Reason
		goAway   bool
		cooperat bool
	}
	results := make(chan result, stations)
	started := make(chan struct{}, stations)
	var wg sync.WaitGroup
	for i := range stations {
		wg.Go(func() {
			res := result{idx: i, cooperat: i%2 == 0}
			defer func() { results <- res }()
			c, err := net.DialTimeout("tcp", g.Addr, wait)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			tc := c.(*net.TCPConn)
			// Like a real station, keep a bounded window of unacknowledged
			// frames, so that a cooperating station's backlog drains well
			// within the drain timeout even on a loaded machine.
			const window = 256
			var acked atomic.Uint64
			ackCh := make(chan struct{}, 1)
			goaway := make(chan struct{})
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				st := &testStation{t: t, conn: tc, r: newReader(c)}
				for {
					cf, err := st.next(wait)
					if err != nil {
						return
					}
					switch cf.Type {
					case frame.TypeGoAway:
						res.goAway = true
						close(goaway)
					case frame.TypeAck:
						res.lastAck = cf.Ack
						acked.Store(cf.Ack)
						select {
						case ackCh <- struct{}{}:
						default:
						}
					case frame.TypeClose:
						res.closeR = cf.Reason
					}
				}
			}()
			first := true
			ga := goaway
		send:
			for j := 0; ; j++ {
				for uint64(res.sent)-acked.Load() >= window {
					select {
					case <-ackCh:
					case <-ga:
						if res.cooperat {
							tc.CloseWrite()
							break send
						}
						ga = nil // ignored, as an old station would
					case <-readDone:
						break send
					}
				}
				if res.cooperat {
					select {
					case <-goaway:
						tc.CloseWrite()
						break send
					default:
					}
				}
				_ = c.SetWriteDeadline(time.Now().Add(wait))
				if _, err := c.Write(frame.AppendData(nil, payload(i, j))); err != nil {
					break // the gateway cut us: frames after k are not ours to count
				}
				res.sent++
				if first {
					first = false
					started <- struct{}{}
				}
			}
			<-readDone
		})
	}
	for range stations {
		<-started
	}
	eventually(t, "every station to have a session with frames", func() bool {
		for _, s := range g.Server.Sessions() {
			if s.Frames == 0 {
				return false
			}
		}
		n, _ := framesRead(g)
		return n == stations
	})
	// Every station is mid-stream now.
	if err := g.Shutdown(t, wait); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wg.Wait()
	close(results)

	by := make(map[int][]pipeline.Frame)
	for _, f := range mem.Frames() {
		var idx int
		fmt.Sscanf(string(f.Payload), "station-%d", &idx)
		by[idx] = append(by[idx], f)
	}
	for res := range results {
		got := by[res.idx]
		want := make([][]byte, res.sent)
		for j := range want {
			want[j] = payload(res.idx, j)
		}
		checkPrefix(t, got, want)
		if res.lastAck != uint64(len(got)) {
			t.Errorf("station %d: final ACK %d but sink holds %d", res.idx, res.lastAck, len(got))
		}
		if !res.goAway || res.closeR != frame.ReasonShutdown {
			t.Errorf("station %d: goaway=%v close=%d", res.idx, res.goAway, res.closeR)
		}
		if res.cooperat && len(got) != res.sent {
			t.Errorf("cooperating station %d sent %d, sink holds %d", res.idx, res.sent, len(got))
		}
	}
}

// TestShutdownForcedByGrace shows the grace period bounding a shutdown that
// cannot complete: the sink never commits.
func TestShutdownForcedByGrace(t *testing.T) {
	mem := sink.NewMemory()
	resume := mem.Hold()
	defer resume()
	cfg := gatewaytest.Config()
	cfg.DrainTimeout = 100 * time.Millisecond
	g := gatewaytest.Start(t, cfg, mem)
	st := dial(t, g.Addr)
	st.send([]byte("a"), []byte("b"))
	eventually(t, "the session to read 2 frames", func() bool {
		_, n := framesRead(g)
		return n == 2
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := g.Server.Shutdown(ctx)
	var fe *gateway.ForcedError
	if !errors.As(err, &fe) || fe.Frames != 2 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want a forced stop abandoning 2 frames", err)
	}
}

func TestSessionIDs(t *testing.T) {
	g := gatewaytest.Start(t, gatewaytest.Config(), sink.NewDiscard())
	a := dial(t, g.Addr)
	a.send([]byte("x"))
	a.ackAtLeast(1, wait)
	b := dial(t, g.Addr)
	b.send([]byte("y"))
	b.ackAtLeast(1, wait)
	ids := map[string]bool{}
	for _, s := range g.Server.Sessions() {
		ids[s.ID] = true
	}
	for _, st := range []*testStation{a, b} {
		id := ""
		for i := 1; i <= 2; i++ {
			if c := fmt.Sprintf("gs-%d@%s", i, st.conn.LocalAddr()); ids[c] {
				id = c
			}
		}
		if id == "" {
			t.Fatalf("no session id for %s in %v", st.conn.LocalAddr(), ids)
		}
	}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func TestGatewayToStationBytes(t *testing.T) {
	// The worked example of docs/protocol.md.
	ack := frame.AppendAck(nil, 3)
	want := []byte{0, 0, 0, 9, 0x02, 0, 0, 0, 0, 0, 0, 0, 3}
	if !bytes.Equal(ack, want) {
		t.Fatalf("ACK(3) = % x", ack)
	}
	cl := frame.AppendClose(nil, frame.ReasonIdleTimeout, "idle timeout")
	if binary.BigEndian.Uint32(cl) != uint32(3+len("idle timeout")) || cl[4] != 0x03 || cl[6] != 2 {
		t.Fatalf("CLOSE = % x", cl)
	}
}

// TestPeerThatNeverReadsOverTCP: a station that never reads keeps being
// served, does not disturb another station, and does not hold up shutdown.
// (That a blocked write drops control frames while reads go on is shown on
// the fake clock in package session, where a write really blocks.)
func TestPeerThatNeverReadsOverTCP(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.WriteTimeout = 200 * time.Millisecond
	cfg.Heartbeat = 10 * time.Millisecond
	cfg.DrainTimeout = 500 * time.Millisecond
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)

	deaf, err := net.Dial("tcp", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer deaf.Close()
	_ = deaf.(*net.TCPConn).SetReadBuffer(4096) // and it never reads
	var buf []byte
	for i := range 20000 {
		buf = frame.AppendData(buf, payload(1, i))
	}
	if _, err := deaf.Write(buf); err != nil {
		t.Fatal(err)
	}

	good := dial(t, g.Addr)
	for i := range 100 {
		good.send(payload(2, i))
		good.ackAtLeast(uint64(i+1), wait)
	}
	if last, _ := good.finish(wait); last != 100 {
		t.Fatalf("good station: final ACK %d", last)
	}
	eventually(t, "all of the deaf station's frames in the sink", func() bool { return mem.Len() == 20100 })
	if err := g.Shutdown(t, wait); err != nil {
		t.Fatalf("Shutdown with a deaf station: %v", err)
	}
}
