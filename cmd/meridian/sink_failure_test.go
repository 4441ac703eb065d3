package main

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// With --sink stdout on a full disk (/dev/full), the first flush fails: the
// gateway logs it at error level, gives the station its final ACK (nothing
// stored) and CLOSE(internal error), shuts down gracefully and exits 1.
func TestSinkFailureExitsNonZero(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	c := startWithStdout(t, full, "serve", "--sink", "stdout", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--drain-timeout", "1s")
	addr := c.waitLog(`msg="meridian serving" listen=(\S+)`)[1]
	conn, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(frame.AppendData(nil, []byte("lost on a full disk"))); err != nil {
		t.Fatal(err)
	}
	c.waitLog(`level=ERROR msg="sink failed: no more frames can be stored`)
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	var last *frame.Control
	readControls(conn, func(ctl frame.Control) {
		if ctl.Type == frame.TypeClose {
			last = &ctl
		}
	})
	if last == nil || last.Reason != frame.ReasonInternalError {
		t.Fatalf("station got CLOSE %v, want internal error", last)
	}
	if code := c.exit(); code != 1 {
		t.Fatalf("exit status %d, want 1", code)
	}
	c.waitLog(`msg="stopped after the sink failed"`)
}
