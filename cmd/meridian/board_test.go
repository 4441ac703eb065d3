package main

// The station board in a real browser: headless Chromium, driven with
// chromedp, against the real binary. Where Chromium cannot start the test
// skips and says why; the board's JSON is tested without a browser in
// internal/ops and internal/board.
//
// Set MERIDIAN_TEST_BOARD_PNG to a path to also save a screenshot of the
// board there, after about 40 s of traffic (this is how docs/board.png is
// made):
//
//	MERIDIAN_TEST_BOARD_PNG=$PWD/docs/board.png go test -run TestBoardInBrowser -v ./cmd/meridian

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
)

// chromiumPath finds the browser: $CHROMIUM, else the distribution's.
func chromiumPath() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no chromium, chromium-browser or google-chrome on PATH (Debian: apt-get install chromium; or set CHROMIUM)")
}

// browser starts headless Chromium with a fresh profile, or skips the test.
// The flags keep it off the network: on a closed network Chromium otherwise
// hangs on its own background connections.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := chromiumPath()
	if err != nil {
		t.Skipf("board browser test skipped: %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first action starts the browser and binds it to the context it
	// runs on, so it runs on ctx itself, with the deadline kept here.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.Navigate("about:blank")) }()
	select {
	case err = <-started:
	case <-time.After(wait):
		cancelCtx()
		err = <-started
	}
	if err != nil {
		t.Skipf("board browser test skipped: Chromium (%s) did not start: %v", path, err)
	}
	return ctx
}

// natsServer is a JetStream server in the test process, so that the test
// can take the stream away from the gateway.
func natsServer(t *testing.T, token string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: t.TempDir(), JetStreamMaxStore: 256 << 20, JetStreamMaxMemory: 16 << 20,
		Authorization: token,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(wait) {
		t.Fatal("NATS server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// tlsStation is a station connection that keeps reading ACKs.
type tlsStation struct {
	t     *testing.T
	conn  *tls.Conn
	mu    sync.Mutex // serialises writes
	acked atomic.Uint64
	read  chan struct{} // closed when the reader returns
}

func dialStation(t *testing.T, addr string, cfg *tls.Config) *tlsStation {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsStation{t: t, conn: c, read: make(chan struct{})}
	go func() {
		defer close(s.read)
		readControls(c, func(ctl frame.Control) {
			if ctl.Type == frame.TypeAck {
				s.acked.Store(ctl.Ack)
			}
		})
	}()
	t.Cleanup(func() { c.Close(); <-s.read })
	return s
}

func (s *tlsStation) send(n int, size int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	payload := make([]byte, size)
	for range n {
		if _, err := s.conn.Write(frame.AppendData(nil, payload)); err != nil {
			return err
		}
	}
	return nil
}

func (s *tlsStation) waitAcked(n uint64) {
	s.t.Helper()
	deadline := time.Now().Add(wait)
	for s.acked.Load() < n {
		if time.Now().After(deadline) {
			s.t.Fatalf("acked %d, want %d", s.acked.Load(), n)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// hangUp ends the session the protocol's way: half-close, final ACK, EOF.
func (s *tlsStation) hangUp() {
	s.t.Helper()
	if err := s.conn.CloseWrite(); err != nil {
		s.t.Fatal(err)
	}
	select {
	case <-s.read:
	case <-time.After(wait):
		s.t.Fatal("no EOF after half-close")
	}
	s.conn.Close()
}

// boardState is what the page shows, read from its DOM.
type boardState struct {
	Gateway string     `json:"gateway"`
	Stream  string     `json:"stream"`
	Text    string     `json:"streamText"`
	Rows    []boardRow `json:"rows"`
}

type boardRow struct {
	Station string `json:"station"`
	State   string `json:"state"`
	Label   string `json:"label"`
	Frames  string `json:"frames"`
	Acked   string `json:"acked"`
	Lag     string `json:"lag"`
}

func (b boardState) row(station string) (boardRow, bool) {
	for _, r := range b.Rows {
		if r.Station == station {
			return r, true
		}
	}
	return boardRow{}, false
}

const readBoard = `JSON.stringify({
  gateway: document.getElementById("gateway").dataset.state,
  stream: document.getElementById("stream").dataset.state,
  streamText: document.getElementById("stream").textContent.replace(/\s+/g, " ").trim(),
  rows: Array.from(document.querySelectorAll("#rows tr")).map(r => ({
    station: r.dataset.station,
    state: r.dataset.state,
    label: r.querySelector('[data-field="state"]').textContent,
    frames: r.querySelector('[data-field="frames"]').textContent,
    acked: r.querySelector('[data-field="acked"]').textContent,
    lag: r.querySelector('[data-field="lag"]').textContent.replace("lag ", ""),
  })),
})`

// waitBoard reads the page until ok holds or within runs out, and returns
// what it saw last.
func waitBoard(t *testing.T, ctx context.Context, within time.Duration, what string, ok func(boardState) bool) boardState {
	t.Helper()
	deadline := time.Now().Add(within)
	var last boardState
	for {
		js, err := chromedp.Run(ctx, chromedp.Evaluate[string](readBoard))
		if err != nil {
			t.Fatalf("reading the board: %v", err)
		}
		last = boardState{}
		if err := json.Unmarshal([]byte(js), &last); err != nil {
			t.Fatalf("%v: %s", err, js)
		}
		if ok(last) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("board: %s not shown within %v; it shows %+v", what, within, last)
		}
		time.Sleep(20 * time.Millisecond) // polling the DOM with a deadline
	}
}

func TestBoardInBrowser(t *testing.T) {
	ctx := browser(t)
	screenshot := os.Getenv("MERIDIAN_TEST_BOARD_PNG")

	const token = "board-test-token"
	ns := natsServer(t, token)
	ca := tlstest.NewCA(t, "board test CA")
	cert := ca.Server(t)
	c := start(t, serveArgs(t.TempDir(), "--nats-url", ns.ClientURL(), "--nats-token", token,
		"--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile, "--tls-client-ca", ca.CertFile)...)
	addr, httpAddr, _ := c.addrs()

	station := func(name string) *tlsStation {
		return dialStation(t, addr, ca.ClientConfig(ca.Client(t, name)))
	}
	kiruna, svalbard := station("kiruna.gs.example"), station("svalbard.gs.example")
	if err := kiruna.send(12, 200); err != nil {
		t.Fatal(err)
	}
	if err := svalbard.send(7, 1000); err != nil {
		t.Fatal(err)
	}
	kiruna.waitAcked(12)
	svalbard.waitAcked(7)

	// 3. The board shows both stations with their counts.
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+httpAddr+"/")); err != nil {
		t.Fatal(err)
	}
	counts := func(r boardRow, frames, acked string) bool {
		return r.State == "connected" && strings.Contains(r.Label, "connected") && r.Frames == frames && r.Acked == acked && r.Lag == "0"
	}
	waitBoard(t, ctx, wait, "two connected stations with 12 and 7 frames, all acknowledged", func(b boardState) bool {
		k, ok1 := b.row("kiruna.gs.example")
		s, ok2 := b.row("svalbard.gs.example")
		return ok1 && ok2 && counts(k, "12", "12") && counts(s, "7", "7") &&
			b.Gateway == "ready" && b.Stream == "taking" && strings.Contains(b.Text, "taking frames")
	})

	if screenshot != "" {
		traffic(t, ctx, station, kiruna, svalbard, screenshot)
	}

	// 4. One disconnects: the board shows it within 2 s.
	svalbard.hangUp()
	waitBoard(t, ctx, 2*time.Second, "svalbard disconnected, kiruna still connected", func(b boardState) bool {
		k, _ := b.row("kiruna.gs.example")
		s, _ := b.row("svalbard.gs.example")
		return s.State == "disconnected" && strings.Contains(s.Label, "disconnected") && k.State == "connected"
	})

	// 5. The stream goes away: the board says so.
	ns.Shutdown()
	ns.WaitForShutdown()
	waitBoard(t, ctx, wait, "the stream in an outage", func(b boardState) bool {
		return b.Stream == "outage" && strings.Contains(b.Text, "OUTAGE") && strings.Contains(b.Text, "since")
	})
}

// traffic runs a few stations for about 40 s, so that the sparklines have a
// history, with one station gone quiet and one disconnected, then saves a
// screenshot of the board to path.
func traffic(t *testing.T, ctx context.Context, station func(string) *tlsStation, kiruna, svalbard *tlsStation, path string) {
	t.Helper()
	quiet := station("hartebeesthoek.gs.example")
	gone := station("inuvik.gs.example")
	if err := quiet.send(40, 400); err != nil {
		t.Fatal(err)
	}
	if err := gone.send(25, 600); err != nil {
		t.Fatal(err)
	}
	gone.waitAcked(25)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pace := func(s *tlsStation, size int, rate func(sec float64) float64) {
		wg.Go(func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			begin := time.Now()
			var owed float64
			for {
				select {
				case <-stop:
					return
				case now := <-tick.C:
					owed += rate(now.Sub(begin).Seconds()) / 10
					n := int(owed)
					owed -= float64(n)
					if n > 0 && s.send(n, size) != nil {
						return
					}
				}
			}
		})
	}
	pace(kiruna, 220, func(s float64) float64 { return 40 + 25*math.Sin(s/6) })
	pace(svalbard, 1100, func(s float64) float64 { return 12 + 10*math.Max(0, math.Sin(s/4)) })
	defer func() { close(stop); wg.Wait() }()
	end := time.After(12 * time.Second)
	<-end
	gone.hangUp()
	waitBoard(t, ctx, 30*time.Second, "hartebeesthoek quiet, inuvik disconnected", func(b boardState) bool {
		q, _ := b.row("hartebeesthoek.gs.example")
		g, _ := b.row("inuvik.gs.example")
		return q.State == "quiet" && g.State == "disconnected"
	})
	<-time.After(28 * time.Second) // more history for the sparklines: pacing, not synchronisation
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("board screenshot: %s (%s bytes)", path, strconv.Itoa(len(png)))
}
