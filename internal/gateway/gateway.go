// Package gateway is the station-facing server: the accept loop, the session
// limits, TLS and station identity, and the ordered shutdown that loses no
// accepted frame. Sessions (package session) feed the aggregator (package
// pipeline), which feeds the sink.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/link"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/session"
)

// maxRejecting bounds the refusals (CLOSE server busy) being written at once.
const maxRejecting = 64

// forceWait bounds how long a forced stop waits for the sink to give up.
const forceWait = 2 * time.Second

// Errors of Serve and Shutdown.
var (
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("gateway: server closed")
	// ErrSinkFailed is returned by Shutdown when the sink failed while the
	// gateway ran: frames read after the failure were never stored (and
	// never acknowledged). Failed says when it happens.
	ErrSinkFailed = errors.New("gateway: the sink failed")
)

// State is where the gateway is in its life, for /readyz and the board.
type State string

// States in the order a gateway passes through them.
const (
	StateStarting State = "starting"  // Serve not yet called
	StateReady    State = "ready"     // serving; the sink takes frames (see Ready)
	StateLameDuck State = "lame_duck" // shutdown began; GOAWAYs still being spread
	StateDraining State = "draining"  // shutdown began; sessions draining
	StateFailed   State = "failed"    // the sink failed; shutting down
)

// ForcedError is returned when a stop was forced (Close, or Shutdown's
// context ended first). Frames counts those read from stations but never
// committed by the sink: no station got an ACK for them.
type ForcedError struct {
	Frames uint64
	Cause  error
}

func (e *ForcedError) Error() string {
	return fmt.Sprintf("gateway: forced stop (%v): %d frames abandoned", e.Cause, e.Frames)
}

func (e *ForcedError) Unwrap() error { return e.Cause }

// Observer receives the gateway's counters; *metrics.Metrics implements it.
type Observer interface {
	session.Observer
	SessionStarted()
	SessionEnded(r frame.Reason)
	AcceptError()
	Rejected(r frame.Reason)
	TLSHandshakeFailed()
}

// nopObserver spells out every method, so that a method added to Observer
// (or to session.Observer) breaks the build here instead of panicking on a
// nil embedded interface at run time.
type nopObserver struct{}

var _ Observer = nopObserver{}

func (nopObserver) SessionStarted()              {}
func (nopObserver) SessionEnded(frame.Reason)    {}
func (nopObserver) AcceptError()                 {}
func (nopObserver) Rejected(frame.Reason)        {}
func (nopObserver) TLSHandshakeFailed()          {}
func (nopObserver) Received(int, int)            {}
func (nopObserver) ObserveFrameSize(int)         {}
func (nopObserver) Committed(int, time.Duration) {}
func (nopObserver) HeartbeatSent()               {}
func (nopObserver) AckSent()                     {}
func (nopObserver) HeartbeatRTT(time.Duration)   {}

// Option configures a Server beyond its Config.
type Option func(*Server)

// WithObserver reports the gateway's counters to o.
func WithObserver(o Observer) Option { return func(s *Server) { s.obs = o } }

// WithTLS serves TLS. identity extracts a station's identity from its
// verified connection; when it returns "" the remote IP is used.
func WithTLS(c *tls.Config, identity func(tls.ConnectionState) string) Option {
	return func(s *Server) { s.tls, s.identity = c, identity }
}

// WithSessionEnded calls f, on the session's goroutine, each time a session
// ends, with its final counters and close reason. f must be quick.
func WithSessionEnded(f func(Snapshot, frame.Reason)) Option {
	return func(s *Server) { s.ended = f }
}

// WithAllow limits which station identities may open a session.
func WithAllow(allowed func(identity string) bool) Option {
	return func(s *Server) { s.allowed = allowed }
}

// WithAllowNames limits the names protocol v2 stations give in their HELLO
// without mutual TLS; without it, the WithAllow function decides.
func WithAllowNames(allowed func(name string) bool) Option {
	return func(s *Server) { s.allowedName = allowed }
}

