// Package session serves one station connection: it reads and frames what the
// station sends, hands data frames to the queue in batches, enforces the
// timeouts, and writes heartbeats, ACKs, GOAWAY and CLOSE back.
//
// One goroutine (Run) owns reads, framing, deadlines and the session's end.
// Writes go through a writer goroutine that exists only while there is
// something to write, so an idle session costs one blocked goroutine and a
// small buffer, not a permanent writer and a 256 KiB read buffer.
package session

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// Config holds the per-session limits; the gateway fills it from its flags.
type Config struct {
	MaxFrame     uint32
	IdleTimeout  time.Duration
	FrameTimeout time.Duration
	Heartbeat    time.Duration // 0 disables
	WriteTimeout time.Duration
	// AckInterval is the minimum gap between two ACKs of one session; ACKs
	// that fall due sooner are coalesced into one. Zero means 5 ms, well
	// inside the 50 ms the protocol promises.
	AckInterval time.Duration
}

// Queue is where sessions put batches: the aggregator.
type Queue interface {
	Put(ctx context.Context, b *pipeline.Batch) error
	Limit() int
}

// Observer receives the session's counters; *metrics.Metrics implements it.
// Methods are called per batch except ObserveFrameSize.
type Observer interface {
	Received(frames, bytes int)
	ObserveFrameSize(n int)
	Committed(frames int, latency time.Duration)
	HeartbeatSent()
	AckSent()
}

type nopObserver struct{}

func (nopObserver) Received(int, int)            {}
func (nopObserver) ObserveFrameSize(int)         {}
func (nopObserver) Committed(int, time.Duration) {}
func (nopObserver) HeartbeatSent()               {}
func (nopObserver) AckSent()                     {}

// Info describes a session for logs and /stations.
type Info struct {
	ID          string // gs-N@REMOTE_ADDR
	Station     string // identity: remote IP, or TLS identity
	RemoteAddr  string
	TLSIdentity string
}

// smallBufSize is the buffer an idle session blocks on. Big enough for a
// header and a keepalive or two, small enough that 10,000 idle sessions cost
// little; the first bytes of a busy stream move it to a pooled buffer.
const smallBufSize = 256

// bigBufSize is the pooled read buffer of an active session.
const bigBufSize = 256 * 1024

var bigBufPool = sync.Pool{New: func() any { b := make([]byte, bigBufSize); return &b }}

// Session is one station connection. Create it with New and call Run once.
type Session struct {
	info  Info
	conn  net.Conn
	cfg   Config
	queue Queue
	log   *slog.Logger
	obs   Observer
	start time.Time

	// Reader state, owned by Run.
	small     [smallBufSize]byte
	big       *[]byte
	buf       []byte
	r, w      int
	lastFull  bool // the last Read filled all the room it was given
	sawEOF    bool // the station half-closed: nothing more to read
	seq       uint64
	consumed  uint64    // stream offset of buf[r]
	partialAt uint64    // stream offset of the frame whose timer runs
	partialT  time.Time // when that frame's header was complete
	batch     *pipeline.Batch

	// Shutdown signalling from the gateway.
	draining atomic.Bool
	drainAt  atomic.Int64 // unix nanos, set once; valid once draining

	// Commit tracking: batches in the order they were queued.
	cmu         sync.Mutex
	outstanding []*pipeline.Batch // guarded by cmu
	doneSet     map[*pipeline.Batch]struct{}
	committed   uint64        // guarded by cmu: frames committed in order
	allDone     chan struct{} // guarded by cmu: closed when outstanding empties
	acked       atomic.Uint64 // = committed, readable without cmu

	// Writer state, guarded by wmu. The writer goroutine owns wbuf and the
	// socket's write side while writing is true.
	wmu       sync.Mutex
	writing   bool
	wclosed   bool // the end sequence owns the socket now
	wbroken   bool // a write failed: no more control frames
	goAwayDue bool
	hbDue     bool
	ackSent   uint64
	lastAckAt time.Time
	ackTimer  *time.Timer
	ackArmed  bool
	hbTimer   *time.Timer
	wbuf      []byte
	writers   sync.WaitGroup

	// Counters for logs and /stations.
	frames    atomic.Uint64
	bytes     atomic.Uint64
	lastFrame atomic.Int64 // unix nanos
}

