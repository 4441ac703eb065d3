// Package session serves one station connection: it reads and frames what the
// station sends, hands data frames to the queue in batches, enforces the
// timeouts, and writes heartbeats, ACKs, GOAWAY and CLOSE back.
//
// A session is three parts, each with its own state and lock:
//   - the reader (Run's goroutine, no lock): reads, frames (inbuf),
//     deadlines, batches, and the session's end;
//   - the commit log (commitLog): which queued batches the sink has
//     committed, and so what the ACK may say;
//   - the control writer (controlWriter): HEARTBEAT, ACK and GOAWAY, with a
//     writer goroutine only while there is something to write.
//
// At the end the reader closes the control writer, which hands back the
// socket's write side and what is still due, and writes the final ACK and
// CLOSE itself.
package session

import (
	"context"
	"errors"
	"fmt"
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
	// Hello admits protocol v2 stations; nil refuses a HELLO with CLOSE(5),
	// as a v1 gateway does.
	Hello Handshaker
	// Packed puts every batch of a v2 session in one stream message (the
	// "packed" stream layout), one batch in flight at a time.
	Packed bool
	// HelloTimeout bounds the wait for the first frame of an unverified
	// connection (Info.Unverified), which must be a HELLO naming an allowed
	// station: like a TLS handshake, a peer not yet known gets a short time
	// to say who it is. Zero means the idle timeout.
	HelloTimeout time.Duration
}

// Handshaker decides what a v2 station's HELLO gets: the gateway's identity
// rules, the supersede of an older session of the same station, and where
// to resume. A non-zero reason refuses the session with that CLOSE.
type Handshaker interface {
	Hello(ctx context.Context, s *Session, h frame.Hello) (Welcome, frame.Reason, error)
}

// Welcome is the handshaker's answer to a HELLO.
type Welcome struct {
	Station string // the station's identity from now on
	Next    uint64 // the sequence number the station sends next; ≥ HELLO's first
	Gap     uint64 // frames the station lost just before Next: marked on the first frame stored
}

// Queue is where sessions put batches: the aggregator.
type Queue interface {
	// Put queues b or fails without queueing it; pipeline.ErrSinkFailed
	// means nothing more can be stored.
	Put(ctx context.Context, b *pipeline.Batch) error
	// BatchLimit bounds a batch, in frames.
	BatchLimit() int
	// Failed is closed once the sink has failed: queued frames will never
	// be committed.
	Failed() <-chan struct{}
}

