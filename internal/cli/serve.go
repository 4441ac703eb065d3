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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/gateway"
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

Signals:
  SIGINT, SIGTERM  graceful shutdown: stop accepting, GOAWAY to every session
                   (spread over --lame-duck on SIGTERM), drain for at most
                   --drain-timeout, final ACKs, flush the sink; all within
                   --shutdown-grace. A second signal forces the exit.
  SIGHUP           reload the TLS certificate, key and client CA.

Exit status: 0 after a clean shutdown; 1 on a runtime failure or a forced
shutdown (the log says how many frames were abandoned); 2 on a configuration
error (bad flag, environment, file, or a stream that conflicts with the flags).`,
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

	var (
		snk  pipeline.Sink
		strm *stream.Stream
	)
	switch cfg.Sink {
	case config.SinkJetStream:
		startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		s, err := stream.Open(startCtx, cfg, log)
		cancel()
		if err != nil {
			if errors.Is(err, stream.ErrStreamConflict) || errors.Is(err, stream.ErrListen) {
				return usage(err)
			}
			return err
		}
		strm, snk = s, s.Sink()
		defer strm.Close()
	case config.SinkStdout:
		snk = sink.NewStdout(cmd.OutOrStdout())
	case config.SinkDiscard:
		snk = sink.NewDiscard()
	}

	var opts []gateway.Option
	opts = append(opts, gateway.WithObserver(m))
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
		opts = append(opts, gateway.WithAllow(allow.Allowed))
	}

	gw, err := gateway.New(cfg, snk, log, opts...)
	if err != nil {
		return usage(err)
	}
	m.Queue(gw.Aggregator().Stats)
	if strm != nil {
		js := strm.Sink()
		m.Stream(func() metrics.StreamStats {
			st := js.Stats()
			return metrics.StreamStats{Pending: st.Unacked, Down: st.Down, Outages: st.Outages, Resent: st.Resent, Timeouts: st.Timeouts}
		})
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		gw.Close()
		return fmt.Errorf("listen: cannot listen on --listen %s: %w", cfg.Listen, err)
	}

	var opsSrv *ops.Server
	if cfg.HTTPListen != "" {
		opsSrv = ops.New(ops.Options{
			Addr:     cfg.HTTPListen,
			Gatherer: reg,
			Stations: newRates().stations(gw),
			Ready:    gw.Ready,
			PProf:    cfg.PProf,
			Logger:   log,
		})
		if err := opsSrv.ListenAndStart(); err != nil {
			ln.Close()
			gw.Close()
			return fmt.Errorf("http-listen: cannot listen on --http-listen %s: %w", cfg.HTTPListen, err)
		}
	}

	served := make(chan error, 1)
	go func() { served <- gw.Serve(ln) }()
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
	notify(log, sdnotify.Ready)

	// Run until a stop signal, or until Serve fails on its own.
	var sig os.Signal
wait:
	for {
		select {
		case sig = <-sigs:
			if sig == syscall.SIGHUP {
				reloadTLS(log, loader)
				continue
			}
			break wait
		case err := <-served:
			log.Error("station listener failed", "err", err)
			notify(log, sdnotify.Stopping)
			ferr := gw.Close()
			stopOps(opsSrv)
			return errors.Join(err, ferr)
		}
	}

	notify(log, sdnotify.Stopping)
	log.Info("signal received: graceful shutdown", "signal", sig.String(), "grace", cfg.ShutdownGrace)
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
				continue
			}
			log.Warn("second signal: forcing the exit", "signal", s.String())
			cancel()
		}
	}
	<-served
	stopOps(opsSrv)
	if errors.Is(shutErr, errDone) {
		// Only after a clean shutdown: a forced one may have left the
		// sink blocked in a write. The stream closes its own sink.
		if strm == nil {
			if err := snk.Close(); err != nil {
				log.Error("closing the sink", "err", err)
			}
		}
		log.Info("meridian stopped")
		return nil
	}
	var fe *gateway.ForcedError
	if errors.As(shutErr, &fe) {
		log.Error("shutdown forced", "frames_abandoned", fe.Frames, "cause", fe.Cause)
		return exitError{code: ExitFail, err: fmt.Errorf("shutdown forced: %d frames abandoned", fe.Frames)}
	}
	return shutErr
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

func (r *rates) stations(gw *gateway.Server) func() []ops.StationStatus {
	return func() []ops.StationStatus {
		now := time.Now()
		list := gw.Sessions()
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
			}
		}
		r.prev = seen // forget ended sessions
		return out
	}
}
