package main

// Exactly-once of protocol v2 across the gateway's own death (issue 9,
// section 5): the binary as a child process, raw v2 stations
// (gatewaytest.V2Station) that keep their unacknowledged frames, and the
// stream read back whole over the embedded server's NATS listener.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
)

// eoServeArgs runs the gateway with its station listener on listen, and
// heartbeats often enough that the stations answer PONGs during the load.
func eoServeArgs(dir, listen string) []string {
	return []string{"serve", "--listen", listen, "--http-listen", "127.0.0.1:0",
		"--nats-listen", "127.0.0.1:0", "--data-dir", dir, "--heartbeat", "100ms"}
}

// eoReadStream reads every message of the stream with its v2 headers.
func eoReadStream(t *testing.T, url, token string) []gatewaytest.V2Record {
	t.Helper()
	s, ctx := telemetryStream(t, url, token)
	n := int(s.CachedInfo().State.Msgs)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	recs := make([]gatewaytest.V2Record, 0, n)
	for len(recs) < n {
		batch, err := cons.Fetch(min(n-len(recs), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			h := m.Headers()
			epoch, err1 := strconv.ParseUint(h.Get("Meridian-Epoch"), 10, 64)
			seq, err2 := strconv.ParseUint(h.Get("Meridian-Seq"), 10, 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("message on %s without v2 headers: %v", m.Subject(), h)
			}
			recs = append(recs, gatewaytest.V2Record{Station: h.Get("Meridian-Station"), Epoch: epoch, Seq: seq, Data: m.Data()})
			got++
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if got == 0 {
			t.Fatalf("read %d of %d messages, then nothing", len(recs), n)
		}
	}
	return recs
}

// TestExactlyOnceSIGKILL kills the gateway with SIGKILL while v2 stations
// stream flat out, with frames in flight, and restarts it on the same data
// directory and address. The stations resume where the stream says: every
// frame of every station is stored once.
func TestExactlyOnceSIGKILL(t *testing.T) { eoRestart(t, syscall.SIGKILL) }

// TestExactlyOnceGracefulRestart is the same through SIGTERM: GOAWAY, the
// drain, exit 0, and a restart.
func TestExactlyOnceGracefulRestart(t *testing.T) { eoRestart(t, syscall.SIGTERM) }

func eoRestart(t *testing.T, sig syscall.Signal) {
	const frames, before = 5000, 1000
	dir := t.TempDir()
	first := start(t, eoServeArgs(dir, "127.0.0.1:0")...)
	addr, _, _ := first.addrs()
	var stations []*gatewaytest.V2Station
	for i := range 4 {
		stations = append(stations, gatewaytest.NewV2Station(gatewaytest.V2Config{
			Name:   fmt.Sprintf("gs-restart-%d", i+1),
			Frames: frames,
			Size:   256,
			Window: 256,
			Addr:   addr,
			// The restart, store recovery included, must fit in here.
			RetryFor: 15 * time.Second,
		}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	errs := make([]error, len(stations))
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel: a test that fails early stops them
	defer cancel()
	for i, s := range stations {
		wg.Go(func() { errs[i] = s.Run(ctx) })
	}
	for _, s := range stations {
		if err := s.WaitAcked(ctx, before); err != nil {
			t.Fatal(err)
		}
	}

	if err := first.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	var acked, sent uint64
	for _, s := range stations {
		a, n := s.Acked(), s.Sent()
		if n >= frames {
			t.Fatalf("%s had sent all its frames at the %s", s.Name(), sig)
		}
		acked += a
		sent += n
	}
	code := first.exit()
	if sig == syscall.SIGKILL && sent <= acked {
		t.Fatalf("no frame in flight at the SIGKILL: %d sent, %d acknowledged", sent, acked)
	}
	if sig == syscall.SIGTERM && code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}

	again := start(t, eoServeArgs(dir, addr)...)
	if a, _, _ := again.addrs(); a != addr {
		t.Fatalf("restarted on %s, want %s", a, addr)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, s := range stations {
		if s.Sessions() < 2 {
			t.Errorf("%s: %d sessions; it never came back after the restart", s.Name(), s.Sessions())
		}
		if sig == syscall.SIGTERM && s.GoAways() == 0 {
			t.Errorf("%s: no GOAWAY in the graceful shutdown", s.Name())
		}
	}
	_, _, natsURL := again.addrs()
	rep := gatewaytest.CheckV2(stations, eoReadStream(t, natsURL, readToken(t, dir)))
	if !rep.OK() {
		t.Fatalf("exactly-once broken across %s: %s", sig, rep)
	}
	t.Logf("%s: %s; at the signal %d sent, %d acknowledged; welcomes of %s: %v, closes %v, %d GOAWAYs, %d PONGs",
		sig, rep, sent, acked, stations[0].Name(), stations[0].Welcomes(), stations[0].Closes(), stations[0].GoAways(), stations[0].Pongs())

	if err := again.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := again.exit(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}
}
