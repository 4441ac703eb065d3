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

// Server accepts station connections and runs their sessions.
type Server struct {
	cfg      Config // immutable after New
	scfg     session.Config
	sink     pipeline.Sink
	agg      *pipeline.Aggregator
	log      *slog.Logger
	obs      Observer
	tls      *tls.Config
	identity func(tls.ConnectionState) string
	allowed  func(string) bool
	ended    func(Snapshot, frame.Reason)

	// forced ends every session and the aggregator at once: Close, or the
	// end of Shutdown's context.
	forced    context.Context
	forceStop context.CancelFunc
	quit      chan struct{} // closed when shutdown begins; wakes accept back-off
	aggDone   chan struct{} // closed when the aggregator's Run returned
	aggErr    error         // set before aggDone closes

	nextID    atomic.Uint64
	serving   atomic.Bool
	shutdown  atomic.Bool
	lameUntil atomic.Int64   // unix nanos: the end of the lame-duck spread
	unqueued  atomic.Uint64  // frames ended sessions read but never queued
	conns     sync.WaitGroup // session and rejection goroutines

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session.Session]struct{}
	active    int            // connections holding a session slot
	rejecting int            // refusals being written
	perIP     map[string]int // guarded by mu
	drainAt   time.Time      // set when shutdown begins
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
		},
		sink:      sink,
		agg:       pipeline.New(sink, cfg.Queue, pipeline.WithByteLimit(cfg.QueueBytes)),
		log:       log,
		obs:       nopObserver{},
		quit:      make(chan struct{}),
		aggDone:   make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session.Session]struct{}),
		perIP:     make(map[string]int),
	}
	for _, o := range opts {
		o(s)
	}
	s.forced, s.forceStop = context.WithCancel(context.Background())
	go func() {
		defer close(s.aggDone)
		s.aggErr = s.agg.Run(s.forced)
		if s.aggErr != nil && s.forced.Err() == nil {
			// Every session now ends with its final ACK and CLOSE
			// (internal error); the owner learns it from Failed and
			// shuts the gateway down.
			s.log.Error("sink failed: no more frames can be stored; ending every session and shutting down",
				"err", s.aggErr, "frames_committed", s.agg.Stats().Committed)
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
func (s *Server) Serve(ln net.Listener) error {
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
		s.accept(conn)
	}
}

// accept admits conn within the session limits and starts its goroutine.
// It never blocks on the connection.
func (s *Server) accept(conn net.Conn) {
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
	busy := s.active >= s.cfg.MaxSessions ||
		(s.cfg.MaxSessionsPerIP > 0 && s.perIP[ip] >= s.cfg.MaxSessionsPerIP)
	if busy {
		// Refusals are bounded too: beyond maxRejecting at once (a flood,
		// or slow TLS handshakes) a connection is closed without a word.
		s.obs.Rejected(frame.ReasonBusy)
		if s.rejecting >= maxRejecting {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.rejecting++
		s.conns.Add(1)
		s.mu.Unlock()
		go s.reject(conn, frame.ReasonBusy)
		return
	}
	s.active++
	s.perIP[ip]++
	s.conns.Add(1)
	s.mu.Unlock()
	id := fmt.Sprintf("gs-%d@%s", s.nextID.Add(1), conn.RemoteAddr())
	if s.tls == nil {
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
	go s.serveConn(conn, id, ip)
}

// reject tells a station why it may not connect, then closes. The goroutine
// is bounded by the handshake and write timeouts.
func (s *Server) reject(conn net.Conn, r frame.Reason) {
	defer s.conns.Done()
	defer func() {
		s.mu.Lock()
		s.rejecting--
		s.mu.Unlock()
	}()
	s.log.Warn("connection rejected", "remote", conn.RemoteAddr().String(), "reason", r.String())
	if s.tls != nil {
		tc, _, err := s.handshake(conn)
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
func (s *Server) serveConn(raw net.Conn, id, ip string) {
	defer s.conns.Done()
	defer func() {
		s.mu.Lock()
		s.active--
		if s.perIP[ip]--; s.perIP[ip] <= 0 {
			delete(s.perIP, ip)
		}
		s.mu.Unlock()
	}()

	conn := raw
	info := session.Info{ID: id, Station: ip, RemoteAddr: raw.RemoteAddr().String()}
	if s.tls != nil {
		// A forced stop closes the socket itself: closing the tls.Conn
		// would first try to send close_notify, for up to 5 s, to a
		// station that may not be reading.
		stop := context.AfterFunc(s.forced, func() { raw.Close() })
		defer stop()
		tc, state, err := s.handshake(raw)
		if err != nil {
			s.obs.TLSHandshakeFailed()
			s.log.Warn("TLS handshake failed", "session", id, "err", err)
			raw.Close()
			return
		}
		conn = tc
		if s.identity != nil {
			if name := s.identity(state); name != "" {
				info.Station, info.TLSIdentity = name, name
			}
		}
	}
	if s.allowed != nil && !s.allowed(info.Station) {
		s.obs.Rejected(frame.ReasonUnauthorized)
		s.log.Warn("station not authorized", "session", id, "station", info.Station)
		_ = conn.SetWriteDeadline(time.Now().Add(min(s.cfg.WriteTimeout, time.Second)))
		_, _ = conn.Write(frame.AppendClose(nil, frame.ReasonUnauthorized, frame.ReasonUnauthorized.Text()))
		session.CloseWrite(conn)
		conn.Close()
		return
	}

	sess := session.New(conn, info, s.scfg, s.agg, s.log, s.obs)
	s.mu.Lock()
	s.sessions[sess] = struct{}{}
	shutting, drainAt := s.shutdown.Load(), s.drainAt // one view of both, under mu
	s.mu.Unlock()
	if shutting {
		// Admitted just before shutdown began, started after: it drains
		// like the others (goAwayAll may also reach it; the first call's
		// deadline holds, and both are the shutdown's).
		sess.GoAway(drainAt)
	}
	s.obs.SessionStarted()
	if s.tls != nil {
		s.log.Info("session started", "session", id, "station", info.Station, "tls_identity", info.TLSIdentity)
	}

	reason := sess.Run(s.forced)
	s.unqueued.Add(sess.Unqueued())

	s.obs.SessionEnded(reason)
	if s.ended != nil {
		s.ended(Snapshot{Info: sess.Info(), Stats: sess.Stats()}, reason)
	}
	s.mu.Lock()
	delete(s.sessions, sess)
	s.mu.Unlock()
}

// handshake runs the TLS handshake within the handshake timeout.
func (s *Server) handshake(raw net.Conn) (*tls.Conn, tls.ConnectionState, error) {
	tc := tls.Server(raw, s.tls)
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

// Snapshot describes one live session.
type Snapshot struct {
	session.Info
	session.Stats
}

// Sessions lists the live sessions.
func (s *Server) Sessions() []Snapshot {
	s.mu.Lock()
	list := make([]*session.Session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	out := make([]Snapshot, len(list))
	for i, sess := range list {
		out[i] = Snapshot{Info: sess.Info(), Stats: sess.Stats()}
	}
	return out
}

func (s *Server) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
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
