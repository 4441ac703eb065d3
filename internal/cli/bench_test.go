package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/bench"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

func benchExec(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := newBenchCmd()
	var out, errOut bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func TestBenchJSON(t *testing.T) {
	stationLeakCheck(t)
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewDiscard())
	stdout, stderr, err := benchExec(t, "--addr", gw.Addr, "--stations", "2", "--size", "64",
		"--frames", "300", "--json", "--progress", "1ms")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var rep bench.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if rep.Sent != 600 || rep.Acked != 600 || rep.Stations != 2 || rep.Latency.Count != 600 || len(rep.PerStation) != 2 {
		t.Errorf("report %+v", rep)
	}
	// stderr is not a terminal here: progress, if any, is plain lines.
	if strings.Contains(stderr, "\r") {
		t.Errorf("progress bar on a non-terminal: %q", stderr)
	}
}

func TestBenchText(t *testing.T) {
	stationLeakCheck(t)
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewDiscard())
	stdout, stderr, err := benchExec(t, "--addr", gw.Addr, "--duration", "100ms", "--rate", "200", "--progress", "20ms")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, want := range []string{"frames/s", "ACK latency", "p99.9", "reconnects"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, stdout)
		}
	}
}

func TestBenchUsageErrors(t *testing.T) {
	f := func(want string, args ...string) {
		t.Helper()
		_, _, err := benchExec(t, args...)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: error %v, want %q", args, err, want)
		} else if !errors.As(err, &ue) {
			t.Errorf("%v: %v is not a usage error", args, err)
		}
	}
	f("size", "--addr", "127.0.0.1:1", "--size", "8")
	f("stations", "--addr", "127.0.0.1:1", "--stations", "0")
	f("--verify", "--addr", "127.0.0.1:1", "--verify", "--data-dir", t.TempDir())
	f("--protocol", "--addr", "127.0.0.1:1", "--protocol", "0")
}

// TestBenchProtocol: v2 by default, one named station identity each; v1
// with --protocol 1; and a v1-only gateway makes the stations fall back,
// which stderr and the report say.
func TestBenchProtocol(t *testing.T) {
	stationLeakCheck(t)
	run := func(addr string, args ...string) (*bench.Report, string) {
		t.Helper()
		stdout, stderr, err := benchExec(t, append([]string{"--addr", addr, "--stations", "2", "--size", "64", "--frames", "50", "--json", "--progress", "0"}, args...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		var rep bench.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("%v: %s", err, stdout)
		}
		return &rep, stderr
	}
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewDiscard())
	rep, _ := run(gw.Addr, "--name-prefix", "load")
	if s := rep.PerStation[1]; s.Protocol != 2 || s.Name != "load-1" || s.Epoch == 0 || rep.Acked != 100 {
		t.Errorf("default: station %+v, acked %d", s, rep.Acked)
	}
	rep, _ = run(gw.Addr, "--protocol", "1")
	if s := rep.PerStation[0]; s.Protocol != 1 || s.Name != "" || rep.Acked != 100 {
		t.Errorf("--protocol 1: station %+v, acked %d", s, rep.Acked)
	}
	addr, _, _ := startV1Gateway(t)
	rep, stderr := run(addr)
	if rep.PerStation[0].Protocol != 1 || rep.Acked != 100 || !strings.Contains(stderr, "2 of 2 stations fell back to protocol v1") {
		t.Errorf("v1 gateway: stations %+v, acked %d, stderr %q", rep.PerStation, rep.Acked, stderr)
	}
}
