package session

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// commitLog follows a session's batches from the queue to the sink's
// commit. The sink commits batches in any order, but an ACK is cumulative:
// the acknowledged count moves only over a prefix of the batches, in the
// order they were queued. It does no I/O and holds its own lock only.
type commitLog struct {
	mu          sync.Mutex
	outstanding []*pipeline.Batch // queued, not yet acknowledged, in queue order
	// done holds batches committed ahead of an earlier one. They stay in
	// outstanding, unreleased, until the prefix reaches them: a released
	// batch goes back to the pool, and its pointer could name another
	// session's batch by the time the prefix moves.
	done    map[*pipeline.Batch]struct{}
	allDone chan struct{} // closed when outstanding empties; nil without a waiter

	acked atomic.Uint64 // last sequence number of the committed prefix
}

// append records b as queued; the session calls it just before Put.
func (l *commitLog) append(b *pipeline.Batch) {
	l.mu.Lock()
	l.outstanding = append(l.outstanding, b)
	l.mu.Unlock()
}

// rollback forgets b, which append recorded last and Put then refused: it
// was never queued, so nothing can commit it.
func (l *commitLog) rollback(b *pipeline.Batch) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.outstanding); n > 0 && l.outstanding[n-1] == b {
		l.outstanding = l.outstanding[:n-1]
		l.wakeIfEmptyLocked()
		return
	}
	panic("session: rollback of a batch that is not the last queued")
}

// commit records that the sink committed every frame of b. It returns the
// batches that the acknowledged prefix now covers, for the caller to
// release once it no longer reads them, and whether the prefix moved.
func (l *commitLog) commit(b *pipeline.Batch, release []*pipeline.Batch) ([]*pipeline.Batch, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.outstanding) == 0 || l.outstanding[0] != b {
		if l.done == nil {
			l.done = make(map[*pipeline.Batch]struct{})
		}
		l.done[b] = struct{}{}
		return release, false
	}
	acked := b.LastSeq()
	release = append(release, b)
	l.outstanding = l.outstanding[1:]
	for len(l.outstanding) > 0 {
		next := l.outstanding[0]
		if _, ok := l.done[next]; !ok {
			break
		}
		delete(l.done, next)
		acked = next.LastSeq()
		release = append(release, next)
		l.outstanding = l.outstanding[1:]
	}
	// Stored before waking a waiter: the final ACK reads it.
	l.acked.Store(acked)
	l.wakeIfEmptyLocked()
	return release, true
}

func (l *commitLog) wakeIfEmptyLocked() {
	if len(l.outstanding) != 0 {
		return
	}
	l.outstanding = l.outstanding[:0:0] // let a long run's array go
	if l.allDone != nil {
		close(l.allDone)
		l.allDone = nil
	}
}

// errSinkFailed ends a commit wait that can never succeed.
var errSinkFailed = errors.New("session: the sink failed; queued frames will not be committed")

// wait blocks until every queued batch is committed, ctx ends, or failed
// is closed (the sink failed: nothing queued will be committed).
func (l *commitLog) wait(ctx context.Context, failed <-chan struct{}) error {
	l.mu.Lock()
	if len(l.outstanding) == 0 {
		l.mu.Unlock()
		return nil
	}
	if l.allDone == nil {
		l.allDone = make(chan struct{})
	}
	ch := l.allDone
	l.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-failed:
		return errSinkFailed
	}
}