// New prepares a session on conn. The gateway has done the TLS handshake and
// knows the station's identity (info).
func New(conn net.Conn, info Info, cfg Config, q Queue, log *slog.Logger, obs Observer) *Session {
	if cfg.AckInterval <= 0 {
		cfg.AckInterval = 5 * time.Millisecond
	}
	if obs == nil {
		obs = nopObserver{}
	}
	s := &Session{
		info:  info,
		conn:  conn,
		cfg:   cfg,
		queue: q,
		log:   log.With("session", info.ID, "station", info.Station),
		obs:   obs,
		start: time.Now(),
	}
	s.buf = s.small[:]
	return s
}

// Info returns the session's identity.
func (s *Session) Info() Info { return s.info }

// Stats is a snapshot of the session's counters.
type Stats struct {
	Since     time.Time
	Frames    uint64
	Bytes     uint64
	LastFrame time.Time // zero before the first frame
	Acked     uint64
}

// Stats returns the session's counters; safe from any goroutine.
func (s *Session) Stats() Stats {
	st := Stats{
		Since:  s.start,
		Frames: s.frames.Load(),
		Bytes:  s.bytes.Load(),
		Acked:  s.acked.Load(),
	}
	if t := s.lastFrame.Load(); t != 0 {
		st.LastFrame = time.Unix(0, t)
	}
	return st
}

// GoAway starts the drain: the station is told to stop sending, and the
// session keeps reading until the station half-closes or until deadline,
// after which it stops at the next frame boundary. Safe from any goroutine;
// the first call sets the deadline, later calls do nothing.
func (s *Session) GoAway(deadline time.Time) {
	// drainAt before draining: a reader that sees draining finds the
	// deadline set. The CAS makes the first caller's deadline stick.
	if !s.drainAt.CompareAndSwap(0, deadline.UnixNano()) {
		return
	}
	s.draining.Store(true)
	s.wmu.Lock()
	s.goAwayDue = true
	s.wmu.Unlock()
	s.kick()
	// Wake a Read blocked on the idle deadline so that Run recomputes it:
	// during the drain the drain deadline replaces the idle timeout.
	_ = s.conn.SetReadDeadline(time.Unix(1, 0))
}

// Run serves the session until it ends and returns why. Cancelling ctx is the
// forced stop: the connection is closed at once and nothing more is written.
// Run closes conn before it returns and leaves no goroutine behind.
func (s *Session) Run(ctx context.Context) frame.Reason {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()

	if s.cfg.Heartbeat > 0 {
		s.wmu.Lock()
		s.hbTimer = time.AfterFunc(s.cfg.Heartbeat, s.heartbeatDue)
		s.wmu.Unlock()
	}
	reason, graceful, err := s.readLoop(ctx)
	if ctx.Err() != nil {
		reason, graceful = frame.ReasonShutdown, false
	}
	s.finish(ctx, reason, graceful, err)
	return reason
}

// readLoop reads and frames until the session must end. graceful reports
// whether the station should get a final ACK (the connection still works).
func (s *Session) readLoop(ctx context.Context) (reason frame.Reason, graceful bool, err error) {
	defer s.releaseBuffer()
	for {
		stopAfter, r, err := s.consume(ctx)
		if err != nil {
			return r, r != frame.ReasonReadError, err
		}
		if stopAfter {
			return frame.ReasonShutdown, true, nil
		}
		if err := s.fill(); err != nil {
			return s.classify(err)
		}
	}
}

