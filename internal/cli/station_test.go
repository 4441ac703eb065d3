package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
	"github.com/meridian-telemetry/meridian/station"
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

// TestStationProtocol: v2 by default (the sink sees the station's name and
// epoch), v1 with --protocol 1 (no epoch), and the flags that go with it.
func TestStationProtocol(t *testing.T) {
	stationLeakCheck(t)
	const anyEpoch = ^uint64(0)
	f := func(args []string, wantStation string, wantEpoch uint64, wantStderr string) {
		t.Helper()
		mem := sink.NewMemory()
		gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
		stderr, err := stationExec(t, "a\nb\n", append([]string{"--addr", gw.Addr, "--progress", "0"}, args...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		frames := mem.Frames()
		if len(frames) != 2 {
			t.Fatalf("%v: %d frames stored", args, len(frames))
		}
		for i, fr := range frames {
			epochOK := fr.Epoch == wantEpoch || (wantEpoch == anyEpoch && fr.Epoch != 0)
			if !epochOK || fr.Station != wantStation || fr.Seq != uint64(i+1) {
				t.Errorf("%v: frame %d stored as station %q epoch %d seq %d", args, i, fr.Station, fr.Epoch, fr.Seq)
			}
		}
		if !strings.Contains(stderr, wantStderr) {
			t.Errorf("%v: stderr %q lacks %q", args, stderr, wantStderr)
		}
	}
	f(nil, "127.0.0.1", anyEpoch, "protocol v2, epoch ")
	f([]string{"--name", "gs-7"}, "gs-7", anyEpoch, "protocol v2, epoch ")
	f([]string{"--protocol", "1"}, "127.0.0.1", 0, "protocol v1")
}

func TestStationProtocolUsage(t *testing.T) {
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewMemory())
	f := func(want string, args ...string) {
		t.Helper()
		_, err := stationExec(t, "", append([]string{"--addr", gw.Addr}, args...)...)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want a usage error with %q", args, err, want)
		}
	}
	f("--protocol", "--protocol", "3")
	f("--protocol 1", "--protocol", "1", "--name", "x")
	f("invalid option", "--name", strings.Repeat("n", 256))
}

// TestStationFallback: against a gateway that answers HELLO with CLOSE(5),
// as a v1 gateway does, the station says so on stderr and delivers with v1.
func TestStationFallback(t *testing.T) {
	stationLeakCheck(t)
	addr, hellos, frames := startV1Gateway(t)
	stderr, err := stationExec(t, "a\nb\nc\n", "--addr", addr, "--progress", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "speaks protocol v1 only") || !strings.Contains(stderr, "protocol v1") {
		t.Errorf("stderr %q: want the fallback said", stderr)
	}
	if hellos.Load() != 1 || frames.Load() != 3 {
		t.Errorf("%d HELLOs, %d frames; want 1, 3", hellos.Load(), frames.Load())
	}
}

// startV1Gateway is a stand-in for an older, v1-only gateway: a control
// frame gets CLOSE(5), data frames are acknowledged by count.
func startV1Gateway(t *testing.T) (addr string, hellos, frames *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hellos, frames = new(atomic.Int64), new(atomic.Int64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				var count uint64
				for {
					var hdr [frame.HeaderSize]byte
					if _, err := io.ReadFull(br, hdr[:]); err != nil {
						c.Write(frame.AppendAck(nil, count))
						return
					}
					n := binary.BigEndian.Uint32(hdr[:])
					if n&frame.ControlBit != 0 {
						hellos.Add(1)
						c.Write(frame.AppendClose(nil, frame.ReasonControl, "unsupported control frame"))
						return
					}
					if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
						return
					}
					if n > 0 {
						count++
						frames.Add(1)
					}
					if br.Buffered() == 0 {
						c.Write(frame.AppendAck(nil, count))
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), hellos, frames
}

// stationMain runs `meridian station ARGS` as the binary does, through
// Main, and returns its exit status and output (stdout and stderr).
func stationMain(t *testing.T, stdin string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out syncbuf.Buffer
	root := newRootCmd(&out, &out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"station"}, args...))
	err := root.ExecuteContext(ctx)
	code := ExitOK
	if err != nil {
		fmt.Fprintf(&out, "meridian: %v\n", err)
		// As Main maps errors to exit statuses (Main itself reads no
		// stdin of the caller's choosing).
		var ue usageError
		var ee exitError
		switch {
		case errors.As(err, &ee):
			code = ee.code
		case errors.As(err, &ue) || isFlagError(err):
			code = ExitConfig
		default:
			code = ExitFail
		}
	}
	return code, out.String()
}

