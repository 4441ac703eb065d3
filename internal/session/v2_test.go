package session_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/session"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// Protocol v2 at the session level, on net.Pipe and the bubble's fake clock:
// the PONG round trip, the heartbeat schedule of a v2 session, and the
// supersede's wake-up of a blocked reader.

// welcomeFirst is a handshaker that resumes every station at its own first
// frame, as the gateway does for an identity it has never seen.
type welcomeFirst struct{}

func (welcomeFirst) Hello(_ context.Context, _ *session.Session, h frame.Hello) (session.Welcome, frame.Reason, error) {
	return session.Welcome{Station: "gs-v2", Next: h.First}, 0, nil
}

// rttObserver records the heartbeat round trips the session reports.
type rttObserver struct {
	mu   sync.Mutex
	rtts []time.Duration
}

func (*rttObserver) Received(int, int)            {}
func (*rttObserver) ObserveFrameSize(int)         {}
func (*rttObserver) Committed(int, time.Duration) {}
func (*rttObserver) HeartbeatSent()               {}
func (*rttObserver) AckSent()                     {}
func (o *rttObserver) HeartbeatRTT(d time.Duration) {
	o.mu.Lock()
	o.rtts = append(o.rtts, d)
	o.mu.Unlock()
}

func (o *rttObserver) got() []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Duration(nil), o.rtts...)
}

// newV2Rig is newRig for a session that admits v2 (cfg.Hello, welcomeFirst
// when unset), with an observer and, when wrap is set, the gateway's side of
// the pipe wrapped.
func newV2Rig(t *testing.T, cfg session.Config, obs session.Observer, wrap func(net.Conn) net.Conn) *rig {
	gw, station := net.Pipe()
	var conn net.Conn = gw
	if wrap != nil {
		conn = wrap(gw)
	}
	if cfg.Hello == nil {
		cfg.Hello = welcomeFirst{}
	}
	r := &rig{t: t, station: station, mem: sink.NewMemory(), reason: make(chan frame.Reason, 1), aggDone: make(chan struct{})}
	r.agg = pipeline.New(r.mem, 16)
	go func() {
		defer close(r.aggDone)
		r.agg.Run(context.Background())
	}()
	r.sess = session.New(conn, session.Info{ID: "gs-1@pipe", Station: "pipe"}, cfg, r.agg, quiet, obs)
	ctx, stop := context.WithCancel(context.Background())
	go func() { r.reason <- r.sess.Run(ctx) }()
	// A test that fails half-way still ends every goroutine of the bubble:
	// the forced stop ends Run, whether or not end was called.
	t.Cleanup(func() {
		stop()
		station.Close()
		r.agg.Close()
		<-r.aggDone
	})
	return r
}

// sayHello says HELLO and reads the WELCOME.
func (r *rig) sayHello(epoch, first uint64) frame.Control {
	r.t.Helper()
	if _, err := r.station.Write(frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: epoch, First: first})); err != nil {
		r.t.Fatalf("HELLO: %v", err)
	}
	c, err := r.read()
	if err != nil || c.Type != frame.TypeWelcome {
		r.t.Fatalf("after HELLO got %v, %v; want WELCOME", c.Type, err)
	}
	if c.Version != frame.Version2 || c.Epoch != epoch || c.Next != first {
		r.t.Fatalf("WELCOME version %d epoch %d next %d, want 2, %d, %d", c.Version, c.Epoch, c.Next, epoch, first)
	}
	return c
}

func TestV2PongRoundTripOnTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.IdleTimeout = time.Hour
		obs := &rttObserver{}
		r := newV2Rig(t, cfg, obs, nil)
		start := time.Now()
		r.sayHello(7, 1)
		delays := []time.Duration{2 * time.Millisecond, 5 * time.Millisecond}
		for i, d := range delays {
			c, err := r.read()
			if err != nil || c.Type != frame.TypeHeartbeat {
				t.Fatalf("got %v, %v; want HEARTBEAT", c.Type, err)
			}
			// The schedule restarts at each heartbeat written, not at the
			// PONG: heartbeat i comes at i intervals.
			if at, want := time.Since(start), time.Duration(i+1)*cfg.Heartbeat; at != want {
				t.Fatalf("heartbeat %d after %v, want %v", i+1, at, want)
			}
			time.Sleep(d) // the link's round trip, on the fake clock
			if _, err := r.station.Write(frame.AppendPong(nil)); err != nil {
				t.Fatal(err)
			}
			synctest.Wait() // the session has read and timed the PONG
			if got := r.sess.Stats().RTT; got != d {
				t.Fatalf("RTT %v after a PONG %v after the HEARTBEAT", got, d)
			}
		}
		// A PONG that answers no heartbeat is accepted and times nothing.
		if _, err := r.station.Write(frame.AppendPong(nil)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := r.sess.Stats().RTT; got != delays[1] {
			t.Fatalf("an unsolicited PONG changed the RTT to %v", got)
		}
		if got := obs.got(); len(got) != 2 || got[0] != delays[0] || got[1] != delays[1] {
			t.Fatalf("observed round trips %v, want %v", got, delays)
		}
		r.station.Close()
		if reason := r.end(); reason != frame.ReasonStationClosed {
			t.Fatalf("Run = %v, want station_closed (no CLOSE for a PONG in v2)", reason)
		}
	})
}

