package bench_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/bench"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/station"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func approx(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

// TestRunSmoke: a tiny run bounded by frames against the real gateway; the
// report's counts must add up and match what the sink stored.
func TestRunSmoke(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	var progress atomic.Int32
	o := bench.Options{
		Addr:             gw.Addr,
		Stations:         3,
		Size:             100,
		Frames:           400,
		Window:           64,
		MaxDuration:      15 * time.Second,
		ProgressInterval: time.Millisecond,
		Progress:         func(bench.Progress) { progress.Add(1) },
	}
	rep, err := bench.Run(testCtx(t), o)
	if err != nil {
		t.Fatal(err)
	}
	const total = 3 * 400
	if rep.Sent != total || rep.Acked != total || rep.Stations != 3 || rep.Size != 100 {
		t.Fatalf("report %+v", rep)
	}
	var sent, acked uint64
	epochs := map[uint64]bool{}
	for _, s := range rep.PerStation {
		if s.Sent != 400 || s.Acked != 400 || s.Err != "" {
			t.Errorf("station %+v", s)
		}
		// v2, one identity per station (else they would supersede each
		// other), each with its own epoch.
		if s.Protocol != 2 || s.Name != fmt.Sprintf("bench-%d", s.Index) || s.Epoch == 0 || epochs[s.Epoch] {
			t.Errorf("station %+v: want v2, named, its own epoch", s)
		}
		epochs[s.Epoch] = true
		sent += s.Sent
		acked += s.Acked
	}
	if sent != rep.Sent || acked != rep.Acked {
		t.Errorf("per-station sums %d/%d, totals %d/%d", sent, acked, rep.Sent, rep.Acked)
	}
	if rep.Seconds <= 0 || !approx(rep.Seconds, rep.Elapsed.Seconds()) {
		t.Errorf("elapsed %v / %v s", rep.Elapsed, rep.Seconds)
	}
	if !approx(rep.FramesPerSec, total/rep.Seconds) || !approx(rep.MBPerSec, total*100/rep.Seconds/1e6) {
		t.Errorf("rates %v frames/s %v MB/s over %vs", rep.FramesPerSec, rep.MBPerSec, rep.Seconds)
	}
	l := rep.Latency
	if l.Count != total {
		t.Errorf("latency count %d, want one per acknowledged frame (%d)", l.Count, total)
	}
	if !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Errorf("percentiles out of order: %+v", l)
	}
	var rows uint64
	for _, r := range l.Rows {
		rows += r.Count
	}
	if rows != l.Count {
		t.Errorf("histogram rows hold %d, want %d", rows, l.Count)
	}
	if rep.Reconnects != 0 || len(rep.Errors) != 0 {
		t.Errorf("reconnects %d errors %v", rep.Reconnects, rep.Errors)
	}
	// Every frame in the sink exactly once, with this run's header.
	seen := map[bench.Header]int{}
	for _, f := range mem.Frames() {
		h, err := bench.ParseHeader(f.Payload)
		if err != nil || h.RunID != rep.RunID || len(f.Payload) != 100 {
			t.Fatalf("stored payload %x: %v", f.Payload, err)
		}
		if ps := rep.PerStation[h.Station]; f.Station != ps.Name || f.Epoch != ps.Epoch || f.Seq != h.Frame {
			t.Fatalf("frame %+v stored as station %q epoch %d seq %d", h, f.Station, f.Epoch, f.Seq)
		}
		seen[h]++
	}
	if len(seen) != total {
		t.Errorf("sink holds %d distinct frames, want %d", len(seen), total)
	}
	for h, n := range seen {
		if n != 1 || h.Frame < 1 || h.Frame > 400 || h.Station > 2 {
			t.Errorf("frame %+v stored %d times", h, n)
		}
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sent        1200", "acknowledged 1200", "p99.9", "errors      none"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
}

// TestRunRateAndDuration: a paced run stops on time and sends about what
// the rate allows.
func TestRunRateAndDuration(t *testing.T) {
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewDiscard())
	const rate, d = 500.0, 300 * time.Millisecond
	rep, err := bench.Run(testCtx(t), bench.Options{
		Addr: gw.Addr, Stations: 2, Size: bench.HeaderSize, Rate: rate, Duration: d,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.PerStation {
		// The pacer never runs ahead of the rate; a slow machine may lag.
		if limit := uint64(rate*d.Seconds()) + 2; s.Sent > limit || s.Sent == 0 {
			t.Errorf("station %d sent %d frames, want 1..%d", s.Index, s.Sent, limit)
		}
		if s.Acked != s.Sent {
			t.Errorf("station %d: %d of %d acknowledged", s.Index, s.Acked, s.Sent)
		}
	}
}

func TestRunUnreachable(t *testing.T) {
	// An address where nothing listens: a port just released.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = bench.Run(testCtx(t), bench.Options{Addr: addr, Stations: 2, Size: 64, Frames: 1})
	if err == nil || !strings.Contains(err.Error(), "no station could connect") {
		t.Fatalf("Run = %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	f := func(o bench.Options, want string) {
		t.Helper()
		err := o.Validate()
		if !errors.Is(err, bench.ErrOptions) || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%+v) = %v, want %q", o, err, want)
		}
	}
	ok := bench.Options{Addr: "x:1", Stations: 1, Size: 64, Duration: time.Second}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := ok
	bad.Addr = ""
	f(bad, "addr")
	bad = ok
	bad.Stations = 0
	f(bad, "stations")
	bad = ok
	bad.Size = bench.HeaderSize - 1
	f(bad, "size")
	bad = ok
	bad.Duration = 0
	f(bad, "duration or a frame count")
	bad = ok
	bad.MaxFrame = 32
	f(bad, "max frame")
	bad = ok
	bad.Protocol = 9
	f(bad, "protocol")
	bad = ok
	bad.Stations = 2
	bad.TLS = &tls.Config{Certificates: []tls.Certificate{{}}}
	f(bad, "client certificate")
	bad.Protocol = station.ProtocolV1 // v1 sessions do not supersede
	if err := bad.Validate(); err != nil {
		t.Errorf("v1 with a client certificate: %v", err)
	}
}

// TestRunV1: forced to v1 the stations send no HELLO: the gateway stores
// their frames as v1 (no epoch), numbered per session.
func TestRunV1(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	rep, err := bench.Run(testCtx(t), bench.Options{
		Addr: gw.Addr, Stations: 2, Size: 64, Frames: 100, Protocol: station.ProtocolV1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Acked != 200 || rep.PerStation[0].Protocol != 1 || rep.PerStation[0].Name != "" {
		t.Fatalf("report %+v", rep)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "protocol v1") {
		t.Errorf("text report does not name v1:\n%s", text.String())
	}
	for _, f := range mem.Frames() {
		if f.Epoch != 0 {
			t.Fatalf("v1 frame stored with epoch %d", f.Epoch)
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	p := make([]byte, bench.HeaderSize+10)
	want := bench.Header{RunID: 0xdeadbeef01, Station: 7, Frame: 123456789}
	bench.PutHeader(p, want)
	got, err := bench.ParseHeader(p)
	if err != nil || got != want {
		t.Fatalf("ParseHeader = %+v, %v", got, err)
	}
	if _, err := bench.ParseHeader([]byte("not a bench frame at all!")); !errors.Is(err, bench.ErrNotBench) {
		t.Errorf("ParseHeader(garbage) = %v", err)
	}
}
