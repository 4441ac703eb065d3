package main

// TestOpsAnswerWhileNATSFrozen runs the NATS server as a process of its own,
// so that it can be frozen with SIGSTOP: the test binary re-executes itself
// as a nats-server (GO_TEST_RUN_NATS=1), and the gateway as meridian.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
)

// init turns the test binary into a JetStream server when asked: it stores
// under GO_TEST_NATS_STORE, listens on a free loopback port, prints
// "nats-url=URL" and runs until SIGTERM or SIGKILL. It runs before TestMain.
func init() {
	if os.Getenv("GO_TEST_RUN_NATS") != "1" {
		return
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "frozen",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   os.Getenv("GO_TEST_NATS_STORE"),
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv.Start()
	if !srv.ReadyForConnections(wait) {
		fmt.Fprintln(os.Stderr, "nats server not ready")
		os.Exit(1)
	}
	fmt.Printf("nats-url=%s\n", srv.ClientURL())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	srv.Shutdown()
	srv.WaitForShutdown()
	os.Exit(0)
}

// natsProcess is a nats-server child process.
type natsProcess struct {
	cmd  *exec.Cmd
	url  string
	port int
}

func startNATSProcess(t *testing.T) *natsProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "GO_TEST_RUN_NATS=1", "GO_TEST_NATS_STORE="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		// A stopped process takes SIGKILL too; SIGCONT first anyway so
		// that nothing is left stopped if the kill were refused.
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		<-done
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "nats-url="); ok {
				line <- u
			}
		}
	}()
	select {
	case u := <-line:
		p := &natsProcess{cmd: cmd, url: u}
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(u, "nats://"))
		p.port, _ = strconv.Atoi(port)
		return p
	case <-done:
		t.Fatalf("nats-server child exited: %s", stderr.String())
	case <-time.After(wait):
		t.Fatalf("nats-server child did not start: %s", stderr.String())
	}
	return nil
}

// frozenPayload is frame n of station s, padded to size bytes.
func frozenPayload(s, n, size int) []byte {
	p := fmt.Appendf(nil, "frozen s%d f%d ", s, n)
	return append(p, bytes.Repeat([]byte{'.'}, size-len(p))...)
}

var frozenRx = regexp.MustCompile(`^frozen s(\d+) f(\d+) `)

// station streams frames to the gateway and tracks its ACKs.
type frozenStation struct {
	id     int
	sent   atomic.Uint64
	acked  atomic.Uint64
	err    error
	closed chan struct{} // the gateway closed the connection (final ACK read)
}

// run sends up to frames frames of size bytes, as fast as the gateway reads
// them, then half-closes and reads up to the final ACK and FIN.
func (s *frozenStation) run(addr string, frames, size int) {
	defer close(s.closed)
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		s.err = err
		return
	}
	defer c.Close()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		readControls(c, func(ctl frame.Control) {
			if ctl.Type == frame.TypeAck {
				s.acked.Store(ctl.Ack)
			}
		})
	}()
	w := bufio.NewWriterSize(c, 256<<10)
	for n := range frames {
		if _, err := w.Write(frame.AppendData(nil, frozenPayload(s.id, n, size))); err != nil {
			s.err = err
			return
		}
		s.sent.Add(1)
	}
	if err := w.Flush(); err != nil {
		s.err = err
		return
	}
	_ = c.(*net.TCPConn).CloseWrite()
	<-readDone
}

// metric reads one unlabelled sample out of a /metrics body; -1 if absent.
func metric(body, name string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// sendQueue is the number of bytes queued unsent on the loopback TCP
// connections to port, from /proc/net/tcp: what a peer that stopped
// reading leaves in its sender's socket.
func sendQueue(t *testing.T, port int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	suffix := fmt.Sprintf(":%04X", port)
	var total int64
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 5 || !strings.HasSuffix(f[2], suffix) {
			continue // not a connection to port
		}
		tx, _, _ := strings.Cut(f[4], ":")
		n, _ := strconv.ParseInt(tx, 16, 64)
		total += n
	}
	return total
}

