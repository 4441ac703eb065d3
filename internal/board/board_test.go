package board

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeGateway is a Source whose state the test sets.
type fakeGateway struct {
	mu       sync.Mutex
	sessions []Session
	stream   StreamStatus
	queue    QueueStatus
	state    string
}

func (f *fakeGateway) source() Source {
	return Source{
		Sessions: func() []Session {
			f.mu.Lock()
			defer f.mu.Unlock()
			return append([]Session(nil), f.sessions...)
		},
		Gateway: func() (string, string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.state, ""
		},
		Stream: func() StreamStatus {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.stream
		},
		Queue: func() QueueStatus {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.queue
		},
	}
}

func (f *fakeGateway) set(fn func(*fakeGateway)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func find(t *testing.T, v View, id string) StationView {
	t.Helper()
	for _, s := range v.Stations {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("session %s not on the board: %+v", id, v.Stations)
	return StationView{}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestRatesHistoryAndDecay(t *testing.T) {
	f := &fakeGateway{state: GatewayReady, stream: StreamStatus{Configured: true}}
	b := New(f.source(), Options{Interval: 2 * time.Second, History: 10 * time.Second, RateWindow: 4 * time.Second})
	s := Session{ID: "gs-1@10.0.0.1:5000", Station: "10.0.0.1", RemoteAddr: "10.0.0.1:5000", Since: t0}
	// 10 frames/s for 6 s, one frame every 100 ms, then silence.
	for i := 0; i <= 3; i++ {
		at := t0.Add(time.Duration(2*i) * time.Second)
		s.Frames, s.Acked, s.Bytes = uint64(20*i), uint64(20*i), uint64(2000*i)
		if i > 0 {
			s.LastFrame = at
		}
		f.set(func(f *fakeGateway) { f.sessions = []Session{s} })
		b.Sample(at)
	}
	v := b.View(t0.Add(6 * time.Second))
	got := find(t, v, s.ID)
	if got.Link != "meridian" || got.Framing != "meridian" {
		t.Errorf("link/framing %q/%q, want the defaults meridian/meridian", got.Link, got.Framing)
	}
	// The first sample is at the session's start: no span, no point. Then
	// three intervals at 10/s.
	want := []float64{10, 10, 10}
	if len(got.RateHistory) != len(want) {
		t.Fatalf("history %v, want %v", got.RateHistory, want)
	}
	for i := range want {
		if !near(got.RateHistory[i], want[i]) {
			t.Fatalf("history %v, want %v", got.RateHistory, want)
		}
	}
	if !near(got.FramesPerSecond, 10) {
		t.Errorf("rate now %v, want 10", got.FramesPerSecond)
	}
	if !near(got.CadenceSeconds, 0.1) {
		t.Errorf("cadence %vs, want 0.1s", got.CadenceSeconds)
	}
	// Data stops. Without any new sample the rate still falls, because it is
	// measured up to the request time.
	v = b.View(t0.Add(8 * time.Second))
	if r := find(t, v, s.ID).FramesPerSecond; !(r < 10 && r > 0) {
		t.Errorf("rate 2 s after the last frame: %v, want between 0 and 10", r)
	}
	v = b.View(t0.Add(60 * time.Second))
	got = find(t, v, s.ID)
	if got.FramesPerSecond != 0 {
		t.Errorf("rate a minute after the last frame: %v, want 0", got.FramesPerSecond)
	}
	if !near(got.LastFrameAgeSeconds, 54) {
		t.Errorf("last frame age %v, want 54 (computed at request time)", got.LastFrameAgeSeconds)
	}
	// The ring keeps History/Interval = 5 points, oldest dropped.
	for i := 4; i <= 7; i++ {
		b.Sample(t0.Add(time.Duration(2*i) * time.Second))
	}
	if h := find(t, b.View(t0.Add(14*time.Second)), s.ID).RateHistory; len(h) != 5 || !near(h[0], 10) || h[4] != 0 {
		t.Errorf("history after wrap: %v, want 5 points from 10 down to 0", h)
	}
}

func TestAckLagAndTotals(t *testing.T) {
	f := &fakeGateway{state: GatewayReady}
	f.sessions = []Session{
		{ID: "b", Station: "svalbard", Since: t0, Frames: 100, Acked: 90, Bytes: 1000, LastFrame: t0},
		{ID: "a", Station: "kiruna", Since: t0, Frames: 50, Acked: 50, Bytes: 500, LastFrame: t0,
			HeartbeatRTT: 1500 * time.Microsecond, Quality: []Counter{{"crc_errors", 3}}},
	}
	b := New(f.source(), Options{})
	v := b.View(t0.Add(time.Second))
	if len(v.Stations) != 2 || v.Stations[0].Station != "kiruna" || v.Stations[1].Station != "svalbard" {
		t.Fatalf("order: %+v", v.Stations)
	}
	if v.Stations[1].AckLag != 10 || v.Stations[0].AckLag != 0 {
		t.Errorf("ack lag %d %d, want 0 10", v.Stations[0].AckLag, v.Stations[1].AckLag)
	}
	if v.Stations[0].HeartbeatRTTMS != 1.5 || v.Stations[0].LinkQuality["crc_errors"] != 3 {
		t.Errorf("optional fields: %+v", v.Stations[0])
	}
	if v.Stations[1].HeartbeatRTTMS != 0 || v.Stations[1].LinkQuality != nil {
		t.Errorf("optional fields must stay empty when not reported: %+v", v.Stations[1])
	}
	tot := v.Totals
	if tot.Connected != 2 || tot.Frames != 150 || tot.FramesAcked != 140 || tot.AckLag != 10 || tot.Bytes != 1500 {
		t.Errorf("totals %+v", tot)
	}
	if v.Stream.State != StreamNone || !v.Stream.Since.IsZero() {
		t.Errorf("no stream configured: %+v, want state none without since", v.Stream)
	}
}

func TestDisconnectedLingerAndBound(t *testing.T) {
	f := &fakeGateway{state: GatewayReady}
	b := New(f.source(), Options{Linger: time.Minute, MaxGone: 2})
	sess := func(id string, frames uint64) Session {
		return Session{ID: id, Station: id, Since: t0, Frames: frames, Acked: frames, LastFrame: t0}
	}
	f.sessions = []Session{sess("a", 5), sess("b", 6), sess("c", 7), sess("d", 8)}
	b.Sample(t0)
	// a ends: the very next View shows it, without waiting for a sample.
	f.set(func(f *fakeGateway) { f.sessions = f.sessions[1:] })
	at := t0.Add(500 * time.Millisecond)
	v := b.View(at)
	a := find(t, v, "a")
	if a.State != StateDisconnected || !a.DisconnectedAt.Equal(at) || a.Frames != 5 {
		t.Fatalf("ended session: %+v", a)
	}
	if v.Totals.Connected != 3 || v.Totals.Disconnected != 1 || v.Totals.Frames != 21 {
		t.Errorf("totals %+v: ended sessions are listed, not counted", v.Totals)
	}
	if last := v.Stations[len(v.Stations)-1]; last.ID != "a" {
		t.Errorf("ended sessions come after live ones: %v", last.ID)
	}
	// Three more end: only the newest two are kept.
	f.set(func(f *fakeGateway) { f.sessions = nil })
	v = b.View(t0.Add(time.Second))
	if v.Totals.Disconnected != 2 || len(v.Stations) != 2 {
		t.Fatalf("kept %d ended sessions, want MaxGone=2: %+v", len(v.Stations), v.Stations)
	}
	for _, s := range v.Stations {
		if s.ID == "a" {
			t.Errorf("the oldest ended session should have been dropped")
		}
	}
	// After Linger they are gone.
	v = b.View(t0.Add(time.Second + time.Minute + time.Millisecond))
	if len(v.Stations) != 0 {
		t.Errorf("after linger: %+v, want none", v.Stations)
	}
}

func TestQuiet(t *testing.T) {
	f := &fakeGateway{state: GatewayReady}
	b := New(f.source(), Options{QuietFloor: 10 * time.Second, QuietFactor: 4})
	// One frame every 5 s: the learned cadence is 5 s, so quiet after 20 s.
	s := Session{ID: "slow", Station: "slow", Since: t0}
	for i := 1; i <= 4; i++ {
		at := t0.Add(time.Duration(5*i) * time.Second)
		s.Frames, s.LastFrame = uint64(i), at
		f.set(func(f *fakeGateway) { f.sessions = []Session{s} })
		b.Sample(at)
	}
	last := s.LastFrame
	f2 := func(after time.Duration, want string) {
		t.Helper()
		got := find(t, b.View(last.Add(after)), "slow")
		if got.State != want {
			t.Errorf("%v after the last frame: %s (cadence %vs, quiet after %vs), want %s",
				after, got.State, got.CadenceSeconds, got.QuietAfterSeconds, want)
		}
	}
	f2(19*time.Second, StateConnected)
	f2(21*time.Second, StateQuiet)
	if v := b.View(last.Add(21 * time.Second)); v.Totals.Quiet != 1 {
		t.Errorf("totals.quiet %d, want 1", v.Totals.Quiet)
	}

	// A fast station still gets the floor.
	fast := New(f.source(), Options{QuietFloor: 10 * time.Second, QuietFactor: 4})
	s = Session{ID: "fast", Station: "fast", Since: t0}
	for i := 1; i <= 3; i++ {
		at := t0.Add(time.Duration(i) * time.Second)
		s.Frames, s.LastFrame = uint64(100*i), at
		f.set(func(f *fakeGateway) { f.sessions = []Session{s} })
		fast.Sample(at)
	}
	got := find(t, fast.View(s.LastFrame.Add(9*time.Second)), "fast")
	if got.State != StateConnected || got.QuietAfterSeconds != 10 {
		t.Errorf("fast station 9 s silent: %s, quiet after %vs; want connected, floor 10s", got.State, got.QuietAfterSeconds)
	}
	if got := find(t, fast.View(s.LastFrame.Add(11*time.Second)), "fast"); got.State != StateQuiet {
		t.Errorf("fast station 11 s silent: %s, want quiet", got.State)
	}
	// A session that never sent a frame is quiet once the floor has passed
	// since it connected.
	f.set(func(f *fakeGateway) { f.sessions = []Session{{ID: "mute", Station: "mute", Since: t0}} })
	nb := New(f.source(), Options{QuietFloor: 10 * time.Second})
	if got := find(t, nb.View(t0.Add(5*time.Second)), "mute"); got.State != StateConnected {
		t.Errorf("new silent session: %s, want connected", got.State)
	}
	if got := find(t, nb.View(t0.Add(11*time.Second)), "mute"); got.State != StateQuiet {
		t.Errorf("silent session after the floor: %s, want quiet", got.State)
	}
}

func TestStreamStates(t *testing.T) {
	f := &fakeGateway{state: GatewayReady, stream: StreamStatus{Configured: true}, queue: QueueStatus{Capacity: 100}}
	b := New(f.source(), Options{})
	b.Sample(t0)
	if v := b.View(t0); v.Stream.State != StreamTaking || !v.Stream.Since.Equal(t0) || v.Queue.Capacity != 100 {
		t.Fatalf("healthy: %+v %+v", v.Stream, v.Queue)
	}
	// Sessions waited on the queue since the last sample: back-pressure.
	f.set(func(f *fakeGateway) { f.queue.BlockedFor = time.Second; f.queue.Depth = 60 })
	b.Sample(t0.Add(2 * time.Second))
	if v := b.View(t0.Add(2 * time.Second)); v.Stream.State != StreamBackpressure || !v.Stream.Since.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("blocked: %+v", v.Stream)
	}
	// No more waiting: taking frames again.
	b.Sample(t0.Add(4 * time.Second))
	if v := b.View(t0.Add(4 * time.Second)); v.Stream.State != StreamTaking {
		t.Fatalf("recovered: %+v", v.Stream)
	}
	// A full queue is back-pressure even between samples.
	f.set(func(f *fakeGateway) { f.queue.Depth = 100 })
	if v := b.View(t0.Add(5 * time.Second)); v.Stream.State != StreamBackpressure {
		t.Fatalf("full queue: %+v", v.Stream)
	}
	// An outage is seen at request time and dated by the sink when it can.
	down := t0.Add(3 * time.Second)
	f.set(func(f *fakeGateway) {
		f.stream = StreamStatus{Configured: true, Down: true, DownSince: down, Outages: 1, Detail: "disconnected from NATS"}
	})
	v := b.View(t0.Add(6 * time.Second))
	if v.Stream.State != StreamOutage || !v.Stream.Since.Equal(down) || v.Stream.Outages != 1 || v.Stream.Detail == "" {
		t.Fatalf("outage: %+v", v.Stream)
	}
	// Without DownSince the board dates it from when it first saw it.
	f.set(func(f *fakeGateway) { f.stream.DownSince = time.Time{} })
	if v := b.View(t0.Add(7 * time.Second)); !v.Stream.Since.Equal(t0.Add(6 * time.Second)) {
		t.Errorf("outage since %v, want when first seen %v", v.Stream.Since, t0.Add(6*time.Second))
	}
	f.set(func(f *fakeGateway) { f.state = GatewayDraining })
	if v := b.View(t0.Add(8 * time.Second)); v.Gateway.State != GatewayDraining {
		t.Errorf("gateway %+v, want draining", v.Gateway)
	}
}

func TestEmptySource(t *testing.T) {
	v := New(Source{}, Options{}).View(t0)
	if v.Stations == nil || len(v.Stations) != 0 || v.Gateway.State != GatewayReady || v.Stream.State != StreamNone {
		t.Errorf("empty board: %+v", v)
	}
}

func TestRunStopsWithContext(t *testing.T) {
	f := &fakeGateway{state: GatewayReady}
	f.sessions = []Session{{ID: "x", Station: "x", Since: time.Now()}}
	b := New(f.source(), Options{Interval: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	// Run samples at once, then on every tick: wait until it has.
	deadline := time.Now().Add(10 * time.Second)
	for len(find(t, b.View(time.Now()), "x").RateHistory) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("Run did not sample")
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

func TestEndedReport(t *testing.T) {
	f := &fakeGateway{state: GatewayReady}
	b := New(f.source(), Options{})
	// A session shorter than a sample: never seen live, still listed.
	short := Session{ID: "gs-1@10.0.0.1:1", Station: "10.0.0.1", Since: t0, Frames: 2, Acked: 2, LastFrame: t0.Add(time.Millisecond)}
	b.Ended(short, "station_closed", t0.Add(2*time.Millisecond))
	v := b.View(t0.Add(time.Second))
	got := find(t, v, short.ID)
	if got.State != StateDisconnected || got.CloseReason != "station_closed" || got.Frames != 2 || got.Link != "meridian" {
		t.Errorf("short session: %+v", got)
	}
	// A live one ends: the report's final counters win over the last sample,
	// and a stale list read before the end does not bring it back.
	live := Session{ID: "gs-2@10.0.0.1:2", Station: "10.0.0.1", Since: t0, Frames: 5, Acked: 5, LastFrame: t0}
	f.set(func(f *fakeGateway) { f.sessions = []Session{live} })
	b.Sample(t0.Add(2 * time.Second))
	final := live
	final.Frames, final.Acked = 9, 9
	b.Ended(final, "idle_timeout", t0.Add(3*time.Second))
	v = b.View(t0.Add(3 * time.Second)) // the fake still lists it: a stale read
	n := 0
	for _, s := range v.Stations {
		if s.ID == live.ID {
			n++
			if s.State != StateDisconnected || s.Frames != 9 || s.CloseReason != "idle_timeout" {
				t.Errorf("ended live session: %+v", s)
			}
		}
	}
	if n != 1 || v.Totals.Connected != 0 {
		t.Errorf("session listed %d times, %d connected; want once, disconnected", n, v.Totals.Connected)
	}
	b.Sample(t0.Add(4 * time.Second)) // and sampling a stale list is harmless too
}

func TestStreamStarting(t *testing.T) {
	f := &fakeGateway{state: GatewayStarting, stream: StreamStatus{Starting: true}}
	if v := New(f.source(), Options{}).View(t0); v.Stream.State != StreamStarting {
		t.Errorf("stream %+v, want starting", v.Stream)
	}
}
