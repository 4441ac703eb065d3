package main

// These tests run the real binary as a child process: the test binary
// re-executes itself as meridian (GO_TEST_RUN_MERIDIAN=1), so signals, exit
// statuses and a SIGKILL in the middle of a load are real.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meridian-telemetry/meridian/internal/cli"
	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
)

func TestMain(m *testing.M) {
	if os.Getenv("GO_TEST_RUN_MERIDIAN") == "1" {
		os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

const wait = 20 * time.Second

// child is a meridian process.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *syncbuf.Buffer
	stdout *syncbuf.Buffer
	done   chan error
}

// childEnv is the environment of a meridian child: this one, less any
// MERIDIAN_* variable (those are configuration, and the child gets none by
// chance), plus the switch that makes the test binary run as meridian.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MERIDIAN_") {
			env = append(env, kv)
		}
	}
	return append(env, "GO_TEST_RUN_MERIDIAN=1")
}

func start(t *testing.T, args ...string) *child {
	t.Helper()
	return startWithStdout(t, nil, args...)
}

// startWithStdout is start with the child's stdout sent to w instead of a
// buffer (a file such as /dev/full); nil keeps the buffer.
func startWithStdout(t *testing.T, w io.Writer, args ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = childEnv()
	c := &child{t: t, cmd: cmd, stderr: &syncbuf.Buffer{}, stdout: &syncbuf.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr, cmd.Stdout = c.stderr, c.stdout
	if w != nil {
		cmd.Stdout = w
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
		if t.Failed() {
			t.Logf("child stderr:\n%s", c.stderr)
		}
	})
	return c
}

// exit waits for the child to exit and returns its status.
func (c *child) exit() int {
	c.t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			c.t.Fatal(err)
		}
		return 0
	case <-time.After(wait):
		c.t.Fatalf("child did not exit; stderr:\n%s", c.stderr)
		return -1
	}
}

// waitLog polls the child's stderr until re matches, and returns the match.
func (c *child) waitLog(re string) []string {
	c.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(c.stderr.String()); m != nil {
			return m
		}
		select {
		case err := <-c.done:
			c.done <- err
			c.t.Fatalf("child exited (%v) before logging %q:\n%s", err, re, c.stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	c.t.Fatalf("no log line matching %q:\n%s", re, c.stderr)
	return nil
}

// serveArgs runs the gateway on free loopback ports.
func serveArgs(dir string, extra ...string) []string {
	return append([]string{"serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--nats-listen", "127.0.0.1:0", "--data-dir", dir}, extra...)
}

// addrs reads the ports the child bound from its start-up line.
func (c *child) addrs() (station, http, natsURL string) {
	m := c.waitLog(`msg="meridian serving" listen=(\S+) sink=\S+(?: stream=\S+ nats=(\S+))? http=(\S+)`)
	return m[1], m[3], m[2]
}

// sendFrames sends frames and returns the last ACK received (tracking
// ACKs while sending, then the final one after half-close unless the
// connection dies first).
func sendFrames(addr string, payloads [][]byte, stop <-chan struct{}) (acked uint64, err error) {
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var mu sync.Mutex
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		readControls(c, func(ctl frame.Control) {
			if ctl.Type == frame.TypeAck {
				mu.Lock()
				acked = ctl.Ack
				mu.Unlock()
			}
		})
	}()
	for _, p := range payloads {
		select {
		case <-stop:
			c.Close()
			<-readDone
			return acked, nil
		default:
		}
		if _, err := c.Write(frame.AppendData(nil, p)); err != nil {
			break
		}
	}
	c.(*net.TCPConn).CloseWrite()
	<-readDone
	mu.Lock()
	defer mu.Unlock()
	return acked, nil
}

// readControls reads gateway→station frames from r until the connection
// fails or ends, and calls each with every control frame that parses.
func readControls(r io.Reader, each func(frame.Control)) {
	br := bufio.NewReader(r)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return
		}
		p := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(br, p); err != nil {
			return
		}
		if ctl, err := frame.ParseControl(p); err == nil {
			each(ctl)
		}
	}
}

