package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs a Server on a real 127.0.0.1 listener and shuts it down when
// the test ends. It returns the base URL.
func start(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(opts)
	if err := s.Start(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s, "http://" + s.Addr().String()
}

// client has its own transport so that idle keep-alive connections are
// closed with the test and goleak sees no stray goroutines.
func client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}

func TestMetricsAndHealth(t *testing.T) {
	reg := prometheus.NewRegistry()
	ctr := prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_test_total", Help: "test"})
	reg.MustRegister(ctr)
	ctr.Add(3)
	_, base := start(t, Options{Gatherer: reg})
	c := client(t)

	code, _, body := get(t, c, base+"/metrics")
	if code != 200 || !strings.Contains(body, "meridian_test_total 3") {
		t.Errorf("/metrics: %d %q", code, body)
	}
	code, _, body = get(t, c, base+"/healthz")
	if code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	code, _, _ = get(t, c, base+"/nope")
	if code != 404 {
		t.Errorf("/nope: %d, want 404", code)
	}
	resp, err := c.Post(base+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", resp.StatusCode)
	}
}

func TestReadyz(t *testing.T) {
	errDraining := errors.New("draining")
	f := func(ready func() error, wantCode int, wantBody string) {
		t.Helper()
		_, base := start(t, Options{Ready: ready, Gatherer: prometheus.NewRegistry()})
		code, _, body := get(t, client(t), base+"/readyz")
		if code != wantCode || body != wantBody {
			t.Errorf("got %d %q, want %d %q", code, body, wantCode, wantBody)
		}
	}
	f(nil, 200, "ready\n")
	f(func() error { return nil }, 200, "ready\n")
	f(func() error { return errDraining }, 503, "not ready: draining\n")
	f(func() error { return fmt.Errorf("stream: %w", errors.New("no JetStream quorum")) }, 503, "not ready: stream: no JetStream quorum\n")
}

func TestStations(t *testing.T) {
	since := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	list := []StationStatus{
		{ID: "s2", Station: "svalbard", RemoteAddr: "10.0.0.2:5000", ConnectedSince: since},
		{
			ID: "s1", Station: "kiruna", RemoteAddr: "10.0.0.1:4000", TLSIdentity: "kiruna.gs.example",
			ConnectedSince: since, Frames: 10, Bytes: 1000, LastFrameAt: since.Add(time.Minute),
			FramesPerSecond: 2.5, FramesAcked: 8,
		},
	}
	_, base := start(t, Options{Stations: func() []StationStatus { return list }})
	code, hdr, body := get(t, client(t), base+"/stations")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("/stations: %d %s", code, hdr.Get("Content-Type"))
	}
	var got []map[string]any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if len(got) != 2 || got[0]["station"] != "kiruna" || got[1]["station"] != "svalbard" {
		t.Fatalf("want both stations sorted by name, got %s", body)
	}
	k := got[0]
	for key, want := range map[string]any{
		"id": "s1", "remote_addr": "10.0.0.1:4000", "tls_identity": "kiruna.gs.example",
		"connected_since": "2025-03-01T12:00:00Z", "last_frame_at": "2025-03-01T12:01:00Z",
		"frames": 10.0, "bytes": 1000.0, "frames_per_second": 2.5, "frames_acked": 8.0,
	} {
		if k[key] != want {
			t.Errorf("%s: got %v, want %v", key, k[key], want)
		}
	}
	if _, ok := got[1]["last_frame_at"]; ok {
		t.Errorf("a station without frames must omit last_frame_at: %s", body)
	}
	if _, ok := got[1]["tls_identity"]; ok {
		t.Errorf("a station without TLS must omit tls_identity: %s", body)
	}

	for name, fn := range map[string]func() []StationStatus{"nil func": nil, "nil slice": func() []StationStatus { return nil }} {
		_, base := start(t, Options{Stations: fn})
		if _, _, body := get(t, client(t), base+"/stations"); strings.TrimSpace(body) != "[]" {
			t.Errorf("%s: got %q, want []", name, body)
		}
	}
}

func TestPProf(t *testing.T) {
	_, off := start(t, Options{})
	if code, _, _ := get(t, client(t), off+"/debug/pprof/"); code != 404 {
		t.Errorf("pprof off: %d, want 404", code)
	}
	_, on := start(t, Options{PProf: true})
	code, _, body := get(t, client(t), on+"/debug/pprof/")
	if code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("pprof on: %d", code)
	}
	if code, _, _ := get(t, client(t), on+"/debug/pprof/goroutine?debug=1"); code != 200 {
		t.Errorf("pprof goroutine: %d", code)
	}
}

// Shutdown waits for a request in flight, and a second Start is refused.
func TestShutdownWaitsForInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Stations: func() []StationStatus {
		close(entered)
		<-release
		return nil
	}})
	if err := s.Start(ln); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ln); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start: %v, want ErrStarted", err)
	}
	c := client(t)
	respc := make(chan int, 1)
	go func() {
		resp, err := c.Get("http://" + s.Addr().String() + "/stations")
		if err != nil {
			respc <- -1
			return
		}
		resp.Body.Close()
		respc <- resp.StatusCode
	}()
	<-entered

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-respc:
		t.Fatal("request finished before release")
	default:
	}
	close(release)
	if code := <-respc; code != 200 {
		t.Errorf("in-flight request: %d, want 200", code)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := s.Start(ln); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Shutdown: %v, want ErrClosed", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// When the grace period ends, Shutdown forces the rest closed and says so.
func TestShutdownDeadline(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	s := New(Options{Ready: func() error {
		close(entered)
		<-release
		return nil
	}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ln); err != nil {
		t.Fatal(err)
	}
	c := client(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := c.Get("http://" + s.Addr().String() + "/readyz"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a grace period that is already over
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown: %v, want context.Canceled", err)
	}
	<-done // the forced close cut the client off
}

func TestListenAndStart(t *testing.T) {
	s := New(Options{Addr: "127.0.0.1:0"})
	if err := s.ListenAndStart(); err != nil {
		t.Fatal(err)
	}
	code, _, _ := get(t, client(t), "http://"+s.Addr().String()+"/healthz")
	if code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	bad := New(Options{Addr: "127.0.0.1:-1"})
	if err := bad.ListenAndStart(); err == nil {
		t.Error("ListenAndStart on a bad address: no error")
	}
	if err := bad.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown of a server never started: %v", err)
	}
}