// Server accepts station connections and runs their sessions.
type Server struct {
	cfg         Config // immutable after New
	scfg        session.Config
	sink        pipeline.Sink
	agg         *pipeline.Aggregator
	log         *slog.Logger
	obs         Observer
	tls         *tls.Config
	identity    func(tls.ConnectionState) string
	allowed     func(string) bool
	allowedName func(string) bool
	ended       func(Snapshot, frame.Reason)
	resume      ResumeFunc

	// forced ends every session and the aggregator at once: Close, or the
	// end of Shutdown's context.
	forced    context.Context
	forceStop context.CancelFunc
	quit      chan struct{} // closed when shutdown begins; wakes accept back-off
	stopDial  context.Context
	endDial   context.CancelFunc // called when shutdown begins: dialers stop
	aggDone   chan struct{}      // closed when the aggregator's Run returned
	aggErr    error              // set before aggDone closes

	nextID    atomic.Uint64
	serving   atomic.Bool
	shutdown  atomic.Bool
	lameUntil atomic.Int64   // unix nanos: the end of the lame-duck spread
	unqueued  atomic.Uint64  // frames ended sessions read but never queued
	conns     sync.WaitGroup // session and rejection goroutines

	def *linkRT // the --listen link; immutable after New

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session.Session]*linkRT
	live      map[*session.Session]*live // every Meridian session, for v2
	byIdent   map[string]*live           // v2: the session writing for each identity
	floors    map[string]floor           // v2: what ended sessions here acknowledged
	equip     map[*link.Conn]*linkRT     // ground-equipment connections
	rejecting int                        // refusals being written
	drainAt   time.Time                  // set when shutdown begins
}

// linkRT is a link at run time: its settings and its connection slots.
type linkRT struct {
	Link            // immutable
	dial     string // the dial-out address; "" for a listening link
	maxConns int    // immutable

	active int            // connections holding a slot; guarded by Server.mu
	perIP  map[string]int // guarded by Server.mu
}

func newLinkRT(l Link, maxSessions int) *linkRT {
	rt := &linkRT{Link: l, maxConns: l.MaxSessions, perIP: make(map[string]int)}
	if rt.maxConns <= 0 {
		rt.maxConns = maxSessions
	}
	if rt.Totals == nil {
		rt.Totals = new(link.Counters)
	}
	if rt.Backoff == (link.Backoff{}) {
		rt.Backoff = link.DefaultBackoff()
	}
	return rt
}

// framing is the link's framing name.
func (l *linkRT) framing() string {
	if l.Ground == nil {
		return link.FramingMeridian
	}
	return l.Ground.Framing
}

// New returns a server that will feed sink. The aggregator starts now; the
// server serves once Serve is called.
func New(cfg Config, sink pipeline.Sink, log *slog.Logger, opts ...Option) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg,
		scfg: session.Config{
			MaxFrame:     cfg.MaxFrame,
			IdleTimeout:  cfg.IdleTimeout,
			FrameTimeout: cfg.FrameTimeout,
			Heartbeat:    cfg.Heartbeat,
			WriteTimeout: cfg.WriteTimeout,
			HelloTimeout: cfg.TLSHandshakeTimeout,
			Packed:       cfg.PackFrames,
		},
		sink:      sink,
		agg:       pipeline.New(sink, cfg.Queue, pipeline.WithByteLimit(cfg.QueueBytes)),
		log:       log,
		obs:       nopObserver{},
		quit:      make(chan struct{}),
		aggDone:   make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session.Session]*linkRT),
		live:      make(map[*session.Session]*live),
		byIdent:   make(map[string]*live),
		floors:    make(map[string]floor),
		equip:     make(map[*link.Conn]*linkRT),
	}
	for _, o := range opts {
		o(s)
	}
	s.scfg.Hello = hello{s}
	s.def = newLinkRT(Link{
		Name: DefaultLink, MaxSessionsPerIP: cfg.MaxSessionsPerIP,
		TLS: s.tls, Identity: s.identity, Allowed: s.allowed, AllowedName: s.allowedName,
	}, cfg.MaxSessions)
	s.forced, s.forceStop = context.WithCancel(context.Background())
	s.stopDial, s.endDial = context.WithCancel(context.Background())
	go func() {
		defer close(s.aggDone)
		s.aggErr = s.agg.Run(s.forced)
	}()
	go func() {
		// Said when it happens, not when the shutdown it starts ends:
		// every session now ends with its final ACK and CLOSE (internal
		// error), and the owner, told by Failed, shuts the gateway down.
		select {
		case <-s.agg.Failed():
			s.log.Error("sink failed: no more frames can be stored; ending every session and shutting down",
				"err", s.agg.Err(), "frames_committed", s.agg.Stats().Committed)
		case <-s.aggDone:
		}
	}()
	return s, nil
}