// waitMetrics scrapes the ops listener's /metrics until every line of want
// is one of its lines, exactly, and returns that scrape. At the deadline it
// fails, naming the lines still missing.
func waitMetrics(t *testing.T, httpAddr string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		resp, err := http.Get("http://" + httpAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		have := make(map[string]bool)
		for _, l := range strings.Split(string(b), "\n") {
			have[l] = true
		}
		var missing []string
		for _, w := range want {
			if !have[w] {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q:\n%s", missing, b)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

func readToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "nats-token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// telemetryStream connects to the gateway's NATS server at url and returns
// the TELEMETRY stream, and a context bounded by wait for reading it; the
// connection closes when the test ends.
func telemetryStream(t *testing.T, url, token string) (jetstream.Stream, context.Context) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Token(token))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	s, err := js.Stream(ctx, "TELEMETRY")
	if err != nil {
		t.Fatal(err)
	}
	return s, ctx
}

// streamPayloads reads every message of the stream.
func streamPayloads(t *testing.T, url, token string) map[string]bool {
	t.Helper()
	s, ctx := telemetryStream(t, url, token)
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]bool)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get %d: %v", seq, err)
		}
		got[string(m.Data)] = true
	}
	return got
}

func TestServeEmbeddedEndToEnd(t *testing.T) {
	dir := t.TempDir()
	c := start(t, serveArgs(dir)...)
	station, httpAddr, natsURL := c.addrs()

	var payloads [][]byte
	for i := range 50 {
		payloads = append(payloads, fmt.Appendf(nil, "e2e frame %d", i))
	}
	acked, err := sendFrames(station, payloads, nil)
	if err != nil || acked != 50 {
		t.Fatalf("acked %d, %v", acked, err)
	}

	// The ops listener, scraped for real.
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz = %d", code)
	}
	// The station saw its final ACK and EOF, but the gateway counts the
	// session as ended only after that, so wait for the counter.
	metrics := waitMetrics(t, httpAddr,
		"meridian_frames_received_total 50",
		"meridian_frames_committed_total 50",
		`meridian_sessions_ended_total{reason="station_closed"} 1`,
		"meridian_stream_up 1",
		"meridian_stream_pending_frames 0",
	)
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !regexp.MustCompile(`(?m)^` + name + ` [0-9.e+]+$`).MatchString(metrics) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if code, body := get("/stations"); code != 200 || !strings.HasPrefix(strings.TrimSpace(body), "[") {
		t.Errorf("/stations = %d %s", code, body)
	}
	if code, _ := get("/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without --pprof = %d", code)
	}

	got := streamPayloads(t, natsURL, readToken(t, dir))
	for _, p := range payloads {
		if !got[string(p)] {
			t.Fatalf("%q missing from the stream", p)
		}
	}

	// meridian tail reads the same stream.
	tail := start(t, "tail", "--nats-url", natsURL, "--data-dir", dir, "--last", "2", "--count", "2", "--format", "json")
	if code := tail.exit(); code != 0 {
		t.Fatalf("tail exit %d: %s", code, tail.stderr)
	}
	lines := strings.Split(strings.TrimSpace(tail.stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("tail printed %q", tail.stdout)
	}
	var rec struct {
		Station string `json:"station"`
		Seq     uint64 `json:"seq"`
		Size    int    `json:"size"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil || rec.Seq != 50 || rec.Station != "127.0.0.1" {
		t.Fatalf("tail json %q: %+v %v", lines[1], rec, err)
	}

	c.cmd.Process.Signal(syscall.SIGTERM)
	if code := c.exit(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}
	c.waitLog(`msg="meridian stopped"`)
}

// TestCrashSafety kills the gateway with SIGKILL in the middle of a load and
// restarts it on the same data directory: every frame any station got an
// ACK for is in the stream.
func TestCrashSafety(t *testing.T) {
	const stations, frames = 8, 20000
	dir := t.TempDir()
	c := start(t, serveArgs(dir)...)
	station, _, _ := c.addrs()

	stop := make(chan struct{})
	acks := make([]uint64, stations)
	var wg sync.WaitGroup
	for i := range stations {
		var payloads [][]byte
		for j := range frames {
			payloads = append(payloads, fmt.Appendf(nil, "crash station %d frame %d", i, j))
		}
		wg.Go(func() {
			acks[i], _ = sendFrames(station, payloads, stop)
		})
	}
	// Kill once the stream has taken a good part of the load.
	c.waitLog(`session started`)
	deadline := time.Now().Add(wait)
	for {
		resp, err := http.Get("http://" + strings.TrimPrefix(c.waitLog(`http=(\S+)`)[1], "http://") + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := regexp.MustCompile(`meridian_frames_committed_total (\d+)`).FindSubmatch(b); m != nil && len(m[1]) >= 4 {
				break // at least 1000 frames committed
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the load never got going")
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.exit()
	close(stop)
	wg.Wait()

	var total uint64
	for _, a := range acks {
		total += a
	}
	if total == 0 {
		t.Fatal("no station got an ACK before the kill")
	}

	again := start(t, serveArgs(dir)...)
	_, _, natsURL := again.addrs()
	got := streamPayloads(t, natsURL, readToken(t, dir))
	for i, a := range acks {
		for j := range a {
			if p := fmt.Sprintf("crash station %d frame %d", i, j); !got[p] {
				t.Fatalf("acknowledged frame %q lost in the crash", p)
			}
		}
	}
	t.Logf("%d acknowledged frames all survived SIGKILL; the stream holds %d", total, len(got))
}

func TestConfigErrorsExit2(t *testing.T) {
	f := func(name string, args ...string) {
		t.Run(name, func(t *testing.T) {
			c := start(t, args...)
			if code := c.exit(); code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, c.stderr)
			}
		})
	}
	f("unknown flag", "serve", "--no-such-flag")
	f("bad duration", "serve", "--idle-timeout", "soon")
	f("drain not shorter than grace", "serve", "--drain-timeout", "30s", "--shutdown-grace", "30s")

	t.Run("conflicting stream", func(t *testing.T) {
		dir := t.TempDir()
		first := start(t, serveArgs(dir, "--sink", "jetstream")...)
		first.addrs()
		first.cmd.Process.Signal(syscall.SIGINT)
		if code := first.exit(); code != 0 {
			t.Fatalf("first run exit %d", code)
		}
		c := start(t, serveArgs(dir, "--retention-max-age", "1d")...)
		if code := c.exit(); code != 2 {
			t.Fatalf("exit %d, want 2; stderr:\n%s", code, c.stderr)
		}
		// The error names the stream, the setting, both values and the flag.
		for _, want := range []string{
			"stream: existing stream conflicts with the configuration: stream TELEMETRY",
			"max age: stream has 7d, configuration wants 1d (--retention-max-age)",
		} {
			if !strings.Contains(c.stderr.String(), want) {
				t.Errorf("the error does not say %q:\n%s", want, c.stderr)
			}
		}
	})
}

func TestPrintConfigRedactsSecrets(t *testing.T) {
	c := start(t, "serve", "--print-config", "--nats-token", "s3cret", "--queue", "512")
	if code := c.exit(); code != 0 {
		t.Fatalf("exit %d: %s", code, c.stderr)
	}
	out := c.stdout.String()
	if strings.Contains(out, "s3cret") || !strings.Contains(out, "queue: 512") {
		t.Fatalf("print-config:\n%s", out)
	}
}

func TestStdoutSinkAndHelp(t *testing.T) {
	c := start(t, "serve", "--sink", "stdout", "--listen", "127.0.0.1:0", "--http-listen", "")
	m := c.waitLog(`msg="meridian serving" listen=(\S+)`)
	if acked, err := sendFrames(m[1], [][]byte{[]byte("hello")}, nil); err != nil || acked != 1 {
		t.Fatalf("acked %d, %v", acked, err)
	}
	c.cmd.Process.Signal(syscall.SIGINT)
	if code := c.exit(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var rec struct {
		Session  string `json:"session"`
		Seq      uint64 `json:"seq"`
		Received string `json:"received"`
		Size     int    `json:"size"`
		Payload  []byte `json:"payload"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(c.stdout.String())), &rec); err != nil {
		t.Fatalf("stdout %q: %v", c.stdout, err)
	}
	if rec.Seq != 1 || rec.Size != 5 || string(rec.Payload) != "hello" || !strings.HasPrefix(rec.Session, "gs-1@127.0.0.1:") {
		t.Fatalf("record %+v", rec)
	}
	if _, err := time.Parse(time.RFC3339Nano, rec.Received); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(c.stdout.String(), "level=") {
		t.Fatal("logs on stdout")
	}

	help := start(t, "serve", "--help")
	help.exit()
	for _, flag := range []string{"--listen", "--max-frame", "--idle-timeout", "--frame-timeout", "--heartbeat",
		"--write-timeout", "--queue", "--sink", "--drain-timeout", "--shutdown-grace", "--log-format", "--log-level",
		"--data-dir", "--nats-url", "--store-max-bytes", "--sync", "--http-listen", "--max-sessions", "--tls-cert",
		"--lame-duck", "--config", "--print-config", "SIGHUP", "Exit status"} {
		if !strings.Contains(help.stdout.String(), flag) {
			t.Errorf("serve --help lacks %s", flag)
		}
	}
}

