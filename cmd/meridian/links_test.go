package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeLinks runs the binary with a config file of two ground links, a
// listening ccsds-frame link and a dial-out ccsds-packet link to a test
// equipment server, and checks what an operator sees: the link counters on
// /metrics and /stations, the frames in the stream through meridian tail
// --vc, --print-config, and a clean stop.
func TestServeLinks(t *testing.T) {
	cadus, err := os.ReadFile("../../internal/framing/ccsds/testdata/cadu.bin")
	if err != nil {
		t.Fatal(err)
	}
	packets, err := os.ReadFile("../../internal/framing/ccsds/testdata/packets.bin")
	if err != nil {
		t.Fatal(err)
	}
	equip, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer equip.Close()

	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "meridian.yaml")
	yaml := fmt.Sprintf(`links:
  - name: xband
    listen: 127.0.0.1:0
    framing: ccsds-frame
    frame-length: 1115
    fecf: true
  - name: modem
    dial: %s
    framing: ccsds-packet
    max-length: 4200
`, equip.Addr())
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	pc := start(t, "serve", "--config", cfgFile, "--print-config")
	if code := pc.exit(); code != 0 {
		t.Fatalf("--print-config exit %d: %s", code, pc.stderr)
	}
	if out := pc.stdout.String(); !strings.Contains(out, "links:") || !strings.Contains(out, "frame-length: 1115") || !strings.Contains(out, "max-length: 4200") {
		t.Fatalf("--print-config lacks the links:\n%s", out)
	}

	c := start(t, serveArgs(dir, "--config", cfgFile)...)
	_, httpAddr, natsURL := c.addrs()
	xband := c.waitLog(`msg="link listening" link=xband listen=(\S+)`)[1]

	// The modem serves its packets to whoever connects: the gateway.
	mc, err := equip.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	if _, err := mc.Write(packets); err != nil {
		t.Fatal(err)
	}
	xc, err := net.Dial("tcp", xband)
	if err != nil {
		t.Fatal(err)
	}
	defer xc.Close()
	if _, err := xc.Write(cadus); err != nil {
		t.Fatal(err)
	}
	waitMetrics(t, httpAddr,
		`meridian_link_frames_total{link="xband",result="good"} 24`,
		`meridian_link_frames_total{link="xband",result="bad"} 0`,
		`meridian_link_sequence_gaps_total{link="xband"} 4`,
		`meridian_link_received_bytes_total{link="xband"} 26856`,
		`meridian_link_frames_total{link="modem",result="good"} 49`,
		`meridian_link_sequence_gaps_total{link="modem"} 3`,
		`meridian_link_rejected_total{link="modem",reason="crc"} 0`,
		`meridian_link_connected{link="modem"} 1`,
	)

	type status struct {
		Station string `json:"station"`
		Link    string `json:"link"`
		Framing string `json:"framing"`
		Frames  uint64 `json:"frames"`
		Acked   uint64 `json:"frames_acked"`
		Quality *struct {
			Good uint64 `json:"good"`
			Gaps uint64 `json:"sequence_gaps"`
		} `json:"quality"`
	}
	var (
		stations []status
		body     []byte
	)
	// Polled until the stream has committed everything read: for a ground
	// connection frames_acked is the units committed.
	for deadline := time.Now().Add(wait); ; {
		resp, err := http.Get("http://" + httpAddr + "/stations")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		stations = nil
		if err := json.Unmarshal(body, &stations); err != nil {
			t.Fatalf("/stations %s: %v", body, err)
		}
		committed := 0
		for _, s := range stations {
			if s.Acked == s.Frames && s.Frames > 0 {
				committed++
			}
		}
		if committed == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/stations never showed both connections committed: %s", body)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	seen := map[string]bool{}
	for _, s := range stations {
		seen[s.Link] = true
		switch s.Link {
		case "xband":
			if s.Station != "127.0.0.1" || s.Framing != "ccsds-frame" || s.Frames != 24 || s.Quality == nil || s.Quality.Good != 24 || s.Quality.Gaps != 4 {
				t.Errorf("/stations xband: %s", body)
			}
		case "modem":
			if s.Station != "modem" || s.Framing != "ccsds-packet" || s.Frames != 49 || s.Quality == nil || s.Quality.Gaps != 3 {
				t.Errorf("/stations modem: %s", body)
			}
		}
	}
	if !seen["xband"] || !seen["modem"] {
		t.Errorf("/stations lacks a link: %s", body)
	}

	// VC 7 of the fixture: frames 2, 5, 8, ... (8 of them).
	tail := start(t, "tail", "--nats-url", natsURL, "--data-dir", dir, "--all", "--vc", "7", "--count", "8", "--format", "json")
	if code := tail.exit(); code != 0 {
		t.Fatalf("tail exit %d: %s", code, tail.stderr)
	}
	lines := strings.Split(strings.TrimSpace(tail.stdout.String()), "\n")
	if len(lines) != 8 {
		t.Fatalf("tail --vc 7 printed %d lines:\n%s", len(lines), tail.stdout)
	}
	for _, l := range lines {
		if !strings.Contains(l, `"subject":"telemetry.127-0-0-1.vc7"`) || !strings.Contains(l, `"vcid":7`) || !strings.Contains(l, `"link":"xband"`) {
			t.Errorf("tail --vc 7: %s", l)
		}
	}

	c.cmd.Process.Signal(syscall.SIGTERM)
	if code := c.exit(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}
	c.waitLog(`msg="meridian stopped"`)
}
