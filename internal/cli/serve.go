package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/meridian-telemetry/meridian/internal/board"
	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/link"
	"github.com/meridian-telemetry/meridian/internal/metrics"
	"github.com/meridian-telemetry/meridian/internal/ops"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/sdnotify"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/stream"
	"github.com/meridian-telemetry/meridian/internal/tlsid"
)

func newServeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the gateway",
		Long: `Run the gateway: accept station sessions on --listen, make every frame
durable in the sink (by default an embedded NATS JetStream server storing
under --data-dir), and acknowledge to each station what is safe.

Every setting is a flag, an environment variable MERIDIAN_<FLAG> (upper case,
'-' as '_'), or a key of the YAML file given by --config. Precedence: flags,
then environment, then file, then defaults.

Ground-equipment links (CCSDS space packets, CADUs, generic length fields;
listening or dialing out, each with its own framing, CRC policy, limits, TLS
and allow-list) and extra Meridian listeners are set only in the config
file's links: list; see docs/framing.md. --print-config prints them.

Start-up: the ops listener (--http-listen) opens first, with /readyz 503
"starting" while the stream opens; a store that must recover after a crash
takes as long as it takes (progress is logged, and systemd's start timeout
is extended), and READY is sent only once the stream takes frames.

The station board is at http://<--http-listen>/ (loopback by default).

Stations speak protocol v1 (length-prefixed frames, at least once) or v2: a
HELLO names the station's numbering (epoch), the gateway answers WELCOME with
where the stream ends for it, and each frame is stored exactly once across
reconnects, gateway restarts and moves to another gateway on the same stream
(within --dedup-window). A second v2 session of a station supersedes the
first (CLOSE 9). Without mutual TLS a v2 HELLO's name is the identity. See
docs/protocol.md.

Signals:
  SIGINT, SIGTERM  graceful shutdown: stop accepting, GOAWAY to every session
                   (spread over --lame-duck on SIGTERM), drain for at most
                   --drain-timeout, final ACKs, flush the sink; all within
                   --shutdown-grace. A second signal forces the exit.
  SIGHUP           reload the TLS certificate, key and client CA.

Exit status: 0 after a clean shutdown; 1 on a runtime failure (the sink
failed, or the station listener failed for good: both end the sessions
gracefully first) or a forced shutdown (the log says how many frames were
abandoned); 2 on a configuration error (bad flag, environment, file, or a
stream that conflicts with the flags).`,
		Args: cobra.NoArgs,
	}
	config.BindFlags(cmd.Flags())
	printConfig := cmd.Flags().Bool("print-config", false, "print the effective configuration (secrets redacted) and exit")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := config.Resolve(cmd.Flags(), os.Environ())
		if err != nil {
			return usage(err)
		}
		if *printConfig {
			return config.Print(cmd.OutOrStdout(), cfg)
		}
		log, err := newLogger(stderrOf(cmd), cfg.LogFormat, cfg.LogLevel)
		if err != nil {
			return err
		}
		return serve(cmd.Context(), cfg, log, cmd)
	}
	return cmd
}