// consume frames every whole frame in the buffer and queues the data frames.
// Once the drain deadline has passed it takes at most one more frame — the
// one in progress — and then reports stop: whatever follows is not taken.
func (s *Session) consume(ctx context.Context) (stop bool, reason frame.Reason, err error) {
	drainOver := s.draining.Load() && time.Now().UnixNano() >= s.drainAt.Load()
	var now time.Time // one receive time per read: the frames arrived together
	taken := 0
	for {
		if drainOver && taken > 0 {
			s.r = s.w
			break
		}
		payload, n, err := frame.Split(s.buf[s.r:s.w], s.cfg.MaxFrame)
		if err != nil {
			if errors.Is(err, frame.ErrShort) {
				break
			}
			if qerr := s.flushBatch(ctx); qerr != nil {
				return false, frame.ReasonShutdown, qerr
			}
			if errors.Is(err, frame.ErrTooLarge) {
				return false, frame.ReasonTooLarge, err
			}
			return false, frame.ReasonControl, err
		}
		s.r += n
		s.consumed += uint64(n)
		taken++
		if len(payload) == 0 {
			continue // keepalive: it reset the idle deadline by arriving
		}
		if now.IsZero() {
			now = time.Now()
		}
		if err := s.add(ctx, payload, now); err != nil {
			return false, frame.ReasonShutdown, err
		}
	}
	if err := s.flushBatch(ctx); err != nil {
		return false, frame.ReasonShutdown, err
	}
	// With the drain over and a frame still in progress, reading goes on
	// (within the frame timeout) until that frame is whole.
	return drainOver && (taken > 0 || s.r == s.w), 0, nil
}

// add copies one data frame into the current batch, queueing the batch first
// when it is full.
func (s *Session) add(ctx context.Context, payload []byte, now time.Time) error {
	if s.batch != nil && (s.batch.Room() < len(payload) || s.batch.Len() >= s.queue.Limit()) {
		if err := s.flushBatch(ctx); err != nil {
			return err
		}
	}
	if s.batch == nil {
		// What is buffered bounds what this batch can take from this read.
		s.batch = pipeline.NewBatch(s, len(payload)+s.w-s.r)
	}
	s.seq++
	s.batch.Add(pipeline.Frame{
		Station:  s.info.Station,
		Session:  s.info.ID,
		Seq:      s.seq,
		Received: now,
		Payload:  payload,
	})
	s.obs.ObserveFrameSize(len(payload))
	return nil
}

// flushBatch queues the current batch, blocking while the queue is full:
// this is where a slow sink pushes back on the station.
func (s *Session) flushBatch(ctx context.Context) error {
	b := s.batch
	if b == nil {
		return nil
	}
	s.batch = nil
	s.cmu.Lock()
	s.outstanding = append(s.outstanding, b)
	s.cmu.Unlock()
	frames, bytes, last := b.Len(), b.Bytes, b.Frames[b.Len()-1].Received
	if err := s.queue.Put(ctx, b); err != nil {
		// Never queued: take it back so that nothing waits for it. Its
		// frames were never acknowledged, so the station resends them.
		s.cmu.Lock()
		s.outstanding = s.outstanding[:len(s.outstanding)-1]
		s.cmu.Unlock()
		s.seq -= uint64(b.Len())
		b.Release()
		return err
	}
	// b may be committed and recycled by now: use the copies.
	s.frames.Add(uint64(frames))
	s.bytes.Add(uint64(bytes))
	s.lastFrame.Store(last.UnixNano())
	s.obs.Received(frames, bytes)
	return nil
}

