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
// Meridian-Received and Nats-Msg-Id (see MsgID). Delivery is at least once:
// a frame resent after a lost PubAck is stored once within the stream's
// dedup window, but a station resending after a reconnect, or a resend after
// the window, can store it twice; consumers drop duplicates by
// (Meridian-Session, Meridian-Seq).
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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
// cfg.NATSURL empty it starts the embedded server (data under cfg.DataDir,
// token in DataDir/nats-token, listener on cfg.NATSListen) and connects in
// process; otherwise it connects to the external servers. The CLI calls it
// only for --sink jetstream, so the embedded server runs only then. ctx
// bounds the start-up only; recovering a large embedded store can take a
// while, so give it a generous deadline or none.
//
// Errors wrap ErrListen (--nats-listen busy or invalid) and ErrStreamConflict
// (the stream exists with other settings), which the CLI reports as
// configuration errors.
func Open(ctx context.Context, cfg config.Config, log *slog.Logger) (_ *Stream, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stream{log: log, name: cfg.Stream}
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
	embedded := cfg.NATSURL == ""
	if embedded {
		srv, token, err := startEmbedded(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		s.srv = srv
		s.nc, err = nats.Connect("", append(copts, nats.Name("meridian"), nats.InProcessServer(srv), nats.Token(token))...)
		if err != nil {
			return nil, fmt.Errorf("stream: connect to the embedded server: %w", err)
		}
		if cfg.NATSListen != "" {
			log.Info("embedded NATS server ready", "listen", srv.ClientURL(), "store", cfg.StoreMaxBytes.String(),
				"sync", cfg.Sync, "token_file", TokenFile(cfg.DataDir))
		} else {
			log.Info("embedded NATS server ready", "listen", "none", "store", cfg.StoreMaxBytes.String(), "sync", cfg.Sync)
		}
	} else {
		s.nc, err = ClientFromConfig(cfg).Connect(copts...)
		if err != nil {
			return nil, err
		}
		log.Info("connected to NATS", "server", s.nc.ConnectedUrlRedacted())
	}
	// A frame the servers refuse as too large could never be stored: the
	// sink would hold the stations back forever. Refuse to start instead.
	if need := int64(cfg.MaxFrame) + maxHeaderBytes; cfg.MaxFrame > 0 && s.nc.MaxPayload() < need {
		return nil, fmt.Errorf("stream: NATS max_payload is %d bytes; --max-frame %d needs %d with headers", s.nc.MaxPayload(), cfg.MaxFrame, need)
	}
	s.js, err = jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("stream: jetstream: %w", err)
	}
	if err := ensureStream(ctx, s.js, streamConfig(cfg, embedded), log); err != nil {
		return nil, err
	}
	s.sink, err = NewSink(s.nc, SinkOptions{Window: cfg.PublishWindow, Timeout: cfg.PublishTimeout}, log.With("component", "sink"))
	if err != nil {
		return nil, err
	}
	s.sinkPtr.Store(s.sink)
	return s, nil
}

// Sink is the JetStream sink; it implements pipeline.Sink and pipeline.Checker.
func (s *Stream) Sink() *Sink { return s.sink }

// Conn is the client connection, for health checks and tools.
func (s *Stream) Conn() *nats.Conn { return s.nc }

// JetStream is the JetStream context of Conn.
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