// serve runs the gateway until a signal stops it.
func serve(ctx context.Context, cfg config.Config, log *slog.Logger, cmd *cobra.Command) error {
	// Signals are caught before anything starts, so that a Ctrl-C during
	// start-up is a clean stop rather than a kill.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	reg := prometheus.NewRegistry()
	m := metrics.New(reg)

	// The ops listener comes first: while the store recovers, which can take
	// minutes after a crash, /healthz says the process lives and /readyz
	// says why it does not take frames yet.
	var (
		gwRef   atomic.Pointer[gateway.Server]
		strmRef atomic.Pointer[stream.Stream]
		phase   atomic.Pointer[string]
	)
	setPhase := func(p string) {
		phase.Store(&p)
		notify(log, sdnotify.Status(p))
	}
	setPhase("starting")
	var (
		opsSrv *ops.Server
		brd    *board.Board
	)
	if cfg.HTTPListen != "" {
		brd = newBoard(gwRef.Load, strmRef.Load)
		opsSrv = ops.New(ops.Options{
			Addr:     cfg.HTTPListen,
			Gatherer: reg,
			Stations: newRates().stations(gwRef.Load),
			Board:    brd,
			Ready: func() error {
				if gw := gwRef.Load(); gw != nil {
					return gw.Ready()
				}
				return errors.New(*phase.Load())
			},
			PProf:  cfg.PProf,
			Logger: log,
		})
		if err := opsSrv.ListenAndStart(); err != nil {
			return fmt.Errorf("http-listen: cannot listen on --http-listen %s: %w", cfg.HTTPListen, err)
		}
		defer stopOps(opsSrv)
	}

	var (
		snk  pipeline.Sink
		strm *stream.Stream
	)
	switch cfg.Sink {
	case config.SinkJetStream:
		if cfg.NATSURL == "" {
			setPhase("starting: opening the embedded JetStream store (recovering it can take minutes)")
		} else {
			setPhase("starting: connecting to the NATS cluster")
		}
		s, err := openStream(ctx, withLinkUnits(cfg), log, sigs)
		if errors.Is(err, errStopDuringStartup) {
			return nil
		}
		if err != nil {
			if errors.Is(err, stream.ErrStreamConflict) || errors.Is(err, stream.ErrListen) {
				return usage(err)
			}
			return err
		}
		strm, snk = s, s.Sink()
		strmRef.Store(strm)
		defer strm.Close()
	case config.SinkStdout:
		snk = sink.NewStdout(cmd.OutOrStdout())
	case config.SinkDiscard:
		snk = sink.NewDiscard()
	}

	var opts []gateway.Option
	opts = append(opts, gateway.WithObserver(m))
	if brd != nil {
		opts = append(opts, boardEnded(brd))
	}
	var loader *tlsid.Loader
	if cfg.TLSCert != "" {
		l, err := tlsid.Load(tlsid.Files{Cert: cfg.TLSCert, Key: cfg.TLSKey, ClientCA: cfg.TLSClientCA})
		if err != nil {
			return usage(fmt.Errorf("tls-cert: %w", err))
		}
		loader = l
		opts = append(opts, gateway.WithTLS(l.Config(), tlsid.Identity))
	}
	if len(cfg.AllowStations) > 0 {
		allow, err := tlsid.NewAllowList(cfg.AllowStations)
		if err != nil {
			return usage(fmt.Errorf("allow-stations: %w", err))
		}
		opts = append(opts, gateway.WithAllow(allow.Allowed), gateway.WithAllowNames(allow.AllowedName))
	}

	if strm != nil {
		// v2 stations resume from what the stream holds, read on its leader.
		opts = append(opts, gateway.WithResume(func(ctx context.Context, id string) (gateway.Stored, error) {
			st, err := strm.LastStored(ctx, id)
			if err != nil && stream.Transient(err) {
				err = fmt.Errorf("%w: %w", gateway.ErrResumeTransient, err)
			}
			return gateway.Stored(st), err
		}))
	}
	gw, err := gateway.New(gatewayConfig(cfg), snk, log, opts...)
	if err != nil {
		return usage(err)
	}
	m.Queue(gw.Aggregator().Stats)
	m.QueueCapacity(gw.Aggregator().Limit())
	if strm != nil {
		js := strm.Sink()
		m.Stream(func() metrics.StreamStats {
			st := js.Stats()
			return metrics.StreamStats{Pending: st.Unacked, PendingBytes: st.UnackedBytes, Down: st.Down, Outages: st.Outages, Resent: st.Resent, Timeouts: st.Timeouts, Duplicates: st.Duplicates, InProcess: st.InProcess}
		})
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		gw.Close()
		return fmt.Errorf("listen: cannot listen on --listen %s: %w", cfg.Listen, err)
	}
	links, err := startLinks(cfg.Links, gw, log)
	if err != nil {
		ln.Close()
		gw.Close()
		return err
	}
	m.Links(links.stats)

	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
	gwRef.Store(gw)
	attrs := []any{"listen", ln.Addr().String(), "sink", cfg.Sink}
	if strm != nil {
		attrs = append(attrs, "stream", strm.Name(), "nats", strm.ClientURL())
	}
	if opsSrv != nil {
		attrs = append(attrs, "http", opsSrv.Addr().String())
	}
	if loader != nil {
		attrs = append(attrs, "tls", true, "mtls", loader.MutualTLS())
	}
	log.Info("meridian serving", attrs...)
	notify(log, sdnotify.Ready+"\n"+sdnotify.Status("serving on "+ln.Addr().String()))

	// Run until a stop signal, or until the listener or the sink fails on
	// its own; each takes the graceful path, so that sessions already open
	// keep every frame they sent.
	var (
		sig     os.Signal
		failure error // why the gateway stops without being asked to
		servErr error // Serve's result, once it returned
		servedC = served
	)
wait:
	for {
		select {
		case sig = <-sigs:
			if sig == syscall.SIGHUP {
				reloadTLS(log, loader)
				links.reload(log)
				continue
			}
			break wait
		case err := <-links.served:
			links.running--
			failure = fmt.Errorf("link listener failed: %w", err)
			log.Error("link listener failed; shutting down gracefully", "err", err)
			break wait
		case servErr = <-servedC:
			servedC = nil
			failure = fmt.Errorf("station listener failed: %w", servErr)
			log.Error("station listener failed; shutting down gracefully", "err", servErr)
			break wait
		case <-gw.Failed():
			failure = errors.New("the sink failed")
			break wait // the gateway logged the cause
		}
	}

	notify(log, sdnotify.Stopping)
	if sig != nil {
		log.Info("signal received: graceful shutdown", "signal", sig.String(), "grace", cfg.ShutdownGrace)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		if sig == syscall.SIGTERM {
			done <- gw.Shutdown(graceCtx)
		} else {
			done <- gw.ShutdownNow(graceCtx)
		}
	}()
	var shutErr error
	for shutErr == nil {
		select {
		case shutErr = <-done:
			if shutErr == nil {
				shutErr = errDone
			}
		case s := <-sigs:
			if s == syscall.SIGHUP {
				reloadTLS(log, loader)
				links.reload(log)
				continue
			}
			log.Warn("second signal: forcing the exit", "signal", s.String())
			cancel()
		}
	}
	if servedC != nil {
		<-servedC
	}
	links.wait()
	var fe *gateway.ForcedError
	switch {
	case errors.As(shutErr, &fe):
		log.Error("shutdown forced", "frames_abandoned", fe.Frames, "cause", fe.Cause)
		return exitError{code: ExitFail, err: fmt.Errorf("shutdown forced: %d frames abandoned", fe.Frames)}
	case errors.Is(shutErr, gateway.ErrSinkFailed):
		log.Error("stopped after the sink failed", "err", shutErr)
		return exitError{code: ExitFail, err: shutErr}
	case !errors.Is(shutErr, errDone):
		return shutErr
	}
	// Only after a clean shutdown: a forced one may have left the sink
	// blocked in a write. The stream closes its own sink.
	if strm == nil {
		if err := snk.Close(); err != nil {
			log.Error("closing the sink", "err", err)
		}
	}
	if failure != nil {
		log.Error("meridian stopped after a failure; every frame read was stored and acknowledged", "err", failure)
		return exitError{code: ExitFail, err: failure}
	}
	log.Info("meridian stopped")
	return nil
}

