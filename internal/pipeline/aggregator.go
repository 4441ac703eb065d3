package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Errors of Put.
var (
	// ErrClosed is returned by Put after the queue was closed.
	ErrClosed = errors.New("pipeline: queue closed")
	// ErrSinkFailed is returned by Put once the sink has failed: nothing
	// more can be stored.
	ErrSinkFailed = errors.New("pipeline: sink failed")
)

// Stats are the aggregator's counters, read by metrics and the exit log.
type Stats struct {
	Queued     uint64        // frames ever put into the queue
	Committed  uint64        // frames committed by the sink
	Depth      int64         // frames queued and not yet taken by the sink right now
	DepthBytes int64         // bytes of those frames' batches
	Waiting    int64         // Puts blocked on a full queue right now: sessions pushed back
	BlockedFor time.Duration // summed over Puts that waited and got room or gave up
}

// DefaultLimitBytes bounds the queue's memory unless WithByteLimit says
// otherwise.
const DefaultLimitBytes = 64 << 20

// Option configures an Aggregator.
type Option func(*Aggregator)

// WithByteLimit bounds the memory of the batches in the queue, in bytes:
// the buffers that hold their payloads (a batch's slab, whose size class
// can exceed what it holds). A batch larger than the bound passes alone.
func WithByteLimit(n int64) Option {
	return func(a *Aggregator) {
		if n > 0 {
			a.limitBytes = n
		}
	}
}

// Aggregator owns the bounded queue between sessions and the sink.
//
// The queue is bounded twice, in frames and in bytes: before its batch
// enters the channel a session acquires one unit of a weighted semaphore
// per frame, and of another per byte of the batch's buffer; both are
// released once the sink has taken the batch. A full queue blocks Put, so a
// slow sink slows every reader, and nothing is dropped.
type Aggregator struct {
	sink       Sink
	limit      int64
	limitBytes int64
	frames     *semaphore.Weighted
	bytes      *semaphore.Weighted
	ch         chan *Batch

	closeOnce sync.Once
	mu        sync.RWMutex // guards closed against Put racing Close
	closed    bool

	// failed is cancelled, with the sink's error as cause, when Write
	// fails. Run then goes on taking batches off the queue, without
	// writing them, so that Puts waiting for room get it and learn of the
	// failure, and later ones are refused.
	failed context.Context
	fail   context.CancelCauseFunc

	queued     atomic.Uint64
	committed  atomic.Uint64
	depth      atomic.Int64
	depthBytes atomic.Int64
	blockedNS  atomic.Int64 // time Puts spent waiting on a full queue
	waiting    atomic.Int64 // Puts waiting on a full queue now
}

// maxGather bounds how many batches one Write hands the sink.
const maxGather = 64

// New returns an aggregator with a queue of at most limit frames (and
// DefaultLimitBytes bytes, unless an option says otherwise) feeding sink.
func New(sink Sink, limit int, opts ...Option) *Aggregator {
	if limit < 1 {
		limit = 1
	}
	a := &Aggregator{
		sink:       sink,
		limit:      int64(limit),
		limitBytes: DefaultLimitBytes,
		ch:         make(chan *Batch, limit),
	}
	for _, o := range opts {
		o(a)
	}
	a.frames = semaphore.NewWeighted(a.limit)
	a.bytes = semaphore.NewWeighted(a.limitBytes)
	a.failed, a.fail = context.WithCancelCause(context.Background())
	return a
}

// Failed is closed once the sink has failed; Err then says why.
func (a *Aggregator) Failed() <-chan struct{} { return a.failed.Done() }

// Err is the sink's error after Failed is closed, nil before.
func (a *Aggregator) Err() error {
	if a.failed.Err() == nil {
		return nil
	}
	return context.Cause(a.failed)
}

// Limit is the queue bound in frames.
func (a *Aggregator) Limit() int { return int(a.limit) }

// LimitBytes is the queue bound in bytes.
func (a *Aggregator) LimitBytes() int64 { return a.limitBytes }

// BatchLimit is the most frames a session should put in one batch: a
// fraction of the queue, so that one batch never takes the whole queue and
// many sessions share it instead of taking turns.
func (a *Aggregator) BatchLimit() int { return max(1, int(a.limit/8)) }

// weights are the units b takes of each bound.
func (a *Aggregator) weights(b *Batch) (frames, bytes int64) {
	return min(int64(b.Count()), a.limit), min(int64(b.footprint()), a.limitBytes)
}

