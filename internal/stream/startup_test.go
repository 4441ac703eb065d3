package stream

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// logCatcher is a slog handler that records messages and tells a waiter
// when one it waits for is logged.
type logCatcher struct {
	mu    sync.Mutex
	msgs  []string
	on    map[string]chan struct{} // fixed by newLogCatcher
	fired map[string]bool
}

func newLogCatcher(waitFor ...string) *logCatcher {
	c := &logCatcher{on: make(map[string]chan struct{}), fired: make(map[string]bool)}
	for _, m := range waitFor {
		c.on[m] = make(chan struct{})
	}
	return c
}

func (c *logCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCatcher) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *logCatcher) WithGroup(string) slog.Handler            { return c }
func (c *logCatcher) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, r.Message)
	if ch, ok := c.on[r.Message]; ok && !c.fired[r.Message] {
		c.fired[r.Message] = true
		close(ch)
	}
	return nil
}

// logged is closed once msg, one of those newLogCatcher was given, is logged.
func (c *logCatcher) logged(msg string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.on[msg]
}

func (c *logCatcher) count(msg string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// slowStore fills an embedded store with many small messages within the
// dedup window, then removes the stream's index so that the next start
// rebuilds it from the message blocks: a recovery that takes a while.
func slowStore(t *testing.T, frames int) Config {
	t.Helper()
	cfg := testConfig(t)
	cfg.PublishWindow = 4096
	st := openStream(t, cfg)
	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 4096)
	f := newFeeder("10.7.7.7", 1, rec)
	f.size, f.per = 16, 256
	if err := f.feed(context.Background(), agg, frames); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the store filled", func() bool { return rec.count() == frames })
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	idx, _ := filepath.Glob(filepath.Join(cfg.DataDir, "jetstream", "*", "streams", cfg.Name, "msgs", "index.db"))
	for _, p := range idx {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// TestOpenWaitsForRecovery: Open waits for the embedded server's store
// recovery, however long it takes, logging progress meanwhile, and the
// stream then takes frames.
func TestOpenWaitsForRecovery(t *testing.T) {
	cfg := slowStore(t, 100000)
	cfg.ProgressInterval = 5 * time.Millisecond
	logs := newLogCatcher()
	start := time.Now()
	st, err := Open(context.Background(), cfg, slog.New(logs))
	if err != nil {
		t.Fatalf("Open after a slow recovery: %v", err)
	}
	defer st.Close()
	took := time.Since(start)
	if n := logs.count("recovering the JetStream store"); n == 0 {
		t.Fatalf("no progress logged during a %s start-up", took)
	}
	if logs.count("JetStream store recovered") != 1 {
		t.Error("the end of the recovery was not logged")
	}
	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 64)
	if err := newFeeder("10.7.7.8", 2, rec).feed(context.Background(), agg, 10); err != nil {
		t.Fatal(err)
	}
	eventually(t, "frames committed after the recovery", func() bool { return rec.count() == 10 })
}

// TestOpenCancelledDuringRecovery: a cancellation during the recovery (a
// signal at start-up) shuts the half-started server down cleanly: Open
// returns the context's error, leaves no goroutine behind (goleak), and the
// store opens again afterwards.
func TestOpenCancelledDuringRecovery(t *testing.T) {
	cfg := slowStore(t, 100000)
	cfg.ProgressInterval = 5 * time.Millisecond
	logs := newLogCatcher("recovering the JetStream store")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		st, err := Open(ctx, cfg, slog.New(logs))
		if err == nil {
			_ = st.Close()
		}
		done <- err
	}()
	select {
	case <-logs.logged("recovering the JetStream store"):
	case err := <-done:
		t.Fatalf("Open returned (%v) before any progress line", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Open cancelled during the recovery: %v, want context.Canceled", err)
	}
	st := openStream(t, cfg)
	_ = st.Close()
}

// TestEnsureStreamWaitsForJetStream: against a server whose JetStream is not
// up yet, Open retries each API call with its own timeout instead of
// failing, and succeeds once JetStream answers.
func TestEnsureStreamWaitsForJetStream(t *testing.T) {
	srv := jsServer(t, t.TempDir(), server.RANDOM_PORT, func(o *server.Options) { o.JetStream = false })
	cfg := testConfig(t)
	cfg.Client.URL = srv.ClientURL()
	cfg.APITimeout = 200 * time.Millisecond
	logs := newLogCatcher("JetStream is not ready yet; retrying")
	done := make(chan error, 1)
	var st *Stream
	go func() {
		var err error
		st, err = Open(context.Background(), cfg, slog.New(logs))
		done <- err
	}()
	select {
	case <-logs.logged("JetStream is not ready yet; retrying"):
	case err := <-done:
		t.Fatalf("Open returned (%v) without waiting for JetStream", err)
	}
	if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Open once JetStream is up: %v", err)
	}
	defer st.Close()
	if _, err := st.JetStream().Stream(context.Background(), cfg.Name); err != nil {
		t.Fatalf("stream not created: %v", err)
	}
}