// startupExtendEvery is how often a start-up still opening the stream
// extends systemd's start timeout.
const startupExtendEvery = 10 * time.Second

// errStopDuringStartup: a stop signal came while the stream was opening.
var errStopDuringStartup = errors.New("stopped during start-up")

// openStream opens the durable stream, however long the embedded store's
// recovery takes; a SIGINT or SIGTERM meanwhile stops the start-up cleanly.
func openStream(ctx context.Context, cfg config.Config, log *slog.Logger, sigs <-chan os.Signal) (*stream.Stream, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		s   *stream.Stream
		err error
	}
	opened := make(chan result, 1)
	go func() {
		s, err := stream.Open(ctx, streamConfig(cfg), log)
		opened <- result{s, err}
	}()
	// Under systemd (Type=notify) a start that sends no READY within
	// TimeoutStartSec is killed; a long store recovery is not a hung start,
	// so each tick extends the timeout and says how long it has been.
	began := time.Now()
	tick := time.NewTicker(startupExtendEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			notify(log, fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d\n%s", (3*startupExtendEvery).Microseconds(),
				sdnotify.Status(fmt.Sprintf("starting: opening the stream (%s so far)", time.Since(began).Round(time.Second)))))
		case r := <-opened:
			return r.s, r.err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				log.Info("SIGHUP during start-up: nothing to reload yet")
				continue
			}
			log.Info("signal received during start-up: stopping", "signal", sig.String())
			cancel()
			// The embedded server cannot stop in the middle of recovering
			// its store; Open returns once it can. A second signal does
			// not wait for that.
			for {
				select {
				case r := <-opened:
					if r.err == nil {
						r.s.Close()
					}
					return nil, errStopDuringStartup
				case sig := <-sigs:
					if sig == syscall.SIGHUP {
						continue
					}
					log.Warn("second signal during start-up: exiting without waiting for the store recovery", "signal", sig.String())
					return nil, exitError{code: ExitFail, err: errors.New("start-up interrupted by a second signal")}
				}
			}
		}
	}
}