// TestOpsAnswerWhileNATSFrozen: with the NATS server frozen (SIGSTOP) under
// load, so that the gateway's connection to it is blocked on a full socket,
// /healthz, /readyz and /metrics still answer within 1 s each. After SIGCONT
// the stations finish and every acknowledged frame is in the stream.
func TestOpsAnswerWhileNATSFrozen(t *testing.T) {
	const stations, frames, size = 4, 800, 32 << 10
	ns := startNATSProcess(t)
	gw := start(t, serveArgs(t.TempDir(), "--nats-url", ns.url, "--publish-timeout", "500ms")...)
	addr, httpAddr, _ := gw.addrs()

	client := &http.Client{Timeout: time.Second}
	scrape := func(path string) (int, string) {
		t.Helper()
		start := time.Now()
		resp, err := client.Get("http://" + httpAddr + path)
		if err != nil {
			t.Fatalf("%s did not answer within 1 s (after %s): %v", path, time.Since(start).Round(time.Millisecond), err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s: reading the answer: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}

	sts := make([]*frozenStation, stations)
	for i := range sts {
		sts[i] = &frozenStation{id: i, closed: make(chan struct{})}
		go sts[i].run(addr, frames, size)
	}
	// Freeze once the stream has taken part of the load.
	for deadline := time.Now().Add(wait); ; {
		_, body := scrape("/metrics")
		if metric(body, "meridian_frames_committed_total") >= 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the load never got going:\n%s", body)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
	if err := ns.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := true
	defer func() {
		if frozen {
			_ = ns.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()

	// While frozen: every endpoint answers, round after round, until the
	// gateway's socket to NATS is full and PubAcks have timed out (the sink
	// then resends into that blocked connection).
	var (
		rounds    int
		body      string
		queued    int64
		readyCode int
	)
	for deadline := time.Now().Add(wait); ; rounds++ {
		if code, _ := scrape("/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz = %d while NATS is frozen", code)
		}
		readyCode, _ = scrape("/readyz") // 200 or 503: what counts is the answer
		var code int
		code, body = scrape("/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics = %d while NATS is frozen", code)
		}
		queued = sendQueue(t, ns.port)
		if rounds >= 5 && queued > 0 && metric(body, "meridian_stream_ack_timeouts_total") > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the frozen server never blocked the gateway (send queue %d bytes):\n%s", queued, body)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
	pending := metric(body, "meridian_stream_pending_frames")
	received, committed := metric(body, "meridian_frames_received_total"), metric(body, "meridian_frames_committed_total")
	if pending <= 0 || received <= committed {
		t.Fatalf("no frame outstanding while frozen: pending %v, received %v, committed %v", pending, received, committed)
	}
	t.Logf("frozen: %d rounds of scrapes answered; /readyz %d; %v frames pending, %v received, %v committed; %d bytes stuck in the socket to NATS",
		rounds, readyCode, pending, received, committed, queued)

	if err := ns.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	frozen = false
	for _, s := range sts {
		select {
		case <-s.closed:
		case <-time.After(2 * wait):
			t.Fatalf("station %d did not finish after SIGCONT: sent %d, acked %d", s.id, s.sent.Load(), s.acked.Load())
		}
		if s.err != nil {
			t.Fatalf("station %d: %v", s.id, s.err)
		}
		if s.acked.Load() != frames {
			t.Errorf("station %d: final ACK %d, want %d", s.id, s.acked.Load(), frames)
		}
	}

	// Every acknowledged frame is in the stream.
	nc, err := nats.Connect(ns.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	str, err := js.Stream(ctx, "TELEMETRY")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	stored := make([]map[int]bool, stations)
	for i := range stored {
		stored[i] = make(map[int]bool)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for got := uint64(0); got < info.State.Msgs; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if sm := frozenRx.FindSubmatch(m.Data()); sm != nil {
				s, _ := strconv.Atoi(string(sm[1]))
				f, _ := strconv.Atoi(string(sm[2]))
				stored[s][f] = true
			}
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("fetch returned nothing after %d of %d messages", got, info.State.Msgs)
		}
		got += uint64(n)
	}
	for i, s := range sts {
		for f := range int(s.acked.Load()) {
			if !stored[i][f] {
				t.Fatalf("acknowledged frame %d of station %d is not in the stream", f, i)
			}
		}
	}
	gw.cmd.Process.Signal(syscall.SIGTERM)
	if code := gw.exit(); code != 0 {
		t.Fatalf("gateway exit %d after SIGTERM", code)
	}
}
