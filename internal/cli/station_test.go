package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
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