var errDone = errors.New("done")

func reloadTLS(log *slog.Logger, l *tlsid.Loader) {
	if l == nil {
		log.Info("SIGHUP: no TLS configured; nothing to reload")
		return
	}
	if err := l.Reload(); err != nil {
		log.Error("SIGHUP: TLS reload failed; keeping the current certificates", "err", err)
		return
	}
	leaf := l.Leaf()
	log.Info("SIGHUP: TLS certificates reloaded", "subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
}

func stopOps(s *ops.Server) {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
}

func notify(log *slog.Logger, state string) {
	if _, err := sdnotify.Notify(state); err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// rates turns the sessions' cumulative counters into a current frames/s for
// /stations: the rate since the previous scrape, or since the session began
// on its first one.
type rates struct {
	mu   sync.Mutex
	prev map[string]rateMark
}

type rateMark struct {
	frames uint64
	at     time.Time
}

func newRates() *rates { return &rates{prev: make(map[string]rateMark)} }

// stations lists the live sessions of the gateway that gw returns, none
// before it exists.
func (r *rates) stations(gw func() *gateway.Server) func() []ops.StationStatus {
	return func() []ops.StationStatus {
		now := time.Now()
		var list []gateway.Snapshot
		if g := gw(); g != nil {
			list = g.Sessions()
		}
		out := make([]ops.StationStatus, len(list))
		r.mu.Lock()
		defer r.mu.Unlock()
		seen := make(map[string]rateMark, len(list))
		for i, s := range list {
			from, ok := r.prev[s.ID]
			if !ok {
				from = rateMark{at: s.Since}
			}
			var fps float64
			if dt := now.Sub(from.at).Seconds(); dt > 0 {
				fps = float64(s.Frames-from.frames) / dt
			}
			seen[s.ID] = rateMark{frames: s.Frames, at: now}
			out[i] = ops.StationStatus{
				ID:              s.ID,
				Station:         s.Station,
				RemoteAddr:      s.RemoteAddr,
				TLSIdentity:     s.TLSIdentity,
				ConnectedSince:  s.Since,
				Frames:          s.Frames,
				Bytes:           s.Bytes,
				LastFrameAt:     s.LastFrame,
				FramesPerSecond: fps,
				FramesAcked:     s.Acked,
				Protocol:        protocolOf(s),
				Epoch:           s.Epoch,
				AckedSeq:        s.AckedSeq,
				RTTms:           float64(s.RTT) / float64(time.Millisecond),
				Link:            s.Link,
				Framing:         s.Framing,
				Quality:         s.Quality,
			}
		}
		r.prev = seen // forget ended sessions
		return out
	}
}

// linkSet is the config file's links, running: their listeners' Serve
// results, their TLS loaders and their counters.
type linkSet struct {
	served  chan error // one result per listening link, once its Serve returns
	running int        // listening links whose result is not read yet
	loaders []*tlsid.Loader
	list    []runningLink
}

type runningLink struct {
	name   string
	dial   bool
	totals *link.Counters
}

// startLinks binds every listening link, then serves them all and starts
// every dial-out link. A link that cannot be set up (certificates,
// allow-list, bind) is a configuration error that names it; nothing is
// left running then.
func startLinks(links []config.Link, gw *gateway.Server, log *slog.Logger) (*linkSet, error) {
	ls := &linkSet{served: make(chan error, len(links))}
	type bound struct {
		ln net.Listener
		gl gateway.Link
		at string
	}
	var (
		toServe []bound
		toDial  []bound
	)
	fail := func(err error) (*linkSet, error) {
		for _, b := range toServe {
			b.ln.Close()
		}
		return nil, err
	}
	for _, l := range links {
		gl := gateway.Link{Name: l.Name, MaxSessions: l.MaxSessions, MaxSessionsPerIP: l.MaxSessionsPerIP, Totals: new(link.Counters)}
		if l.Framing != config.FramingMeridian {
			policy, err := link.ParsePolicy(l.CRCPolicy)
			if err != nil {
				return fail(usage(fmt.Errorf("link %s: crc-policy: %w", l.Name, err)))
			}
			gl.Ground = &link.Config{Name: l.Name, Framing: l.Framing, Packet: l.Packet, Frame: l.Frame, LengthField: l.LengthField, CRC: policy}
		}
		if l.TLSCert != "" {
			tl, err := tlsid.Load(tlsid.Files{Cert: l.TLSCert, Key: l.TLSKey, ClientCA: l.TLSClientCA})
			if err != nil {
				return fail(usage(fmt.Errorf("link %s: tls-cert: %w", l.Name, err)))
			}
			ls.loaders = append(ls.loaders, tl)
			gl.TLS, gl.Identity = tl.Config(), tlsid.Identity
		}
		if len(l.AllowStations) > 0 {
			allow, err := tlsid.NewAllowList(l.AllowStations)
			if err != nil {
				return fail(usage(fmt.Errorf("link %s: allow-stations: %w", l.Name, err)))
			}
			gl.Allowed, gl.AllowedName = allow.Allowed, allow.AllowedName
		}
		ls.list = append(ls.list, runningLink{name: l.Name, dial: l.Dial != "", totals: gl.Totals})
		if l.Dial != "" {
			toDial = append(toDial, bound{gl: gl, at: l.Dial})
			continue
		}
		ln, err := net.Listen("tcp", l.Listen)
		if err != nil {
			return fail(fmt.Errorf("link %s: cannot listen on %s: %w", l.Name, l.Listen, err))
		}
		toServe = append(toServe, bound{ln: ln, gl: gl, at: l.Listen})
	}
	for _, b := range toServe {
		ls.running++
		go func() {
			err := gw.ServeLink(b.ln, b.gl)
			if errors.Is(err, gateway.ErrServerClosed) {
				err = nil
			}
			ls.served <- err
		}()
		log.Info("link listening", "link", b.gl.Name, "listen", b.ln.Addr().String(), "framing", framingOf(b.gl))
	}
	for _, b := range toDial {
		if err := gw.DialLink(b.at, b.gl); err != nil {
			return ls, fmt.Errorf("link %s: %w", b.gl.Name, err)
		}
		log.Info("link dialing", "link", b.gl.Name, "dial", b.at, "framing", framingOf(b.gl))
	}
	return ls, nil
}

func framingOf(l gateway.Link) string {
	if l.Ground == nil {
		return config.FramingMeridian
	}
	return l.Ground.Framing
}

// wait collects the results of the listening links' Serve, which return
// once shutdown closed their listeners.
func (ls *linkSet) wait() {
	for ; ls.running > 0; ls.running-- {
		<-ls.served
	}
}

// reload reloads the links' TLS certificates on SIGHUP.
func (ls *linkSet) reload(log *slog.Logger) {
	for _, l := range ls.loaders {
		reloadTLS(log, l)
	}
}

// stats reads the links' totals for Prometheus.
func (ls *linkSet) stats() []metrics.LinkStats {
	out := make([]metrics.LinkStats, 0, len(ls.list))
	for _, l := range ls.list {
		q := l.totals.Quality()
		out = append(out, metrics.LinkStats{
			Name: l.name, Dial: l.dial, Connected: l.totals.Connected(),
			Bytes: q.Bytes, Good: q.Good, Bad: q.Bad,
			Rejected:  map[string]uint64{"crc": q.CRC, "oversize": q.Oversize, "undersize": q.Undersize, "short": q.Short, "version": q.Version},
			Discarded: q.Discarded, SyncLoss: q.SyncLoss, Gaps: q.Gaps, Repeats: q.Repeats,
		})
	}
	return out
}

// withLinkUnits raises max-frame, for the stream's message size bound
// only, to the largest unit a link can store.
func withLinkUnits(cfg config.Config) config.Config {
	for _, l := range cfg.Links {
		if l.Framing == config.FramingMeridian {
			continue
		}
		g := link.Config{Framing: l.Framing, Packet: l.Packet, Frame: l.Frame, LengthField: l.LengthField}
		if n := g.MaxUnit(); n > 0 && uint32(n) > cfg.MaxFrame {
			cfg.MaxFrame = uint32(n)
		}
	}
	return cfg
}

// protocolOf is the Meridian protocol version a session speaks; 0 for a
// ground-framing connection.
func protocolOf(s gateway.Snapshot) int {
	switch {
	case s.Framing != link.FramingMeridian:
		return 0
	case s.Epoch != 0:
		return 2
	}
	return 1
}
