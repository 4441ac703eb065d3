package gateway_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/tlsid"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
)

// tlsGateway starts a gateway serving TLS with cert from ca; with mutual it
// requires client certificates from the same CA.
func tlsGateway(t *testing.T, cfg gateway.Config, ca *tlstest.CA, mutual bool, allow ...string) (*gatewaytest.Gateway, *sink.Memory) {
	t.Helper()
	g, mem, _ := tlsGatewayObserved(t, cfg, ca, mutual, allow...)
	return g, mem
}

// tlsGatewayObserved is tlsGateway with the observer it reports to.
func tlsGatewayObserved(t *testing.T, cfg gateway.Config, ca *tlstest.CA, mutual bool, allow ...string) (*gatewaytest.Gateway, *sink.Memory, *countingObserver) {
	t.Helper()
	obs := &countingObserver{}
	srv := ca.Server(t)
	files := tlsid.Files{Cert: srv.CertFile, Key: srv.KeyFile}
	if mutual {
		files.ClientCA = ca.CertFile
	}
	ld, err := tlsid.Load(files)
	if err != nil {
		t.Fatal(err)
	}
	opts := []gateway.Option{gateway.WithTLS(ld.Config(), tlsid.Identity), gateway.WithObserver(obs)}
	if len(allow) > 0 {
		al, err := tlsid.NewAllowList(allow)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, gateway.WithAllow(al.Allowed))
	}
	mem := sink.NewMemory()
	return gatewaytest.Start(t, cfg, mem, opts...), mem, obs
}

// TestSameCaseOverTCPAndTLS runs one station conversation over both
// transports: frames in, ACKs out, clean half-close, final ACK.
func TestSameCaseOverTCPAndTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "meridian test CA")
	for _, tc := range []struct {
		name string
		dial func(t *testing.T) (*testStation, *sink.Memory)
	}{
		{"tcp", func(t *testing.T) (*testStation, *sink.Memory) {
			mem := sink.NewMemory()
			g := gatewaytest.Start(t, gatewaytest.Config(), mem)
			return dial(t, g.Addr), mem
		}},
		{"tls", func(t *testing.T) (*testStation, *sink.Memory) {
			g, mem := tlsGateway(t, gatewaytest.Config(), ca, false)
			st, err := dialTLS(t, g.Addr, ca.ClientConfig())
			if err != nil {
				t.Fatal(err)
			}
			return st, mem
		}},
		{"mtls", func(t *testing.T) (*testStation, *sink.Memory) {
			g, mem := tlsGateway(t, gatewaytest.Config(), ca, true)
			st, err := dialTLS(t, g.Addr, ca.ClientConfig(ca.Client(t, "gs-kiruna.example.net")))
			if err != nil {
				t.Fatal(err)
			}
			return st, mem
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, mem := tc.dial(t)
			var want [][]byte
			for i := range 300 {
				want = append(want, payload(0, i))
			}
			st.send(want[:100]...)
			st.ackAtLeast(100, wait)
			st.send(want[100:]...)
			last, cl := st.finish(wait)
			if last != 300 || cl != nil {
				t.Fatalf("final ACK %d, CLOSE %v", last, cl)
			}
			frames := mem.Frames()
			checkPrefix(t, frames, want)
			wantStation := "127.0.0.1"
			if tc.name == "mtls" {
				wantStation = "gs-kiruna.example.net"
			}
			if frames[0].Station != wantStation {
				t.Fatalf("station identity %q, want %q", frames[0].Station, wantStation)
			}
		})
	}
}

