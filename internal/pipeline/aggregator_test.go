package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// gate is a sink that takes batches only when the test lets it, and
// records what it got; commits happen on Flush-like demand.
type gate struct {
	mu      sync.Mutex
	got     []*pipeline.Batch
	release chan struct{}
}

func (g *gate) Write(ctx context.Context, bs []*pipeline.Batch) error {
	select {
	case <-g.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	g.mu.Lock()
	g.got = append(g.got, bs...)
	g.mu.Unlock()
	for _, b := range bs {
		b.Commit(b.Len())
	}
	return nil
}
func (g *gate) Flush(context.Context) error { return nil }
func (g *gate) Close() error                { return nil }

type owner struct {
	mu   sync.Mutex
	done []*pipeline.Batch
}

func (o *owner) Committed(b *pipeline.Batch) {
	o.mu.Lock()
	o.done = append(o.done, b)
	o.mu.Unlock()
}

func batch(o pipeline.Owner, first uint64, n int) *pipeline.Batch {
	b := pipeline.NewBatch(o, 64)
	for i := range n {
		b.Add(pipeline.Frame{Seq: first + uint64(i), Payload: fmt.Appendf(nil, "f%d", first+uint64(i))})
	}
	return b
}

// TestQueueBoundBlocksProducers: with the sink stalled, Put blocks once the
// queue holds its limit in frames, and resumes when the sink takes them.
func TestQueueBoundBlocksProducers(t *testing.T) {
	g := &gate{release: make(chan struct{})}
	a := pipeline.New(g, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	o := &owner{}

	// The aggregator takes the first batch and blocks in Write, which
	// still counts against the queue until the sink has taken it; three
	// more frames fill the queue.
	if err := a.Put(ctx, batch(o, 1, 1)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := a.Put(ctx, batch(o, uint64(2+i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := a.Put(short, batch(o, 5, 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put on a full queue = %v, want it to block until its context ends", err)
	}
	if st := a.Stats(); st.BlockedFor <= 0 || st.Queued != 4 {
		t.Fatalf("stats %+v", st)
	}
	close(g.release) // the sink takes everything from now on
	if err := a.Put(ctx, batch(o, 5, 1)); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if st := a.Stats(); st.Committed != 5 || st.Depth != 0 {
		t.Fatalf("stats after drain %+v", st)
	}
	var seqs []uint64
	for _, b := range g.got {
		seqs = append(seqs, b.LastSeq())
	}
	if fmt.Sprint(seqs) != "[1 2 3 4 5]" {
		t.Fatalf("sink got batches %v, want in order", seqs)
	}
	if err := a.Put(ctx, batch(o, 6, 1)); !errors.Is(err, pipeline.ErrClosed) {
		t.Fatalf("Put after Close = %v", err)
	}
}

// A batch larger than the whole queue still goes through (alone).
func TestBatchLargerThanQueue(t *testing.T) {
	g := &gate{release: make(chan struct{})}
	close(g.release)
	a := pipeline.New(g, 2)
	ran := make(chan error, 1)
	go func() { ran <- a.Run(context.Background()) }()
	o := &owner{}
	if err := a.Put(context.Background(), batch(o, 1, 10)); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if len(o.done) != 1 || a.Stats().Committed != 10 {
		t.Fatalf("committed %d batches, %d frames", len(o.done), a.Stats().Committed)
	}
}

func TestBatchSlabs(t *testing.T) {
	o := &owner{}
	b := pipeline.NewBatch(o, 100)
	if b.Room() < 100 || b.Room() > 4096 {
		t.Fatalf("a small hint got a slab of %d", b.Room())
	}
	p := []byte("payload")
	b.Add(pipeline.Frame{Seq: 1, Payload: p})
	p[0] = 'X' // the batch holds a copy
	if string(b.Frames[0].Payload) != "payload" {
		t.Fatal("Add did not copy the payload")
	}
	b.Release()
	big := pipeline.NewBatch(o, 0)
	huge := make([]byte, pipeline.MaxSlab+1)
	big.Add(pipeline.Frame{Seq: 1, Payload: huge})
	if big.Bytes != len(huge) || len(big.Frames[0].Payload) != len(huge) {
		t.Fatal("an oversized frame was not kept whole")
	}
	big.Release()
}

// hold is a sink that takes batches and commits nothing: the test commits
// them later, as a store's acknowledgements would.
type hold struct {
	mu  sync.Mutex
	got []*pipeline.Batch
	n   chan int // frames in each Write
}

func (h *hold) Write(_ context.Context, bs []*pipeline.Batch) error {
	h.mu.Lock()
	h.got = append(h.got, bs...)
	h.mu.Unlock()
	frames := 0
	for _, b := range bs {
		frames += b.Len()
	}
	h.n <- frames
	return nil
}
func (h *hold) Flush(context.Context) error { return nil }
func (h *hold) Close() error                { return nil }

// counting is an owner that counts how often each batch is handed back.
type counting struct {
	mu   sync.Mutex
	done map[*pipeline.Batch]int
}

func (o *counting) Committed(b *pipeline.Batch) {
	o.mu.Lock()
	o.done[b]++
	o.mu.Unlock()
}

func (o *counting) times(b *pipeline.Batch) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.done[b]
}

// TestCommitOutOfOrderCompletesOnce: the frames of several batches are
// committed in a random order, from several goroutines at once, as a store's
// acknowledgements arrive. Each batch is handed back exactly once, only
// after its last frame, and the aggregator counts every frame exactly once.
func TestCommitOutOfOrderCompletesOnce(t *testing.T) {
	const (
		batches    = 40
		committers = 8
	)
	o := &counting{done: map[*pipeline.Batch]int{}}
	h := &hold{n: make(chan int, batches)}
	a := pipeline.New(h, 1<<12)
	ran := make(chan error, 1)
	go func() { ran <- a.Run(context.Background()) }()

	// Batches of 1 to 8 frames; every frame is one commit unit, except that
	// some pairs of frames are committed together, as Commit(2).
	type unit struct {
		b *pipeline.Batch
		n int
	}
	var units []unit
	total, seq := 0, uint64(1)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range batches {
		size := 1 + i%8
		b := batch(o, seq, size)
		seq += uint64(size)
		total += size
		if err := a.Put(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		for left := size; left > 0; {
			n := 1
			if left >= 2 && rng.IntN(3) == 0 {
				n = 2
			}
			units = append(units, unit{b, n})
			left -= n
		}
	}
	for taken := 0; taken < total; {
		select {
		case n := <-h.n:
			taken += n
		case <-time.After(10 * time.Second):
			t.Fatalf("the sink took %d of %d frames", taken, total)
		}
	}
	rng.Shuffle(len(units), func(i, j int) { units[i], units[j] = units[j], units[i] })

	// Each committer takes every committers-th unit. All start together, so
	// that the last commits of a batch race each other.
	start := make(chan struct{})
	var wg sync.WaitGroup
	for c := range committers {
		wg.Go(func() {
			<-start
			for i := c; i < len(units); i += committers {
				units[i].b.Commit(units[i].n)
			}
		})
	}
	close(start)
	wg.Wait()

	for i, b := range h.got {
		if got := o.times(b); got != 1 {
			t.Errorf("batch %d (%d frames) handed back %d times, want once", i, b.Len(), got)
		}
	}
	if len(h.got) != batches || len(o.done) != batches {
		t.Errorf("the sink got %d batches, %d handed back, want %d", len(h.got), len(o.done), batches)
	}
	if st := a.Stats(); st.Committed != uint64(total) || st.Queued != uint64(total) || st.Depth != 0 {
		t.Errorf("stats %+v, want %d frames queued and committed, none waiting", st, total)
	}
	a.Close()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
}

// A batch that is handed back early is not done: the commits of a batch
// that has frames left must not reach its owner.
func TestCommitHandsBackOnlyAfterTheLastFrame(t *testing.T) {
	o := &counting{done: map[*pipeline.Batch]int{}}
	h := &hold{n: make(chan int, 1)}
	a := pipeline.New(h, 16)
	ran := make(chan error, 1)
	go func() { ran <- a.Run(context.Background()) }()
	b := batch(o, 1, 3)
	if err := a.Put(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	<-h.n
	b.Commit(2)
	if o.times(b) != 0 || a.Stats().Committed != 0 {
		t.Fatalf("handed back %d times, %d committed, after 2 of 3 frames", o.times(b), a.Stats().Committed)
	}
	b.Commit(1)
	if o.times(b) != 1 || a.Stats().Committed != 3 {
		t.Fatalf("handed back %d times, %d committed, after 3 of 3 frames", o.times(b), a.Stats().Committed)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a commit beyond the batch's frames did not panic")
			}
		}()
		b.Commit(1)
	}()
	a.Close()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
}