// TestStationSpoolUsage: every misuse of the spool flags is a usage error
// (exit 2) that names the flag, before anything is dialled or created.
func TestStationSpoolUsage(t *testing.T) {
	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")
	followDir := filepath.Join(dir, "in")
	os.Mkdir(followDir, 0o700)
	addr := closedPort(t)
	f := func(want string, args ...string) {
		t.Helper()
		code, out := stationMain(t, "", args...)
		if code != ExitConfig || !strings.Contains(out, want) {
			t.Errorf("%v: exit %d, output %q; want exit 2 naming %q", args, code, out, want)
		}
	}
	f("--spool-sync needs --spool", "--addr", addr, "--spool-sync", "1s")
	f("--spool-max-bytes needs --spool", "--addr", addr, "--spool-max-bytes", "1MiB")
	f("--spool-full needs --spool", "--addr", addr, "--spool-full", "drop-oldest")
	f("--follow needs --spool", "--addr", addr, "--follow", followDir)
	f("--status needs --spool", "--status")
	f("--json goes with --status", "--addr", addr, "--spool", spoolDir, "--json")
	f("--protocol 1", "--addr", addr, "--spool", spoolDir, "--protocol", "1")
	f("--spool-sync", "--addr", addr, "--spool", spoolDir, "--spool-sync", "sometimes")
	f("--spool-sync", "--addr", addr, "--spool", spoolDir, "--spool-sync", "0s")
	f("invalid size", "--addr", addr, "--spool", spoolDir, "--spool-max-bytes", "12XB")
	f("--spool-max-bytes", "--addr", addr, "--spool", spoolDir, "--spool-max-bytes", "0")
	f("--spool-full", "--addr", addr, "--spool", spoolDir, "--spool-full", "never")
	f("no FILE arguments", "--addr", addr, "--spool", spoolDir, "--follow", followDir, "x.txt")
	f("no FILE arguments and no --count", "--addr", addr, "--spool", spoolDir, "--follow", followDir, "--count", "3")
	f("--follow-done", "--addr", addr, "--spool", spoolDir, "--follow", followDir, "--follow-done", "keep")
	f("--follow-poll", "--addr", addr, "--spool", spoolDir, "--follow", followDir, "--follow-poll", "0s")
	f("different directories", "--addr", addr, "--spool", followDir, "--follow", followDir)
	f("--follow", "--addr", addr, "--spool", spoolDir, "--follow", filepath.Join(dir, "missing"))
	f(`"addr" not set`, "--spool", spoolDir)
	if _, err := os.Stat(spoolDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a usage error created the spool directory: %v", err)
	}
}

// spoolRun runs `meridian station` with a spool and returns its error and
// output.
func spoolRun(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	return stationExec(t, stdin, append([]string{"--progress", "0", "--spool-sync", "10ms"}, args...)...)
}

// countPayloads fails the test unless the sink holds each of want exactly
// once, and nothing else.
func countPayloads(t *testing.T, mem *sink.Memory, want []string) {
	t.Helper()
	seen := make(map[string]int)
	for _, p := range payloads(mem) {
		seen[p]++
	}
	for _, w := range want {
		if seen[w] != 1 {
			t.Errorf("payload %q stored %d times, want once", w, seen[w])
		}
		delete(seen, w)
	}
	for p, n := range seen {
		t.Errorf("unexpected payload %q stored %d times", p, n)
	}
}

func TestStationSpoolStdin(t *testing.T) {
	stationLeakCheck(t)
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	dir := filepath.Join(t.TempDir(), "spool")
	for _, mode := range []string{"10ms", "always"} {
		mem := sink.NewMemory()
		gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
		stderr, err := spoolRun(t, "a\nb\nc\n", "--addr", gw.Addr, "--spool", filepath.Join(t.TempDir(), "s"), "--spool-sync", mode)
		if err != nil {
			t.Fatalf("--spool-sync %s: %v\n%s", mode, err, stderr)
		}
		if got := strings.Join(payloads(mem), "|"); got != "a|b|c" {
			t.Errorf("--spool-sync %s: sink holds %q", mode, got)
		}
	}
	// Numbering continues across runs of one spool: the second run's
	// frames are 3 and 4 of the same epoch.
	for _, in := range []string{"1\n2\n", "3\n4\n"} {
		stderr, err := spoolRun(t, in, "--addr", gw.Addr, "--spool", dir)
		if err != nil || !strings.Contains(stderr, "all acknowledged") {
			t.Fatalf("%v\n%s", err, stderr)
		}
	}
	frames := mem.Frames()
	if len(frames) != 4 {
		t.Fatalf("%d frames stored, want 4", len(frames))
	}
	for i, fr := range frames {
		if fr.Seq != uint64(i+1) || fr.Epoch != frames[0].Epoch || string(fr.Payload) != fmt.Sprint(i+1) {
			t.Errorf("frame %d stored as epoch %d seq %d %q; want one epoch, seq %d", i, fr.Epoch, fr.Seq, fr.Payload, i+1)
		}
	}
}

