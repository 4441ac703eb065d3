package session_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/session"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = func() *slog.Logger {
	if os.Getenv("MERIDIAN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}()

func defaults() session.Config {
	return session.Config{
		MaxFrame:     1024,
		IdleTimeout:  60 * time.Second,
		FrameTimeout: 10 * time.Second,
		Heartbeat:    30 * time.Second,
		WriteTimeout: 10 * time.Second,
	}
}

// rig runs one session on a net.Pipe inside a synctest bubble, so the
// timers run on the bubble's fake clock: a 60 s idle timeout takes no time.
type rig struct {
	t       *testing.T
	station net.Conn
	mem     *sink.Memory
	agg     *pipeline.Aggregator
	sess    *session.Session
	reason  chan frame.Reason
	aggDone chan struct{}
}

func newRig(t *testing.T, cfg session.Config) *rig {
	gw, station := net.Pipe()
	r := &rig{t: t, station: station, mem: sink.NewMemory(), reason: make(chan frame.Reason, 1), aggDone: make(chan struct{})}
	r.agg = pipeline.New(r.mem, 16)
	go func() {
		defer close(r.aggDone)
		r.agg.Run(context.Background())
	}()
	r.sess = session.New(gw, session.Info{ID: "gs-1@pipe", Station: "pipe"}, cfg, r.agg, quiet, nil)
	go func() { r.reason <- r.sess.Run(context.Background()) }()
	return r
}

// end waits for the session's end and stops the aggregator.
func (r *rig) end() frame.Reason {
	reason := <-r.reason
	r.station.Close()
	r.agg.Close()
	<-r.aggDone
	return reason
}

func (r *rig) send(p string) {
	r.t.Helper()
	if _, err := r.station.Write(frame.AppendData(nil, []byte(p))); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

// read reads one gateway frame.
func (r *rig) read() (frame.Control, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r.station, hdr[:]); err != nil {
		return frame.Control{}, err
	}
	p := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(r.station, p); err != nil {
		return frame.Control{}, err
	}
	return frame.ParseControl(p)
}

// readUntilClose reads gateway frames until the pipe closes and returns the
// last ACK and the CLOSE reason (0 for none).
func (r *rig) readUntilClose() (ack uint64, reason frame.Reason) {
	ack, reason, _ = r.readUntilCloseAt()
	return ack, reason
}

// readUntilCloseAt also says when the CLOSE arrived: the gateway lingers a
// little after it before closing the connection.
func (r *rig) readUntilCloseAt() (ack uint64, reason frame.Reason, at time.Time) {
	for {
		c, err := r.read()
		if err != nil {
			return ack, reason, at
		}
		switch c.Type {
		case frame.TypeAck:
			ack = c.Ack
		case frame.TypeClose:
			reason, at = c.Reason, time.Now()
		}
	}
}

func TestIdleTimeoutOnTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newRig(t, cfg)
		start := time.Now()
		r.send("one")
		ack, reason, at := r.readUntilCloseAt()
		if reason != frame.ReasonIdleTimeout || ack != 1 {
			t.Fatalf("got ACK %d CLOSE %d, want ACK 1 CLOSE idle timeout", ack, reason)
		}
		if took := at.Sub(start); took != cfg.IdleTimeout {
			t.Fatalf("closed after %v, want exactly the idle timeout %v", took, cfg.IdleTimeout)
		}
		if got := r.end(); got != frame.ReasonIdleTimeout {
			t.Fatalf("Run = %v", got)
		}
	})
}

func TestKeepalivesResetTheIdleTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newRig(t, cfg)
		start := time.Now()
		for range 3 {
			time.Sleep(50 * time.Second) // fake time: the bubble's clock
			r.station.Write(frame.AppendHeader(nil, 0))
		}
		_, reason, at := r.readUntilCloseAt()
		if reason != frame.ReasonIdleTimeout {
			t.Fatalf("CLOSE %d", reason)
		}
		if took, want := at.Sub(start), 150*time.Second+cfg.IdleTimeout; took != want {
			t.Fatalf("closed after %v, want %v", took, want)
		}
		if r.mem.Len() != 0 {
			t.Fatal("keepalives were forwarded")
		}
		r.end()
	})
}

func TestFrameTimeoutOnTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newRig(t, cfg)
		start := time.Now()
		// A header announcing 100 bytes, then 10 of them, a byte every 5 s:
		// the bytes keep the idle timer fed, not the frame timer.
		r.station.Write(frame.AppendHeader(nil, 100))
		go func() {
			for range 10 {
				time.Sleep(time.Second)
				if _, err := r.station.Write([]byte{'x'}); err != nil {
					return
				}
			}
		}()
		_, reason, at := r.readUntilCloseAt()
		if reason != frame.ReasonFrameTimeout {
			t.Fatalf("CLOSE %d", reason)
		}
		if took := at.Sub(start); took != cfg.FrameTimeout {
			t.Fatalf("closed after %v, want %v", took, cfg.FrameTimeout)
		}
		r.end()
	})
}

func TestHeartbeatsOnTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.IdleTimeout = time.Hour
		r := newRig(t, cfg)
		start := time.Now()
		for i := 1; i <= 3; i++ {
			c, err := r.read()
			if err != nil || c.Type != frame.TypeHeartbeat {
				t.Fatalf("got %v, %v", c.Type, err)
			}
			if took := time.Since(start); took != time.Duration(i)*cfg.Heartbeat {
				t.Fatalf("heartbeat %d after %v", i, took)
			}
		}
		r.station.Close()
		r.end()
	})
}

