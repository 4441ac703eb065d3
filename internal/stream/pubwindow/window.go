// Package pubwindow is the window of messages between their publish and
// their acknowledgement: slots, message ids, PubAck deadlines, resends, the
// bound in messages and in payload bytes, and the outage state that holds
// the writer back while the store does not take frames. It knows nothing of
// NATS: the sink hands it a PublishFunc that builds and sends one message,
// and tells it what each reply, disconnect, reconnect and leader election
// means.
//
// The batch-lifetime rule, that no frame is resent and no batch committed
// while a publish may still read it, is kept by the shape of the API rather
// than by its callers: the window calls the PublishFunc itself, between
// marking the slots busy and clearing the marks, and commits batches itself.
// No caller ever holds a message that is reserved and not yet published.
package pubwindow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// Errors of the window. Their text names the stream: they reach /readyz and
// the log through the JetStream sink, which re-exports them.
var (
	// ErrUnavailable: the stream is not taking frames; Write is holding back.
	ErrUnavailable = errors.New("stream: not taking frames")
	// ErrAckTimeout: no PubAck arrived within the publish timeout.
	ErrAckTimeout = errors.New("stream: no PubAck within the publish timeout")
	// ErrClosed: Write or Flush after Close.
	ErrClosed = errors.New("stream: sink closed")
)

// Defaults of Options.
const (
	DefaultSize    = 4096
	DefaultBytes   = 64 << 20
	DefaultTimeout = 5 * time.Second
)

// Back-off between resend rounds while the stream is unavailable.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Options tune a Window. Zero values mean the defaults.
type Options struct {
	Size    int           // messages published and not yet acknowledged; default 4096
	Bytes   int64         // their payload bytes; default 64 MiB (one message is always admitted)
	Timeout time.Duration // wait for a PubAck before resending; default 5s
	Log     *slog.Logger  // outage lines; default: discard
	// Clock is the time source of deadlines and back-off; default
	// time.Now. Tests drive expiry with their own.
	Clock func() time.Time
}

// PublishFunc publishes frame i of b as message id. It must not keep b,
// nor anything of the frame, after it returned: the window may commit the
// batch at once. An error means the message was not sent; the window
// resends it and starts an outage with the error as its cause.
type PublishFunc func(b *pipeline.Batch, i int, id uint64) error

// Stats are the window's counters.
type Stats struct {
	Unacked      int       // messages published (or being published) and waiting for their PubAck
	UnackedBytes int64     // their payload bytes
	Down         bool      // the stream is not taking frames; Write is holding back
	DownSince    time.Time // when the current outage began; zero while the stream takes frames
	Outages      uint64    // episodes of the stream not taking frames
	Resent       uint64    // messages sent again after a failed or missing PubAck
	Timeouts     uint64    // PubAcks that did not arrive within the timeout
	InProcess    uint64    // replies "original still in process": waited for, not outages
	Duplicates   uint64    // PubAcks saying the send was a dropped duplicate
}

// Window is the publish window. Write is called by one goroutine (the
// aggregator's), Run (or Tick) by one other; every other method may be
// called from any goroutine. No lock is held across a PublishFunc or a
// Commit.
type Window struct {
	log      *slog.Logger
	timeout  time.Duration
	maxBytes int64
	now      func() time.Time

	mu       sync.Mutex
	logs     []func() // log lines due, written by unlock after mu is released
	slots    []slot   // ring; a message with id n uses slot n%len
	next     uint64   // id of the next new message; ids start at 1
	inflight int      // slots not free
	bytes    int64    // payload bytes of the slots not free
	failed   int      // slots waiting for a resend
	down     *outage
	waiting  bool // Write or Flush waits on wake
	closed   bool
	urgent   bool // resend now, regardless of the back-off
	backoff  time.Duration
	nextTry  time.Time
	stats    Stats

	commits []*pipeline.Batch // Write's only: commits found at release
	work    []resendItem      // the resender's only: a resend round

	wake chan struct{} // to the waiting Write/Flush; capacity 1
	kick chan struct{} // to Run; capacity 1
}

