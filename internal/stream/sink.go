package stream

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers the sink sets on every message. Consumers use Meridian-Session and
// Meridian-Seq (or Nats-Msg-Id) to drop the duplicates at-least-once delivery
// can create.
const (
	HeaderStation  = "Meridian-Station"  // station identity, verbatim
	HeaderSession  = "Meridian-Session"  // gs-N@REMOTE_ADDR
	HeaderSeq      = "Meridian-Seq"      // per-session sequence number, decimal
	HeaderReceived = "Meridian-Received" // when the gateway read the frame, RFC 3339 with nanoseconds
	HeaderMsgID    = jetstream.MsgIDHeader
)

// Errors the sink reports through Check and its outage log line.
var (
	// ErrUnavailable: the stream is not taking frames; Write is holding back.
	ErrUnavailable = errors.New("stream: not taking frames")
	// ErrAckTimeout: no PubAck arrived within --publish-timeout.
	ErrAckTimeout = errors.New("stream: no PubAck within the publish timeout")
	// ErrNoResponders: nothing listens on the subject; the stream has no
	// leader or does not exist.
	ErrNoResponders = errors.New("stream: no responders (stream missing or without leader)")
	// ErrPubAck: JetStream refused the message (store full, limits...).
	ErrPubAck = errors.New("stream: JetStream refused the message")
	// ErrSinkClosed: Write or Flush after Close.
	ErrSinkClosed = errors.New("stream: sink closed")
)

// Back-off between resend rounds while the stream is unavailable.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// SinkOptions tune a Sink. Zero values mean the defaults.
type SinkOptions struct {
	Window  int           // messages published and not yet acknowledged; default 4096
	Timeout time.Duration // wait for a PubAck before resending; default 5s
	BootID  string        // prefix of every Nats-Msg-Id; default random
}

// Sink publishes frames to JetStream and commits each frame once its PubAck
// arrived. It implements pipeline.Sink and pipeline.Checker.
//
// Every message carries a reply subject naming a slot of a fixed window; one
// subscription receives the PubAcks and maps them back to (batch, frame) with
// no per-frame goroutine or future. A message without a PubAck in time, or
// with an error PubAck, is resent with the same Nats-Msg-Id, so JetStream
// stores it once within the dedup window. While resends fail, Write publishes
// nothing new: the aggregator's queue fills and the stations are pushed back.
//
// No lock is held across a publish: a publish can block on a full socket
// (up to nats.go's flusher timeout) and Check and Stats, which serve /readyz
// and /metrics, take mu. What the lock used to protect is kept by the busy
// mark of a slot instead; see slot.
type Sink struct {
	pub     publisher
	log     *slog.Logger
	bootID  string
	timeout time.Duration
	prefix  string             // reply subject prefix, "<inbox>."
	sub     *nats.Subscription // nil in unit tests, which feed onAck themselves

	w       *msgBuilder       // used by Write only (the aggregator goroutine)
	commits []*pipeline.Batch // used by Write only: commits deferred by busy slots

	// connected mirrors the client's connection state, fed by the disconnect
	// and reconnect handlers. Check reads it instead of asking the client,
	// whose lock a publisher blocked on a full socket holds.
	connected atomic.Bool

	mu       sync.Mutex
	slots    []slot  // ring of the window; a message with id n uses slot n%len
	next     uint64  // id of the next new message; ids start at 1
	inflight int     // slots in use
	failed   int     // slots waiting for a resend (deadline zero)
	down     *outage // non-nil while the stream does not take frames
	waiting  bool    // Write or Flush waits on wake
	closed   bool
	urgent   bool      // resend now, regardless of the back-off (reconnected)
	stats    SinkStats // counters; Unacked, Down and DownSince are filled in by Stats

	wake chan struct{} // to the waiting Write/Flush; capacity 1
	kick chan struct{} // to the resend loop; capacity 1
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the resend loop returned

	closeOnce sync.Once
}

// slot is one message between publish and PubAck. Guarded by Sink.mu.
//
// A slot is busy while Write or the resend loop reads its frame to publish
// it, outside mu. Its batch must stay alive meanwhile, so a PubAck that
// arrives for a busy slot only marks it acked: whoever set busy frees the
// slot and commits the frame once the publish returned. A busy slot is not
// picked for a resend either, so a message reserved by Write is never resent
// before Write published it.
type slot struct {
	id       uint64 // 0: free
	b        *pipeline.Batch
	i        int       // frame index in b
	deadline time.Time // PubAck due; zero while waiting for a resend
	busy     bool      // its frame is being read for a publish, outside mu
	acked    bool      // a PubAck came while busy; the commit waits for !busy
}

