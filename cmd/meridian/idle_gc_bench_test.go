package main

// Idle-session memory measured after forced garbage collections, over plain
// TCP and over mutual TLS. BenchmarkIdleSessionMemory (main_test.go) reads
// the child's RSS without a GC; this one starts the child with --pprof and
// forces collections through /debug/pprof/heap?gc=1 before every reading,
// so that garbage and not-yet-shrunk goroutine stacks do not count, and it
// reports heap and stack per session from the runtime's own figures.

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
)

// idleGCs is how many collections run before a reading: the runtime halves
// a goroutine's stack at most once per collection (and only while less than
// a quarter of it is in use), so after one collection a stack may still be
// larger than it will stay. The figures after the first are reported too.
const idleGCs = 3

// idleDialers open the sessions, so that 10,000 TLS handshakes take seconds
// rather than a minute.
const idleDialers = 4

// BenchmarkIdleSessionMemoryAfterGC opens 10,000 sessions to a gateway child
// process, each sending one frame, reading its ACK and then two heartbeats,
// and reports per session the growth of the child's RSS, live heap and
// goroutine stacks, all read after forced collections. It needs an
// open-files limit above 20,000 (ulimit -n 20000 before go test).
//
//	go test -run XXX -bench IdleSessionMemoryAfterGC -benchtime 1x -count 3 ./cmd/meridian
//
// With IDLE_HEAP_PROFILE_DIR set, the heap profile taken after the last
// collection is written there (heap-tcp.pb.gz, heap-mtls.pb.gz) for
// go tool pprof, with the goroutine profile beside it (tcp-goroutines.txt,
// mtls-goroutines.txt). Add GODEBUG=memprofilerate=1 to record every allocation
// rather than a sample; that costs the child memory of its own, so do not
// read RSS from such a run.
func BenchmarkIdleSessionMemoryAfterGC(b *testing.B) {
	const sessions = 10000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Max < sessions+1000 {
		b.Skipf("open-files hard limit %d is too low for %d sessions", lim.Max, sessions)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	b.Run("transport=tcp", func(b *testing.B) {
		for range b.N {
			idleMemory(b, sessions, nil)
		}
	})
	b.Run("transport=mtls", func(b *testing.B) {
		ca := tlstest.NewCA(b, "idle CA")
		srv := ca.Server(b)
		conf := ca.ClientConfig(ca.Client(b, "idle.gs.example"))
		for range b.N {
			idleMemory(b, sessions, &idleTLS{ca: ca, srv: srv, conf: conf})
		}
	})
}

// idleTLS is the mutual-TLS setup of a run: the CA, the gateway's
// certificate, and the stations' dial configuration with their certificate.
type idleTLS struct {
	ca   *tlstest.CA
	srv  *tlstest.Cert
	conf *tls.Config
}

// idleMemory runs one measurement: a fresh child, a reading after forced
// collections, n idle sessions, and a second reading the same way.
func idleMemory(b *testing.B, n int, mtls *idleTLS) {
	args := []string{"serve", "--sink", "discard", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--pprof", "--heartbeat", "1s", "--idle-timeout", "10m", "--max-sessions", strconv.Itoa(n)}
	name := "tcp"
	if mtls != nil {
		name = "mtls"
		args = append(args, "--tls-cert", mtls.srv.CertFile, "--tls-key", mtls.srv.KeyFile, "--tls-client-ca", mtls.ca.CertFile)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = childEnv()
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
		if b.Failed() {
			b.Logf("child stderr:\n%s", &stderr)
		}
	}()
	var addr, ops string
	rx := regexp.MustCompile(`msg="meridian serving" listen=(\S+) .*http=(\S+)`)
	for deadline := time.Now().Add(wait); addr == ""; {
		if m := rx.FindStringSubmatch(stderr.String()); m != nil {
			addr, ops = m[1], m[2]
		} else if time.Now().After(deadline) {
			b.Fatalf("gateway did not start:\n%s", &stderr)
		} else {
			time.Sleep(10 * time.Millisecond) // polling interval
		}
	}

	before := readIdle(b, cmd.Process.Pid, ops, idleGCs, "")

	conns := make([]net.Conn, n)
	one := frame.AppendData(nil, []byte("hello from an idle station"))
	dial := func(i int) error {
		var c net.Conn
		var err error
		if mtls != nil {
			c, err = tls.DialWithDialer(&net.Dialer{Timeout: wait}, "tcp", addr, mtls.conf)
		} else {
			c, err = net.DialTimeout("tcp", addr, wait)
		}
		if err != nil {
			return err
		}
		conns[i] = c
		_, err = c.Write(one)
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, idleDialers) // at most one from each dialer
	for w := range idleDialers {
		wg.Go(func() {
			for i := w; i < n; i += idleDialers {
				if err := dial(i); err != nil {
					errs <- fmt.Errorf("session %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	// Every session has its frame in and ACKed, and has sent two heartbeats
	// since: its writer has come and gone and it is in its steady idle
	// state.
	for i, c := range conns {
		if err := readIdleControl(c, frame.TypeAck, 1); err != nil {
			b.Fatalf("session %d: %v", i, err)
		}
	}
	for i, c := range conns {
		if err := readIdleControl(c, frame.TypeHeartbeat, 2); err != nil {
			b.Fatalf("session %d: %v", i, err)
		}
	}

	dir := os.Getenv("IDLE_HEAP_PROFILE_DIR")
	profile := ""
	if dir != "" {
		profile = filepath.Join(dir, "heap-"+name+".pb.gz")
	}
	after := readIdle(b, cmd.Process.Pid, ops, idleGCs, profile)
	if dir != "" {
		// Where the idle goroutines wait, and so how deep their stacks are.
		g := filepath.Join(dir, name+"-goroutines.txt")
		if err := os.WriteFile(g, opsGet(b, ops, "/debug/pprof/goroutine?debug=1"), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	per := func(a, z int64) float64 { return float64(z-a) / float64(n) }
	b.ReportMetric(per(before.rss, after.rss), "RSS-bytes/session")
	b.ReportMetric(per(before.heap, after.heap), "heap-bytes/session")
	b.ReportMetric(per(before.stack, after.stack), "stack-bytes/session")
	b.ReportMetric(float64(after.rss)/(1<<20), "RSS-MiB-total")
	b.ReportMetric(per(before.first.rss, after.first.rss), "RSS-bytes/session-1GC")
	b.ReportMetric(per(before.first.stack, after.first.stack), "stack-bytes/session-1GC")
}

// idleReading is the child's memory after forced collections.
type idleReading struct {
	rss, heap, stack int64 // VmRSS, HeapAlloc, StackInuse
	first            struct{ rss, stack int64 }
}

// readIdle forces gcs collections in the child, one per heap profile
// request, and reads its memory after the first and after the last. The
// last profile is saved to profile unless that is empty.
func readIdle(b *testing.B, pid int, ops string, gcs int, profile string) idleReading {
	b.Helper()
	var r idleReading
	for i := range gcs {
		last := i == gcs-1
		debug := "1"
		if last && profile != "" {
			debug = "0"
		}
		body := opsGet(b, ops, "/debug/pprof/heap?gc=1&debug="+debug)
		if debug == "0" {
			if err := os.WriteFile(profile, body, 0o644); err != nil {
				b.Fatal(err)
			}
			// The memory statistics come with the text form, asked for
			// without gc=1 so that they describe the saved profile's state.
			body = opsGet(b, ops, "/debug/pprof/heap?debug=1")
		}
		heap, stack, desc := memStats(b, body)
		if i == 0 {
			r.first.rss, r.first.stack = rss(b, pid), stack
		}
		if last {
			r.rss, r.heap, r.stack = rss(b, pid), heap, stack
		}
		b.Logf("after GC %d: RSS %d KiB, %s", i+1, rss(b, pid)>>10, desc)
	}
	return r
}

func opsGet(b *testing.B, ops, path string) []byte {
	b.Helper()
	resp, err := http.Get("http://" + ops + path)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return body
}

// memStats reads HeapAlloc and StackInuse from the runtime.MemStats block
// that ends a text heap profile ("# HeapAlloc = N", "# Stack = inuse / sys"),
// and describes the rest of the heap (in use, idle, released to the OS) for
// the log: heap pages freed but not yet released stay in the RSS.
func memStats(b *testing.B, profile []byte) (heap, stack int64, desc string) {
	b.Helper()
	field := func(name string) int64 {
		m := regexp.MustCompile(`(?m)^# ` + name + ` = (\d+)`).FindSubmatch(profile)
		if m == nil {
			b.Fatalf("no %s in the heap profile:\n%.2000s", name, profile)
		}
		v, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return v
	}
	heap, stack = field("HeapAlloc"), field("Stack")
	desc = fmt.Sprintf("HeapAlloc %d KiB, StackInuse %d KiB, HeapInuse %d KiB, HeapIdle %d KiB, HeapReleased %d KiB",
		heap>>10, stack>>10, field("HeapInuse")>>10, field("HeapIdle")>>10, field("HeapReleased")>>10)
	return heap, stack, desc
}

// readIdleControl reads control frames from c until it has seen want of
// type typ, skipping others; it fails on a CLOSE, a malformed frame or the
// deadline. It reads no further than the last frame it needs.
func readIdleControl(c net.Conn, typ frame.Type, want int) error {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	var buf [512]byte
	for seen := 0; seen < want; {
		if _, err := io.ReadFull(c, buf[:frame.HeaderSize]); err != nil {
			return err
		}
		l, _ := frame.Length(buf[:frame.HeaderSize])
		if l == 0 || int(l) > len(buf) {
			return fmt.Errorf("unexpected frame of %d bytes", l)
		}
		if _, err := io.ReadFull(c, buf[:l]); err != nil {
			return err
		}
		ctl, err := frame.ParseControl(buf[:l])
		if err != nil {
			return err
		}
		switch ctl.Type {
		case typ:
			seen++
		case frame.TypeClose:
			return fmt.Errorf("gateway sent CLOSE %v: %s", ctl.Reason, ctl.Text)
		}
	}
	return nil
}
