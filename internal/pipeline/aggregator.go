package pipeline

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// ErrClosed is returned by Put after the queue was closed.
var ErrClosed = errors.New("pipeline: queue closed")

// Stats are the aggregator's counters, read by metrics and the exit log.
type Stats struct {
	Queued     uint64 // frames ever put into the queue
	Committed  uint64 // frames committed by the sink
	Depth      int64  // frames waiting in the queue right now
	BlockedFor time.Duration
}

// Aggregator owns the bounded queue between sessions and the sink.
//
// The queue is bounded in frames, not batches: a session acquires one unit of
// a weighted semaphore per frame before its batch enters the channel, and the
// units are released once the sink has taken the batch. A full queue blocks
// Put, so a slow sink slows every reader, and nothing is dropped.
type Aggregator struct {
	sink  Sink
	limit int64
	sem   *semaphore.Weighted
	ch    chan *Batch

	closeOnce sync.Once
	mu        sync.RWMutex // guards closed against Put racing Close
	closed    bool

	queued    atomic.Uint64
	committed atomic.Uint64
	depth     atomic.Int64
	blockedNS atomic.Int64 // time Puts spent waiting on a full queue
}

// maxGather bounds how many batches one Write hands the sink.
const maxGather = 64

// New returns an aggregator with a queue of limit frames feeding sink.
func New(sink Sink, limit int) *Aggregator {
	if limit < 1 {
		limit = 1
	}
	return &Aggregator{
		sink:  sink,
		limit: int64(limit),
		sem:   semaphore.NewWeighted(int64(limit)),
		ch:    make(chan *Batch, limit),
	}
}

// Limit is the queue bound in frames; sessions cap their batches to it.
func (a *Aggregator) Limit() int { return int(a.limit) }

// Put enqueues b, blocking while the queue is full. It fails when ctx ends
// (the batch was not queued) or after Close.
func (a *Aggregator) Put(ctx context.Context, b *Batch) error {
	n := min(int64(b.Len()), a.limit)
	if !a.sem.TryAcquire(n) {
		start := time.Now()
		err := a.sem.Acquire(ctx, n)
		a.blockedNS.Add(int64(time.Since(start)))
		if err != nil {
			return err
		}
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		a.sem.Release(n)
		return ErrClosed
	}
	b.arm(a)
	a.queued.Add(uint64(b.Len()))
	a.depth.Add(int64(b.Len()))
	a.ch <- b // never blocks: every queued batch holds at least one unit
	return nil
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
// flushes the sink. It returns early only when ctx ends (a forced stop).
func (a *Aggregator) Run(ctx context.Context) error {
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
		var frames, units int64
		for _, b := range batches {
			frames += int64(b.Len())
			units += min(int64(b.Len()), a.limit)
		}
		err := a.sink.Write(ctx, batches)
		a.sem.Release(units)
		a.depth.Add(-frames)
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
		BlockedFor: time.Duration(a.blockedNS.Load()),
	}
}