// publisher is the part of *nats.Conn the sink publishes with; unit tests
// put a fake in its place.
type publisher interface {
	PublishMsg(m *nats.Msg) error
}

// SinkStats are the sink's counters, for metrics.
type SinkStats struct {
	Unacked    int       // frames published and waiting for their PubAck
	Down       bool      // the stream is not taking frames; Write is holding back
	DownSince  time.Time // when the current outage began; zero while the stream takes frames
	Outages    uint64    // episodes of the stream not taking frames
	Resent     uint64    // frames sent again after a failed or missing PubAck
	Timeouts   uint64    // PubAcks that did not arrive within the timeout
	InProcess  uint64    // resends answered "original still in process" (10158): waited for, not outages
	Duplicates uint64    // sends JetStream dropped as duplicates of a stored frame (PubAck "duplicate": true)
}

// Stats returns a snapshot of the counters.
func (s *Sink) Stats() SinkStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Unacked = s.inflight
	if s.down != nil {
		st.Down, st.DownSince = true, s.down.since
	}
	return st
}

// outage is one episode of the stream not taking frames.
type outage struct {
	since   time.Time
	cause   error
	resends int
}

// NewSink starts a sink publishing over nc; the stream capturing
// telemetry.> must exist. Close stops it; nc stays the caller's.
func NewSink(nc *nats.Conn, opts SinkOptions, log *slog.Logger) (*Sink, error) {
	s, err := newSink(nc, nc.NewInbox()+".", opts, log)
	if err != nil {
		return nil, err
	}
	sub, err := nc.Subscribe(s.prefix+"*", s.onAck)
	if err != nil {
		return nil, fmt.Errorf("stream: subscribe to PubAcks: %w", err)
	}
	// Acks are bounded by the window (plus resends); never drop one as a
	// slow consumer, which would only cause a resend.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("stream: PubAck subscription: %w", err)
	}
	// The server must know the subscription before the first PubAck.
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("stream: PubAck subscription: %w", err)
	}
	s.sub = sub
	s.connected.Store(nc.IsConnected())
	go s.resendLoop()
	return s, nil
}

// newSink builds a sink publishing over pub with PubAcks expected on
// prefix+"<id>"; the caller subscribes onAck and starts resendLoop.
func newSink(pub publisher, prefix string, opts SinkOptions, log *slog.Logger) (*Sink, error) {
	if opts.Window <= 0 {
		opts.Window = 4096
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.BootID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("stream: boot id: %w", err)
		}
		opts.BootID = hex.EncodeToString(b[:])
	}
	s := &Sink{
		pub:     pub,
		log:     log,
		bootID:  opts.BootID,
		timeout: opts.Timeout,
		prefix:  prefix,
		w:       newMsgBuilder(),
		slots:   make([]slot, opts.Window),
		next:    1,
		wake:    make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	return s, nil
}

// BootID is the prefix of this sink's Nats-Msg-Ids.
func (s *Sink) BootID() string { return s.bootID }

// Write publishes every frame of batches. It blocks while the window is full
// or the stream is unavailable, and fails only when ctx ends (or after Close).
//
// Batches are never empty (the pipeline.Sink contract; Aggregator.Put
// refuses an empty batch), so every batch gets its Commit from a PubAck.
func (s *Sink) Write(ctx context.Context, batches []*pipeline.Batch) error {
	for _, b := range batches {
		// Once its last run is released, b may be committed and reused at
		// any moment: nothing below reads b after that, not even its length.
		nf := len(b.Frames)
		for i := 0; i < nf; {
			id, n, err := s.reserve(ctx, b, i, nf)
			if err != nil {
				return err
			}
			// The frames are read here outside the lock. That is safe: the
			// reserved slots are busy until release, so neither a PubAck
			// (which only marks a busy slot acked) nor a resend can commit
			// their frames before these publishes returned.
			for k := range n {
				if err := s.pub.PublishMsg(s.w.build(s, b, i+k, id+uint64(k))); err != nil {
					s.publishFailed(id+uint64(k), err)
				}
			}
			i += n
			s.release(id, n)
		}
	}
	return nil
}