// Observer receives the session's counters; *metrics.Metrics implements it.
// Methods are called per batch except ObserveFrameSize.
type Observer interface {
	Received(frames, bytes int)
	ObserveFrameSize(n int)
	Committed(frames int, latency time.Duration)
	HeartbeatSent()
	AckSent()
	HeartbeatRTT(d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Received(int, int)            {}
func (nopObserver) ObserveFrameSize(int)         {}
func (nopObserver) Committed(int, time.Duration) {}
func (nopObserver) HeartbeatSent()               {}
func (nopObserver) AckSent()                     {}
func (nopObserver) HeartbeatRTT(time.Duration)   {}

// Info describes a session for logs and /stations.
type Info struct {
	ID          string // gs-N@REMOTE_ADDR
	Station     string // identity: remote IP, or TLS identity
	RemoteAddr  string
	TLSIdentity string
	// Unverified says the connection's own identity (the remote IP) is not
	// allowed: only a v2 HELLO naming an allowed station may go on, and a
	// v1 station gets CLOSE(7) at its first frame.
	Unverified bool
	// Protocol v2 only, once WELCOME was sent.
	Epoch uint64
}

// Session is one station connection. Create it with New and call Run once:
// its heartbeat timer runs from New.
type Session struct {
	info  Info
	conn  net.Conn
	cfg   Config
	queue Queue
	log   *slog.Logger // with the session and station; owned by Run after New
	// baseLog is the gateway's logger, for a v2 HELLO to name the station.
	baseLog *slog.Logger
	obs     Observer
	start   time.Time

	commits commitLog
	ctl     *controlWriter // immutable after New

	// Reader state, owned by Run.
	proto     int    // 0 until the first frame decides, then 1 or 2
	station   string // identity the frames carry; a HELLO may name it
	epoch     uint64 // v2
	gapDue    uint64 // v2: frames lost before the next frame, marked on it
	in        inbuf
	sawEOF    bool   // the station half-closed: nothing more to read
	seq       uint64 // sequence number of the last frame added to a batch
	consumed  uint64 // stream offset of the first unframed byte
	partialAt uint64 // stream offset of the frame whose timer runs
	partialT  time.Time
	batch     *pipeline.Batch
	unqueued  uint64 // frames read but never queued (a Put refused); final after Run

	// Shutdown signalling from the gateway.
	draining atomic.Bool
	drainAt  atomic.Int64 // unix nanos, set once; valid once draining

	// Protocol v2, for other goroutines: the identity and epoch after the
	// HELLO, the ACK's base (next-1), the last heartbeat round trip.
	v2info     atomic.Pointer[Info]
	base       atomic.Uint64
	welcomeGap uint64       // the WELCOME's gap; written before v2info, immutable after
	rtt        atomic.Int64 // nanoseconds; 0 before the first PONG
	superseded atomic.Bool
	ending     atomic.Bool   // the reader is done: the session is ending on its own
	supersede  chan struct{} // closed by Supersede
	supOnce    sync.Once

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
		info:      info,
		conn:      conn,
		cfg:       cfg,
		queue:     q,
		log:       log.With("session", info.ID, "station", info.Station),
		baseLog:   log,
		obs:       obs,
		start:     time.Now(),
		station:   info.Station,
		supersede: make(chan struct{}),
	}
	s.in.init()
	s.ctl = newControlWriter(conn, cfg, s.commits.acked.Load, s.log, obs)
	return s
}

// Info returns the session's identity: after a v2 HELLO, the identity the
// handshake settled and the epoch.
func (s *Session) Info() Info {
	if v := s.v2info.Load(); v != nil {
		return *v
	}
	return s.info
}

// Supersede ends the session because a newer one of the same station took
// over: it stops reading at once, and ends with its final ACK once the sink
// has everything queued, CLOSE(9) and FIN. Frames it read and had not queued
// are dropped: they were never acknowledged, and the station sends them to
// its new session. Safe from any goroutine, also during the handshake, which
// then fails with CLOSE(9).
func (s *Session) Supersede() {
	s.supOnce.Do(func() {
		s.superseded.Store(true)
		close(s.supersede)
		_ = s.conn.SetReadDeadline(time.Unix(1, 0)) // wake a blocked Read
	})
}

// Ending reports whether the session stopped reading and is ending (final
// ACK, CLOSE, FIN) for a reason of its own.
func (s *Session) Ending() bool { return s.ending.Load() }

// Superseded is closed once Supersede was called.
func (s *Session) Superseded() <-chan struct{} { return s.supersede }

// Stats is a snapshot of the session's counters.
type Stats struct {
	Since     time.Time
	Frames    uint64
	Bytes     uint64
	LastFrame time.Time // zero before the first frame
	Acked     uint64    // frames of this session acknowledged
	AckedSeq  uint64    // v2: the station sequence acknowledged (every frame up to it stored)
	// StoredThrough (v2) is the highest sequence a gap is reckoned from:
	// AckedSeq once a frame of the session is stored (the first marks the
	// WELCOME's gap), and until then the sequence before that gap, which is
	// still to be marked: a station that says HELLO again with a higher
	// first before then has lost both gaps' frames.
	StoredThrough uint64
	RTT           time.Duration // v2: last heartbeat round trip; 0 before the first PONG
}

// Stats returns the session's counters; safe from any goroutine.
func (s *Session) Stats() Stats {
	// v2info before base (base is stored first), and one load of each: a
	// commit between two loads would make Acked wrap.
	v2 := s.v2info.Load() != nil
	acked, base := s.commits.acked.Load(), s.base.Load()
	st := Stats{
		Since:  s.start,
		Frames: s.frames.Load(),
		Bytes:  s.bytes.Load(),
		Acked:  acked - min(acked, base),
		RTT:    time.Duration(s.rtt.Load()),
	}
	if v2 {
		st.AckedSeq = max(base, acked)
		st.StoredThrough = st.AckedSeq
		if st.Acked == 0 {
			st.StoredThrough -= min(st.StoredThrough, s.welcomeGap)
		}
	}
	if t := s.lastFrame.Load(); t != 0 {
		st.LastFrame = time.Unix(0, t)
	}
	return st
}

// Unqueued is the number of frames the session took from the station but
// never handed to the queue: those of a batch the queue refused, and the
// whole frames still buffered when a forced stop cut the session. Final
// once Run has returned; the gateway adds it to the frames it abandoned.
func (s *Session) Unqueued() uint64 { return s.unqueued }

// GoAway starts the drain: the station is told to stop sending, and the
// session keeps reading until the station half-closes or until deadline,
// after which it stops at the next frame boundary. Safe from any goroutine,
// also before Run; the first call sets the deadline, later calls do nothing.
func (s *Session) GoAway(deadline time.Time) {
	// drainAt before draining: a reader that sees draining finds the
	// deadline set. The CAS makes the first caller's deadline stick.
	if !s.drainAt.CompareAndSwap(0, deadline.UnixNano()) {
		return
	}
	s.draining.Store(true)
	s.ctl.goAway()
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

	reason, graceful, err := s.readLoop(ctx)
	if ctx.Err() != nil {
		reason, graceful = frame.ReasonShutdown, false
	}
	return s.finish(ctx, reason, graceful, err)
}

// readLoop reads and frames until the session must end. graceful reports
// whether the station should get a final ACK (the connection still works).
func (s *Session) readLoop(ctx context.Context) (reason frame.Reason, graceful bool, err error) {
	defer func() {
		if ctx.Err() != nil {
			// Forced: what is buffered was taken from the station and
			// will never be stored.
			s.unqueued += s.in.countWhole(s.cfg.MaxFrame)
		}
		s.in.release()
	}()
	for {
		stopAfter, r, err := s.consume(ctx)
		if err != nil {
			return r, r != frame.ReasonReadError, err
		}
		if stopAfter {
			return r, true, nil
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
		if s.superseded.Load() {
			// Stop taking frames at once (also right after the HELLO that
			// waited for the supersede); what is queued is still ACKed.
			s.in.discard()
			return true, frame.ReasonSuperseded, s.flushBatch(ctx)
		}
		if drainOver && taken > 0 {
			s.in.discard()
			break
		}
		before := s.in.buffered()
		payload, control, err := s.in.next(s.cfg.MaxFrame)
		if err != nil {
			if errors.Is(err, frame.ErrShort) {
				break
			}
			if qerr := s.flushBatch(ctx); qerr != nil {
				return false, putFailed(qerr), qerr
			}
			if errors.Is(err, frame.ErrTooLarge) {
				return false, frame.ReasonTooLarge, err
			}
			return false, frame.ReasonControl, err
		}
		s.consumed += uint64(before - s.in.buffered())
		taken++
		if control {
			arrived := time.Now() // before the flush, which may wait (packed layout)
			if err := s.flushBatch(ctx); err != nil {
				return false, putFailed(err), err
			}
			if r, err := s.control(ctx, payload, arrived); err != nil {
				return false, r, err
			}
			continue
		}
		if s.proto == 0 {
			if s.info.Unverified {
				return false, frame.ReasonUnauthorized, errNotAllowed
			}
			s.proto = 1
		}
		if len(payload) == 0 {
			continue // keepalive: it reset the idle deadline by arriving
		}
		if now.IsZero() {
			now = time.Now()
		}
		if err := s.add(ctx, payload, now); err != nil {
			return false, putFailed(err), err
		}
	}
	if err := s.flushBatch(ctx); err != nil {
		return false, putFailed(err), err
	}
	// With the drain over and a frame still in progress, reading goes on
	// (within the frame timeout) until that frame is whole.
	return drainOver && (taken > 0 || s.in.buffered() == 0), frame.ReasonShutdown, nil
}

// errNotAllowed ends an unverified connection whose first frame is no HELLO.
var errNotAllowed = errors.New("session: station not authorized (no HELLO naming an allowed station)")

// control handles a station control frame: the HELLO that opens a v2
// session, and PONG. Anything else, or either out of place, is CLOSE(5).
func (s *Session) control(ctx context.Context, payload []byte, arrived time.Time) (frame.Reason, error) {
	c, err := frame.ParseStationControl(payload)
	if err != nil {
		return frame.ReasonControl, err
	}
	switch {
	case c.Type == frame.CtlPong && s.proto == 2:
		if d, ok := s.ctl.pong(arrived); ok {
			s.rtt.Store(int64(d))
			s.obs.HeartbeatRTT(d)
		}
		return 0, nil
	case c.Type == frame.CtlHello && s.proto == 0 && s.cfg.Hello != nil:
		return s.hello(ctx, c.Hello)
	case c.Type == frame.CtlHello && s.proto == 0:
		return frame.ReasonControl, errors.New("session: HELLO: this gateway speaks protocol v1 only here")
	case c.Type == frame.CtlHello:
		return frame.ReasonControl, errors.New("session: HELLO is not the first frame")
	}
	return frame.ReasonControl, fmt.Errorf("session: %s in a v1 session", c.Type)
}

// hello runs the v2 handshake on the reader's goroutine: the station waits
// for the WELCOME before it sends a frame, so nothing is read meanwhile.
func (s *Session) hello(ctx context.Context, h frame.Hello) (frame.Reason, error) {
	s.proto = 2
	w, reason, err := s.cfg.Hello.Hello(ctx, s, h)
	if reason != 0 {
		if err == nil {
			err = errors.New("session: HELLO refused")
		}
		return reason, err
	}
	if err != nil {
		return frame.ReasonInternalError, err
	}
	if w.Next < h.First {
		return frame.ReasonInternalError, fmt.Errorf("session: handshake resumes at %d, below the station's first %d", w.Next, h.First)
	}
	s.station, s.epoch, s.gapDue = w.Station, h.Epoch, w.Gap
	s.seq = w.Next - 1
	info := s.info
	info.Station, info.Epoch, info.Unverified = w.Station, h.Epoch, false
	s.welcomeGap = w.Gap
	s.base.Store(w.Next - 1) // before v2info: Stats reads base once it sees v2info
	s.v2info.Store(&info)
	s.log = s.baseLog.With("session", s.info.ID, "station", w.Station, "epoch", h.Epoch)
	s.ctl.welcome(frame.AppendWelcome(nil, frame.Version2, h.Epoch, w.Next), w.Next-1)
	s.log.Info("station said HELLO", "next", w.Next, "first", h.First, "gap", w.Gap)
	return 0, nil
}

// putFailed is the session's end after the queue refused a batch: the sink
// failed (CLOSE internal error), or the gateway is stopping.
func putFailed(err error) frame.Reason {
	if errors.Is(err, pipeline.ErrSinkFailed) {
		return frame.ReasonInternalError
	}
	return frame.ReasonShutdown
}

// add copies one data frame into the current batch, queueing the batch first
// when it is full.
func (s *Session) add(ctx context.Context, payload []byte, now time.Time) error {
	packed := s.proto == 2 && s.cfg.Packed
	need := len(payload)
	if packed {
		need = pipeline.PackedRecord(len(payload))
	}
	if s.batch != nil && (s.batch.Room() < need || s.batch.Count() >= s.queue.BatchLimit()) {
		if err := s.flushBatch(ctx); err != nil {
			s.unqueued++ // this frame too was taken from the station, never queued
			return err
		}
	}
	if s.batch == nil {
		// What is buffered bounds what this batch can take from this read.
		// A packed record takes what its frame took in the buffer.
		s.batch = pipeline.NewBatch(s, need+s.in.buffered())
	}
	s.seq++
	f := pipeline.Frame{
		Station:  s.station,
		Session:  s.info.ID,
		Seq:      s.seq,
		Received: now,
		Payload:  payload,
	}
	if s.proto == 2 {
		f.Epoch, f.Gap = s.epoch, s.gapDue
		f.Acked = max(s.base.Load(), s.commits.acked.Load())
		s.gapDue = 0
	}
	if packed {
		s.batch.AddPacked(f)
	} else {
		s.batch.Add(f)
	}
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
	frames, bytes, last := b.Count(), b.Bytes, b.Frames[b.Len()-1].Received
	if b.Frames[0].Packed {
		bytes -= pipeline.PackedRecord(0) * frames // payload bytes, as for a frame of its own
		// One packed message of a session in flight at a time: the
		// stream then holds a prefix of the epoch at every moment, so
		// the last message says exactly where to resume (docs/protocol.md,
		// "The packed layout"). The station's bytes wait in the socket
		// meanwhile, and the next read takes them all at once.
		if err := s.commits.wait(ctx, s.queue.Failed()); err != nil {
			s.seq -= uint64(frames)
			s.unqueued += uint64(frames)
			b.Release()
			if errors.Is(err, errSinkFailed) {
				return pipeline.ErrSinkFailed
			}
			return err
		}
		// Everything before it is stored now: its floor is exact.
		b.Frames[0].Acked = max(s.base.Load(), s.commits.acked.Load())
	}
	s.commits.append(b)
	if err := s.queue.Put(ctx, b); err != nil {
		// Never queued: take it back so that nothing waits for it. Its
		// frames were never acknowledged, so the station resends them.
		s.commits.rollback(b)
		s.seq -= uint64(frames)
		s.unqueued += uint64(frames)
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
	linger := s.in.lingering()
	room := s.in.room(linger)
	s.notePartial()
	for {
		d := s.deadline()
		rd := d
		if linger {
			// Keep the larger buffer only while the station keeps
			// sending: a read that waits longer than bufLinger gives it
			// back and goes on waiting on the small one.
			if l := time.Now().Add(bufLinger); l.Before(d) {
				rd = l
			}
		}
		// An error here means the connection is closed (net.Pipe says so
		// even when only the peer closed); the Read below reports how.
		_ = s.conn.SetReadDeadline(rd)
		if s.superseded.Load() {
			return errSuperseded
		}
		// GoAway may have poked the deadline between deadline() and the
		// set above; if so, the drain state is new and d may be stale.
		if s.draining.Load() && !d.Equal(s.deadline()) {
			continue
		}
		n, err := s.conn.Read(room)
		s.in.wrote(n)
		if n > 0 {
			return nil
		}
		if err == nil {
			continue
		}
		if s.superseded.Load() {
			return errSuperseded
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(d) {
			if linger {
				linger = false
				s.in.release()
				room = s.in.room(false)
			}
			continue // the linger is over, or GoAway woke us: recompute the deadline
		}
		return err
	}
}

// bufLinger is how long a session keeps its larger read buffer while the
// station pauses.
const bufLinger = 100 * time.Millisecond

// notePartial starts the frame timer when a header has arrived without the
// rest of its frame.
func (s *Session) notePartial() {
	if s.in.buffered() < frame.HeaderSize {
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
	if s.info.Unverified && s.proto == 0 && s.cfg.HelloTimeout > 0 {
		if h := s.start.Add(s.cfg.HelloTimeout); h.Before(d) {
			d = h
		}
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
	return s.in.buffered() >= frame.HeaderSize && !s.partialT.IsZero() && s.partialAt == s.consumed
}

// errSuperseded ends a read that Supersede woke.
var errSuperseded = errors.New("session: superseded by a newer session of the station")

// classify turns a read error into the session's end.
func (s *Session) classify(err error) (frame.Reason, bool, error) {
	if s.info.Unverified && s.proto == 0 && !errors.Is(err, errSuperseded) {
		// Never said who it is: whatever ended the wait, it is refused.
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
			s.sawEOF = s.sawEOF || errors.Is(err, io.EOF)
			return frame.ReasonUnauthorized, true, errNotAllowed
		}
	}
	switch {
	case errors.Is(err, errSuperseded):
		s.in.discard()
		return frame.ReasonSuperseded, true, nil
	case errors.Is(err, io.EOF):
		s.sawEOF = true
		if s.in.buffered() == 0 {
			if s.draining.Load() {
				return frame.ReasonShutdown, true, nil
			}
			return frame.ReasonStationClosed, true, nil
		}
		// Logged here: readLoop's deferred release shrinks the buffer.
		s.log.Warn("station closed inside a frame; partial frame discarded", "buffered", s.in.buffered())
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
	s.obs.Committed(b.Count(), time.Since(b.Frames[0].Received))
	if g := b.Frames[0].Gap; g > 0 {
		// Only a session's first stored frame after its HELLO marks a gap,
		// and it is the first of its batch.
		if o, ok := s.obs.(interface{ Gap(frames uint64) }); ok {
			o.Gap(g)
		}
	}
	var arr [4]*pipeline.Batch
	release, moved := s.commits.commit(b, arr[:0])
	for _, rb := range release {
		rb.Release()
	}
	if moved {
		s.ctl.kick()
	}
}

// finish ends the session: the final ACK once the sink has everything the
// session read, the CLOSE when the gateway has a reason to give, then FIN.
func (s *Session) finish(ctx context.Context, reason frame.Reason, graceful bool, cause error) frame.Reason {
	s.ending.Store(true)
	if graceful && ctx.Err() == nil {
		// The wait is bounded by the forced stop (ctx): a sink that never
		// accepts cannot hold a session beyond the shutdown grace. A sink
		// that failed ends it at once: the final ACK then says what was
		// stored before the failure, and CLOSE says why nothing more was.
		switch err := s.commits.wait(ctx, s.queue.Failed()); {
		case errors.Is(err, errSinkFailed):
			reason, cause = frame.ReasonInternalError, err
		case err != nil:
			graceful = false
		}
	} else if s.proto == 2 && ctx.Err() == nil {
		// The connection broke, but what the session queued is still on
		// its way to the stream: a v2 station that comes back resumes from
		// what is stored, so the session ends (and frees the identity)
		// only once it is. Bounded like the wait above.
		_ = s.commits.wait(ctx, s.queue.Failed())
	}
	var out []byte
	var usable bool
	refused := s.info.Unverified && s.proto == 0 && reason == frame.ReasonUnauthorized
	if refused {
		// Refused before its first frame said who it is: CLOSE alone, as
		// a station refused at connect time gets.
		out, usable = s.ctl.closeRefused(reason)
	} else {
		out, usable = s.ctl.close(max(s.base.Load(), s.commits.acked.Load()), reason)
	}
	if graceful && usable && ctx.Err() == nil {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := s.conn.Write(out); err != nil {
			s.log.Debug("final ACK not delivered", "err", err)
		} else if !refused {
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
	return reason
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
		if _, err := s.conn.Read(s.in.small[:]); err != nil {
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
