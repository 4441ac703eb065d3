package link

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// Equipment that accepts and drops at once is retried with back-off, not
// every Backoff.Min: each connection that ends within Backoff.Max counts
// as a failed attempt. (Timers never fire early, so the lower bounds on
// the gaps between dials are exact.)
func TestDialerBacksOffFromConnectionsThatDrop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var (
		mu  sync.Mutex
		ats []time.Time
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &Dialer{Name: "flap", Addr: ln.Addr().String(), Log: slog.New(slog.DiscardHandler),
		Backoff: Backoff{Min: 2 * time.Millisecond, Max: time.Second}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx, func(c net.Conn) {
			mu.Lock()
			ats = append(ats, time.Now())
			n := len(ats)
			mu.Unlock()
			c.Close()
			if n == 6 {
				cancel()
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the dialer did not connect six times")
	}
	mu.Lock()
	defer mu.Unlock()
	for k := 1; k < len(ats); k++ {
		want := d.Backoff.Min << (k - 1) // 2, 4, 8, 16, 32 ms
		if gap := ats[k].Sub(ats[k-1]); gap < want {
			t.Fatalf("dial %d came %v after the previous connection ended, want at least %v: %v", k+1, gap, want, ats)
		}
	}
}