// Failed is closed when the sink has failed: frames can no longer be
// stored. Every session is then ending with its final ACK and CLOSE
// (internal error); the owner should call Shutdown, which reports
// ErrSinkFailed.
func (s *Server) Failed() <-chan struct{} { return s.agg.Failed() }

// Aggregator exposes the queue's counters for metrics.
func (s *Server) Aggregator() *pipeline.Aggregator { return s.agg }

// Serve accepts connections on ln until Shutdown or Close, and then returns
// ErrServerClosed. Any other error ends Serve and is returned.
func (s *Server) Serve(ln net.Listener) error { return s.serve(ln, s.def) }

// ServeLink is Serve for an extra link with its own limits, TLS, allow-list
// and framing. With l.Ground set, every connection is read as that framing
// (package link) and nothing is ever written to it.
func (s *Server) ServeLink(ln net.Listener, l Link) error {
	if err := checkLink(l); err != nil {
		ln.Close()
		return err
	}
	return s.serve(ln, newLinkRT(l, s.cfg.MaxSessions))
}

func checkLink(l Link) error {
	if l.Name == "" {
		return errors.New("gateway: a link needs a name")
	}
	if l.Ground != nil {
		if err := l.Ground.Validate(); err != nil {
			return fmt.Errorf("gateway: link %s: %w", l.Name, err)
		}
	}
	return nil
}

// DialLink connects to ground equipment that serves TCP at addr, reads it
// as l.Ground's framing, and reconnects with l.Backoff whenever the
// connection ends, until shutdown. The dialing goroutine belongs to the
// server: shutdown stops it, drains the connection it has open, and waits
// for it. The peer's identity is the link's name. l.TLS, l.Allowed and the
// limits do not apply to a dial-out link.
func (s *Server) DialLink(addr string, l Link) error {
	if err := checkLink(l); err != nil {
		return err
	}
	if l.Ground == nil {
		return fmt.Errorf("gateway: link %s: a dial-out link needs a ground framing", l.Name)
	}
	rt := newLinkRT(l, s.cfg.MaxSessions)
	rt.dial = addr
	s.mu.Lock()
	if s.shutdown.Load() {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.conns.Add(1)
	s.mu.Unlock()
	d := &link.Dialer{Name: l.Name, Addr: addr, Backoff: rt.Backoff, Log: s.log}
	go func() {
		defer s.conns.Done()
		d.Run(s.stopDial, func(conn net.Conn) {
			id := fmt.Sprintf("gs-%d@%s", s.nextID.Add(1), conn.RemoteAddr())
			info := link.Info{ID: id, Station: l.Name, RemoteAddr: conn.RemoteAddr().String()}
			s.runEquipment(conn, info, rt)
		})
	}()
	return nil
}

func (s *Server) serve(ln net.Listener, l *linkRT) error {
	s.mu.Lock()
	if s.shutdown.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.serving.Store(true)
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var delay time.Duration // accept back-off, as net/http does it
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.shutdown.Load() {
				return ErrServerClosed
			}
			if !temporary(err) {
				// The listener is gone for good. The caller shuts down
				// gracefully: the sessions already open keep their frames.
				return fmt.Errorf("gateway: accept on %s: %w", ln.Addr(), err)
			}
			// EMFILE and friends: back off instead of spinning, and let
			// shutdown interrupt the wait.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else {
				delay = min(2*delay, time.Second)
			}
			s.obs.AcceptError()
			s.log.Error("accept failed; retrying", "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.quit:
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		delay = 0
		s.accept(conn, l)
	}
}