// release clears the busy mark of messages first..first+n-1, which Write
// has published, and commits those whose PubAck came meanwhile.
func (s *Sink) release(first uint64, n int) {
	s.mu.Lock()
	commits := s.commits[:0]
	for id := first; id < first+uint64(n); id++ {
		if b := s.unbusyLocked(id); b != nil {
			commits = append(commits, b)
		}
	}
	if len(commits) > 0 {
		s.signalLocked()
	}
	s.mu.Unlock()
	for _, b := range commits {
		b.Commit(1)
	}
	clear(commits)
	s.commits = commits[:0]
}

// unbusyLocked clears the busy mark of message id. If its PubAck came while
// it was busy, the slot is freed and its batch returned for the caller to
// commit after unlocking.
func (s *Sink) unbusyLocked(id uint64) *pipeline.Batch {
	sl := &s.slots[id%uint64(len(s.slots))]
	if sl.id != id {
		return nil // not reachable: a busy slot is freed only here
	}
	sl.busy = false
	if !sl.acked {
		return nil
	}
	b := sl.b
	*sl = slot{}
	s.inflight--
	return b
}

// reserve takes the slots of the next messages, frames i..nf-1 of b: as many
// consecutive free slots as there are frames left (at least one), waiting
// while the next slot is still in use or the stream is down. Taking a run of
// slots per lock keeps the writer's locking off the per-frame path.
func (s *Sink) reserve(ctx context.Context, b *pipeline.Batch, i, nf int) (first uint64, n int, err error) {
	s.mu.Lock()
	for {
		if s.closed {
			s.mu.Unlock()
			return 0, 0, ErrSinkClosed
		}
		w := uint64(len(s.slots))
		if s.down == nil && s.slots[s.next%w].id == 0 {
			first = s.next
			deadline := time.Now().Add(s.timeout)
			for ; i+n < nf; n++ {
				sl := &s.slots[s.next%w]
				if sl.id != 0 {
					break
				}
				*sl = slot{id: s.next, b: b, i: i + n, deadline: deadline, busy: true}
				s.next++
			}
			s.inflight += n
			s.mu.Unlock()
			return first, n, nil
		}
		if err := s.waitLocked(ctx); err != nil {
			return 0, 0, fmt.Errorf("stream: write: %w", err)
		}
	}
}

// Flush waits until every frame written so far has its PubAck.
func (s *Sink) Flush(ctx context.Context) error {
	s.mu.Lock()
	for s.inflight > 0 {
		if s.closed {
			s.mu.Unlock()
			return ErrSinkClosed
		}
		n := s.inflight
		if err := s.waitLocked(ctx); err != nil {
			return fmt.Errorf("stream: flush: %d frames without PubAck: %w", n, err)
		}
	}
	s.mu.Unlock()
	return nil
}

