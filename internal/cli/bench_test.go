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
}