// A station that never reads must not stall its own reads: once a write to
// it times out, control frames are dropped and frames are still accepted.
func TestPeerThatNeverReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = time.Second
		cfg.WriteTimeout = 2 * time.Second
		r := newRig(t, cfg)
		for i := range 200 {
			r.send(fmt.Sprintf("frame %d", i))
			if i%10 == 0 {
				time.Sleep(time.Second) // heartbeats and ACKs pile up unread
			}
		}
		// net.Pipe has no half-close: closing is the station's last word.
		r.station.Close()
		if got := r.end(); got != frame.ReasonStationClosed {
			t.Fatalf("Run = %v", got)
		}
		if n := r.mem.Len(); n != 200 {
			t.Fatalf("sink holds %d frames, want 200", n)
		}
	})
}

func TestDrainStopsAtAFrameBoundary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newRig(t, cfg)
		r.send("before")
		got := make(chan struct {
			ack    uint64
			reason frame.Reason
		}, 1)
		go func() {
			ack, reason := r.readUntilClose()
			got <- struct {
				ack    uint64
				reason frame.Reason
			}{ack, reason}
		}()
		r.sess.GoAway(time.Now().Add(5 * time.Second))
		// The station ignores GOAWAY and starts a frame just before the
		// deadline; it is finished after the deadline and still taken.
		time.Sleep(4 * time.Second)
		half := frame.AppendData(nil, []byte("straddles the deadline"))
		r.station.Write(half[:8])
		time.Sleep(2 * time.Second)
		r.station.Write(half[8:])
		r.station.Write(frame.AppendData(nil, []byte("too late")))
		res := <-got
		if res.reason != frame.ReasonShutdown || res.ack != 2 {
			t.Fatalf("got ACK %d CLOSE %d, want ACK 2 CLOSE shutdown", res.ack, res.reason)
		}
		if r.end() != frame.ReasonShutdown {
			t.Fatal("wrong end reason")
		}
		frames := r.mem.Frames()
		if len(frames) != 2 || string(frames[1].Payload) != "straddles the deadline" {
			t.Fatalf("sink: %v", frames)
		}
	})
}

// The frame in progress at the drain deadline is finished and taken; a frame
// that arrives with its end, after the deadline, is not.
func TestDrainTakesOnlyTheFrameInProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newRig(t, cfg)
		done := make(chan uint64, 1)
		go func() {
			ack, _ := r.readUntilClose()
			done <- ack
		}()
		r.sess.GoAway(time.Now().Add(5 * time.Second))
		time.Sleep(4 * time.Second)
		inProgress := frame.AppendData(nil, []byte("in progress at the deadline"))
		r.station.Write(inProgress[:10])
		time.Sleep(2 * time.Second)
		rest := append(inProgress[10:], frame.AppendData(nil, []byte("after the deadline"))...)
		r.station.Write(rest)
		if ack := <-done; ack != 1 {
			t.Fatalf("final ACK %d, want 1", ack)
		}
		r.end()
		if frames := r.mem.Frames(); len(frames) != 1 || string(frames[0].Payload) != "in progress at the deadline" {
			t.Fatalf("sink: %v", frames)
		}
	})
}

func TestOversizeAfterFramesAcksThem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRig(t, defaults())
		go func() {
			r.send("a")
			r.send("b")
			r.station.Write(frame.AppendHeader(nil, 5000))
		}()
		ack, reason := r.readUntilClose()
		if ack != 2 || reason != frame.ReasonTooLarge {
			t.Fatalf("ACK %d CLOSE %d", ack, reason)
		}
		r.end()
	})
}

// ACKs are cumulative, coalesced (at most one per AckInterval) and come
// within 50 ms of the sink's acceptance: checked on the fake clock.
func TestAcksCoalescedAndPrompt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := defaults()
		cfg.Heartbeat = 0
		r := newRig(t, cfg)
		type ackAt struct {
			n  uint64
			at time.Time
		}
		acks := make(chan ackAt, 1000)
		go func() {
			defer close(acks)
			for {
				c, err := r.read()
				if err != nil {
					return
				}
				if c.Type == frame.TypeAck {
					acks <- ackAt{c.Ack, time.Now()}
				}
			}
		}()
		const frames = 200
		sentAt := make([]time.Time, frames+1)
		for i := 1; i <= frames; i++ {
			r.send(fmt.Sprintf("f%d", i))
			sentAt[i] = time.Now()
			if i%20 == 0 {
				time.Sleep(time.Millisecond) // bursts, 1 ms apart
			}
		}
		var got []ackAt
		for a := range acks {
			got = append(got, a)
			if a.n == frames {
				break
			}
		}
		if len(got) == 0 || got[len(got)-1].n != frames {
			t.Fatalf("ACKs %v never reached %d", got, frames)
		}
		if len(got) >= frames/2 {
			t.Fatalf("%d ACKs for %d frames: not coalesced", len(got), frames)
		}
		var prev ackAt
		for _, a := range got {
			if a.n < prev.n {
				t.Fatalf("ACK went back from %d to %d", prev.n, a.n)
			}
			if late := a.at.Sub(sentAt[a.n]); late > 50*time.Millisecond {
				t.Fatalf("ACK %d came %v after the frame was accepted", a.n, late)
			}
			if !prev.at.IsZero() && a.at.Sub(prev.at) < 5*time.Millisecond {
				t.Fatalf("two ACKs %v apart", a.at.Sub(prev.at))
			}
			prev = a
		}
		r.station.Close()
		r.end()
	})
}