// waitLocked sleeps until a slot frees, the outage ends, Close, or ctx ends.
// Called with mu held; returns with mu held, or released when it fails.
func (s *Sink) waitLocked(ctx context.Context) error {
	s.waiting = true
	s.mu.Unlock()
	select {
	case <-s.wake:
		s.mu.Lock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// signalLocked wakes the waiting Write or Flush, if any.
func (s *Sink) signalLocked() {
	if s.waiting {
		s.waiting = false
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Check reports whether the stream takes frames right now (for /readyz). It
// never waits on the NATS connection: mu is never held across a publish, and
// the connection state comes from the handlers.
func (s *Sink) Check() error {
	s.mu.Lock()
	closed, down := s.closed, s.down
	var since time.Time
	var cause error
	if down != nil {
		since, cause = down.since, down.cause
	}
	s.mu.Unlock()
	switch {
	case closed:
		return ErrSinkClosed
	case down != nil:
		return fmt.Errorf("%w since %s: %w", ErrUnavailable, since.Format(time.RFC3339), cause)
	case !s.connected.Load():
		return fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	return nil
}

// Close stops the resend loop and the PubAck subscription. Frames without a
// PubAck stay uncommitted: the stations never got an ACK for them and will
// send them again. Close is idempotent.
func (s *Sink) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.signalLocked()
		s.mu.Unlock()
		close(s.stop)
		<-s.done
		if s.sub == nil {
			return
		}
		if uerr := s.sub.Unsubscribe(); uerr != nil && !errors.Is(uerr, nats.ErrConnectionClosed) {
			err = fmt.Errorf("stream: close sink: %w", uerr)
		}
	})
	return err
}

// onAck runs on the subscription's goroutine, owned by the connection.
func (s *Sink) onAck(m *nats.Msg) {
	id, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, s.prefix), 10, 64)
	if err != nil {
		return
	}
	ackErr := pubAckError(m)
	s.mu.Lock()
	sl := &s.slots[id%uint64(len(s.slots))]
	if sl.id != id {
		// A late PubAck of a message that was resent and acknowledged since.
		s.mu.Unlock()
		return
	}
	if sl.acked {
		// Stored already; this is the reply to another send of it.
		s.mu.Unlock()
		return
	}
	if errors.Is(ackErr, errMsgIDInProcess) {
		// The original of this resend is still being stored (a replicated
		// stream, after a reconnect): its PubAck comes to this same reply
		// subject. Not an outage; should it never come, the deadline the
		// resend set expires and the message is sent once more, then as a
		// plain duplicate.
		s.stats.InProcess++
		if sl.deadline.IsZero() {
			sl.deadline = time.Now().Add(s.timeout)
			s.failed--
		}
		s.mu.Unlock()
		return
	}
	if ackErr != nil {
		if !sl.deadline.IsZero() {
			sl.deadline = time.Time{}
			s.failed++
		}
		s.markDownLocked(ackErr)
		s.mu.Unlock()
		return
	}
	if sl.deadline.IsZero() {
		s.failed-- // a PubAck of an earlier send arrived after all
	}
	if bytes.Contains(m.Data, []byte(`"duplicate":true`)) {
		// JetStream recognised the Nats-Msg-Id and dropped this copy: a
		// resend whose original was stored after all.
		s.stats.Duplicates++
	}
	if sl.busy {
		// Its frame is being read for a publish: whoever marked it busy
		// commits it once that publish returned (unbusyLocked).
		sl.acked = true
		if s.down != nil {
			s.recoverLocked()
		}
		s.mu.Unlock()
		return
	}
	b := sl.b
	*sl = slot{}
	s.inflight--
	if s.down != nil {
		s.recoverLocked()
	}
	s.signalLocked()
	s.mu.Unlock()
	b.Commit(1)
}

// publishFailed marks message id for a resend after the client refused it.
func (s *Sink) publishFailed(id uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := &s.slots[id%uint64(len(s.slots))]
	if sl.id == id && !sl.acked && !sl.deadline.IsZero() {
		sl.deadline = time.Time{}
		s.failed++
	}
	s.markDownLocked(publishError(err))
}

// publishError names the common cause of a refused publish plainly.
func publishError(err error) error {
	if errors.Is(err, nats.ErrReconnectBufExceeded) {
		return fmt.Errorf("publish: not connected to NATS, reconnecting: %w", err)
	}
	return fmt.Errorf("publish: %w", err)
}

// markDownLocked starts an outage, logging it once.
func (s *Sink) markDownLocked(cause error) {
	if s.down != nil {
		return
	}
	s.down = &outage{since: time.Now(), cause: cause}
	s.stats.Outages++
	s.log.Warn("stream is not taking frames; holding stations back and retrying",
		"cause", cause, "unacknowledged", s.inflight)
	s.kickLocked()
}

// recoverLocked ends the outage on the first PubAck that succeeds.
func (s *Sink) recoverLocked() {
	s.log.Info("stream is taking frames again", "down_for", time.Since(s.down.since).Round(time.Millisecond),
		"resend_rounds", s.down.resends, "waiting_resend", s.failed)
	s.down = nil
	s.kickLocked() // resend the rest now rather than at the next back-off
}

func (s *Sink) kickLocked() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// connectionLost starts an outage when the client lost its server: nothing
// can be published until it reconnected, and PubAcks on the way are lost.
func (s *Sink) connectionLost(err error) {
	if err == nil {
		err = nats.ErrConnectionClosed
	}
	s.connected.Store(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return // the connection closing behind a closed sink is no outage
	}
	s.markDownLocked(fmt.Errorf("disconnected from NATS: %w", err))
}