// accept admits conn within the session limits and starts its goroutine.
// It never blocks on the connection.
func (s *Server) accept(conn net.Conn, l *linkRT) {
	ip := remoteIP(conn.RemoteAddr())
	s.mu.Lock()
	if s.shutdown.Load() {
		// Accept returned just as the listener closed. Checked under mu,
		// which beginShutdown holds too, so that no goroutine is added
		// to conns after Shutdown may have started waiting on it.
		s.mu.Unlock()
		conn.Close()
		return
	}
	busy := l.active >= l.maxConns ||
		(l.MaxSessionsPerIP > 0 && l.perIP[ip] >= l.MaxSessionsPerIP)
	if busy {
		// Refusals are bounded too: beyond maxRejecting at once (a flood,
		// or slow TLS handshakes) a connection is closed without a word.
		// Equipment reads no CLOSE: it is closed without one.
		s.obs.Rejected(frame.ReasonBusy)
		if s.rejecting >= maxRejecting || l.Ground != nil {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.rejecting++
		s.conns.Add(1)
		s.mu.Unlock()
		go s.reject(conn, frame.ReasonBusy, l)
		return
	}
	l.active++
	l.perIP[ip]++
	s.conns.Add(1)
	s.mu.Unlock()
	id := fmt.Sprintf("gs-%d@%s", s.nextID.Add(1), conn.RemoteAddr())
	if l.TLS == nil && l.Ground == nil {
		// Logged here rather than in the session's goroutine: formatting a
		// log record grows a goroutine's stack to 8 KiB, and the collector
		// halves an idle goroutine's stack only while less than a quarter
		// of it is in use, counting an 800-byte reserve; a session blocked
		// in Read uses about 1.9 KB, so its stack would stay at 8 KiB
		// instead of 4 KiB: 12.0 against 7.9 KiB per idle session after
		// forced collections (docs/benchmarks.md, "Idle sessions"). With
		// TLS the identity is known only after the handshake, and a
		// goroutine idling in tls.Conn.Read keeps an 8 KiB stack wherever
		// the line is logged.
		s.log.Info("session started", "session", id, "station", ip)
	}
	go s.serveConn(conn, id, ip, l)
}

// reject tells a station why it may not connect, then closes. The goroutine
// is bounded by the handshake and write timeouts.
func (s *Server) reject(conn net.Conn, r frame.Reason, l *linkRT) {
	defer s.conns.Done()
	defer func() {
		s.mu.Lock()
		s.rejecting--
		s.mu.Unlock()
	}()
	s.log.Warn("connection rejected", "remote", conn.RemoteAddr().String(), "reason", r.String())
	if l.TLS != nil {
		tc, _, err := s.handshake(conn, l.TLS)
		if err != nil {
			conn.Close()
			return
		}
		conn = tc
	}
	_ = conn.SetWriteDeadline(time.Now().Add(min(s.cfg.WriteTimeout, time.Second)))
	_, _ = conn.Write(frame.AppendClose(nil, r, r.Text()))
	session.CloseWrite(conn)
	conn.Close()
}

// serveConn runs one session from handshake to close.
func (s *Server) serveConn(raw net.Conn, id, ip string, l *linkRT) {
	defer s.conns.Done()
	defer func() {
		s.mu.Lock()
		l.active--
		if l.perIP[ip]--; l.perIP[ip] <= 0 {
			delete(l.perIP, ip)
		}
		s.mu.Unlock()
	}()

	conn := raw
	info := session.Info{ID: id, Station: ip, RemoteAddr: raw.RemoteAddr().String()}
	if l.TLS != nil {
		// A forced stop closes the socket itself: closing the tls.Conn
		// would first try to send close_notify, for up to 5 s, to a
		// station that may not be reading.
		stop := context.AfterFunc(s.forced, func() { raw.Close() })
		defer stop()
		tc, state, err := s.handshake(raw, l.TLS)
		if err != nil {
			s.obs.TLSHandshakeFailed()
			s.log.Warn("TLS handshake failed", "session", id, "err", err)
			raw.Close()
			return
		}
		conn = tc
		if l.Identity != nil {
			if name := l.Identity(state); name != "" {
				info.Station, info.TLSIdentity = name, name
			}
		}
	}
	if l.Allowed != nil && !l.Allowed(info.Station) && l.Ground == nil && info.TLSIdentity == "" {
		// The remote IP is not allowed, but a v2 HELLO may name a station
		// that is: the first frame decides (a v1 frame gets CLOSE 7).
		info.Unverified = true
	} else if l.Allowed != nil && !l.Allowed(info.Station) {
		s.obs.Rejected(frame.ReasonUnauthorized)
		s.log.Warn("station not authorized", "session", id, "station", info.Station, "link", l.Name)
		if l.Ground != nil {
			conn.Close() // equipment reads no CLOSE
			return
		}
		_ = conn.SetWriteDeadline(time.Now().Add(min(s.cfg.WriteTimeout, time.Second)))
		_, _ = conn.Write(frame.AppendClose(nil, frame.ReasonUnauthorized, frame.ReasonUnauthorized.Text()))
		session.CloseWrite(conn)
		conn.Close()
		return
	}

	if l.Ground != nil {
		s.runEquipment(conn, link.Info{ID: id, Station: info.Station, RemoteAddr: info.RemoteAddr, TLSIdentity: info.TLSIdentity}, l)
		return
	}

	sess := session.New(conn, info, s.scfg, s.agg, s.log, s.obs)
	s.mu.Lock()
	s.sessions[sess] = l
	s.live[sess] = &live{sess: sess, done: make(chan struct{})}
	shutting, drainAt := s.shutdown.Load(), s.drainAt // one view of both, under mu
	s.mu.Unlock()
	if shutting {
		// Admitted just before shutdown began, started after: it drains
		// like the others (goAwayAll may also reach it; the first call's
		// deadline holds, and both are the shutdown's).
		sess.GoAway(drainAt)
	}
	s.obs.SessionStarted()
	if l.TLS != nil {
		s.log.Info("session started", "session", id, "station", info.Station, "tls_identity", info.TLSIdentity)
	}

	reason := sess.Run(s.forced)
	s.unqueued.Add(sess.Unqueued())
	s.v2Ended(sess)
	if reason == frame.ReasonUnauthorized {
		// Refused once it said who it is (a v2 HELLO naming a station
		// not allowed, or a v1 frame from an IP not allowed): counted
		// with the refusals at connect.
		s.obs.Rejected(reason)
	}

	s.obs.SessionEnded(reason)
	if s.ended != nil {
		s.ended(Snapshot{Info: sess.Info(), Stats: sess.Stats(), Link: l.Name, Framing: link.FramingMeridian}, reason)
	}
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

// runEquipment reads one ground-equipment connection until it ends, on the
// caller's goroutine (which conns counts). It drains like a session when
// shutdown begins, and what it read is queued before it returns.
func (s *Server) runEquipment(conn net.Conn, info link.Info, l *linkRT) {
	c, err := link.NewConn(conn, info, *l.Ground, s.agg, s.log, l.Totals)
	if err != nil { // checked by ServeLink and DialLink
		s.log.Error("link cannot read", "link", l.Name, "err", err)
		conn.Close()
		return
	}
	s.mu.Lock()
	s.equip[c] = l
	shutting, drainAt := s.shutdown.Load(), s.drainAt
	s.mu.Unlock()
	if shutting {
		c.Drain(drainAt)
	}
	end := c.Run(s.forced)
	s.unqueued.Add(c.Unqueued())
	if s.ended != nil {
		// A ground connection's end is not a Meridian close reason: it is
		// in the snapshot's End, and the reason passed is only nearest.
		snap := equipSnapshot(c, l)
		snap.End = end.String()
		s.ended(snap, endReason(end))
	}
	s.mu.Lock()
	delete(s.equip, c)
	s.mu.Unlock()
}

func equipSnapshot(c *link.Conn, l *linkRT) Snapshot {
	in, st := c.Info(), c.Stats()
	q := st.Quality
	return Snapshot{
		Info: session.Info{ID: in.ID, Station: in.Station, RemoteAddr: in.RemoteAddr, TLSIdentity: in.TLSIdentity},
		// Acked is what the sink committed: equipment is told nothing, but
		// the board's and /stations' lag then says what is not yet durable.
		Stats:   session.Stats{Since: st.Since, Frames: st.Frames, Bytes: st.Bytes, LastFrame: st.LastFrame, Acked: st.Committed},
		Link:    l.Name,
		Framing: l.framing(),
		Quality: &q,
	}
}

// handshake runs the TLS handshake within the handshake timeout.
func (s *Server) handshake(raw net.Conn, cfg *tls.Config) (*tls.Conn, tls.ConnectionState, error) {
	tc := tls.Server(raw, cfg)
	ctx, cancel := context.WithTimeout(s.forced, s.cfg.TLSHandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, tls.ConnectionState{}, err
	}
	return tc, tc.ConnectionState(), nil
}

// Shutdown stops the gateway without losing an accepted frame: it closes the
// listeners, sends GOAWAY to every session (spread over the lame-duck period
// when one is set), lets each drain for the drain timeout, waits until the
// sink has committed everything read, and flushes the sink. When ctx ends
// first, it forces the stop and returns a *ForcedError that says how many
// frames were read but not committed.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.shutdownWith(ctx, s.cfg.LameDuck)
}

// ShutdownNow is Shutdown without the lame-duck period: every session gets
// its GOAWAY at once (SIGINT, or a second stop request).
func (s *Server) ShutdownNow(ctx context.Context) error {
	return s.shutdownWith(ctx, 0)
}

func (s *Server) shutdownWith(ctx context.Context, lameDuck time.Duration) error {
	s.beginShutdown(lameDuck)
	s.log.Info("shutting down: stopped accepting, sending GOAWAY", "sessions", s.count(), "drain_timeout", s.cfg.DrainTimeout, "lame_duck", lameDuck)
	if err := s.goAwayAll(ctx, lameDuck); err != nil {
		return s.force(err)
	}
	if err := waitGroup(ctx, &s.conns); err != nil {
		return s.force(err)
	}
	s.agg.Close()
	select {
	case <-s.aggDone:
	case <-ctx.Done():
		return s.force(ctx.Err())
	}
	st := s.agg.Stats()
	s.forceStop()
	if s.aggErr != nil {
		lost := st.Queued - st.Committed + s.unqueued.Load()
		return fmt.Errorf("%w: %w (%d frames read and not stored; no station got an ACK for them)", ErrSinkFailed, s.aggErr, lost)
	}
	s.log.Info("shutdown complete", "frames_committed", st.Committed)
	return nil
}

// Close is the forced stop: connections are closed at once and frames not
// yet committed are abandoned. It returns a *ForcedError when there were
// any.
func (s *Server) Close() error {
	s.beginShutdown(0)
	if err := s.force(errors.New("closed")); err.Frames > 0 {
		return err
	}
	return nil
}

func (s *Server) force(cause error) *ForcedError {
	s.forceStop()
	s.conns.Wait() // sessions end at once: their connections are closed
	s.agg.Close()
	// A sink blocked in I/O that ignores its context (stdout into a pipe
	// nobody reads) must not hold the forced stop: after a short wait the
	// aggregator is left behind, and the process is about to exit anyway.
	t := time.NewTimer(forceWait)
	defer t.Stop()
	select {
	case <-s.aggDone:
	case <-t.C:
		s.log.Error("sink did not return after the forced stop; abandoning it", "waited", forceWait)
	}
	st := s.agg.Stats()
	// Read but not stored: queued and never committed, plus what the
	// sessions took from their stations and never queued (an open batch, a
	// batch blocked in Put, whole frames still buffered).
	return &ForcedError{Frames: st.Queued - st.Committed + s.unqueued.Load(), Cause: cause}
}

// beginShutdown stops accepting. Idempotent.
func (s *Server) beginShutdown(lameDuck time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown.Swap(true) {
		return
	}
	now := time.Now()
	s.drainAt = now.Add(lameDuck + s.cfg.DrainTimeout)
	s.lameUntil.Store(now.Add(lameDuck).UnixNano())
	close(s.quit)
	s.endDial()
	for ln := range s.listeners {
		ln.Close()
	}
}

// goAwayAll tells every session to drain. With a lame-duck period the
// GOAWAYs are spread evenly over it, so that stations behind a load balancer
// do not all reconnect at the same instant.
func (s *Server) goAwayAll(ctx context.Context, lameDuck time.Duration) error {
	s.mu.Lock()
	list := make([]*session.Session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	// Equipment neither reads GOAWAY nor reconnects elsewhere: there is
	// nothing to spread. It reads until the drain deadline, at once.
	for c := range s.equip {
		c.Drain(time.Now().Add(s.cfg.DrainTimeout))
	}
	s.mu.Unlock()
	if lameDuck <= 0 || len(list) == 0 {
		for _, sess := range list {
			sess.GoAway(time.Now().Add(s.cfg.DrainTimeout))
		}
		return nil
	}
	start := time.Now()
	step := lameDuck / time.Duration(len(list))
	t := time.NewTimer(0)
	defer t.Stop()
	for i, sess := range list {
		t.Reset(time.Until(start.Add(time.Duration(i) * step)))
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		sess.GoAway(time.Now().Add(s.cfg.DrainTimeout))
	}
	return nil
}

// State says where the gateway is in its life.
func (s *Server) State() State {
	switch {
	case s.agg.Err() != nil:
		return StateFailed
	case s.shutdown.Load():
		if time.Now().UnixNano() < s.lameUntil.Load() {
			return StateLameDuck
		}
		return StateDraining
	case !s.serving.Load():
		return StateStarting
	}
	return StateReady
}

// Ready reports whether the gateway takes frames: not before Serve, not
// while shutting down, not after the sink failed, not while the sink
// reports a problem.
func (s *Server) Ready() error {
	if err := s.agg.Err(); err != nil {
		return fmt.Errorf("sink failed: %w", err)
	}
	if !s.serving.Load() {
		return errors.New("starting")
	}
	if s.shutdown.Load() {
		return errors.New("draining")
	}
	if c, ok := s.sink.(pipeline.Checker); ok {
		if err := c.Check(); err != nil {
			return fmt.Errorf("stream unavailable: %w", err)
		}
	}
	return nil
}

// Snapshot describes one live session or ground-equipment connection.
type Snapshot struct {
	session.Info
	session.Stats
	Link    string        // the link it came in on (DefaultLink for --listen)
	Framing string        // the link's framing
	Quality *link.Quality // ground framings only: the connection's counters
	End     string        // ground framings, at the end only: why it ended (link.End)
}

// endReason is the Meridian close reason nearest to a ground connection's
// end, for WithSessionEnded.
func endReason(e link.End) frame.Reason {
	switch e {
	case link.EndEOF:
		return frame.ReasonStationClosed
	case link.EndShutdown:
		return frame.ReasonShutdown
	case link.EndSinkFailed:
		return frame.ReasonInternalError
	}
	return frame.ReasonReadError
}

// Sessions lists the live sessions and equipment connections.
func (s *Server) Sessions() []Snapshot {
	type sessOf struct {
		sess *session.Session
		l    *linkRT
	}
	type equipOf struct {
		c *link.Conn
		l *linkRT
	}
	s.mu.Lock()
	list := make([]sessOf, 0, len(s.sessions))
	for sess, l := range s.sessions {
		list = append(list, sessOf{sess, l})
	}
	eq := make([]equipOf, 0, len(s.equip))
	for c, l := range s.equip {
		eq = append(eq, equipOf{c, l})
	}
	s.mu.Unlock()
	out := make([]Snapshot, 0, len(list)+len(eq))
	for _, e := range list {
		out = append(out, Snapshot{Info: e.sess.Info(), Stats: e.sess.Stats(), Link: e.l.Name, Framing: link.FramingMeridian})
	}
	for _, e := range eq {
		out = append(out, equipSnapshot(e.c, e.l))
	}
	return out
}

func (s *Server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions) + len(s.equip)
}

func waitGroup(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// The waiter goroutine ends once force has closed every session.
		return ctx.Err()
	}
}

// temporary reports whether an accept error may go away by itself (out of
// file descriptors or buffers, an aborted handshake), so that the accept
// loop backs off and retries, as net/http does; any other error means the
// listener is gone.
func temporary(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
			syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EAGAIN, syscall.EINTR, syscall.EPROTO:
			return true
		}
		return false
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}

func remoteIP(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
