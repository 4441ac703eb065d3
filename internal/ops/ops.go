// Package ops is the gateway's operations HTTP listener: the station board
// (a page at / and its JSON at /api/board), Prometheus metrics, liveness and
// readiness probes, the live station table and, when asked for, pprof. It is
// a separate listener from the station port so that it can stay on a private
// address (the default is 127.0.0.1:9477).
package ops

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-telemetry/meridian/internal/board"
	"github.com/meridian-telemetry/meridian/internal/link"
)

// assets are the board's page, style and script: embedded, so that the board
// works on an air-gapped network, with nothing loaded from elsewhere.
//
//go:embed assets
var assets embed.FS

// Errors returned by Start.
var (
	ErrStarted = errors.New("ops: server already started")
	ErrClosed  = errors.New("ops: server shut down")
)

// StationStatus is one live session as /stations shows it.
type StationStatus struct {
	ID              string    `json:"id"`                     // session id, as in the logs
	Station         string    `json:"station"`                // identity: remote IP, or TLS identity with mTLS
	RemoteAddr      string    `json:"remote_addr"`            // peer address, ip:port
	TLSIdentity     string    `json:"tls_identity,omitempty"` // client certificate identity; empty without mTLS
	ConnectedSince  time.Time `json:"connected_since"`
	Frames          uint64    `json:"frames"` // data frames received
	Bytes           uint64    `json:"bytes"`  // payload bytes received
	LastFrameAt     time.Time `json:"last_frame_at,omitzero"`
	FramesPerSecond float64   `json:"frames_per_second"` // recent receive rate
	FramesAcked     uint64    `json:"frames_acked"`      // frames committed and acknowledged
	// Protocol v2 only: the station's epoch, the station sequence the last
	// ACK covers, and the last heartbeat round trip (0 before a PONG).
	Protocol int     `json:"protocol,omitempty"` // 1 or 2; absent on ground framings
	Epoch    uint64  `json:"epoch,omitempty"`
	AckedSeq uint64  `json:"acked_seq,omitempty"`
	RTTms    float64 `json:"rtt_ms,omitempty"`
	// The link it came in on and its framing; Quality only on ground
	// framings (docs/framing.md, section 8), whose frames are never acked.
	Link    string        `json:"link,omitempty"`
	Framing string        `json:"framing,omitempty"`
	Quality *link.Quality `json:"quality,omitempty"`
}

// Options configure the ops server. Every field may be left zero.
type Options struct {
	// Addr is the address ListenAndStart binds, e.g. "127.0.0.1:9477".
	Addr string
	// Gatherer is what /metrics exposes; nil means prometheus.DefaultGatherer.
	// Pass the *prometheus.Registry given to metrics.New.
	Gatherer prometheus.Gatherer
	// Stations lists the live sessions for /stations; nil shows none. It is
	// called from HTTP handler goroutines and must be safe for that.
	Stations func() []StationStatus
	// Board is the station board behind / and /api/board; nil serves the
	// page with an empty board. The server runs its sampler from Start until
	// Shutdown or Close.
	Board *board.Board
	// Ready reports whether the gateway can take frames now: nil error is
	// ready. It is called on every /readyz request. Nil means always ready.
	Ready func() error
	// PProf mounts net/http/pprof under /debug/pprof/.
	PProf bool
	// Logger receives serve and scrape errors; nil discards them.
	Logger *slog.Logger
}

// Server is the ops HTTP server. Its goroutine is owned by the Server: Start
// begins it and Shutdown or Close end it and wait for it.
type Server struct {
	opts Options
	log  *slog.Logger
	srv  *http.Server

	mu      sync.Mutex // guards started, closed, addr, done, serveErr
	started bool
	closed  bool
	addr    net.Addr
	done    chan struct{} // closed when the serve and board goroutines returned
	// stopBoard ends the board's sampler; set by Start, called by markClosed.
	stopBoard context.CancelFunc
	// serveErr is why Serve returned, if not because of Shutdown or Close;
	// written by the serve goroutine before done is closed.
	serveErr error
}