// resendFromReconnect is called when the connection came back: PubAcks sent
// while it was down are lost, so everything unacknowledged is resent now.
func (s *Sink) resendFromReconnect() {
	s.connected.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.slots {
		sl := &s.slots[i]
		if sl.id != 0 && !sl.acked && !sl.deadline.IsZero() {
			sl.deadline = time.Time{}
			s.failed++
		}
	}
	if s.failed > 0 {
		s.urgent = true
		s.kickLocked() // the first PubAck of the resends ends the outage
		return
	}
	if s.down != nil {
		// Nothing was unacknowledged, so no PubAck can end the outage: the
		// connection being back must. Should the stream still be unable to
		// take frames, the next publish starts a new episode.
		s.recoverLocked()
		s.signalLocked()
	}
}

// resendLoop owns timeouts and resends. It exits when Close closes stop.
func (s *Sink) resendLoop() {
	defer close(s.done)
	tick := time.NewTicker(min(max(s.timeout/10, 10*time.Millisecond), 250*time.Millisecond))
	defer tick.Stop()
	mb := newMsgBuilder()
	var work []resendItem
	backoff := minBackoff
	var nextTry time.Time
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		case <-s.kick:
		}
		now := time.Now()
		s.mu.Lock()
		if s.inflight > s.failed {
			s.expireLocked(now)
		}
		if s.down == nil || s.urgent {
			backoff, nextTry = minBackoff, time.Time{}
			s.urgent = false
		}
		if s.failed == 0 || now.Before(nextTry) {
			s.mu.Unlock()
			continue
		}
		if s.down != nil {
			s.down.resends++
			nextTry = now.Add(backoff)
			backoff = min(backoff*2, maxBackoff)
		}
		work = s.markResendLocked(work[:0], now)
		s.mu.Unlock()
		work = s.resend(mb, work)
	}
}

// resendItem is one message of a resend round.
type resendItem struct {
	id uint64
	b  *pipeline.Batch
	i  int
}

// markResendLocked picks every message waiting for a resend, in id order so
// that a recovered stream stores them in the order they came, gives each its
// new deadline and marks it busy: its batch stays alive until resend has
// published it, whatever PubAck arrives meanwhile.
func (s *Sink) markResendLocked(work []resendItem, now time.Time) []resendItem {
	n := uint64(len(s.slots))
	for id := s.next - min(s.next-1, n); id < s.next; id++ {
		sl := &s.slots[id%n]
		// A busy slot is Write's, not published yet: never resend it first.
		if sl.id != id || sl.busy || !sl.deadline.IsZero() {
			continue
		}
		sl.deadline = now.Add(s.timeout)
		sl.busy = true
		s.failed--
		work = append(work, resendItem{id: id, b: sl.b, i: sl.i})
	}
	return work
}

// resend publishes the messages markResendLocked picked, without holding mu,
// then clears their busy marks and commits those acknowledged meanwhile. It
// stops at the first refused publish: the rest would fail alike, and wait for
// the next round.
func (s *Sink) resend(mb *msgBuilder, work []resendItem) []resendItem {
	if len(work) == 0 {
		return work
	}
	sent := 0
	var perr error
	for _, r := range work {
		if perr = s.pub.PublishMsg(mb.build(s, r.b, r.i, r.id)); perr != nil {
			break
		}
		sent++
	}
	var commits []*pipeline.Batch
	s.mu.Lock()
	for k, r := range work {
		sl := &s.slots[r.id%uint64(len(s.slots))]
		if k >= sent && sl.id == r.id && !sl.acked && !sl.deadline.IsZero() {
			sl.deadline = time.Time{} // not sent: waits for the next round
			s.failed++
		}
		if b := s.unbusyLocked(r.id); b != nil {
			commits = append(commits, b)
		}
	}
	s.stats.Resent += uint64(sent)
	if perr != nil {
		s.markDownLocked(publishError(perr))
		s.log.Debug("resend failed", "err", perr)
	}
	if len(commits) > 0 {
		s.signalLocked()
	}
	s.mu.Unlock()
	for _, b := range commits {
		b.Commit(1)
	}
	clear(work)
	return work[:0]
}

// expireLocked marks messages whose PubAck is overdue for a resend.
func (s *Sink) expireLocked(now time.Time) {
	expired := 0
	for i := range s.slots {
		sl := &s.slots[i]
		if sl.id != 0 && !sl.acked && !sl.deadline.IsZero() && now.After(sl.deadline) {
			sl.deadline = time.Time{}
			s.failed++
			expired++
		}
	}
	if expired > 0 {
		s.stats.Timeouts += uint64(expired)
		s.markDownLocked(fmt.Errorf("%w (%s, %d messages)", ErrAckTimeout, s.timeout, expired))
	}
}

