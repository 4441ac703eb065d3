// Package stream makes accepted frames durable in a NATS JetStream stream.
//
// Open connects the gateway to JetStream — an in-process server with its
// store under the data directory by default, or an external cluster given by
// --nats-url — makes sure the stream exists with the configured settings,
// and returns a Stream whose Sink publishes frames and commits each one only
// after JetStream acknowledged it.
//
// Frames of station IDENTITY are published on telemetry.<Token(IDENTITY)>
// with the headers Meridian-Station, Meridian-Session, Meridian-Seq,
// Meridian-Received and Nats-Msg-Id. A protocol v1 frame's Msg-Id names the
// gateway's session (MsgID): delivery is at least once, and a station
// resending after a reconnect can store a frame twice; consumers drop those
// by (Meridian-Session, Meridian-Seq). A protocol v2 frame carries the
// station's own numbering (Meridian-Epoch, Meridian-Seq, Meridian-Acked) and
// a Msg-Id any session of the station gives it (MsgIDv2), and the gateway
// resumes a station from the stream (LastStored): exactly once per
// (station, epoch) within the dedup window (docs/protocol.md).
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config is what Open needs: the stream, how to reach JetStream, and the
// sink's publish settings. Zero values mean the defaults noted; the CLI maps
// the gateway's configuration onto it.
type Config struct {
	Name string // the stream's name; default "TELEMETRY"

	// Client reaches an external NATS cluster. With Client.URL empty, Open
	// starts the embedded server below instead.
	Client Client

	// The embedded server (Client.URL empty).
	DataDir       string        // store and token file; default "./meridian-data"
	Listen        string        // client listener for other processes; "" listens on nothing
	StoreMaxBytes int64         // bound of the file store; default 10 GiB
	SyncInterval  time.Duration // fsync period of the store; default 1s
	SyncAlways    bool          // fsync every write instead
	ServerDebug   bool          // the server's debug log (never its trace)

	// The stream. An existing stream must match these, or Open fails with
	// ErrStreamConflict.
	Replicas    int           // default 1
	MaxAge      time.Duration // default 7 days
	MaxBytes    int64         // 0: StoreMaxBytes when embedded, no limit when external
	DedupWindow time.Duration // JetStream's duplicate window; default 10 seconds

	// MaxFrame is the largest payload a station may send; Open refuses a
	// server whose max_payload could not carry it. 0 skips the check.
	MaxFrame int64
	// Packed says v2 sessions store the packed layout: a message then
	// carries up to pipeline.MaxSlab of frames, which the servers'
	// max_payload must take as well.
	Packed bool

	PublishWindow      int           // messages without PubAck; default 4096 (see SinkOptions)
	PublishWindowBytes int64         // their payload bytes; default 64 MiB
	PublishTimeout     time.Duration // wait for a PubAck before resending; default 5s

	// Start-up. Open waits for the embedded server however long its store
	// recovery takes, logging progress every ProgressInterval (default 10s).
	// Each JetStream API call of the stream set-up is bounded by APITimeout
	// (default 10s) and retried while JetStream is not ready yet.
	ProgressInterval time.Duration
	APITimeout       time.Duration
}

// Defaults of Config.
const (
	DefaultName             = "TELEMETRY"
	DefaultDataDir          = "./meridian-data"
	DefaultStoreMaxBytes    = 10 << 30
	DefaultSyncInterval     = time.Second
	DefaultMaxAge           = 7 * 24 * time.Hour
	DefaultDedupWindow      = 10 * time.Second
	DefaultProgressInterval = 10 * time.Second
	DefaultAPITimeout       = 10 * time.Second
)

// withDefaults fills the zero values.
func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.StoreMaxBytes <= 0 {
		c.StoreMaxBytes = DefaultStoreMaxBytes
	}
	if c.SyncInterval <= 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.MaxAge <= 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.DedupWindow <= 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
	if c.APITimeout <= 0 {
		c.APITimeout = DefaultAPITimeout
	}
	return c
}

// embedded reports whether Open starts the in-process server.
func (c Config) embedded() bool { return c.Client.URL == "" }

// Stream is the gateway's connection to JetStream: the embedded server if
// there is one, the client connection and the sink.
type Stream struct {
	log  *slog.Logger
	srv  *server.Server // nil with an external cluster
	nc   *nats.Conn
	js   jetstream.JetStream
	sink *Sink
	name string

	sinkPtr   atomic.Pointer[Sink] // for the reconnect handler
	closeOnce sync.Once
	closeErr  error
}

