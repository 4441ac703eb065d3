package pipeline_test

import (
	"context"
	"errors"
	"fmt"
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

func TestCommitOutOfOrderCompletesOnce(t *testing.T) {
	o := &owner{}
	g := &gate{release: make(chan struct{})}
	a := pipeline.New(g, 16)
	b := batch(o, 1, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	b.Commit(1)
	b.Commit(1)
	if len(o.done) != 0 {
		t.Fatal("batch done before all its frames were committed")
	}
	b.Commit(1)
	if len(o.done) != 1 {
		t.Fatal("batch not handed back once fully committed")
	}
	a.Close()
}