func TestTLSRejections(t *testing.T) {
	ca := tlstest.NewCA(t, "meridian test CA")
	other := tlstest.NewCA(t, "someone else's CA")
	g, mem := tlsGateway(t, gatewaytest.Config(), ca, true, "gs-*.example.net")

	handshakeFails := func(name string, cfg *tls.Config) {
		t.Run(name, func(t *testing.T) {
			st, err := dialTLS(t, g.Addr, cfg)
			if err == nil {
				// With TLS 1.3 the client learns of a refused certificate
				// on its first read, after its handshake returned.
				_, err = st.next(wait)
			}
			if err == nil {
				t.Fatalf("a station with %s got in", name)
			}
		})
	}
	expired := ca.Issue(t, tlstest.Options{
		CommonName: "gs-old.example.net", DNSNames: []string{"gs-old.example.net"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	handshakeFails("an expired certificate", ca.ClientConfig(expired))
	wrong := other.Client(t, "gs-wrong.example.net")
	wrongCfg := ca.ClientConfig()
	// Go's client sends only certificates the server's CA list names; force it.
	wrongCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &wrong.TLS, nil }
	handshakeFails("a certificate from the wrong CA", wrongCfg)
	handshakeFails("no client certificate", ca.ClientConfig())

	t.Run("an identity not on the allow-list", func(t *testing.T) {
		st, err := dialTLS(t, g.Addr, ca.ClientConfig(ca.Client(t, "intruder.example.org")))
		if err != nil {
			t.Fatal(err)
		}
		st.send([]byte("must not reach the sink"))
		_, cl := st.drainToEOF(wait)
		if cl == nil || cl.Reason != frame.ReasonUnauthorized {
			t.Fatalf("got CLOSE %v, want not authorized", cl)
		}
	})
	t.Run("an identity on the allow-list", func(t *testing.T) {
		st, err := dialTLS(t, g.Addr, ca.ClientConfig(ca.Client(t, "gs-1.example.net")))
		if err != nil {
			t.Fatal(err)
		}
		st.send([]byte("welcome"))
		if last, cl := st.finish(wait); last != 1 || cl != nil {
			t.Fatalf("final ACK %d CLOSE %v", last, cl)
		}
	})
	frames := mem.Frames()
	if len(frames) != 1 || frames[0].Station != "gs-1.example.net" {
		t.Fatalf("sink holds %v, want only the allowed station's frame", frames)
	}
}

// dialFrom connects from a chosen loopback address, so that per-IP limits
// can be exercised on one machine (127.0.0.0/8 is all loopback on Linux).
func dialFrom(t *testing.T, src, addr string) *testStation {
	t.Helper()
	d := net.Dialer{Timeout: wait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	return wrap(t, c.(*net.TCPConn))
}

func expectBusy(t *testing.T, st *testStation) {
	t.Helper()
	last, cl := st.drainToEOF(wait)
	if cl == nil || cl.Reason != frame.ReasonBusy || last != 0 {
		t.Fatalf("got ACK %d CLOSE %v, want CLOSE server busy", last, cl)
	}
}

func TestSessionLimits(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.MaxSessions = 3
	cfg.MaxSessionsPerIP = 2
	g := gatewaytest.Start(t, cfg, sink.NewDiscard())
	live := func(st *testStation) {
		t.Helper()
		st.send([]byte("x"))
		st.ackAtLeast(1, wait)
	}
	a1 := dialFrom(t, "127.0.0.1", g.Addr)
	live(a1)
	a2 := dialFrom(t, "127.0.0.1", g.Addr)
	live(a2)
	expectBusy(t, dialFrom(t, "127.0.0.1", g.Addr)) // third from one IP
	b1 := dialFrom(t, "127.0.0.2", g.Addr)
	live(b1)
	expectBusy(t, dialFrom(t, "127.0.0.3", g.Addr)) // fourth overall
	// A slot freed is a slot available again.
	a1.finish(wait)
	eventually(t, "the session to end", func() bool { return len(g.Server.Sessions()) == 2 })
	live(dialFrom(t, "127.0.0.3", g.Addr))
}

// TestFloodHoldsLimits opens a bounded flood of connections while one
// well-behaved station streams: the limit holds, and the station keeps
// getting every ACK.
func TestFloodHoldsLimits(t *testing.T) {
	const limit, flood, workers = 16, 2000, 32
	cfg := gatewaytest.Config()
	cfg.MaxSessions = limit
	g := gatewaytest.Start(t, cfg, sink.NewDiscard())
	good := dial(t, g.Addr)
	good.send([]byte("first"))
	good.ackAtLeast(1, wait)

	var busy, peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // watch the number of live sessions
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if n := int64(len(g.Server.Sessions())); n > peak.Load() {
					peak.Store(n)
				}
			}
		}
	})
	jobs := make(chan int)
	var fw sync.WaitGroup
	for range workers {
		fw.Go(func() {
			for range jobs {
				c, err := net.DialTimeout("tcp", g.Addr, wait)
				if err != nil {
					continue
				}
				// Hold the connection until the gateway closes it or a
				// short while passes, so that the flood fills the limit.
				_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				buf := make([]byte, 64)
				n, _ := io.ReadFull(c, buf[:4])
				if n == 4 {
					l := int(buf[3])
					if _, err := io.ReadFull(c, buf[:l]); err == nil {
						if ctl, err := frame.ParseControl(buf[:l]); err == nil && ctl.Type == frame.TypeClose && ctl.Reason == frame.ReasonBusy {
							busy.Add(1)
						}
					}
				}
				c.Close()
			}
		})
	}
	// The good station streams through the flood.
	sent := uint64(1)
	go func() {
		for i := range flood {
			jobs <- i
		}
		close(jobs)
	}()
	for i := range 200 {
		good.send(payload(1, i))
		sent++
		good.ackAtLeast(sent, wait)
	}
	fw.Wait()
	close(stop)
	wg.Wait()
	if p := peak.Load(); p > limit {
		t.Fatalf("peak of %d live sessions over the limit of %d", p, limit)
	}
	if busy.Load() == 0 {
		t.Fatal("no connection was refused with server busy")
	}
	last, _ := good.finish(wait)
	if last != sent {
		t.Fatalf("good station: final ACK %d, sent %d", last, sent)
	}
	t.Logf("refused %d of %d flood connections; peak %d sessions", busy.Load(), flood, peak.Load())
}