// state is where a slot is in its life. The transitions:
//
//	free ──Write──▶ publishing ──publish returned──▶ sent ──PubAck──▶ free
//	sent ──timeout, refusal, reconnect, new leader──▶ waiting
//	waiting ──resend round──▶ publishing
//	waiting ──PubAck of an earlier send──▶ free
//	waiting ──"in process"──▶ sent
//	publishing ──PubAck──▶ (acked) ──publish returned──▶ free
//	publishing ──publish failed, refusal, reconnect, new leader──▶ (retry)
//	           ──publish returned──▶ waiting
//
// Only the goroutine that moved a slot to publishing moves it out again,
// inside the same call of Write or Tick; nothing else frees it or picks it
// for a resend. Events that concern a publishing slot are noted on it
// (acked, retry) and take effect when its publish returned.
type state uint8

const (
	free       state = iota
	publishing       // a PublishFunc may be reading its frame: its batch must stay alive
	sent             // published; PubAck due by deadline
	waiting          // to be resent; counted in failed
)

// slot is one message of the window. Guarded by Window.mu.
type slot struct {
	id       uint64 // 0 when free
	b        *pipeline.Batch
	i        int   // frame index in b
	size     int64 // payload bytes, counted in Window.bytes
	deadline time.Time
	state    state
	acked    bool // publishing: a PubAck came; commit once the publish returned
	retry    bool // publishing: resend once the publish returned
}

// outage is one episode of the stream not taking frames.
type outage struct {
	since   time.Time
	cause   error
	resends int
}