// Open connects to JetStream as cfg says and ensures the stream. With
// cfg.Client.URL empty it starts the embedded server (data under
// cfg.DataDir, token in DataDir/nats-token, listener on cfg.Listen) and
// connects in process; otherwise it connects to the external servers. The
// CLI calls it only for --sink jetstream, so the embedded server runs only
// then.
//
// Open has no start-up deadline of its own: recovering a large embedded
// store after a crash can take minutes, and giving up would only restart
// the same recovery. It logs progress while it waits. ctx is the caller's
// cancellation (a signal during start-up): when it ends, Open shuts the
// half-started server down cleanly and returns ctx's error.
//
// Errors wrap ErrListen (--nats-listen busy or invalid) and ErrStreamConflict
// (the stream exists with other settings), which the CLI reports as
// configuration errors.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (_ *Stream, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	s := &Stream{log: log, name: cfg.Name}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	copts := append(gatewayConnOptions(log),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if sk := s.sinkPtr.Load(); sk != nil {
				sk.connectionLost(err) // logs the outage, once
			} else if err != nil {
				log.Warn("disconnected from NATS", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted())
			if sk := s.sinkPtr.Load(); sk != nil {
				sk.resendFromReconnect()
			}
		}))
	if cfg.embedded() {
		srv, token, err := startEmbedded(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		s.srv = srv
		s.nc, err = nats.Connect("", append(copts, nats.Name("meridian"), nats.InProcessServer(srv), nats.Token(token))...)
		if err != nil {
			return nil, fmt.Errorf("stream: connect to the embedded server: %w", err)
		}
		listen := "none"
		if cfg.Listen != "" {
			listen = srv.ClientURL()
		}
		log.Info("embedded NATS server ready", "listen", listen, "store", config.Size(cfg.StoreMaxBytes).String(),
			"sync", syncString(cfg), "token_file", TokenFile(cfg.DataDir))
	} else {
		client := cfg.Client
		if client.Name == "" {
			client.Name = "meridian"
		}
		s.nc, err = client.Connect(copts...)
		if err != nil {
			return nil, err
		}
		log.Info("connected to NATS", "server", s.nc.ConnectedUrlRedacted())
	}
	// A frame the servers refuse as too large could never be stored: the
	// sink would hold the stations back forever. Refuse to start instead.
	if need := cfg.MaxFrame + maxHeaderBytes; cfg.MaxFrame > 0 && s.nc.MaxPayload() < need {
		return nil, fmt.Errorf("stream: NATS max_payload is %d bytes; --max-frame %d needs %d with headers", s.nc.MaxPayload(), cfg.MaxFrame, need)
	}
	if need := int64(pipeline.MaxSlab) + maxHeaderBytes; cfg.Packed && s.nc.MaxPayload() < need {
		return nil, fmt.Errorf("stream: NATS max_payload is %d bytes; --stream-layout packed needs %d (a message of up to %d bytes of frames, with headers)", s.nc.MaxPayload(), need, pipeline.MaxSlab)
	}
	s.js, err = jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("stream: jetstream: %w", err)
	}
	if err := ensureStream(ctx, s.js, jsConfig(cfg), cfg.APITimeout, log); err != nil {
		return nil, err
	}
	// With Stream set the sink also reacts to the stream's leader-elected
	// advisory, resending at once instead of after PublishTimeout.
	s.sink, err = NewSink(s.nc, SinkOptions{Window: cfg.PublishWindow, WindowBytes: cfg.PublishWindowBytes,
		Timeout: cfg.PublishTimeout, Stream: cfg.Name}, log.With("component", "sink"))
	if err != nil {
		return nil, err
	}
	s.sinkPtr.Store(s.sink)
	return s, nil
}

// syncString is the store's sync setting as --sync spells it.
func syncString(cfg Config) string {
	if cfg.SyncAlways {
		return "always"
	}
	return cfg.SyncInterval.String()
}

// Sink is the JetStream sink; it implements pipeline.Sink and pipeline.Checker.
func (s *Stream) Sink() *Sink { return s.sink }

// JetStream is the JetStream context of the gateway's connection.
func (s *Stream) JetStream() jetstream.JetStream { return s.js }

// Name is the stream's name.
func (s *Stream) Name() string { return s.name }

// ClientURL is the embedded server's client listener, or "" when there is
// none (external cluster, or --nats-listen "").
func (s *Stream) ClientURL() string {
	if s.srv == nil || s.srv.Addr() == nil {
		return ""
	}
	return s.srv.ClientURL()
}

// Close closes the sink, then the connection, then the embedded server, which
// goes last so that every PubAck the sink waited for was flushed to its store
// files first. Call it after Sink().Flush; it is idempotent.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		s.sinkPtr.Store(nil) // no outage or resend from the connection closing
		if s.sink != nil {
			errs = append(errs, s.sink.Close())
		}
		if s.nc != nil {
			s.nc.Close()
		}
		if s.srv != nil {
			s.srv.Shutdown()
			s.srv.WaitForShutdown()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}