// In v1 any write restarts the heartbeat timer, so a station that gets an
// ACK every second never sees a heartbeat; in v2 heartbeats keep their
// schedule, for the PONGs that time the link.
func TestV2HeartbeatsOnScheduleWhileAcksFlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 5 * time.Second
		cfg.IdleTimeout = time.Hour
		r := newV2Rig(t, cfg, nil, nil)
		start := time.Now()
		r.sayHello(9, 101)
		type event struct {
			typ frame.Type
			ack uint64
			at  time.Duration
		}
		events := make(chan event, 1000)
		go func() {
			defer close(events)
			for {
				c, err := r.read()
				if err != nil {
					return
				}
				events <- event{c.Type, c.Ack, time.Since(start)}
			}
		}()
		for i := range 20 {
			time.Sleep(time.Until(start.Add(time.Duration(i)*time.Second + 500*time.Millisecond)))
			r.send("frame")
		}
		time.Sleep(time.Until(start.Add(22 * time.Second)))
		r.station.Close()
		r.end()
		var hbs []time.Duration
		var acks []uint64
		for e := range events {
			switch e.typ {
			case frame.TypeHeartbeat:
				hbs = append(hbs, e.at)
			case frame.TypeAck:
				acks = append(acks, e.ack)
			}
		}
		want := []time.Duration{5 * time.Second, 10 * time.Second, 15 * time.Second, 20 * time.Second}
		if len(hbs) != len(want) {
			t.Fatalf("heartbeats at %v, want %v", hbs, want)
		}
		for i := range want {
			if hbs[i] != want[i] {
				t.Fatalf("heartbeats at %v, want %v", hbs, want)
			}
		}
		if len(acks) != 20 {
			t.Fatalf("%d ACKs for 20 frames a second apart", len(acks))
		}
	})
}

// A v2 ACK is absolute: the station's own sequence number, every frame up to
// it stored. A session that resumes at 101 acknowledges its first frame with
// 101, and every frame it stores carries that floor (Meridian-Acked).
func TestV2AcksAreAbsoluteFromNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newV2Rig(t, cfg, nil, nil)
		r.sayHello(9, 101)
		for i := range 3 {
			r.send(fmt.Sprintf("frame %d", 101+i))
			c, err := r.read()
			if err != nil || c.Type != frame.TypeAck {
				t.Fatalf("got %v, %v; want ACK", c.Type, err)
			}
			if want := uint64(101 + i); c.Ack != want {
				t.Errorf("ACK %d after frame %d, want %d", c.Ack, want, want)
			}
		}
		st := r.sess.Stats()
		if st.AckedSeq != 103 || st.Acked != 3 {
			t.Errorf("Stats: AckedSeq %d Acked %d, want 103 and 3 (the frames of this session)", st.AckedSeq, st.Acked)
		}
		r.sess.Supersede() // the end that still writes a final ACK on a pipe
		ack, reason := r.readUntilClose()
		if ack != 103 || reason != frame.ReasonSuperseded {
			t.Errorf("final ACK %d CLOSE %d, want ACK 103 CLOSE superseded", ack, reason)
		}
		r.end()
		frames := r.mem.Frames()
		if len(frames) != 3 {
			t.Fatalf("sink holds %d frames, want 3", len(frames))
		}
		for i, f := range frames {
			seq := uint64(101 + i)
			if f.Seq != seq || f.Epoch != 9 || f.Station != "gs-v2" || f.Gap != 0 {
				t.Errorf("frame %d: Seq %d Epoch %d Station %q Gap %d", i, f.Seq, f.Epoch, f.Station, f.Gap)
			}
			// Each frame was read after the one before it was acknowledged.
			if f.Acked != seq-1 {
				t.Errorf("frame %d (seq %d) carries Acked %d, want %d", i, f.Seq, f.Acked, seq-1)
			}
		}
	})
}