// TestStationSpoolLeftoverThenDrain: with the gateway down, the frames stay
// in the spool and the run says so and fails; a later run with no input
// sends them, and the stream holds each once.
func TestStationSpoolLeftoverThenDrain(t *testing.T) {
	stationLeakCheck(t)
	dir := filepath.Join(t.TempDir(), "spool")
	want := []string{"one", "two", "three"}
	stderr, err := spoolRun(t, strings.Join(want, "\n"), "--addr", closedPort(t), "--spool", dir, "--ack-timeout", "300ms")
	if err == nil {
		t.Fatalf("no error with the gateway down\n%s", stderr)
	}
	var ue usageError
	if errors.As(err, &ue) {
		t.Errorf("a gateway outage is a usage error: %v", err)
	}
	if !strings.Contains(stderr, "3 frames stay in the spool") || !strings.Contains(err.Error(), "kept in the spool") {
		t.Errorf("error %q, stderr %q: want the 3 frames left said", err, stderr)
	}

	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	stderr, err = spoolRun(t, "", "--addr", gw.Addr, "--spool", dir)
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "holds 3 frames from earlier runs") {
		t.Errorf("stderr %q: want the leftover said", stderr)
	}
	countPayloads(t, mem, want)
	// A third run finds nothing to send.
	if stderr, err := spoolRun(t, "", "--addr", gw.Addr, "--spool", dir); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	countPayloads(t, mem, want)
}

// holdSpool opens the spool in dir in this process, as a running station
// does, until the test ends.
func holdSpool(t *testing.T, dir string) *station.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := station.Dial(ctx, closedPort(t), station.WithSpool(dir, station.SpoolOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

func TestStationSpoolStatus(t *testing.T) {
	stationLeakCheck(t)
	dir := filepath.Join(t.TempDir(), "spool")
	if _, err := spoolRun(t, "x\ny\n", "--addr", closedPort(t), "--spool", dir, "--ack-timeout", "100ms"); err == nil {
		t.Fatal("no error with the gateway down")
	}
	code, out := stationMain(t, "", "--spool", dir, "--status")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, want := range []string{"spool " + dir, "waiting        2 frames, 1..2", "oldest waiting", "epoch", "not in use"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	c := holdSpool(t, dir)
	code, out = stationMain(t, "", "--spool", dir, "--status")
	if want := fmt.Sprintf("in use by process %d", os.Getpid()); code != ExitOK || !strings.Contains(out, want) {
		t.Errorf("exit %d, status %q; want 0 and %q", code, out, want)
	}
	if !strings.Contains(out, fmt.Sprintf("epoch          %d", c.Epoch())) {
		t.Errorf("status %q lacks the epoch %d", out, c.Epoch())
	}
	var js bytes.Buffer
	cmd := newStationCmd()
	cmd.SetArgs([]string{"--spool", dir, "--status", "--json"})
	cmd.SetOut(&js)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	var r statusReport
	if err := json.Unmarshal(js.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, js.String())
	}
	if r.Epoch != c.Epoch() || r.Waiting != 2 || r.Last != 2 || !r.InUse || r.PID != os.Getpid() {
		t.Errorf("--json: %+v", r)
	}
	code, out = stationMain(t, "", "--spool", filepath.Join(t.TempDir(), "none"), "--status")
	if code != ExitFail || !strings.Contains(out, "--status") {
		t.Errorf("status of a missing spool: exit %d, %q", code, out)
	}
}

// TestStationSpoolLocked: a second station on a spool in use gets a clear
// error and exit status 2, and the spool is untouched.
func TestStationSpoolLocked(t *testing.T) {
	stationLeakCheck(t)
	dir := filepath.Join(t.TempDir(), "spool")
	holdSpool(t, dir)
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewMemory())
	code, out := stationMain(t, "a\n", "--addr", gw.Addr, "--spool", dir, "--progress", "0")
	if code != ExitConfig || !strings.Contains(out, "is in use by another meridian station") {
		t.Errorf("exit %d, output %q; want 2 and the spool in use said", code, out)
	}
}