// New builds a server; nothing listens until Start or ListenAndStart.
func New(opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: log, done: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		// No WriteTimeout: a pprof CPU profile or trace legitimately writes
		// for as long as its ?seconds= asks, and /metrics is bounded by
		// promhttp's own Timeout below.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

// Handler returns the ops endpoints as one handler, for tests and for
// embedding in another server.
func (s *Server) Handler() http.Handler {
	g := s.opts.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog: promLogger{s.log},
		// A collector failing must not hide every other metric.
		ErrorHandling: promhttp.ContinueOnError,
		// Scrapes never pile up behind a slow collector.
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /stations", s.stations)
	mux.HandleFunc("GET /api/board", s.boardJSON)
	static, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(static)
	mux.Handle("GET /{$}", pageHeaders(files))
	mux.Handle("GET /board.css", pageHeaders(files))
	mux.Handle("GET /board.js", pageHeaders(files))
	if s.opts.PProf {
		// Registered on our own mux: importing net/http/pprof also fills
		// http.DefaultServeMux, which Meridian never serves.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	// Liveness only: answering at all is the signal. Readiness, which can
	// legitimately fail for a while, lives on /readyz so that an orchestrator
	// does not restart a gateway that is merely draining.
	plain(w, http.StatusOK, "ok\n")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Ready != nil {
		if err := s.opts.Ready(); err != nil {
			plain(w, http.StatusServiceUnavailable, "not ready: "+err.Error()+"\n")
			return
		}
	}
	plain(w, http.StatusOK, "ready\n")
}

func (s *Server) stations(w http.ResponseWriter, _ *http.Request) {
	list := []StationStatus{} // an empty table is [], never null
	if s.opts.Stations != nil {
		if got := s.opts.Stations(); got != nil {
			list = got
		}
	}
	slices.SortFunc(list, func(a, b StationStatus) int {
		return cmp.Or(cmp.Compare(a.Station, b.Station), cmp.Compare(a.ID, b.ID))
	})
	body, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		s.log.Error("ops: encoding /stations", "err", err)
		plain(w, http.StatusInternalServerError, "internal error\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}

// boardJSON serves the board's model, the one the page polls and scripts can
// read too. Without a board it is an empty board, so that the page says
// "no stations" rather than failing.
func (s *Server) boardJSON(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	v := board.View{Now: now, Gateway: board.GatewayView{State: board.GatewayReady},
		Stream: board.StreamView{State: board.StreamNone}, Stations: []board.StationView{}}
	if s.opts.Board != nil {
		v = s.opts.Board.View(now)
	}
	body, err := json.Marshal(v)
	if err != nil {
		s.log.Error("ops: encoding /api/board", "err", err)
		plain(w, http.StatusInternalServerError, "internal error\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(body, '\n'))
}

// pageHeaders adds the board page's security headers: the page loads only
// its own embedded files, runs no inline script and cannot be framed.
func pageHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

func plain(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// ListenAndStart binds Options.Addr and starts serving on it.
func (s *Server) ListenAndStart() error {
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("ops: listen on %s: %w", s.opts.Addr, err)
	}
	if err := s.Start(ln); err != nil {
		_ = ln.Close()
		return err
	}
	return nil
}

// Start serves on ln in a goroutine owned by s, until Shutdown or Close. The
// server takes ownership of ln and closes it. Start may be called once; it
// returns ErrStarted on a second call and ErrClosed after Shutdown.
func (s *Server) Start(ln net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.started:
		return ErrStarted
	}
	s.started = true
	s.addr = ln.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	s.stopBoard = cancel
	var wg sync.WaitGroup
	if s.opts.Board != nil {
		wg.Go(func() { _ = s.opts.Board.Run(ctx) })
	}
	wg.Go(func() {
		err := s.srv.Serve(ln)
		if !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("ops: server stopped", "addr", ln.Addr().String(), "err", err)
			s.serveErr = fmt.Errorf("ops: serve: %w", err)
		}
	})
	go func() {
		wg.Wait()
		close(s.done)
	}()
	s.log.Info("ops: listening", "addr", ln.Addr().String(), "pprof", s.opts.PProf)
	return nil
}

// Addr is the address being served, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Shutdown stops accepting, lets requests in flight finish until ctx ends,
// then closes whatever is left, and waits for the serve goroutine. It may be
// called more than once and concurrently with Close. It returns ctx's error
// if requests had to be cut off, and the serve error if the server had
// already failed on its own.
func (s *Server) Shutdown(ctx context.Context) error {
	s.markClosed()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		// The graceful path ran out of time: force the rest closed so the
		// serve goroutine and its connections do not outlive us.
		_ = s.srv.Close()
		err = fmt.Errorf("ops: shutdown: %w", err)
	}
	<-s.done
	return errors.Join(err, s.serveErr)
}

// Close stops the server at once, dropping requests in flight, and waits for
// the serve goroutine: the forced path, e.g. on a second signal while
// Shutdown is waiting.
func (s *Server) Close() error {
	s.markClosed()
	_ = s.srv.Close() // its only error is the listener's, already closed by Serve's exit
	<-s.done
	return s.serveErr
}

// markClosed makes later Starts fail; if Start never ran it also marks the
// serve goroutine done, so that Shutdown and Close never wait for it.
func (s *Server) markClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if !s.started {
		close(s.done)
		return
	}
	s.stopBoard()
}

// promLogger adapts slog to promhttp's Println logger.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error("ops: metrics scrape: " + fmt.Sprint(v...)) }
