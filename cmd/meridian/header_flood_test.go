package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// headerFloodConns and headerFloodBound are the documented bound of
// docs/operations.md (section limits): a connection that sent only a header
// announcing --max-frame costs the gateway at most this much memory, since
// a frame's buffer grows with the bytes that arrive, never with what a
// header announces.
const (
	headerFloodConns = 2000
	headerFloodBound = 32 << 10 // bytes of RSS per connection
)

// 2,000 connections each send a header announcing a 16 MiB frame and
// nothing more. Before the buffer grew with what arrives, each header
// allocated its frame's 16 MiB (32 GiB in all); now the gateway's peak RSS
// grows by at most headerFloodBound per connection. The frame timeout
// ending all 2,000 sessions proves that every header was read.
func TestHeaderFloodAllocatesNothing(t *testing.T) {
	c := start(t, serveArgs(t.TempDir(), "--sink", "discard", "--max-frame", "16MiB",
		"--frame-timeout", "3s", "--max-sessions", "5000")...)
	addr, httpAddr, _ := c.addrs()
	before := peakRSS(t, c.cmd.Process.Pid)

	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 16<<20)
	conns := make([]net.Conn, 0, headerFloodConns)
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	for range headerFloodConns {
		cn, err := net.DialTimeout("tcp", addr, wait)
		if err != nil {
			t.Fatalf("dial after %d connections: %v", len(conns), err)
		}
		conns = append(conns, cn)
		if _, err := cn.Write(hdr[:]); err != nil {
			t.Fatal(err)
		}
	}
	timedOut := regexp.MustCompile(`(?m)^meridian_sessions_ended_total\{reason="frame_timeout"\} (\d+)`)
	deadline := time.Now().Add(wait)
	for {
		n := -1
		if resp, err := http.Get("http://" + httpAddr + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := timedOut.FindSubmatch(b); m != nil {
				n, _ = strconv.Atoi(string(m[1]))
			}
		}
		if n == headerFloodConns {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions ended by the frame timeout, want %d", n, headerFloodConns)
		}
		time.Sleep(50 * time.Millisecond) // polling a child process's metrics
	}
	after := peakRSS(t, c.cmd.Process.Pid)
	perConn := (after - before) / headerFloodConns
	t.Logf("peak RSS %d MiB → %d MiB: %d bytes per connection", before>>20, after>>20, perConn)
	bound := int64(headerFloodBound)
	if raceEnabled {
		// The race detector's shadow memory and its larger goroutines
		// cost about 90 KiB per connection here; still nothing like the
		// 16 MiB that each header announced.
		bound = 256 << 10
	}
	if perConn > bound {
		t.Fatalf("peak RSS grew by %d bytes per connection that sent only a header, bound %d", perConn, bound)
	}
}

// peakRSS is the process's peak resident memory (VmHWM).
func peakRSS(t testing.TB, pid int) int64 { return procStatus(t, pid, "VmHWM") }