// Put enqueues b, blocking while the queue is full. It fails, with the
// batch not queued, when ctx ends, after Close (ErrClosed), or once the sink
// has failed (ErrSinkFailed, wrapping the sink's error).
func (a *Aggregator) Put(ctx context.Context, b *Batch) error {
	if b.Len() == 0 {
		// A programming error: an empty batch would hold no unit of the
		// queue, and no sink commit would ever hand it back.
		panic("pipeline: Put of an empty batch")
	}
	n, m := a.weights(b)
	if !a.frames.TryAcquire(n) {
		if err := a.wait(ctx, a.frames, n); err != nil {
			return err
		}
	}
	if !a.bytes.TryAcquire(m) {
		if err := a.wait(ctx, a.bytes, m); err != nil {
			a.frames.Release(n)
			return err
		}
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		a.frames.Release(n)
		a.bytes.Release(m)
		return ErrClosed
	}
	if err := a.Err(); err != nil {
		a.frames.Release(n)
		a.bytes.Release(m)
		return fmt.Errorf("%w: %w", ErrSinkFailed, err)
	}
	b.arm(a)
	a.queued.Add(uint64(b.Count()))
	a.depth.Add(int64(b.Count()))
	a.depthBytes.Add(m)
	a.ch <- b // never blocks: every queued batch holds at least one frame unit
	return nil
}

// wait is the slow path of Put: it waits for room, counting the time as
// back-pressure.
func (a *Aggregator) wait(ctx context.Context, sem *semaphore.Weighted, n int64) error {
	start := time.Now()
	a.waiting.Add(1)
	defer func() {
		a.waiting.Add(-1)
		a.blockedNS.Add(int64(time.Since(start)))
	}()
	return sem.Acquire(ctx, n)
}

// Close ends the queue once every producer has stopped calling Put; Run then
// drains what is left into the sink and flushes it.
func (a *Aggregator) Close() {
	a.closeOnce.Do(func() {
		a.mu.Lock()
		a.closed = true
		close(a.ch)
		a.mu.Unlock()
	})
}

// Run feeds the sink until Close was called and the queue is empty, then
// flushes the sink. It returns early when ctx ends (a forced stop). When
// the sink fails (an error that is not ctx's), Failed fires, and Run goes on
// taking batches off the queue without writing them, until Close or ctx:
// no session stays blocked on a queue that nothing empties. It then returns
// the sink's error.
func (a *Aggregator) Run(ctx context.Context) error {
	err := a.run(ctx)
	if err == nil || ctx.Err() != nil {
		return err
	}
	a.fail(err)
	for {
		select {
		case b, ok := <-a.ch:
			if !ok {
				return err
			}
			n, m := a.weights(b)
			a.depth.Add(-int64(b.Count()))
			a.depthBytes.Add(-m)
			a.frames.Release(n)
			a.bytes.Release(m)
			// Never committed: its session was told, by Failed, that it
			// never will be, and ends without waiting for it.
		case <-ctx.Done():
			return err
		}
	}
}

func (a *Aggregator) run(ctx context.Context) error {
	batches := make([]*Batch, 0, maxGather)
	for {
		var b *Batch
		var ok bool
		select {
		case b, ok = <-a.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			return a.sink.Flush(ctx)
		}
		batches = append(batches[:0], b)
	gather:
		for len(batches) < maxGather {
			select {
			case b, ok = <-a.ch:
				if !ok {
					break gather
				}
				batches = append(batches, b)
			default:
				break gather
			}
		}
		// Count before Write: once handed over, a batch may be committed
		// and recycled by its owner at any moment.
		var frames, units, bytes int64
		for _, b := range batches {
			n, m := a.weights(b)
			frames += int64(b.Count())
			units += n
			bytes += m
		}
		// Taken off the queue now; their room is given back only once the
		// sink has them, so the bounds cover what Write holds too.
		a.depth.Add(-frames)
		a.depthBytes.Add(-bytes)
		err := a.sink.Write(ctx, batches)
		a.frames.Release(units)
		a.bytes.Release(bytes)
		clear(batches)
		if err != nil {
			return err
		}
	}
}

// Stats returns a snapshot of the counters.
func (a *Aggregator) Stats() Stats {
	return Stats{
		Queued:     a.queued.Load(),
		Committed:  a.committed.Load(),
		Depth:      a.depth.Load(),
		DepthBytes: a.depthBytes.Load(),
		Waiting:    a.waiting.Load(),
		BlockedFor: time.Duration(a.blockedNS.Load()),
	}
}
