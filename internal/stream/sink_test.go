package stream

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// fakePub is a publisher whose PublishMsg can be held, as a publish blocked
// on a full socket is. It copies each message only after it was let go, so
// a batch recycled under a held publish shows as a changed payload (and to
// the race detector).
type fakePub struct {
	mu   sync.Mutex
	hold chan struct{} // non-nil: the next PublishMsg waits for it to close
	held chan string   // receives the reply subject of a held publish
	sent []sentMsg
}

type sentMsg struct {
	reply string
	data  []byte
}

func newFakePub() *fakePub { return &fakePub{held: make(chan string, 16)} }

// holdNext makes the next PublishMsg wait until the returned func is
// called; the test's end calls it too, so a failing test does not hang.
func (f *fakePub) holdNext(t *testing.T) (release func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	f.hold = ch
	f.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

func (f *fakePub) PublishMsg(m *nats.Msg) error {
	f.mu.Lock()
	hold := f.hold
	f.hold = nil
	f.mu.Unlock()
	if hold != nil {
		f.held <- m.Reply
		<-hold
	}
	f.mu.Lock()
	f.sent = append(f.sent, sentMsg{reply: m.Reply, data: bytes.Clone(m.Data)})
	f.mu.Unlock()
	return nil
}

func (f *fakePub) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sent)
}

func (f *fakePub) last() sentMsg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent[len(f.sent)-1]
}

const fakePrefix = "_INBOX.fake."

