package pubwindow_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/stream/pubwindow"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 30 * time.Second

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling, not synchronisation
	}
}

// clock is a time source the test advances.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// recorder is the batches' owner: it remembers each committed frame, fails
// the test on a second commit, and releases the batch at once as a session
// does, so that a window still reading it shows (index out of range, a
// changed payload, or the race detector).
type recorder struct {
	t         *testing.T
	mu        sync.Mutex
	committed map[uint64]int
	n         int
}

func newRecorder(t *testing.T) *recorder { return &recorder{t: t, committed: make(map[uint64]int)} }

func (r *recorder) Committed(b *pipeline.Batch) {
	r.mu.Lock()
	for _, f := range b.Frames {
		r.committed[f.Seq]++
		if r.committed[f.Seq] > 1 {
			r.t.Errorf("frame %d committed twice", f.Seq)
		}
		r.n++
	}
	r.mu.Unlock()
	b.Release()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// payload is the payload of frame seq: seq in its first 8 bytes.
func payload(seq uint64, size int) []byte {
	p := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(p, seq)
	return p
}

// fakePub stands for the NATS publisher. Its write and resend PublishFuncs
// check what the window promises: every frame read is the one the message
// carries (its batch is alive), a resend of a message starts only after its
// first publish returned, and no two publishes of one message overlap.
type fakePub struct {
	t          *testing.T
	mu         sync.Mutex
	hold       chan struct{} // non-nil: the next write publish waits for it
	held       chan uint64   // the id of a held publish
	fail       error         // the next publish of either kind returns it
	writes     map[uint64]uint64
	resends    map[uint64]int
	publishing map[uint64]bool
	order      []uint64 // ids in publish order
}

func newFakePub(t *testing.T) *fakePub {
	return &fakePub{t: t, held: make(chan uint64, 1), writes: make(map[uint64]uint64),
		resends: make(map[uint64]int), publishing: make(map[uint64]bool)}
}

// holdNext makes the next write publish wait until the returned func is
// called; the test's end calls it too.
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

func (f *fakePub) failNext(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakePub) write(b *pipeline.Batch, i int, id uint64) error {
	return f.publish(b, i, id, false)
}

func (f *fakePub) resend(b *pipeline.Batch, i int, id uint64) error {
	return f.publish(b, i, id, true)
}

func (f *fakePub) publish(b *pipeline.Batch, i int, id uint64, resend bool) error {
	seq := b.Frames[i].Seq // index out of range here: the batch was recycled
	f.mu.Lock()
	if f.publishing[id] {
		f.t.Errorf("message %d published twice at once", id)
	}
	if resend && f.writes[id] == 0 {
		f.t.Errorf("message %d (frame %d) resent before its first publish returned", id, seq)
	}
	if !resend && f.writes[id] != 0 {
		f.t.Errorf("message id %d written twice", id)
	}
	f.publishing[id] = true
	hold := f.hold
	if !resend {
		f.hold = nil
	}
	err := f.fail
	f.fail = nil
	f.mu.Unlock()
	if hold != nil && !resend {
		f.held <- id
		<-hold
	}
	// Read the frame after the hold: a batch committed meanwhile shows.
	if got := binary.BigEndian.Uint64(b.Frames[i].Payload); got != seq {
		f.t.Errorf("message %d carries frame %d, its payload says %d: the batch was reused", id, seq, got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.publishing, id)
	if err != nil {
		if !resend {
			f.writes[id] = seq // tried: a resend may follow
		}
		return err
	}
	if resend {
		f.resends[id]++
	} else {
		f.writes[id] = seq
	}
	f.order = append(f.order, id)
	return nil
}

func (f *fakePub) counts() (writes, resends int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.resends {
		resends += n
	}
	return len(f.writes), resends
}

func (f *fakePub) resentOf(id uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resends[id]
}

// sink makes a window a pipeline.Sink, as the JetStream sink does. It
// counts the batches whose Write returned: their publishes are released.
type sink struct {
	w       *pubwindow.Window
	pub     pubwindow.PublishFunc
	mu      sync.Mutex
	written int
}

func (s *sink) Write(ctx context.Context, batches []*pipeline.Batch) error {
	for _, b := range batches {
		if err := s.w.Write(ctx, b, s.pub); err != nil {
			return err
		}
		s.mu.Lock()
		s.written++
		s.mu.Unlock()
	}
	return nil
}

func (s *sink) batches() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written
}

func (s *sink) Flush(ctx context.Context) error { return s.w.Flush(ctx) }
func (s *sink) Close() error                    { s.w.Close(); return nil }

// feed runs an aggregator over w, whose Write publishes with pub, until the
// test ends. put queues a batch of frames seqs; written is the number of
// batches Write has published and released.
func feed(t *testing.T, w *pubwindow.Window, pub pubwindow.PublishFunc, owner pipeline.Owner, size int) (put func(seqs ...uint64), written func() int) {
	t.Helper()
	sk := &sink{w: w, pub: pub}
	agg := pipeline.New(sk, 1<<16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	t.Cleanup(func() {
		agg.Close()
		w.Close() // a test that left frames unacknowledged must not hang
		cancel()
		<-done
	})
	return func(seqs ...uint64) {
		t.Helper()
		b := pipeline.NewBatch(owner, len(seqs)*size)
		for _, seq := range seqs {
			b.Add(pipeline.Frame{Station: "gs", Session: "gs-1", Seq: seq, Payload: payload(seq, size)})
		}
		if err := agg.Put(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}, sk.batches
}

// TestHeldWriteSurvivesReconnectAndExpiry is the regression test of the
// race in issue 9 ("A latent corruption"): while Write's publish of a run is
// blocked, the reconnect callback, a new stream leader and the expiry of
// every deadline all fire and a resend round runs. None of the run's
// messages is resent before Write published it, a PubAck that arrives
// meanwhile commits nothing before the run is released, the batch is never
// read after its commit, and every frame is committed exactly once.
func TestHeldWriteSurvivesReconnectAndExpiry(t *testing.T) {
	clk := newClock()
	w := pubwindow.New(pubwindow.Options{Size: 8, Timeout: time.Minute, Clock: clk.now})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, _ := feed(t, w, f.write, rec, 64)
	release := f.holdNext(t)
	put(1, 2, 3)
	if id := <-f.held; id != 1 {
		t.Fatalf("held the publish of message %d, want 1", id)
	}

	w.Reconnected()
	clk.advance(2 * time.Minute) // past every deadline
	w.LeaderElected()
	w.Tick(f.resend)
	if _, resends := f.counts(); resends != 0 {
		t.Fatalf("%d messages resent while Write had not published them", resends)
	}
	w.Acked(1, false)
	if rec.count() != 0 {
		t.Fatal("a frame was committed while Write was publishing its batch")
	}
	if st := w.Stats(); st.Unacked != 3 || st.UnackedBytes != 3*64 || st.Timeouts != 0 || st.Down {
		t.Fatalf("stats while Write publishes: %+v; want 3 messages (192 bytes) in flight, no timeout, no outage", st)
	}

	release()
	// Message 1 has its PubAck; 2 and 3 were published during the
	// reconnect and are resent once their publishes returned.
	eventually(t, "the resends of messages 2 and 3", func() bool {
		w.Tick(f.resend)
		_, resends := f.counts()
		return resends == 2
	})
	if f.resentOf(2) != 1 || f.resentOf(3) != 1 {
		t.Fatalf("resends %d and %d of messages 2 and 3, want one each", f.resentOf(2), f.resentOf(3))
	}
	if rec.count() != 0 {
		t.Fatal("the batch was committed with two frames unacknowledged")
	}
	w.Acked(2, false)
	w.Acked(3, true)
	if n := rec.count(); n != 3 {
		t.Fatalf("%d frames committed, want 3", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Late replies to freed messages change nothing.
	w.Acked(1, false)
	w.Acked(2, true)
	w.Refused(3, errors.New("late"))
	if st := w.Stats(); st.Unacked != 0 || st.UnackedBytes != 0 || st.Resent != 2 || st.Duplicates != 1 || st.Down {
		t.Fatalf("stats at the end: %+v", st)
	}
}

// TestExpiryResends: a message whose PubAck is overdue is resent on the next
// tick, counted as a timeout, and opens an outage that its PubAck ends; a
// message still within its deadline is not resent.
func TestExpiryResends(t *testing.T) {
	clk := newClock()
	w := pubwindow.New(pubwindow.Options{Size: 8, Timeout: time.Minute, Clock: clk.now})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, written := feed(t, w, f.write, rec, 16)
	put(1)
	eventually(t, "the publish", func() bool { return written() == 1 })
	clk.advance(30 * time.Second)
	w.Tick(f.resend)
	if _, r := f.counts(); r != 0 {
		t.Fatal("resent within its deadline")
	}
	clk.advance(31 * time.Second)
	w.Tick(f.resend)
	if _, r := f.counts(); r != 1 {
		t.Fatalf("%d resends after the deadline, want 1", r)
	}
	st := w.Stats()
	if st.Timeouts != 1 || !st.Down || !errors.Is(w.Check(), pubwindow.ErrUnavailable) || !errors.Is(w.Check(), pubwindow.ErrAckTimeout) {
		t.Fatalf("after the timeout: %+v, Check %v", st, w.Check())
	}
	w.Acked(1, false)
	if rec.count() != 1 || w.Check() != nil {
		t.Fatalf("after the PubAck: %d committed, Check %v", rec.count(), w.Check())
	}
}

// TestByteBound: payload bytes between publish and PubAck stay within
// Options.Bytes; Write waits for a PubAck to admit more, and
// Stats.UnackedBytes counts them.
func TestByteBound(t *testing.T) {
	w := pubwindow.New(pubwindow.Options{Size: 64, Bytes: 1000, Timeout: time.Hour})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, _ := feed(t, w, f.write, rec, 400)
	release := f.holdNext(t)
	put(1, 2, 3)
	<-f.held
	// Write reserves its run under one lock: while the first publish is
	// held, the run is what the bound admitted. A third 400-byte message
	// would exceed 1000.
	if st := w.Stats(); st.Unacked != 2 || st.UnackedBytes != 800 {
		t.Fatalf("stats at the bound: %+v; want 2 messages, 800 bytes", st)
	}
	release()
	eventually(t, "two publishes", func() bool { writes, _ := f.counts(); return writes == 2 })
	if st := w.Stats(); st.Unacked != 2 || st.UnackedBytes != 800 {
		t.Fatalf("stats after two publishes: %+v; want 2 messages, 800 bytes", st)
	}
	w.Acked(1, false)
	eventually(t, "the third publish", func() bool { writes, _ := f.counts(); return writes == 3 })
	if st := w.Stats(); st.Unacked != 2 || st.UnackedBytes != 800 {
		t.Fatalf("stats after one PubAck: %+v; want 2 messages, 800 bytes", st)
	}
	w.Acked(2, false)
	w.Acked(3, false)
	if st := w.Stats(); rec.count() != 3 || st.UnackedBytes != 0 {
		t.Fatalf("%d committed, stats %+v", rec.count(), st)
	}
}

// TestOversizedMessageAdmitted: a message larger than the byte bound is
// published into an empty window (never stuck), and the next one waits for
// its PubAck.
func TestOversizedMessageAdmitted(t *testing.T) {
	w := pubwindow.New(pubwindow.Options{Size: 64, Bytes: 100, Timeout: time.Hour})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, _ := feed(t, w, f.write, rec, 500)
	put(1)
	put(2)
	eventually(t, "the oversized publish", func() bool { writes, _ := f.counts(); return writes == 1 })
	if st := w.Stats(); st.UnackedBytes != 500 {
		t.Fatalf("stats: %+v; want 500 bytes in flight", st)
	}
	w.Acked(1, false)
	eventually(t, "the second publish", func() bool { writes, _ := f.counts(); return writes == 2 })
	w.Acked(2, false)
	if rec.count() != 2 {
		t.Fatalf("%d committed, want 2", rec.count())
	}
}

// TestLeaderElectedResendsAtOnce: on a new stream leader every
// unacknowledged message is resent at the next tick, long before its
// deadline and regardless of an outage's back-off, with no timeout counted.
func TestLeaderElectedResendsAtOnce(t *testing.T) {
	clk := newClock()
	w := pubwindow.New(pubwindow.Options{Size: 8, Timeout: time.Hour, Clock: clk.now})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, written := feed(t, w, f.write, rec, 16)
	put(1, 2)
	eventually(t, "both published and released", func() bool { return written() == 1 })
	w.Tick(f.resend) // resends nothing: within the deadline
	if _, r := f.counts(); r != 0 {
		t.Fatal("resent within the deadline and without a reason")
	}
	w.LeaderElected()
	eventually(t, "both resent", func() bool { w.Tick(f.resend); _, r := f.counts(); return r == 2 })
	if st := w.Stats(); st.Timeouts != 0 || st.Down || st.Resent != 2 {
		t.Fatalf("after the leader election: %+v; want 2 resends, no timeout, no outage", st)
	}

	// During an outage the back-off spaces the rounds out; a new leader
	// cuts it short.
	w.Refused(1, errors.New("no responders"))
	w.Tick(f.resend) // the first round of the outage goes at once
	if f.resentOf(1) != 2 {
		t.Fatalf("message 1 resent %d times, want 2", f.resentOf(1))
	}
	w.Refused(1, errors.New("no responders"))
	w.Tick(f.resend)
	if f.resentOf(1) != 2 {
		t.Fatal("resent within the back-off")
	}
	w.LeaderElected()
	w.Tick(f.resend)
	if f.resentOf(1) != 3 || f.resentOf(2) != 2 {
		t.Fatalf("after the second election: resends %d, %d; want 3, 2", f.resentOf(1), f.resentOf(2))
	}
	w.Acked(1, false)
	w.Acked(2, false)
	if st := w.Stats(); rec.count() != 2 || st.Down || st.Outages != 1 {
		t.Fatalf("%d committed, stats %+v", rec.count(), st)
	}
}

// TestPublishErrorHoldsWriter: a refused publish starts an outage whose
// cause Check names; Write publishes nothing new until a PubAck of the
// resend ends it.
func TestPublishErrorHoldsWriter(t *testing.T) {
	w := pubwindow.New(pubwindow.Options{Size: 8, Timeout: time.Hour})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, _ := feed(t, w, f.write, rec, 16)
	cause := errors.New("publish: not connected")
	f.failNext(cause)
	put(1)
	eventually(t, "the outage", func() bool { return errors.Is(w.Check(), cause) })
	if !errors.Is(w.Check(), pubwindow.ErrUnavailable) {
		t.Fatalf("Check = %v, want ErrUnavailable", w.Check())
	}
	put(2)
	eventually(t, "the resend", func() bool { w.Tick(f.resend); _, r := f.counts(); return r == 1 })
	if writes, _ := f.counts(); writes != 1 {
		t.Fatalf("%d messages written during the outage, want only the failed one", writes)
	}
	w.Acked(1, false)
	eventually(t, "the second frame's publish", func() bool { writes, _ := f.counts(); return writes == 2 })
	w.Acked(2, false)
	if rec.count() != 2 || w.Check() != nil {
		t.Fatalf("%d committed, Check %v", rec.count(), w.Check())
	}
}

// TestFlushAndClose: Flush waits for the last PubAck; after Close, Write and
// Flush fail with ErrClosed.
func TestFlushAndClose(t *testing.T) {
	w := pubwindow.New(pubwindow.Options{Size: 8, Timeout: time.Hour})
	f := newFakePub(t)
	rec := newRecorder(t)
	put, written := feed(t, w, f.write, rec, 16)
	put(1)
	eventually(t, "the publish", func() bool { return written() == 1 })
	flushed := make(chan error, 1)
	go func() { flushed <- w.Flush(context.Background()) }()
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned %v with a PubAck missing", err)
	case <-time.After(20 * time.Millisecond): // a broken Flush returns by now
	}
	w.Acked(1, false)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := w.Flush(context.Background()); err != nil {
		t.Fatalf("Flush of an empty closed window: %v", err)
	}
	b := pipeline.NewBatch(rec, 8)
	b.Add(pipeline.Frame{Seq: 9, Payload: payload(9, 8)})
	defer b.Release()
	if err := w.Write(context.Background(), b, f.write); !errors.Is(err, pubwindow.ErrClosed) {
		t.Fatalf("Write after Close = %v, want ErrClosed", err)
	}
	if !errors.Is(w.Check(), pubwindow.ErrClosed) {
		t.Fatalf("Check after Close = %v", w.Check())
	}
}

// TestChaos runs Write, the resend loop, a fake JetStream that acknowledges,
// refuses, answers "in process", drops and duplicates replies, and
// reconnects and leader elections, all at once. Every frame is committed
// exactly once and the fake publisher's checks (no resend before the first
// publish returned, no overlapping publishes of a message, no recycled
// batch read) hold throughout.
func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var rngMu sync.Mutex
	roll := func(n int) int { rngMu.Lock(); defer rngMu.Unlock(); return rng.IntN(n) }

	w := pubwindow.New(pubwindow.Options{Size: 32, Bytes: 4096, Timeout: 20 * time.Millisecond})
	f := newFakePub(t)
	rec := newRecorder(t)
	acks := make(chan uint64, 1<<16)
	js := func(b *pipeline.Batch, i int, id uint64, resend bool) error {
		if err := f.publish(b, i, id, resend); err != nil {
			return err
		}
		if roll(20) == 0 {
			return nil // the message, or its PubAck, is lost
		}
		acks <- id
		return nil
	}
	put, _ := feed(t, w, func(b *pipeline.Batch, i int, id uint64) error { return js(b, i, id, false) }, rec, 100)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		w.Run(stop, func(b *pipeline.Batch, i int, id uint64) error { return js(b, i, id, true) })
	})
	wg.Go(func() { // JetStream's replies
		for {
			select {
			case <-stop:
				return
			case id := <-acks:
				switch roll(10) {
				case 0:
					w.Refused(id, errors.New("refused"))
				case 1:
					w.InProcess(id)
				case 2:
					w.Acked(id, true)
					w.Acked(id, false)
				default:
					w.Acked(id, false)
				}
			}
		}
	})
	wg.Go(func() { // connection and cluster events
		tick := time.NewTicker(3 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				switch roll(4) {
				case 0:
					w.Disconnected(errors.New("disconnected"))
					w.Reconnected()
				case 1:
					w.LeaderElected()
				}
			}
		}
	})
	const frames = 3000
	for seq := uint64(1); seq <= frames; {
		n := uint64(1 + roll(7))
		var seqs []uint64
		for ; n > 0 && seq <= frames; n-- {
			seqs = append(seqs, seq)
			seq++
		}
		put(seqs...)
	}
	// put returns once the aggregator queued the batch: wait for the
	// commits, not for Flush, which covers only what Write took so far.
	deadline := time.Now().Add(waitTimeout)
	for rec.count() < frames && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling
	}
	close(stop)
	wg.Wait()
	if n := rec.count(); n != frames {
		t.Fatalf("%d frames committed, want %d (stats %+v)", n, frames, w.Stats())
	}
	st := w.Stats()
	if st.Unacked != 0 || st.UnackedBytes != 0 {
		t.Fatalf("stats at the end: %+v", st)
	}
	t.Logf("stats %+v", st)
}