// rss reads a process's resident set size.
func rss(t testing.TB, pid int) int64 { return procStatus(t, pid, "VmRSS") }

// procStatus reads a memory field of /proc/PID/status, in bytes.
func procStatus(t testing.TB, pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(field + `:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s", field)
	}
	var kb int64
	fmt.Sscan(string(m[1]), &kb)
	return kb * 1024
}

// BenchmarkIdleSessionMemory opens 10,000 sessions to a gateway child
// process, each sending one frame and then idling with heartbeats on, and
// reports the child's resident memory per session. It needs an open-files
// limit above 20,000 for both ends (ulimit -n 20000 before go test).
//
//	go test -run XXX -bench IdleSessionMemory -benchtime 1x ./cmd/meridian
func BenchmarkIdleSessionMemory(b *testing.B) {
	const sessions = 10000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Max < sessions+1000 {
		b.Skipf("open-files hard limit %d is too low for %d sessions", lim.Max, sessions)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		cmd := exec.Command(os.Args[0], "serve", "--sink", "discard", "--listen", "127.0.0.1:0", "--http-listen", os.Getenv("PROBE_HTTP"),
			"--heartbeat", "1s", "--idle-timeout", "10m")
		cmd.Env = childEnv()
		var stderr syncbuf.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cmd.Process.Kill() })
		var addr string
		rx := regexp.MustCompile(`listen=(\S+)`)
		for deadline := time.Now().Add(wait); addr == ""; {
			if m := rx.FindStringSubmatch(stderr.String()); m != nil {
				addr = m[1]
			} else if time.Now().After(deadline) {
				b.Fatal("gateway did not start")
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		before := rss(b, cmd.Process.Pid)
		conns := make([]net.Conn, 0, sessions)
		one := frame.AppendData(nil, []byte("hello from an idle station"))
		for range sessions {
			c, err := net.DialTimeout("tcp", addr, wait)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(one); err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		// Read each station's ACK so that every session has its frame in
		// and is idle; then let a few heartbeats go by.
		buf := make([]byte, 64)
		for _, c := range conns {
			_ = c.SetReadDeadline(time.Now().Add(wait))
			if _, err := io.ReadFull(c, buf[:13]); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(3 * time.Second) // heartbeats fire: the steady idle state
		after := rss(b, cmd.Process.Pid)
		if os.Getenv("PROBE_HTTP") != "" {
			resp, err := http.Get("http://" + os.Getenv("PROBE_HTTP") + "/metrics")
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				for _, l := range strings.Split(string(body), "\n") {
					if strings.HasPrefix(l, "go_memstats_") || strings.HasPrefix(l, "go_goroutines") {
						b.Log(l)
					}
				}
			}
		}
		b.ReportMetric(float64(after-before)/sessions, "RSS-bytes/session")
		b.ReportMetric(float64(after)/(1<<20), "RSS-MiB-total")
		for _, c := range conns {
			c.Close()
		}
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
	}
}

// TestSecondSignalForcesExit: a sink that cannot take frames (stdout into a
// pipe nobody reads) holds the graceful shutdown; a second SIGINT forces the
// exit with status 1 and says how many frames were abandoned.
func TestSecondSignalForcesExit(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0], "serve", "--sink", "stdout", "--listen", "127.0.0.1:0", "--http-listen", "", "--drain-timeout", "100ms")
	cmd.Env = childEnv()
	c := &child{t: t, cmd: cmd, stderr: &syncbuf.Buffer{}, stdout: &syncbuf.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = w, c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() { c.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-c.done })
	addr := c.waitLog(`msg="meridian serving" listen=(\S+)`)[1]

	// 1 MiB of JSON lines cannot fit the pipe: the sink blocks, the queue
	// fills, nothing more is committed.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	big := make([]byte, 8192)
	for range 128 {
		if _, err := conn.Write(frame.AppendData(nil, big)); err != nil {
			t.Fatal(err)
		}
	}
	c.waitLog(`session started`)
	cmd.Process.Signal(syscall.SIGINT)
	c.waitLog(`graceful shutdown`)
	cmd.Process.Signal(syscall.SIGINT)
	if code := c.exit(); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	m := c.waitLog(`shutdown forced.* frames_abandoned=(\d+)`)
	if m[1] == "0" {
		t.Fatalf("no frame reported abandoned:\n%s", c.stderr)
	}
}

// TestSIGHUPReloadsCertificates: a new certificate is served after SIGHUP
// while a session opened before it goes on.
func TestSIGHUPReloadsCertificates(t *testing.T) {
	ca := tlstest.NewCA(t, "meridian test CA")
	first := ca.Server(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	install := func(c *tlstest.Cert) {
		if err := os.WriteFile(certFile, c.CertPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, c.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	install(first)
	c := start(t, "serve", "--sink", "discard", "--listen", "127.0.0.1:0", "--http-listen", "",
		"--tls-cert", certFile, "--tls-key", keyFile)
	addr := c.waitLog(`msg="meridian serving" listen=(\S+)`)[1]

	dialTLS := func() *tls.Conn {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, ca.ClientConfig())
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	ackOne := func(conn *tls.Conn) {
		t.Helper()
		if _, err := conn.Write(frame.AppendData(nil, []byte("x"))); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 13)
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadFull(conn, buf); err != nil || buf[4] != byte(frame.TypeAck) {
			t.Fatalf("no ACK: % x %v", buf, err)
		}
	}
	old := dialTLS()
	defer old.Close()
	ackOne(old)
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatal("not the first certificate")
	}

	second := ca.Server(t)
	install(second)
	c.cmd.Process.Signal(syscall.SIGHUP)
	c.waitLog(`TLS certificates reloaded`)
	fresh := dialTLS()
	defer fresh.Close()
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatal("SIGHUP did not bring in the new certificate")
	}
	ackOne(fresh)
	ackOne(old) // the session from before the reload is still served
}

// TestAllowStationsMatchesRemoteIPs: without TLS a station's identity is its
// remote IP, and --allow-stations filters on it (docs/operations.md,
// "Identity and the allow-list").
func TestAllowStationsMatchesRemoteIPs(t *testing.T) {
	serve := func(allow string, extra ...string) (station, httpAddr string) {
		c := start(t, append([]string{"serve", "--sink", "discard", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
			"--allow-stations", allow}, extra...)...)
		m := c.waitLog(`msg="meridian serving" listen=(\S+) sink=\S+ http=(\S+)`)
		return m[1], m[2]
	}

	t.Run("refused", func(t *testing.T) {
		// Known only by its IP, which is not listed: the gateway waits
		// the handshake timeout for a v2 HELLO naming a listed station,
		// then refuses it.
		station, httpAddr := serve("10.1.*", "--tls-handshake-timeout", "200ms")
		conn, err := net.DialTimeout("tcp", station, wait)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(wait))
		var hdr [frame.HeaderSize]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			t.Fatalf("no CLOSE from the gateway: %v", err)
		}
		p := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(conn, p); err != nil {
			t.Fatal(err)
		}
		ctl, err := frame.ParseControl(p)
		if err != nil || ctl.Type != frame.TypeClose || ctl.Reason != frame.ReasonUnauthorized {
			t.Fatalf("gateway sent %+v, %v; want CLOSE not_authorized", ctl, err)
		}
		waitMetrics(t, httpAddr,
			`meridian_rejected_connections_total{reason="not_authorized"} 1`,
			"meridian_frames_received_total 0")
	})
	t.Run("admitted", func(t *testing.T) {
		station, httpAddr := serve("10.1.*,127.0.0.*")
		if acked, err := sendFrames(station, [][]byte{[]byte("from loopback")}, nil); err != nil || acked != 1 {
			t.Fatalf("acked %d, %v", acked, err)
		}
		waitMetrics(t, httpAddr,
			`meridian_rejected_connections_total{reason="not_authorized"} 0`,
			"meridian_frames_received_total 1")
	})
}
