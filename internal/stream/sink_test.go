package stream

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats.go"
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
// are never picked for a resend, even after a reconnect and an expiry
// marked them (the reserve/resend race of the durable-path issue); a
// PubAck that arrives while Write's publish is held is committed by Write
// once the publish returned.
func TestWriteHeldPublish(t *testing.T) {
	f := newFakePub()
	s := fakeSink(t, f)
	rec := newRecorder()
	agg := runAggregator(t, s, 16)
	fd := newFeeder("10.9.8.6", 1, rec)
	fd.per = 2
	release := f.holdNext(t)
	if err := fd.feed(context.Background(), agg, 2); err != nil {
		t.Fatal(err)
	}
	<-f.held // Write holds the first of its two frames

	// Both the reconnect and the expiry of their PubAck deadline mark
	// them for a resend while Write still reads their batch.
	later := time.Now().Add(2 * time.Hour) // past the 1h publish timeout
	s.mu.Lock()
	s.expireLocked(later)
	expired := s.failed
	s.mu.Unlock()
	if expired != 2 {
		t.Fatalf("%d messages expired, want both of Write's", expired)
	}
	s.resendFromReconnect()
	s.mu.Lock()
	work := s.markResendLocked(nil, later)
	s.mu.Unlock()
	if len(work) != 0 {
		t.Fatalf("picked %d messages Write has not published for a resend", len(work))
	}
	within(t, "Check", func() { _ = s.Check() })
	within(t, "onAck", func() { s.onAck(pubAck("1")) })
	if n := rec.count(); n != 0 {
		t.Fatal("committed while Write was publishing the batch")
	}
	release()
	// The second frame is due for a resend (the reconnect marked it); its
	// PubAck completes the batch.
	eventually(t, "both frames published", func() bool { return f.count() >= 2 })
	s.onAck(pubAck("2"))
	eventually(t, "the batch committed", func() bool { return rec.count() == 2 })
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
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
	s.onAck(&nats.Msg{Subject: fakePrefix + "1", Data: []byte(`{"stream":"TELEMETRY","seq":1,"duplicate":true}`)})
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
