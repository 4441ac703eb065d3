package pipeline

import "context"

// Sink is where accepted frames go. The aggregator is its only caller of
// Write and Flush, from one goroutine; Commit callbacks may come from any.
//
// A sink never drops a frame: when it cannot take more (its store is down,
// its window full), Write blocks, the queue fills, sessions stop reading and
// TCP pushes back on the stations. Failures inside the sink are retried
// inside the sink; Write and Flush fail only when ctx ends.
type Sink interface {
	// Write takes batches. It returns once the sink has them, which may be
	// before they are committed: a sink calls Batch.Commit as frames become
	// durable (or, for the non-durable sinks, written). Commits may come
	// before Write returns; once a batch's last frame is committed, neither
	// the sink nor the aggregator may read the batch again. Batches are
	// never empty.
	Write(ctx context.Context, batches []*Batch) error
	// Flush returns once every batch written so far is committed.
	Flush(ctx context.Context) error
	// Close releases the sink's resources. It is called after Flush, or
	// after the context of a forced stop ended.
	Close() error
}

// Checker is implemented by sinks that can tell whether they can take frames
// right now; /readyz reports it. A nil error means ready.
type Checker interface {
	Check() error
}