// supersedeConn calls Supersede from inside the session's next
// SetReadDeadline once armed, before the deadline is set: the interleaving
// where the gateway's Supersede (another goroutine) runs just after the
// reader checked for it and just before it sets its read deadline.
type supersedeConn struct {
	net.Conn
	armed atomic.Bool
	sess  atomic.Pointer[session.Session]
}

func (c *supersedeConn) SetReadDeadline(t time.Time) error {
	if c.armed.CompareAndSwap(true, false) {
		c.sess.Load().Supersede() // its own SetReadDeadline comes back here, disarmed
	}
	return c.Conn.SetReadDeadline(t)
}

// A Supersede must end the session at once wherever the reader is. If it
// lands between the reader's check and its SetReadDeadline, the reader's
// deadline overwrites the wake-up and the old session blocks until its
// idle timeout: the new session of the same station waits for it and is
// refused (CLOSE 6) when its handshake times out.
func TestV2SupersedeRacingTheReadDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		cfg.IdleTimeout = time.Minute
		var sc *supersedeConn
		r := newV2Rig(t, cfg, nil, func(c net.Conn) net.Conn {
			sc = &supersedeConn{Conn: c}
			return sc
		})
		sc.sess.Store(r.sess)
		r.sayHello(3, 1)
		done := make(chan struct {
			ack    uint64
			reason frame.Reason
			at     time.Time
		}, 1)
		go func() {
			ack, reason, at := r.readUntilCloseAt()
			done <- struct {
				ack    uint64
				reason frame.Reason
				at     time.Time
			}{ack, reason, at}
		}()
		synctest.Wait() // the reader waits in Read: its next SetReadDeadline follows the frame below
		sc.armed.Store(true)
		supersededAt := time.Now()
		r.send("the last frame before the station reconnects")
		res := <-done
		if res.reason != frame.ReasonSuperseded || res.ack != 1 {
			t.Fatalf("got ACK %d CLOSE %d, want ACK 1 CLOSE superseded", res.ack, res.reason)
		}
		if took := res.at.Sub(supersededAt); took >= time.Second {
			t.Errorf("superseded session ended %v after Supersede (idle timeout %v): the wake-up was lost", took, cfg.IdleTimeout)
		}
		if reason := r.end(); reason != frame.ReasonSuperseded {
			t.Fatalf("Run = %v", reason)
		}
	})
}

// slowAfterHeartbeat delays the writer after each HEARTBEAT it wrote: the
// writer goroutine descheduled between its write and what follows it,
// while the station answers.
type slowAfterHeartbeat struct {
	net.Conn
	delay time.Duration
}

func (c *slowAfterHeartbeat) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err == nil && len(b) == 5 && frame.Type(b[4]) == frame.TypeHeartbeat { // a HEARTBEAT alone
		time.Sleep(c.delay)
	}
	return n, err
}

// The round trip is the time from the HEARTBEAT on the wire to its PONG,
// even when the PONG comes back before the writer goroutine is scheduled
// again after its write: it must never be dropped, nor measured from an
// older heartbeat (which reports about one heartbeat interval).
func TestV2RTTWhenThePongBeatsTheWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.IdleTimeout = time.Hour
		const writerLag, linkRTT = 3 * time.Millisecond, 2 * time.Millisecond
		obs := &rttObserver{}
		r := newV2Rig(t, cfg, obs, func(c net.Conn) net.Conn { return &slowAfterHeartbeat{Conn: c, delay: writerLag} })
		r.sayHello(5, 1)
		for range 3 {
			c, err := r.read()
			if err != nil || c.Type != frame.TypeHeartbeat {
				t.Fatalf("got %v, %v; want HEARTBEAT", c.Type, err)
			}
			time.Sleep(linkRTT)
			if _, err := r.station.Write(frame.AppendPong(nil)); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		got := obs.got()
		if len(got) != 3 {
			t.Errorf("%d round trips timed for 3 PONGs: %v", len(got), got)
		}
		for _, d := range got {
			if d < linkRTT || d > linkRTT+writerLag {
				t.Errorf("round trip %v, want %v (at most %v)", d, linkRTT, linkRTT+writerLag)
			}
		}
		r.station.Close()
		r.end()
	})
}