// pubAckError tells a PubAck from an error reply.
func pubAckError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if st := m.Header.Get("Status"); st == "503" {
			return ErrNoResponders
		} else {
			return fmt.Errorf("%w: empty reply (status %q)", ErrPubAck, st)
		}
	}
	if !bytes.Contains(m.Data, []byte(`"error":`)) {
		return nil
	}
	var r struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Error == nil {
		return fmt.Errorf("%w: unreadable reply %q", ErrPubAck, m.Data)
	}
	if r.Error.ErrorCode == jsErrCodeMsgIDInProcess {
		return fmt.Errorf("%w: %w", errMsgIDInProcess, r.Error)
	}
	return fmt.Errorf("%w: %w", ErrPubAck, r.Error)
}

// jsErrCodeMsgIDInProcess is JetStream's 409 "duplicate message id is in
// process" (nats-server's JSStreamDuplicateMessageConflict, err_code
// 10158): a message with this Nats-Msg-Id is being stored right now.
const jsErrCodeMsgIDInProcess jetstream.ErrorCode = 10158

// errMsgIDInProcess marks a PubAck error that is no refusal: the original
// of a resent message is still in process.
var errMsgIDInProcess = errors.New("stream: the original of this resend is still being stored")

// msgBuilder fills one reusable message. The header map and its value slices
// are reused: PublishMsg serialises them before it returns.
type msgBuilder struct {
	msg                                    nats.Msg
	station, session, seq, received, msgID []string
	subjects                               map[string]string // station → subject
	buf                                    []byte

	// Ground-framing units (pipeline.Meta set) add headers and a subject
	// token; ground is whether the map holds their headers now, so that a
	// Meridian frame after one goes out exactly as before.
	ground                                   bool
	framing, link, crc                       []string
	apid, seqCount, scid, vcid, mcCnt, vcCnt []string
	sub                                      map[subKey]string // station and token → subject
}

// subKey names a sub-token subject in the cache.
type subKey struct {
	station string
	kind    pipeline.MetaKind
	n       uint16
}

func newMsgBuilder() *msgBuilder {
	mb := &msgBuilder{
		station:  make([]string, 1),
		session:  make([]string, 1),
		seq:      make([]string, 1),
		received: make([]string, 1),
		msgID:    make([]string, 1),
		subjects: make(map[string]string),
		framing:  make([]string, 1),
		link:     make([]string, 1),
		crc:      []string{"bad"},
		apid:     make([]string, 1),
		seqCount: make([]string, 1),
		scid:     make([]string, 1),
		vcid:     make([]string, 1),
		mcCnt:    make([]string, 1),
		vcCnt:    make([]string, 1),
		sub:      make(map[subKey]string),
	}
	mb.msg.Header = nats.Header{
		HeaderStation:  mb.station,
		HeaderSession:  mb.session,
		HeaderSeq:      mb.seq,
		HeaderReceived: mb.received,
		HeaderMsgID:    mb.msgID,
	}
	return mb
}

// build fills the message for frame i of b, sent as message id.
func (mb *msgBuilder) build(s *Sink, b *pipeline.Batch, i int, id uint64) *nats.Msg {
	f := &b.Frames[i]
	subj, ok := mb.subjects[f.Station]
	if !ok {
		if len(mb.subjects) >= 4096 {
			clear(mb.subjects) // stations come and go; bound the cache
		}
		subj = Subject(f.Station)
		mb.subjects[f.Station] = subj
	}
	mb.msg.Subject = subj
	mb.msg.Data = f.Payload
	mb.station[0] = f.Station
	mb.session[0] = f.Session
	// The reply subject, Meridian-Seq, Meridian-Received and Nats-Msg-Id are
	// built in one buffer and converted to one string that they slice: one
	// allocation per frame instead of four.
	buf := append(mb.buf[:0], s.prefix...)
	buf = strconv.AppendUint(buf, id, 10)
	endReply := len(buf)
	buf = strconv.AppendUint(buf, f.Seq, 10)
	endSeq := len(buf)
	buf = f.Received.UTC().AppendFormat(buf, time.RFC3339Nano)
	endRecv := len(buf)
	buf = appendMsgID(buf, s.bootID, f.Session, f.Seq)
	endID := len(buf)
	if f.Meta.Framing != "" {
		buf = mb.ground1(f, buf)
	} else if mb.ground {
		mb.meridian()
	}
	mb.buf = buf
	all := string(buf)
	mb.msg.Reply = all[:endReply]
	mb.seq[0] = all[endReply:endSeq]
	mb.received[0] = all[endSeq:endRecv]
	mb.msgID[0] = all[endRecv:endID]
	if f.Meta.Framing != "" {
		mb.groundValues(f, all[endID:])
	}
	return &mb.msg
}