// New returns an empty window.
func New(opts Options) *Window {
	if opts.Size <= 0 {
		opts.Size = DefaultSize
	}
	if opts.Bytes <= 0 {
		opts.Bytes = DefaultBytes
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	return &Window{
		log:      opts.Log,
		timeout:  opts.Timeout,
		maxBytes: opts.Bytes,
		now:      opts.Clock,
		slots:    make([]slot, opts.Size),
		next:     1,
		backoff:  minBackoff,
		wake:     make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
	}
}

// Write publishes every frame of b through pub, waiting while the window is
// full (in messages or bytes) or the stream is down. It fails only when ctx
// ends or after Close; frames not published then stay uncommitted. b must
// not be empty. Once Write returned, b may be committed at any moment.
func (w *Window) Write(ctx context.Context, b *pipeline.Batch, pub PublishFunc) error {
	// Once its last run is released, b may be committed and reused at any
	// moment: nothing below reads b after that, not even its length.
	nf := len(b.Frames)
	for i := 0; i < nf; {
		first, n, err := w.reserve(ctx, b, i, nf)
		if err != nil {
			return err
		}
		// The frames are read here outside the lock. The reserved slots
		// are publishing until release: a PubAck only marks them acked, and
		// no resend picks them.
		for k := range n {
			if err := pub(b, i+k, first+uint64(k)); err != nil {
				w.publishFailed(first+uint64(k), err)
			}
		}
		i += n
		w.release(first, n)
	}
	return nil
}

// reserve takes the slots of the next messages, frames i..nf-1 of b: as many
// consecutive free slots as there are frames left and the byte bound allows
// (at least one), waiting while the next slot is in use, the bound is
// reached or the stream is down. One lock per run keeps the writer's
// locking off the per-frame path.
func (w *Window) reserve(ctx context.Context, b *pipeline.Batch, i, nf int) (first uint64, n int, err error) {
	w.mu.Lock()
	for {
		if w.closed {
			w.unlock()
			return 0, 0, ErrClosed
		}
		if w.down == nil {
			size := uint64(len(w.slots))
			first = w.next
			for ; i+n < nf; n++ {
				sl := &w.slots[w.next%size]
				p := int64(len(b.Frames[i+n].Payload))
				// Always admit one message into an empty window, so that a
				// frame larger than the byte bound still gets through.
				if sl.state != free || (w.inflight > 0 && w.bytes+p > w.maxBytes) {
					break
				}
				*sl = slot{id: w.next, b: b, i: i + n, size: p, state: publishing}
				w.next++
				w.inflight++
				w.bytes += p
			}
			if n > 0 {
				w.unlock()
				return first, n, nil
			}
		}
		if err := w.waitLocked(ctx); err != nil {
			return 0, 0, fmt.Errorf("stream: write: %w", err)
		}
	}
}

// release ends the publishes of messages first..first+n-1 and commits those
// acknowledged meanwhile.
func (w *Window) release(first uint64, n int) {
	w.mu.Lock()
	deadline := w.now().Add(w.timeout)
	commits := w.commits[:0]
	for id := first; id < first+uint64(n); id++ {
		if b := w.endPublishLocked(id, deadline); b != nil {
			commits = append(commits, b)
		}
	}
	if len(commits) > 0 {
		w.signalLocked()
	}
	w.unlock()
	for _, b := range commits {
		b.Commit(1)
	}
	clear(commits)
	w.commits = commits[:0]
}

// endPublishLocked moves message id out of publishing: freed if a PubAck
// came meanwhile (its batch is returned for the caller to commit after
// unlocking), waiting if it must be resent, sent otherwise.
func (w *Window) endPublishLocked(id uint64, deadline time.Time) *pipeline.Batch {
	sl := w.slot(id)
	if sl.id != id || sl.state != publishing {
		panic(fmt.Sprintf("pubwindow: message %d ended a publish it was not in (slot %d, state %d)", id, sl.id, sl.state))
	}
	switch {
	case sl.acked:
		return w.freeLocked(sl)
	case sl.retry:
		sl.state, sl.retry = waiting, false
		w.failed++
		w.kickLocked()
	default:
		sl.state, sl.deadline = sent, deadline
	}
	return nil
}

// freeLocked frees sl and returns its batch, to be committed after unlocking.
func (w *Window) freeLocked(sl *slot) *pipeline.Batch {
	b := sl.b
	w.inflight--
	w.bytes -= sl.size
	*sl = slot{}
	return b
}

// publishFailed marks message id, which is publishing, for a resend after
// pub refused it, and starts an outage.
func (w *Window) publishFailed(id uint64, err error) {
	w.mu.Lock()
	defer w.unlock()
	if sl := w.slot(id); sl.id == id && sl.state == publishing {
		sl.retry = true
	}
	w.markDownLocked(err)
}

// Flush waits until every message written so far has its PubAck.
func (w *Window) Flush(ctx context.Context) error {
	w.mu.Lock()
	for w.inflight > 0 {
		if w.closed {
			w.unlock()
			return ErrClosed
		}
		n := w.inflight
		if err := w.waitLocked(ctx); err != nil {
			return fmt.Errorf("stream: flush: %d frames without PubAck: %w", n, err)
		}
	}
	w.unlock()
	return nil
}

// waitLocked sleeps until a slot frees, the outage ends, Close, or ctx ends.
// Called with mu held; returns with mu held, or released when it fails.
func (w *Window) waitLocked(ctx context.Context) error {
	w.waiting = true
	w.unlock()
	select {
	case <-w.wake:
		w.mu.Lock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// signalLocked wakes the waiting Write or Flush, if any.
func (w *Window) signalLocked() {
	if w.waiting {
		w.waiting = false
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *Window) kickLocked() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Close makes Write and Flush fail with ErrClosed, now and later. Messages
// without a PubAck stay uncommitted. Close does not stop Run: its caller
// does, through Run's stop channel.
func (w *Window) Close() {
	w.mu.Lock()
	w.closed = true
	w.signalLocked()
	w.unlock()
}

// Check reports ErrClosed after Close, an error wrapping ErrUnavailable and
// the outage's cause while the stream is not taking frames, else nil.
func (w *Window) Check() error {
	w.mu.Lock()
	defer w.unlock()
	switch {
	case w.closed:
		return ErrClosed
	case w.down != nil:
		return fmt.Errorf("%w since %s: %w", ErrUnavailable, w.down.since.Format(time.RFC3339), w.down.cause)
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (w *Window) Stats() Stats {
	w.mu.Lock()
	defer w.unlock()
	st := w.stats
	st.Unacked, st.UnackedBytes = w.inflight, w.bytes
	if w.down != nil {
		st.Down, st.DownSince = true, w.down.since
	}
	return st
}

// Acked is a successful PubAck of message id; duplicate is JetStream saying
// it dropped this send as a copy of a stored message. The frame is
// committed now, or when its publish in progress returns. A PubAck of a
// message acknowledged already, or freed since, changes nothing.
func (w *Window) Acked(id uint64, duplicate bool) {
	w.mu.Lock()
	sl := w.slot(id)
	if sl.id != id || sl.acked {
		// A late PubAck of a message acknowledged since, or the reply to
		// another send of a message stored already.
		w.unlock()
		return
	}
	if duplicate {
		w.stats.Duplicates++
	}
	if w.down != nil {
		w.recoverLocked()
	}
	var b *pipeline.Batch
	switch sl.state {
	case publishing:
		// Its frame is being read for a publish: whoever started it
		// commits it once the publish returned (endPublishLocked).
		sl.acked, sl.retry = true, false
	case waiting:
		w.failed-- // a PubAck of an earlier send arrived after all
		b = w.freeLocked(sl)
	case sent:
		b = w.freeLocked(sl)
	}
	if b != nil {
		w.signalLocked()
	}
	w.unlock()
	if b != nil {
		b.Commit(1)
	}
}

// InProcess is JetStream's reply that a message with id's Nats-Msg-Id is
// being stored right now (a resend whose original is in process, on a
// replicated stream). Not an outage: the original's PubAck comes to the
// same reply subject. The message waits for it as if just sent; should it
// never come, the deadline expires and the message is sent once more.
func (w *Window) InProcess(id uint64) {
	w.mu.Lock()
	defer w.unlock()
	sl := w.slot(id)
	if sl.id != id || sl.acked {
		return
	}
	w.stats.InProcess++
	if sl.state == waiting {
		sl.state, sl.deadline = sent, w.now().Add(w.timeout)
		w.failed--
	}
}

// Refused is an error reply to message id: the stream did not store it.
// The message is resent, and an outage starts with cause.
func (w *Window) Refused(id uint64, cause error) {
	w.mu.Lock()
	defer w.unlock()
	sl := w.slot(id)
	if sl.id != id || sl.acked {
		return
	}
	switch sl.state {
	case publishing:
		sl.retry = true
	case sent:
		sl.state = waiting
		w.failed++
	}
	w.markDownLocked(cause)
}

// Disconnected starts an outage: the client lost its server, nothing can be
// published until it reconnected, and PubAcks on the way are lost.
func (w *Window) Disconnected(cause error) {
	w.mu.Lock()
	defer w.unlock()
	if w.closed {
		return // the connection closing behind a closed sink is no outage
	}
	w.markDownLocked(cause)
}

// Reconnected marks every unacknowledged message for a resend now: PubAcks
// sent while the connection was down are lost. It ends the outage if
// nothing is unacknowledged; otherwise the first PubAck of the resends does.
func (w *Window) Reconnected() { w.resendAll("reconnect") }

// LeaderElected is the stream's new leader: messages the old one took and
// did not acknowledge will not be acknowledged by anyone, so every
// unacknowledged message is resent now rather than after its timeout.
// JetStream drops the copies of those it stored, by Nats-Msg-Id.
func (w *Window) LeaderElected() { w.resendAll("new stream leader") }

// resendAll marks every message sent and not acknowledged for a resend now.
// A message being published is marked to be resent once its publish
// returned (it may have gone to the old connection or leader): never
// before, so its batch stays alive.
func (w *Window) resendAll(why string) {
	w.mu.Lock()
	defer w.unlock()
	n := 0
	for i := range w.slots {
		sl := &w.slots[i]
		switch {
		case sl.state == sent:
			sl.state = waiting
			w.failed++
			n++
		case sl.state == publishing && !sl.acked:
			sl.retry = true
			n++
		}
	}
	if n > 0 || w.failed > 0 {
		failed := w.failed
		w.logLocked(func() {
			w.log.Debug("resending unacknowledged frames now", "why", why, "marked", n, "waiting_resend", failed)
		})
		w.urgent = true
		w.kickLocked() // the first PubAck of the resends ends the outage
		return
	}
	if w.down != nil {
		// Nothing was unacknowledged, so no PubAck can end the outage: the
		// event must. Should the stream still not take frames, the next
		// publish starts a new episode.
		w.recoverLocked()
		w.signalLocked()
	}
}

// markDownLocked starts an outage, logging it once.
func (w *Window) markDownLocked(cause error) {
	if w.down != nil {
		return
	}
	w.down = &outage{since: w.now(), cause: cause}
	w.stats.Outages++
	inflight := w.inflight
	w.logLocked(func() {
		w.log.Warn("stream is not taking frames; holding stations back and retrying",
			"cause", cause, "unacknowledged", inflight)
	})
	w.kickLocked()
}

// recoverLocked ends the outage.
func (w *Window) recoverLocked() {
	downFor, rounds, failed := w.now().Sub(w.down.since).Round(time.Millisecond), w.down.resends, w.failed
	w.logLocked(func() {
		w.log.Info("stream is taking frames again", "down_for", downFor, "resend_rounds", rounds, "waiting_resend", failed)
	})
	w.down = nil
	w.signalLocked()
	w.kickLocked() // resend the rest now rather than at the next back-off
}

// Run owns timeouts and resends: it calls Tick on every kick (an outage, a
// refusal, a reconnect, a new leader) and at least every tenth of the
// timeout (between 10 ms and 250 ms). It returns when stop is closed.
func (w *Window) Run(stop <-chan struct{}, pub PublishFunc) {
	tick := time.NewTicker(min(max(w.timeout/10, 10*time.Millisecond), 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		case <-w.kick:
		}
		w.Tick(pub)
	}
}

// Tick expires overdue PubAcks and, unless the back-off of an outage says
// wait, resends every message waiting for it through pub, in id order so
// that a recovered stream stores them in the order they came. It stops at
// the first refused publish: the rest would fail alike, and wait for the
// next round. Only one goroutine may call Tick (Run's, or a test's).
func (w *Window) Tick(pub PublishFunc) {
	w.mu.Lock()
	now := w.now()
	if w.inflight > w.failed {
		w.expireLocked(now)
	}
	if w.down == nil || w.urgent {
		w.backoff, w.nextTry = minBackoff, time.Time{}
		w.urgent = false
	}
	if w.failed == 0 || now.Before(w.nextTry) {
		w.unlock()
		return
	}
	if w.down != nil {
		w.down.resends++
		w.nextTry = now.Add(w.backoff)
		w.backoff = min(w.backoff*2, maxBackoff)
	}
	work := w.work[:0]
	size := uint64(len(w.slots))
	for id := w.next - min(w.next-1, size); id < w.next; id++ {
		sl := &w.slots[id%size]
		if sl.id != id || sl.state != waiting {
			continue // a publishing slot is never picked: see state
		}
		sl.state = publishing
		w.failed--
		// Its batch stays alive until endPublishLocked: it is publishing.
		work = append(work, resendItem{id: id, b: sl.b, i: sl.i})
	}
	w.unlock()

	sent := 0
	var perr error
	for _, r := range work {
		if perr = pub(r.b, r.i, r.id); perr != nil {
			break
		}
		sent++
	}

	var commits []*pipeline.Batch
	w.mu.Lock()
	deadline := w.now().Add(w.timeout)
	for k, r := range work {
		if k >= sent {
			w.slot(r.id).retry = true // not sent: waits for the next round
		}
		if b := w.endPublishLocked(r.id, deadline); b != nil {
			commits = append(commits, b)
		}
	}
	w.stats.Resent += uint64(sent)
	if perr != nil {
		w.markDownLocked(perr)
		w.logLocked(func() { w.log.Debug("resend failed", "err", perr) })
	}
	if len(commits) > 0 {
		w.signalLocked()
	}
	w.unlock()
	for _, b := range commits {
		b.Commit(1)
	}
	clear(work)
	w.work = work[:0]
}

// expireLocked marks messages whose PubAck is overdue for a resend.
func (w *Window) expireLocked(now time.Time) {
	expired := 0
	for i := range w.slots {
		sl := &w.slots[i]
		if sl.state == sent && now.After(sl.deadline) {
			sl.state = waiting
			w.failed++
			expired++
		}
	}
	if expired > 0 {
		w.stats.Timeouts += uint64(expired)
		w.markDownLocked(fmt.Errorf("%w (%s, %d messages)", ErrAckTimeout, w.timeout, expired))
	}
}

// resendItem is one message of a resend round.
type resendItem struct {
	id uint64
	b  *pipeline.Batch
	i  int
}

// slot is message id's slot; it holds id only while the message is in the
// window.
func (w *Window) slot(id uint64) *slot { return &w.slots[id%uint64(len(w.slots))] }

// logLocked queues a log line for unlock: a handler writing to a blocked
// stderr must not hold mu, which Check and Stats (/readyz, /metrics) take.
func (w *Window) logLocked(f func()) { w.logs = append(w.logs, f) }

// unlock releases mu and then writes the log lines queued under it.
func (w *Window) unlock() {
	logs := w.logs
	w.logs = nil
	w.mu.Unlock()
	for _, f := range logs {
		f()
	}
}
