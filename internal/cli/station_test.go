package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// stationExec runs `meridian station` with args and stdin; it returns the
// command's stderr and error.
func stationExec(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := newStationCmd()
	var stderr bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&stderr)
	cmd.SetErr(&stderr)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	err := cmd.ExecuteContext(ctx)
	return stderr.String(), err
}

// stationLeakCheck fails the test if it leaves goroutines behind. It runs
// as the test's last cleanup, after the gateways' own. (A package TestMain
// with goleak.VerifyTestMain would do for every test; it belongs with the
// package's other tests.)
func stationLeakCheck(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func payloads(m *sink.Memory) []string {
	var out []string
	for _, f := range m.Frames() {
		out = append(out, string(f.Payload))
	}
	return out
}

func TestStationInputs(t *testing.T) {
	stationLeakCheck(t)
	dir := t.TempDir()
	fileA, fileB := filepath.Join(dir, "a.bin"), filepath.Join(dir, "b.txt")
	os.WriteFile(fileA, []byte("whole\nfile"), 0o600)
	os.WriteFile(fileB, []byte("l1\nl2\n"), 0o600)
	framed := string(frame.AppendData(frame.AppendData(frame.AppendHeader(nil, 0), []byte("f1")), []byte("f2")))

	f := func(stdin string, args []string, want ...string) {
		t.Helper()
		mem := sink.NewMemory()
		gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
		stderr, err := stationExec(t, stdin, append([]string{"--addr", gw.Addr, "--progress", "0"}, args...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		if got := payloads(mem); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%v: sink holds %q, want %q", args, got, want)
		}
		if !strings.Contains(stderr, "all acknowledged") {
			t.Errorf("%v: stderr %q", args, stderr)
		}
	}
	f("one\ntwo\n\nthree\r\nfour", nil, "one", "two", "three", "four")
	f(framed, []string{"--in", "framed"}, "f1", "f2")
	f("", []string{fileA, fileB}, "whole\nfile", "l1\nl2\n")
	f("", []string{"--in", "lines", fileB}, "l1", "l2")
	f("", []string{"--count", "3", "--size", "4"}, "1...", "2...", "3...")
}

func TestStationErrors(t *testing.T) {
	stationLeakCheck(t)
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewMemory())
	downAddr := closedPort(t)
	refused := gatewaytest.Start(t, gatewaytest.Config(), sink.NewMemory(),
		gateway.WithAllow(func(string) bool { return false }))

	f := func(stdin string, args []string, wantUsage bool, want ...string) {
		t.Helper()
		stderr, err := stationExec(t, stdin, append([]string{"--progress", "0"}, args...)...)
		if err == nil {
			t.Fatalf("%v: no error\n%s", args, stderr)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", args, err, w)
			}
		}
		var ue usageError
		if errors.As(err, &ue) != wantUsage {
			t.Errorf("%v: usage error %v, want %v", args, errors.As(err, &ue), wantUsage)
		}
	}
	f("x\n", []string{"--addr", downAddr}, false, "unreachable", downAddr)
	f("x\n", []string{"--addr", refused.Addr}, false, "gateway closed the session: not authorized")
	f("short\n"+strings.Repeat("x", 20)+"\n", []string{"--addr", gw.Addr, "--max-frame", "10"}, false, "line 2", "too large")
	f(string(frame.AppendHeader(nil, frame.ControlBit|1)), []string{"--addr", gw.Addr, "--in", "framed"}, false, "control bit")
	f("", []string{"--addr", gw.Addr, "--in", "xml"}, true, "--in")
	f("", []string{"--addr", gw.Addr, "--count", "1", "--size", "0"}, true, "--size")
	f("", []string{"--addr", gw.Addr, "--window", "0"}, true, "window")
}

// closedPort returns a loopback address where nothing listens, and that
// stays so for the test: a TCP socket bound to it, never listening, holds
// the port. (A port merely freed can be picked as a dialer's own ephemeral
// port, and a loopback connect to it then succeeds, connected to itself.)
func closedPort(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
