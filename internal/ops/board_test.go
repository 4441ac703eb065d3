package ops

import (
	"encoding/json"
	"io/fs"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/board"
)

func TestBoardJSON(t *testing.T) {
	since := time.Now().Add(-time.Minute)
	last := time.Now().Add(-time.Second)
	sessions := []board.Session{{
		ID: "gs-1@10.0.0.1:4000", Station: "kiruna.gs.example", RemoteAddr: "10.0.0.1:4000",
		TLSIdentity: "kiruna.gs.example", Since: since, Frames: 10, Bytes: 1000, Acked: 8, LastFrame: last,
	}}
	b := board.New(board.Source{
		Sessions: func() []board.Session { return sessions },
		Gateway:  func() (string, string) { return board.GatewayReady, "" },
		Stream:   func() board.StreamStatus { return board.StreamStatus{Configured: true} },
		Queue:    func() board.QueueStatus { return board.QueueStatus{Depth: 3, Capacity: 256} },
	}, board.Options{})
	_, base := start(t, Options{Board: b})
	code, hdr, body := get(t, client(t), base+"/api/board")
	if code != 200 || hdr.Get("Content-Type") != "application/json" || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("/api/board: %d %v", code, hdr)
	}
	var v struct {
		Gateway  struct{ State string }
		Stream   struct{ State string }
		Queue    map[string]int
		Totals   map[string]float64
		Stations []map[string]any
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if v.Gateway.State != "ready" || v.Stream.State != "taking" || v.Queue["capacity_frames"] != 256 || v.Queue["depth_frames"] != 3 {
		t.Errorf("states: %s", body)
	}
	if len(v.Stations) != 1 {
		t.Fatalf("stations: %s", body)
	}
	s := v.Stations[0]
	for k, want := range map[string]any{
		"station": "kiruna.gs.example", "tls_identity": "kiruna.gs.example", "state": "connected",
		"link": "meridian", "framing": "meridian", "frames": 10.0, "frames_acked": 8.0, "ack_lag": 2.0,
	} {
		if s[k] != want {
			t.Errorf("%s = %v, want %v", k, s[k], want)
		}
	}
	// Optional fields are absent, not zero, when the session does not report them.
	for _, k := range []string{"heartbeat_rtt_ms", "link_quality", "disconnected_at"} {
		if _, ok := s[k]; ok {
			t.Errorf("%s present without data: %s", k, body)
		}
	}
	if age, _ := s["last_frame_age_seconds"].(float64); age < 1 {
		t.Errorf("last_frame_age_seconds %v, want at least 1", age)
	}
}

func TestBoardWithoutSource(t *testing.T) {
	_, base := start(t, Options{})
	code, _, body := get(t, client(t), base+"/api/board")
	if code != 200 || !strings.Contains(body, `"stations":[]`) || !strings.Contains(body, `"state":"none"`) {
		t.Errorf("/api/board without a board: %d %s", code, body)
	}
}

func TestBoardPage(t *testing.T) {
	_, base := start(t, Options{})
	c := client(t)
	for path, ctype := range map[string]string{
		"/": "text/html", "/board.js": "text/javascript", "/board.css": "text/css",
	} {
		code, hdr, body := get(t, c, base+path)
		if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), ctype) {
			t.Errorf("%s: %d %q", path, code, hdr.Get("Content-Type"))
		}
		if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("%s: CSP %q", path, csp)
		}
		if hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", path)
		}
		if body == "" {
			t.Errorf("%s: empty", path)
		}
	}
	code, _, _ := get(t, c, base+"/index.html")
	if code != 404 && code != 301 {
		t.Errorf("/index.html: %d; only / serves the page", code)
	}
	code, _, _ = get(t, c, base+"/assets/board.js")
	if code != 404 {
		t.Errorf("/assets/board.js: %d, want 404", code)
	}
}

// TestAssetsSelfContained: control rooms are often air-gapped, so the page
// loads nothing from anywhere but the gateway itself.
func TestAssetsSelfContained(t *testing.T) {
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['"]?https?:`)
	err := fs.WalkDir(assets, "assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(assets, path)
		if err != nil {
			return err
		}
		for _, m := range external.FindAllString(string(b), -1) {
			if m == "http://www.w3.org" { // the SVG namespace name, not a fetch
				continue
			}
			t.Errorf("%s refers to %q: the board must load nothing external", path, m)
		}
		if strings.Contains(string(b), "innerHTML") {
			t.Errorf("%s uses innerHTML: values must go in as text", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
