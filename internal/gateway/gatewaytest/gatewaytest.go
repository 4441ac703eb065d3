// Package gatewaytest starts a real gateway on 127.0.0.1:0 for tests, the way
// httptest.NewServer starts an HTTP server.
package gatewaytest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// Gateway is a running gateway.
type Gateway struct {
	Addr   string
	Server *gateway.Server

	served chan error
}

// Config returns the gateway's defaults with a drain short enough for tests.
func Config() gateway.Config {
	c := gateway.DefaultConfig()
	c.DrainTimeout = 2 * time.Second
	return c
}

// Logger returns a logger for tests: silent unless MERIDIAN_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("MERIDIAN_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Start runs a gateway on a free loopback port feeding sink. It is stopped,
// forcibly if still running, when the test ends.
func Start(t testing.TB, cfg gateway.Config, sink pipeline.Sink, opts ...gateway.Option) *Gateway {
	t.Helper()
	return StartAt(t, "127.0.0.1:0", cfg, sink, opts...)
}

// StartAt is Start on addr, for a test that restarts a gateway where
// stations expect it.
func StartAt(t testing.TB, addr string, cfg gateway.Config, sink pipeline.Sink, opts ...gateway.Option) *Gateway {
	t.Helper()
	srv, err := gateway.New(cfg, sink, Logger(), opts...)
	if err != nil {
		t.Fatalf("gateway.New: %v", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		srv.Close()
		t.Fatalf("listen: %v", err)
	}
	g := &Gateway{Addr: ln.Addr().String(), Server: srv, served: make(chan error, 1)}
	go func() { g.served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-g.served; !errors.Is(err, gateway.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		g.served <- gateway.ErrServerClosed // let a later Wait see it too
	})
	return g
}

// Shutdown runs the graceful shutdown within timeout.
func (g *Gateway) Shutdown(t testing.TB, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return g.Server.Shutdown(ctx)
}
