package link

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"time"
)

// Backoff is the reconnect schedule of a dial-out link: Min, doubling per
// failed attempt up to Max, each delay jittered by ±Jitter so that links
// to the same equipment do not retry in step.
type Backoff struct {
	Min, Max time.Duration
	Jitter   float64 // fraction, 0 to 1
}

// DefaultBackoff is 100 ms doubling to 10 s, ±20 %.
func DefaultBackoff() Backoff {
	return Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.2}
}

// Delay is the wait before attempt n (n ≥ 1 failed attempts so far).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Min
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if b.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + b.Jitter*(2*rand.Float64()-1)))
	}
	return d
}

// Dialer connects a dial-out link to equipment that serves TCP, and
// reconnects for as long as its context lasts.
type Dialer struct {
	Name    string // the link's name, for logs
	Addr    string // host:port
	Backoff Backoff
	Timeout time.Duration // bound of one connection attempt; 0: 5 s
	Log     *slog.Logger
}

// Run dials until ctx ends. Each connection is handed to serve, on Run's
// goroutine, which returns once the connection has ended; Run then waits
// Backoff.Min and dials again, or longer (as after a failed attempt) when
// the connection lasted less than Backoff.Max: equipment that accepts and
// drops at once is retried with back-off, not every Backoff.Min. A failed
// attempt is retried after Backoff.Delay; an outage is logged once when it
// begins and once when it ends. Run returns when ctx ends, without a goroutine left behind.
func (d *Dialer) Run(ctx context.Context, serve func(net.Conn)) {
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	nd := net.Dialer{Timeout: timeout}
	// failed counts, in a row, dial failures and connections that ended
	// within Backoff.Max: equipment that accepts and drops at once is no
	// recovery, and must not be redialled every Backoff.Min in lockstep.
	failed := 0
	attempts := 0 // dials since the outage began; 0: no outage
	wait := time.Duration(0)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		if wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		conn, err := nd.DialContext(ctx, "tcp", d.Addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failed++
			attempts++
			if attempts == 1 {
				d.Log.Warn("link "+d.Name+": equipment unreachable; retrying", "link", d.Name, "dial", d.Addr, "err", err)
			}
			wait = d.Backoff.Delay(failed)
			continue
		}
		if attempts > 0 {
			d.Log.Info("link "+d.Name+": connected again after "+strconv.Itoa(attempts+1)+" attempts", "link", d.Name, "dial", d.Addr, "attempts", attempts+1)
			attempts = 0
		}
		began := time.Now()
		serve(conn)
		if time.Since(began) >= d.Backoff.Max {
			failed = 0
		} else {
			failed++
		}
		wait = d.Backoff.Delay(max(failed, 1))
	}
}