// TestLameDuckSpreadsGoAways checks that GOAWAYs go out spread over the
// lame-duck period: the last one cannot come before its slot.
func TestLameDuckSpreadsGoAways(t *testing.T) {
	const n = 5
	cfg := gatewaytest.Config()
	cfg.LameDuck = 400 * time.Millisecond
	cfg.DrainTimeout = time.Second
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, cfg, mem)
	stations := make([]*testStation, n)
	for i := range stations {
		stations[i] = dial(t, g.Addr)
		stations[i].send(payload(i, 0))
		stations[i].ackAtLeast(1, wait)
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- g.Shutdown(t, wait) }()
	var latest time.Duration
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, st := range stations {
		wg.Go(func() {
			st.expect(frame.TypeGoAway, wait)
			at := time.Since(start)
			mu.Lock()
			latest = max(latest, at)
			mu.Unlock()
			st.send(payload(i, 1)) // still accepted after GOAWAY
			last, cl := st.finish(wait)
			if last != 2 || cl == nil || cl.Reason != frame.ReasonShutdown {
				t.Errorf("station %d: final ACK %d CLOSE %v", i, last, cl)
			}
		})
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The spacing itself is exact on the fake clock
	// (TestLameDuckSpacingOnTheClock); over TCP, only that the spread
	// really took the lame-duck period is certain (timers never fire early).
	if earliest := cfg.LameDuck * (n - 1) / n; latest < earliest {
		t.Fatalf("last GOAWAY after %v, want at least %v", latest, earliest)
	}
	if mem.Len() != 2*n {
		t.Fatalf("sink holds %d frames, want %d", mem.Len(), 2*n)
	}
}

// A connection that never starts its TLS handshake is closed after the
// handshake timeout and never becomes a session.
func TestTLSHandshakeTimeout(t *testing.T) {
	ca := tlstest.NewCA(t, "meridian test CA")
	cfg := gatewaytest.Config()
	cfg.TLSHandshakeTimeout = 200 * time.Millisecond
	g, _, obs := tlsGatewayObserved(t, cfg, ca, false)
	start := time.Now() // before the dial: the gateway's clock starts at its accept
	c, err := net.Dial("tcp", g.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("the gateway did not close the silent connection: %v", err)
	}
	if took := time.Since(start); took < cfg.TLSHandshakeTimeout {
		t.Fatalf("closed after %v, before the handshake timeout", took)
	}
	// Counted as a failed handshake (the handshake's timeout closes the
	// socket just before the gateway counts it), never started as a
	// session.
	eventually(t, "the failed handshake to be counted", func() bool { return obs.tlsFailures.Load() == 1 })
	if n := obs.started.Load(); n != 0 {
		t.Fatalf("%d sessions started for a connection that never handshook", n)
	}
}