// fill reads more bytes into the buffer, with the deadline that the
// session's state calls for.
func (s *Session) fill() error {
	s.prepareBuffer()
	s.notePartial()
	for {
		d := s.deadline()
		// An error here means the connection is closed (net.Pipe says so
		// even when only the peer closed); the Read below reports how.
		_ = s.conn.SetReadDeadline(d)
		// GoAway may have poked the deadline between deadline() and the
		// set above; if so, the drain state is new and d may be stale.
		if s.draining.Load() && !d.Equal(s.deadline()) {
			continue
		}
		room := len(s.buf) - s.w
		n, err := s.conn.Read(s.buf[s.w:])
		s.lastFull = n == room
		s.w += n
		if n > 0 {
			return nil
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(d) {
			continue // woken early by GoAway: recompute the deadline
		}
		return err
	}
}

// prepareBuffer makes room for the next read. At a frame boundary after a
// read that did not fill the buffer the station has gone quiet, so the
// pooled buffer goes back and the session waits on its small one; a read
// that fills the small buffer means data is flowing, so the next read gets
// a pooled one.
func (s *Session) prepareBuffer() {
	if s.r == s.w {
		s.r, s.w = 0, 0
		switch {
		case !s.lastFull:
			s.releaseBuffer()
		case s.big == nil:
			s.useBig()
		}
		return
	}
	// A frame has begun. Its total size is known once its header is in.
	total := frame.HeaderSize
	if l, ok := frame.Length(s.buf[s.r:s.w]); ok {
		total += int(l) // Split has bounded l by MaxFrame
	}
	if s.big == nil && total <= bigBufSize && len(s.buf) < total {
		s.useBig()
	}
	switch {
	case total > len(s.buf):
		// Larger than any pooled buffer: it gets a buffer of its own.
		nb := make([]byte, total)
		n := copy(nb, s.buf[s.r:s.w])
		s.releaseBuffer()
		s.buf, s.r, s.w = nb, 0, n
	case s.r+total > len(s.buf):
		n := copy(s.buf, s.buf[s.r:s.w])
		s.r, s.w = 0, n
	}
}

// useBig moves the buffered bytes into a pooled buffer.
func (s *Session) useBig() {
	big := bigBufPool.Get().(*[]byte)
	n := copy(*big, s.buf[s.r:s.w])
	s.big = big
	s.buf, s.r, s.w = *big, 0, n
}

// releaseBuffer returns to the small buffer, keeping what is buffered when
// it fits (callers ensure it does).
func (s *Session) releaseBuffer() {
	if len(s.buf) == len(s.small) && s.big == nil {
		return
	}
	n := copy(s.small[:], s.buf[s.r:s.w])
	if s.big != nil {
		bigBufPool.Put(s.big)
		s.big = nil
	}
	s.buf, s.r, s.w = s.small[:], 0, n
}

// notePartial starts the frame timer when a header has arrived without the
// rest of its frame.
func (s *Session) notePartial() {
	if s.w-s.r < frame.HeaderSize {
		return
	}
	if s.partialT.IsZero() || s.partialAt != s.consumed {
		s.partialAt, s.partialT = s.consumed, time.Now()
	}
}

// deadline is when the pending read must give up: the idle timeout at a
// frame boundary (the drain deadline while draining), and no later than the
// frame timeout once a header has arrived.
func (s *Session) deadline() time.Time {
	var d time.Time
	if s.draining.Load() {
		d = time.Unix(0, s.drainAt.Load())
	} else {
		d = time.Now().Add(s.cfg.IdleTimeout)
	}
	if s.inFrame() {
		f := s.partialT.Add(s.cfg.FrameTimeout)
		if s.draining.Load() || f.Before(d) {
			d = f // a frame in progress is always finished, even past the drain
		}
	}
	return d
}

// inFrame reports whether a frame's header has arrived but not all of it.
func (s *Session) inFrame() bool {
	return s.w-s.r >= frame.HeaderSize && !s.partialT.IsZero() && s.partialAt == s.consumed
}

// classify turns a read error into the session's end.
func (s *Session) classify(err error) (frame.Reason, bool, error) {
	switch {
	case errors.Is(err, io.EOF):
		s.sawEOF = true
		if s.r == s.w {
			if s.draining.Load() {
				return frame.ReasonShutdown, true, nil
			}
			return frame.ReasonStationClosed, true, nil
		}
		// Logged here: readLoop's deferred release shrinks the buffer.
		s.log.Warn("station closed inside a frame; partial frame discarded", "buffered", s.w-s.r)
		return frame.ReasonTruncated, true, err
	case errors.Is(err, os.ErrDeadlineExceeded):
		if s.inFrame() {
			return frame.ReasonFrameTimeout, true, err
		}
		if s.draining.Load() {
			// The drain is over; a header still incomplete is dropped.
			return frame.ReasonShutdown, true, nil
		}
		return frame.ReasonIdleTimeout, true, err
	}
	return frame.ReasonReadError, false, err
}

// Committed is called by the sink side once every frame of b is accepted.
// ACKs are cumulative, so the count moves only over a prefix of batches.
func (s *Session) Committed(b *pipeline.Batch) {
	latency := time.Since(b.Frames[0].Received)
	s.obs.Committed(b.Len(), latency)
	s.cmu.Lock()
	var release []*pipeline.Batch
	if len(s.outstanding) > 0 && s.outstanding[0] == b {
		release = append(release, b)
		s.committed = b.LastSeq()
		s.outstanding = s.outstanding[1:]
		for len(s.outstanding) > 0 {
			next := s.outstanding[0]
			if _, ok := s.doneSet[next]; !ok {
				break
			}
			delete(s.doneSet, next)
			release = append(release, next)
			s.committed = next.LastSeq()
			s.outstanding = s.outstanding[1:]
		}
	} else {
		if s.doneSet == nil {
			s.doneSet = make(map[*pipeline.Batch]struct{})
		}
		s.doneSet[b] = struct{}{}
	}
	// Store before waking waitCommitted: the final ACK reads it.
	s.acked.Store(s.committed)
	if len(s.outstanding) == 0 {
		s.outstanding = s.outstanding[:0:0]
		if s.allDone != nil {
			close(s.allDone)
			s.allDone = nil
		}
	}
	s.cmu.Unlock()
	for _, rb := range release {
		rb.Release()
	}
	if len(release) > 0 {
		s.kick()
	}
}

// waitCommitted blocks until the sink has accepted every queued frame.
func (s *Session) waitCommitted(ctx context.Context) error {
	s.cmu.Lock()
	if len(s.outstanding) == 0 {
		s.cmu.Unlock()
		return nil
	}
	if s.allDone == nil {
		s.allDone = make(chan struct{})
	}
	ch := s.allDone
	s.cmu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finish ends the session: the final ACK once the sink has everything the
// session read, the CLOSE when the gateway has a reason to give, then FIN.
func (s *Session) finish(ctx context.Context, reason frame.Reason, graceful bool, cause error) {
	if graceful && ctx.Err() == nil {
		// The wait is bounded by the forced stop (ctx): a sink that never
		// accepts cannot hold a session beyond the shutdown grace.
		if err := s.waitCommitted(ctx); err != nil {
			graceful = false
		}
	}
	s.wmu.Lock()
	s.wclosed = true
	s.wmu.Unlock()
	s.writers.Wait()
	// No writer runs any more, so nothing re-arms the timers after this.
	s.wmu.Lock()
	if s.hbTimer != nil {
		s.hbTimer.Stop()
	}
	if s.ackTimer != nil {
		s.ackTimer.Stop()
	}
	s.wmu.Unlock()

	if graceful && !s.wbroken && ctx.Err() == nil {
		out := s.wbuf[:0]
		if s.goAwayDue {
			out = frame.AppendGoAway(out) // the drain ended before the writer ran
		}
		out = frame.AppendAck(out, s.acked.Load())
		if reason.Wire() {
			out = frame.AppendClose(out, reason, reason.Text())
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := s.conn.Write(out); err != nil {
			s.log.Debug("final ACK not delivered", "err", err)
		} else {
			s.obs.AckSent()
		}
		CloseWrite(s.conn)
		if !s.sawEOF {
			s.linger()
		}
	}
	s.conn.Close()
	st := s.Stats()
	attrs := []any{
		"reason", reason.String(), "frames", st.Frames, "bytes", st.Bytes,
		"acked", st.Acked, "duration", time.Since(s.start).Round(time.Millisecond),
	}
	if cause != nil && reason != frame.ReasonStationClosed {
		attrs = append(attrs, "err", cause)
	}
	s.log.Info("session ended", attrs...)
}

// lingerTimeout bounds how long a closing session reads what the station
// still sends.
const lingerTimeout = 500 * time.Millisecond

// linger reads and discards what the station still sends, until its EOF or
// for lingerTimeout. Closing a socket with unread data in it makes the
// kernel send RST instead of FIN, and an RST can overtake the final ACK
// and CLOSE still in flight (net/http's closeWriteAndWait does the same).
func (s *Session) linger() {
	_ = s.conn.SetReadDeadline(time.Now().Add(lingerTimeout))
	for range 1024 { // at most 256 KiB: a station that floods is cut
		if _, err := s.conn.Read(s.small[:]); err != nil {
			return
		}
	}
}

// CloseWrite sends FIN where the connection supports a half-close, so that a
// station reading to EOF learns the session is over.
func CloseWrite(c net.Conn) {
	type halfCloser interface{ CloseWrite() error }
	if hc, ok := c.(halfCloser); ok {
		_ = hc.CloseWrite()
	}
}

func (s *Session) heartbeatDue() {
	s.wmu.Lock()
	s.hbDue = true
	s.wmu.Unlock()
	s.kick()
}

// kick makes sure a writer goroutine runs if there is anything to write.
func (s *Session) kick() {
	s.wmu.Lock()
	if s.writing || s.wclosed || s.wbroken {
		s.wmu.Unlock()
		return
	}
	s.writing = true
	s.writers.Add(1)
	s.wmu.Unlock()
	go s.writeLoop()
}

// writeLoop writes pending control frames until none are left. Only one runs
// at a time (writing); it holds no lock during I/O.
func (s *Session) writeLoop() {
	defer s.writers.Done()
	for {
		s.wmu.Lock()
		var out []byte
		if !s.wclosed {
			out = s.gather(s.wbuf[:0])
		}
		if len(out) == 0 {
			s.writing = false
			s.wmu.Unlock()
			return
		}
		s.wbuf = out
		s.wmu.Unlock()

		_ = s.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_, err := s.conn.Write(out)
		if err != nil {
			s.wmu.Lock()
			s.wbroken = true
			s.writing = false
			s.wmu.Unlock()
			// Logged once: after a failed write the stream to the station
			// may hold half a frame, so nothing more is written at all.
			s.log.Warn("station not reading; control frames dropped from now on", "err", err)
			return
		}
		s.wmu.Lock()
		if s.hbTimer != nil {
			s.hbTimer.Reset(s.cfg.Heartbeat) // any write proves we are alive
		}
		s.wmu.Unlock()
	}
}

// gather appends the due control frames to out. Called with wmu held.
func (s *Session) gather(out []byte) []byte {
	if s.goAwayDue {
		s.goAwayDue = false
		out = frame.AppendGoAway(out)
	}
	if ack := s.acked.Load(); ack > s.ackSent {
		now := time.Now()
		if wait := s.cfg.AckInterval - now.Sub(s.lastAckAt); wait > 0 {
			if !s.ackArmed {
				s.ackArmed = true
				if s.ackTimer == nil {
					s.ackTimer = time.AfterFunc(wait, s.ackDue)
				} else {
					s.ackTimer.Reset(wait)
				}
			}
		} else {
			out = frame.AppendAck(out, ack)
			s.ackSent, s.lastAckAt = ack, now
			s.obs.AckSent()
		}
	}
	if s.hbDue {
		s.hbDue = false
		if len(out) == 0 { // any other frame already shows we are alive
			out = frame.AppendHeartbeat(out)
			s.obs.HeartbeatSent()
		}
	}
	return out
}

func (s *Session) ackDue() {
	s.wmu.Lock()
	s.ackArmed = false
	s.wmu.Unlock()
	s.kick()
}