// fakeSink is a sink over f with its resend loop running.
func fakeSink(t *testing.T, f *fakePub) *Sink {
	t.Helper()
	s, err := newSink(f, fakePrefix, SinkOptions{Window: 8, Timeout: time.Hour, BootID: "boot"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.connected.Store(true)
	go s.resendLoop()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// pubAck is the PubAck JetStream sends for message id.
func pubAck(id string) *nats.Msg {
	return &nats.Msg{Subject: fakePrefix + id, Data: []byte(`{"stream":"TELEMETRY","seq":1}`)}
}

// within fails the test if fn does not return in time: the calls it guards
// must never wait on a publish.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s blocked while a publish was held", what)
	}
}

// TestResendHeldPublish: while a resend's publish is held (a full socket),
// Check, Stats and the PubAck handler answer at once; a PubAck that arrives
// meanwhile does not commit the frame, whose batch the held publish still
// reads; once the publish returns the frame is committed exactly once.
func TestResendHeldPublish(t *testing.T) {
	f := newFakePub()
	s := fakeSink(t, f)
	rec := newRecorder()
	agg := runAggregator(t, s, 16)
	fd := newFeeder("10.9.8.7", 1, rec)
	fd.per = 1
	if err := fd.feed(context.Background(), agg, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first publish", func() bool { return f.count() == 1 })
	want := f.last()

	// The connection came back: everything unacknowledged is resent, and
	// this resend's publish is held.
	release := f.holdNext(t)
	s.resendFromReconnect()
	if reply := <-f.held; reply != want.reply {
		t.Fatalf("held publish of %q, want the resend of %q", reply, want.reply)
	}
	within(t, "Check", func() {
		if err := s.Check(); err != nil {
			t.Errorf("Check: %v", err)
		}
	})
	within(t, "Stats", func() {
		if st := s.Stats(); st.Unacked != 1 || st.Down {
			t.Errorf("stats while held: %+v", st)
		}
	})
	// The PubAck of the first send arrives now.
	within(t, "onAck", func() { s.onAck(pubAck("1")) })
	if n := rec.count(); n != 0 {
		t.Fatal("frame committed while its resend was still reading the batch")
	}
	if st := s.Stats(); st.Unacked != 1 {
		t.Fatalf("slot freed while busy: %+v", st)
	}
	release()
	eventually(t, "the commit deferred by the held resend", func() bool { return rec.count() == 1 })
	if got := f.last(); got.reply != want.reply || !bytes.Equal(got.data, want.data) {
		t.Errorf("the resend published %q %q, want %q %q", got.reply, got.data, want.reply, want.data)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Unacked != 0 || st.Resent != 1 {
		t.Errorf("stats after the resend: %+v", st)
	}
	// A late PubAck of the resend changes nothing (the recorder panics on
	// a second commit).
	s.onAck(pubAck("1"))
}

// TestWriteHeldPublish: messages Write reserved but has not published yet
// are never picked for a resend, even after a reconnect and an expiry of
// their PubAck deadline during the publish (the reserve/resend race of issue
// 9); a PubAck that arrives while Write's publish is held is committed by
// Write once the publish returned, and every frame is committed once.
func TestWriteHeldPublish(t *testing.T) {
	f := newFakePub()
	clock := newFakeClock()
	s, err := newSink(f, fakePrefix, SinkOptions{Window: 8, Timeout: time.Hour, BootID: "boot", clock: clock.now}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	s.connected.Store(true)
	close(s.done) // no resend loop: the test ticks the window itself
	t.Cleanup(func() { _ = s.Close() })
	resend := s.publishWith(newMsgBuilder())
	rec := newRecorder()
	agg := runAggregator(t, s, 16)
	fd := newFeeder("10.9.8.6", 1, rec)
	fd.per = 2
	release := f.holdNext(t)
	if err := fd.feed(context.Background(), agg, 2); err != nil {
		t.Fatal(err)
	}
	<-f.held // Write holds the first of its two frames

	// Both the reconnect and the expiry of any deadline come while Write
	// still reads the batch: a resend round must not touch its frames.
	clock.advance(2 * time.Hour) // past the 1h publish timeout
	s.resendFromReconnect()
	s.win.Tick(resend)
	if n := f.count(); n != 0 {
		t.Fatalf("%d messages resent that Write has not published yet", n)
	}
	if st := s.Stats(); st.Timeouts != 0 || st.Unacked != 2 || st.UnackedBytes != 2*64 {
		t.Fatalf("stats while Write publishes: %+v; want no timeout and 2 unacknowledged (128 bytes)", st)
	}
	within(t, "Check", func() { _ = s.Check() })
	within(t, "onAck", func() { s.onAck(pubAck("1")) })
	if n := rec.count(); n != 0 {
		t.Fatal("committed while Write was publishing the batch")
	}
	release()
	eventually(t, "Write's two publishes", func() bool { return f.count() == 2 })
	// Frame 1 has its PubAck; frame 2 was published during the reconnect
	// and is resent now.
	eventually(t, "frame 2 waiting for its resend", func() bool {
		s.win.Tick(resend)
		return f.count() == 3
	})
	if got := f.last().reply; got != fakePrefix+"2" {
		t.Fatalf("resent %q, want message 2", got)
	}
	s.onAck(pubAck("2"))
	eventually(t, "the batch committed", func() bool { return rec.count() == 2 })
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Resent != 1 || st.Unacked != 0 || st.UnackedBytes != 0 {
		t.Errorf("stats after the batch: %+v; want one resend and nothing in flight", st)
	}
	// Late PubAcks change nothing (the recorder panics on a second commit).
	s.onAck(pubAck("1"))
	s.onAck(pubAck("2"))
}

// fakeClock is a clock the test advances.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestStatsDownSince: DownSince is zero while the stream takes frames and
// names the start of an outage while it lasts.
func TestStatsDownSince(t *testing.T) {
	s := fakeSink(t, newFakePub())
	if st := s.Stats(); st.Down || !st.DownSince.IsZero() {
		t.Fatalf("fresh sink: %+v", st)
	}
	before := time.Now()
	s.connectionLost(nil)
	st := s.Stats()
	if !st.Down || st.DownSince.Before(before) || st.DownSince.After(time.Now()) {
		t.Fatalf("after a disconnect: %+v", st)
	}
	if err := s.Check(); err == nil {
		t.Fatal("Check is nil while disconnected")
	}
	s.resendFromReconnect()
	if st := s.Stats(); st.Down || !st.DownSince.IsZero() {
		t.Fatalf("after the reconnect: %+v", st)
	}
	if err := s.Check(); err != nil {
		t.Fatalf("Check after the reconnect: %v", err)
	}
}

// TestEmptyBatchRefused: no sink can be handed an empty batch, because the
// aggregator refuses to queue one.
func TestEmptyBatchRefused(t *testing.T) {
	agg := pipeline.New(fakeSinkNoLoop(t), 4)
	defer func() {
		if recover() == nil {
			t.Fatal("Put of an empty batch was accepted")
		}
	}()
	_ = agg.Put(context.Background(), pipeline.NewBatch(newRecorder(), 0))
}

func fakeSinkNoLoop(t *testing.T) *Sink {
	s, err := newSink(newFakePub(), fakePrefix, SinkOptions{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestMsgIDInProcessIsNoOutage: after a reconnect, a resend whose original
// is still being stored (a replicated stream) gets 409 err_code 10158. That
// is no refusal of the stream: no outage opens and none is counted; the
// original's PubAck, on the same reply subject, commits the frame. (One
// node lost in a 3-node cluster under load gave 653 outage warnings within
// 10 ms when each such reply opened one.)
func TestMsgIDInProcessIsNoOutage(t *testing.T) {
	r := newResentOnce(t)
	f, s, rec, agg, fd := r.f, r.s, r.rec, r.agg, r.fd

	inProcess := &nats.Msg{Subject: fakePrefix + "1", Data: []byte(
		`{"error":{"code":409,"err_code":10158,"description":"duplicate message id is in process"}}`)}
	for range 5 {
		s.onAck(inProcess)
	}
	st := s.Stats()
	if st.Down || st.Outages != 0 || st.InProcess != 5 {
		t.Fatalf("after five in-process replies: %+v; want no outage and 5 counted", st)
	}
	if err := s.Check(); err != nil {
		t.Fatalf("Check = %v: an in-process reply is no outage", err)
	}
	if rec.count() != 0 {
		t.Fatal("committed on an in-process reply")
	}
	s.onAck(pubAck("1")) // the original's PubAck
	eventually(t, "the commit", func() bool { return rec.count() == 1 })
	// The resend's own PubAck, had it come first, says it was a duplicate;
	// late, it changes nothing but the count of dropped duplicates.
	s.onAck(&nats.Msg{Subject: fakePrefix + "1", Data: []byte(`{"stream":"TELEMETRY","seq":1,"duplicate": true}`)})
	if st := s.Stats(); st.Duplicates != 0 {
		t.Fatalf("a late duplicate PubAck of a freed slot was counted: %+v", st)
	}

	// A real refusal still opens an outage.
	if err := fd.feed(context.Background(), agg, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second frame's publish", func() bool { return f.count() == 3 })
	s.onAck(&nats.Msg{Subject: fakePrefix + "2", Data: []byte(
		`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`)})
	if st := s.Stats(); !st.Down || st.Outages != 1 {
		t.Fatalf("after a refusal: %+v; want an outage", st)
	}
	s.onAck(pubAck("2")) // the stream takes it after all
	eventually(t, "the second commit", func() bool { return rec.count() == 2 })
}

// TestDuplicatePubAckCounted: the PubAck of a resend whose original was
// stored after all says "duplicate": the frame is committed once, and the
// dropped copy is counted (meridian_stream_duplicates_dropped_total).
func TestDuplicatePubAckCounted(t *testing.T) {
	r := newResentOnce(t)
	s, rec := r.s, r.rec
	s.onAck(&nats.Msg{Subject: fakePrefix + "1", Data: []byte(`{"stream":"TELEMETRY","seq":1,"duplicate":true}`)})
	eventually(t, "the commit", func() bool { return rec.count() == 1 })
	if st := s.Stats(); st.Duplicates != 1 || st.Down {
		t.Fatalf("stats %+v, want one duplicate counted and no outage", st)
	}
}

// resentOnce is a fake sink whose first frame was published, then resent
// after a reconnect, with neither send acknowledged yet.
type resentOnce struct {
	f   *fakePub
	s   *Sink
	rec *recorder
	agg *pipeline.Aggregator
	fd  *feeder
}

func newResentOnce(t *testing.T) *resentOnce {
	t.Helper()
	r := &resentOnce{f: newFakePub(), rec: newRecorder()}
	r.s = fakeSink(t, r.f)
	r.agg = runAggregator(t, r.s, 16)
	r.fd = newFeeder("10.9.8.7", 1, r.rec)
	r.fd.per = 1
	if err := r.fd.feed(context.Background(), r.agg, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first publish", func() bool { return r.f.count() == 1 })
	r.s.resendFromReconnect()
	eventually(t, "the resend", func() bool { return r.f.count() == 2 })
	return r
}

// noAckSink is a sink over url with the leader advisory of stream TELEMETRY
// subscribed, publishing into a stream that sends no PubAcks: every frame
// stays unacknowledged, and its publish timeout is an hour, so only the
// advisory can make the sink resend. It returns the sink, the stream and a
// function feeding n frames.
func noAckSink(t *testing.T, url string, replicas int) (*Sink, jetstream.Stream, func(n int)) {
	t.Helper()
	nc, err := Client{URL: url}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	// The stream's first election sends the advisory too: it must have
	// come before the sink listens, or it counts as a resend round.
	elected, err := nc.SubscribeSync(LeaderElectedSubject(DefaultName))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var str jetstream.Stream
	eventually(t, "the stream", func() bool {
		str, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: DefaultName, Subjects: []string{"telemetry.>"},
			NoAck: true, Replicas: replicas, Duplicates: time.Hour})
		return err == nil
	})
	eventually(t, "the stream's leader", func() bool {
		info, err := str.Info(ctx)
		return err == nil && (replicas == 1 || info.Cluster != nil && info.Cluster.Leader != "")
	})
	if replicas > 1 {
		if _, err := elected.NextMsg(waitTimeout); err != nil {
			t.Fatalf("the first leader-elected advisory: %v", err)
		}
	}
	_ = elected.Unsubscribe()
	s, err := NewSink(nc, SinkOptions{Window: 16, Timeout: time.Hour, Stream: DefaultName}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	agg := runAggregator(t, s, 16)
	t.Cleanup(func() { _ = s.Close() }) // before the aggregator's drain: nothing will be acknowledged
	fd := newFeeder("10.9.8.5", 1, rec)
	fd.per = 2
	return s, str, func(n int) {
		t.Helper()
		if err := fd.feed(context.Background(), agg, n); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the frames in flight", func() bool { return s.Stats().Unacked == n })
	}
}

// storedMsgs is the number of messages str holds.
func storedMsgs(t *testing.T, str jetstream.Stream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestLeaderAdvisoryResends: the sink listens on the stream's
// leader-elected advisory subject (a single server sends none, so the test
// publishes one) and resends every unacknowledged frame at once, long
// before the publish timeout, with the same Nats-Msg-Id (the stream still
// holds each frame once). An advisory of another stream changes nothing.
func TestLeaderAdvisoryResends(t *testing.T) {
	srv := jsServer(t, t.TempDir(), server.RANDOM_PORT)
	s, str, feed := noAckSink(t, srv.ClientURL(), 1)
	feed(2)
	eventually(t, "two messages stored", func() bool { return storedMsgs(t, str) == 2 })

	other, err := Client{URL: srv.ClientURL()}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	advisory := []byte(`{"type":"io.nats.jetstream.advisory.v1.stream_leader_elected","stream":"X","leader":"n2"}`)
	if err := other.Publish(LeaderElectedSubject("OTHER"), advisory); err != nil {
		t.Fatal(err)
	}
	if err := other.Publish(LeaderElectedSubject(DefaultName), advisory); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the resends", func() bool { return s.Stats().Resent == 2 })
	if st := s.Stats(); st.Timeouts != 0 || st.Unacked != 2 || st.Down {
		t.Fatalf("stats after the advisory: %+v; want 2 resends, no timeout, no outage", st)
	}
	if n := storedMsgs(t, str); n != 2 {
		t.Fatalf("the stream holds %d messages after the resends, want 2 (deduplicated)", n)
	}
}

// TestLeaderStepdownResends: in a real R3 cluster, a stream leader stepping
// down makes its successor send the leader-elected advisory, and the sink
// resends what is unacknowledged without waiting for the publish timeout.
func TestLeaderStepdownResends(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	c := startCluster(t)
	s, str, feed := noAckSink(t, strings.Join(c.urls, ","), 3)
	feed(2)
	eventually(t, "two messages stored", func() bool { return storedMsgs(t, str) == 2 })
	if r := s.Stats().Resent; r != 0 {
		t.Fatalf("%d resends before the stepdown", r)
	}
	nc, err := Client{URL: c.urls[0]}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	eventually(t, "a leader stepdown", func() bool {
		resp, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+DefaultName, nil, 5*time.Second)
		return err == nil && bytes.Contains(resp.Data, []byte(`"success":true`))
	})
	eventually(t, "the resends", func() bool { return s.Stats().Resent == 2 })
	if st := s.Stats(); st.Timeouts != 0 {
		t.Fatalf("stats after the stepdown: %+v; want no timeout", st)
	}
}

// ackingPub is a publisher whose JetStream acknowledges every message at
// once, from another goroutine, as the PubAck subscription would.
type ackingPub struct {
	acks chan string
}

func (p *ackingPub) PublishMsg(m *nats.Msg) error {
	p.acks <- m.Reply
	return nil
}

// BenchmarkSinkWindow measures the sink's own cost per frame, without NATS:
// 1 KiB frames in batches of 16 through the aggregator, each message
// acknowledged at once by a fake JetStream.
func BenchmarkSinkWindow(b *testing.B) {
	p := &ackingPub{acks: make(chan string, 8192)}
	s, err := newSink(p, fakePrefix, SinkOptions{Window: 1024, Timeout: time.Hour, BootID: "boot"}, testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	s.connected.Store(true)
	go s.resendLoop()
	ackData := []byte(`{"stream":"TELEMETRY","seq":1}`)
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		for reply := range p.acks {
			s.onAck(&nats.Msg{Subject: reply, Data: ackData})
		}
	}()
	owner := &latencyOwner{all: make(chan struct{}), want: b.N}
	agg := runAggregator(b, s, 8192)
	data := make([]byte, 1024)
	b.SetBytes(1024)
	b.ReportAllocs()
	b.ResetTimer()
	for seq := uint64(1); seq <= uint64(b.N); {
		batch := pipeline.NewBatch(owner, 16*1024)
		for k := 0; k < 16 && seq <= uint64(b.N); k++ {
			batch.Add(pipeline.Frame{Station: "10.0.0.1", Session: "gs-1@10.0.0.1:40000", Seq: seq, Received: time.Now(), Payload: data})
			seq++
		}
		if err := agg.Put(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	<-owner.all
	b.StopTimer()
	_ = s.Close()
	close(p.acks)
	<-acked
}