// ground1 sets the subject and headers of a ground-framing unit, and appends
// its numeric header values to buf (in the order groundValues slices them).
func (mb *msgBuilder) ground1(f *pipeline.Frame, buf []byte) []byte {
	h := mb.msg.Header
	if !mb.ground {
		h[HeaderFraming], h[HeaderLink] = mb.framing, mb.link
		mb.ground = true
	}
	mb.framing[0], mb.link[0] = f.Meta.Framing, f.Meta.Link
	for _, k := range [...]string{HeaderAPID, HeaderSeqCount, HeaderSCID, HeaderVCID, HeaderMCCount, HeaderVCCount, HeaderCRC} {
		delete(h, k)
	}
	if f.Meta.CRCBad {
		h[HeaderCRC] = mb.crc
	}
	var key subKey
	switch f.Meta.Kind {
	case pipeline.MetaPacket:
		h[HeaderAPID], h[HeaderSeqCount] = mb.apid, mb.seqCount
		buf = strconv.AppendUint(buf, uint64(f.Meta.APID), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.Seq), 10)
		key = subKey{f.Station, pipeline.MetaPacket, f.Meta.APID}
	case pipeline.MetaFrame:
		h[HeaderSCID], h[HeaderVCID], h[HeaderMCCount], h[HeaderVCCount] = mb.scid, mb.vcid, mb.mcCnt, mb.vcCnt
		buf = strconv.AppendUint(buf, uint64(f.Meta.SCID), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.VCID), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.MCCount), 10)
		buf = append(buf, ' ')
		buf = strconv.AppendUint(buf, uint64(f.Meta.VCCount), 10)
		key = subKey{f.Station, pipeline.MetaFrame, uint16(f.Meta.VCID)}
	default:
		return buf
	}
	subj, ok := mb.sub[key]
	if !ok {
		if len(mb.sub) >= 4096 {
			clear(mb.sub)
		}
		if key.kind == pipeline.MetaPacket {
			subj = SubjectAPID(f.Station, int(key.n))
		} else {
			subj = SubjectVC(f.Station, int(key.n))
		}
		mb.sub[key] = subj
	}
	mb.msg.Subject = subj
	return buf
}

// groundValues points the numeric headers at their text in vals, which
// ground1 appended separated by spaces.
func (mb *msgBuilder) groundValues(f *pipeline.Frame, vals string) {
	next := func() string {
		v, rest, _ := strings.Cut(vals, " ")
		vals = rest
		return v
	}
	switch f.Meta.Kind {
	case pipeline.MetaPacket:
		mb.apid[0], mb.seqCount[0] = next(), next()
	case pipeline.MetaFrame:
		mb.scid[0], mb.vcid[0], mb.mcCnt[0], mb.vcCnt[0] = next(), next(), next(), next()
	}
}

// meridian removes the ground-framing headers, for a Meridian frame after a
// ground unit.
func (mb *msgBuilder) meridian() {
	for _, k := range [...]string{HeaderFraming, HeaderLink, HeaderAPID, HeaderSeqCount, HeaderSCID, HeaderVCID, HeaderMCCount, HeaderVCCount, HeaderCRC} {
		delete(mb.msg.Header, k)
	}
	mb.ground = false
}

// MsgID is the Nats-Msg-Id of a frame: boot id, session and sequence number,
// separated by '/'. The boot id keeps two runs of the gateway, whose session
// numbers restart, from deduplicating each other's frames.
func MsgID(bootID, session string, seq uint64) string {
	return string(appendMsgID(nil, bootID, session, seq))
}

func appendMsgID(b []byte, bootID, session string, seq uint64) []byte {
	b = append(append(append(b, bootID...), '/'), session...)
	return strconv.AppendUint(append(b, '/'), seq, 10)
}
