package gateway_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// readControl reads gateway frames from c until EOF or an error, sending
// each to out; it closes out at the end.
func readControl(c net.Conn, out chan<- frame.Control) {
	defer close(out)
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		p := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(c, p); err != nil {
			return
		}
		if ctl, err := frame.ParseControl(p); err == nil {
			out <- ctl
		}
	}
}

// On accept errors that may pass (out of file descriptors), Serve backs off
// 5 ms, doubling to 1 s, resets after a good accept, and a shutdown does not
// wait for the back-off to end. On the fake clock the delays are exact.
func TestAcceptBackOffOnTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		obs := &countingObserver{}
		srv, err := gateway.New(gatewaytest.Config(), sink.NewDiscard(), gatewaytest.Logger(), gateway.WithObserver(obs))
		if err != nil {
			t.Fatal(err)
		}
		ln := newPipeListener()
		emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept", syscall.EMFILE)}
		var (
			mu    sync.Mutex
			calls []time.Duration
			fails = 4
		)
		start := time.Now()
		ln.setFail(func() error {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, time.Since(start))
			if fails > 0 {
				fails--
				return emfile
			}
			return nil
		})
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()

		c, err := ln.dial() // accepted once the four failures are behind
		if err != nil {
			t.Fatal(err)
		}
		c.Write(frame.AppendData(nil, []byte("x")))
		synctest.Wait()
		mu.Lock()
		got := slices.Clone(calls)
		fails = 1 << 30 // from now on every accept fails
		mu.Unlock()
		want := []time.Duration{0, 5 * time.Millisecond, 15 * time.Millisecond, 35 * time.Millisecond, 75 * time.Millisecond, 75 * time.Millisecond}
		if !slices.Equal(got, want) {
			t.Fatalf("accept calls at %v, want %v (5, 10, 20, 40 ms of back-off, reset by the good accept)", got, want)
		}
		if n := obs.acceptErrors.Load(); n != 4 {
			t.Fatalf("%d accept errors counted, want 4", n)
		}

		// A second connection frees the accept loop, which from then on
		// fails: the back-off grows to its 1 s cap. A shutdown in the
		// middle of a 1 s wait makes Serve return at once.
		c.Close()
		c2, err := ln.dial()
		if err != nil {
			t.Fatal(err)
		}
		ctl := make(chan frame.Control, 8)
		go readControl(c2, ctl)
		go func() {
			for range ctl {
			}
			c2.Close()
		}()
		time.Sleep(5 * time.Second)
		mu.Lock()
		last := calls[len(calls)-1]
		gap := last - calls[len(calls)-2]
		mu.Unlock()
		if gap != time.Second {
			t.Fatalf("back-off after many failures is %v, want the 1 s cap", gap)
		}
		time.Sleep(300 * time.Millisecond)
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut := make(chan error, 1)
		go func() { shut <- srv.Shutdown(ctx) }()
		if err := <-served; !errors.Is(err, gateway.ErrServerClosed) {
			t.Fatalf("Serve = %v", err)
		}
		if held := time.Since(began); held != 0 {
			t.Fatalf("Serve returned %v after the shutdown began: it waited for the accept back-off", held)
		}
		if err := <-shut; err != nil {
			t.Fatal(err)
		}
	})
}

// With a lame-duck period the GOAWAYs go out evenly spread over it: the
// k-th of n at exactly k × period / n on the fake clock, neither earlier
// nor later.
func TestLameDuckSpacingOnTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 5
		cfg := gatewaytest.Config()
		cfg.LameDuck = 500 * time.Millisecond
		cfg.DrainTimeout = time.Second
		cfg.Heartbeat = 0
		srv, err := gateway.New(cfg, sink.NewMemory(), gatewaytest.Logger())
		if err != nil {
			t.Fatal(err)
		}
		ln := newPipeListener()
		go srv.Serve(ln)
		var (
			mu  sync.Mutex
			at  []time.Duration
			wg  sync.WaitGroup
			beg time.Time
		)
		for range n {
			c, err := ln.dial()
			if err != nil {
				t.Fatal(err)
			}
			ctl := make(chan frame.Control, 8)
			go readControl(c, ctl)
			wg.Go(func() {
				defer c.Close()
				for f := range ctl {
					if f.Type == frame.TypeGoAway {
						mu.Lock()
						at = append(at, time.Since(beg))
						mu.Unlock()
					}
				}
			})
		}
		synctest.Wait() // every session registered
		if got := len(srv.Sessions()); got != n {
			t.Fatalf("%d sessions, want %d", got, n)
		}
		beg = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		slices.Sort(at)
		step := cfg.LameDuck / n
		for k, d := range at {
			if d != time.Duration(k)*step {
				t.Fatalf("GOAWAYs at %v, want one every %v from 0", at, step)
			}
		}
		if len(at) != n {
			t.Fatalf("%d GOAWAYs, want %d", len(at), n)
		}
	})
}

// A listener that fails for good does not cut the sessions already open:
// Serve returns the error, and the graceful shutdown that follows gives
// every station its GOAWAY and final ACK with every frame stored.
func TestListenerFailureTakesTheGracefulPath(t *testing.T) {
	mem := sink.NewMemory()
	srv, err := gateway.New(gatewaytest.Config(), mem, gatewaytest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := errors.New("listener gone") // not an errno: permanent
	ln := &failingListener{Listener: tcp, fail: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	st := dial(t, tcp.Addr().String())
	st.send(payload(0, 0))
	st.ackAtLeast(1, wait)

	ln.err = gone
	close(ln.fail)
	select {
	case err := <-served:
		if !errors.Is(err, gone) {
			t.Fatalf("Serve = %v, want the listener's error", err)
		}
	case <-time.After(wait):
		t.Fatal("Serve did not return after a permanent accept error")
	}
	st.send(payload(0, 1)) // the session is still served
	st.ackAtLeast(2, wait)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	st.expect(frame.TypeGoAway, wait)
	st.send(payload(0, 2))
	last, cl := st.finish(wait)
	if last != 3 || cl == nil || cl.Reason != frame.ReasonShutdown {
		t.Fatalf("final ACK %d, CLOSE %v; want 3 and shutdown", last, cl)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if mem.Len() != 3 {
		t.Fatalf("sink holds %d frames, want 3", mem.Len())
	}
}

// failingListener accepts until fail is closed, then returns err.
type failingListener struct {
	net.Listener
	fail chan struct{}
	err  error // set before fail is closed
}

func (l *failingListener) Accept() (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := l.Listener.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-l.fail:
		l.Listener.Close()
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		return nil, l.err
	}
}

// A sink that fails (stdout on a full disk: /dev/full) stops being silent:
// every station gets its final ACK for what was stored before the failure,
// then CLOSE(internal error); the gateway reports not ready and Failed, and
// Shutdown says how many frames were read and not stored.
func TestSinkFailureEndsSessionsAndShutsDown(t *testing.T) {
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	srv, err := gateway.New(gatewaytest.Config(), sink.NewStdout(full), gatewaytest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	idle := dial(t, ln.Addr().String()) // sends nothing
	st := dial(t, ln.Addr().String())
	st.send(payload(0, 0), payload(0, 1))

	select {
	case <-srv.Failed():
	case <-time.After(wait):
		t.Fatal("the gateway did not report the sink's failure")
	}
	if err := srv.Ready(); err == nil || srv.State() != gateway.StateFailed {
		t.Fatalf("Ready = %v, State = %s after the sink failed", err, srv.State())
	}
	// A later batch is refused at once: the session ends with what was
	// stored (nothing) and CLOSE(internal error).
	st.send(payload(0, 2))
	last, cl := st.drainToEOF(wait)
	if last != 0 || cl == nil || cl.Reason != frame.ReasonInternalError {
		t.Fatalf("final ACK %d, CLOSE %v; want 0 (nothing stored) and internal error", last, cl)
	}

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.ShutdownNow(ctx) }()
	// The idle station is drained the normal way.
	idle.expect(frame.TypeGoAway, wait)
	if _, cl := idle.finish(wait); cl == nil || cl.Reason != frame.ReasonShutdown {
		t.Fatalf("idle station got CLOSE %v, want shutdown", cl)
	}
	err = <-done
	var fe *gateway.ForcedError
	if !errors.Is(err, gateway.ErrSinkFailed) || errors.As(err, &fe) {
		t.Fatalf("Shutdown = %v, want ErrSinkFailed without forcing", err)
	}
}

// A forced stop under back-pressure says exactly how many frames the
// gateway took from its stations and did not store: those queued, those
// blocked in Put, those in an open batch and those still buffered. A
// net.Pipe write returns only once the gateway read all of it, so each
// station knows how many frames the gateway took.
func TestForcedStopCountsEveryFrameRead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := gatewaytest.Config()
		cfg.Queue = 4
		cfg.Heartbeat = 0
		mem := sink.NewMemory()
		resume := mem.Hold()
		defer resume()
		srv, err := gateway.New(cfg, mem, gatewaytest.Logger())
		if err != nil {
			t.Fatal(err)
		}
		ln := newPipeListener()
		go srv.Serve(ln)
		var taken atomic.Int64
		var wg sync.WaitGroup
		for s := range 3 {
			c, err := ln.dial()
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				defer c.Close()
				go io.Copy(io.Discard, c)
				// Several frames per write, so that some wait in the
				// session's buffer behind a batch blocked in Put. A write
				// cut by the close reports how much the gateway read: the
				// frames wholly inside that count as taken.
				for i := 0; ; i += 3 {
					var b []byte
					var ends []int
					for k := range 3 {
						b = frame.AppendData(b, payload(s, i+k))
						ends = append(ends, len(b))
					}
					n, err := c.Write(b)
					for _, e := range ends {
						if e <= n {
							taken.Add(1)
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
		synctest.Wait() // every session blocked: the queue is full
		if taken.Load() == 0 {
			t.Fatal("no frame was taken")
		}
		err = srv.Close()
		wg.Wait()
		var fe *gateway.ForcedError
		if !errors.As(err, &fe) {
			t.Fatalf("Close = %v, want a ForcedError", err)
		}
		if got, want := fe.Frames, uint64(taken.Load()); got != want {
			t.Fatalf("ForcedError.Frames = %d, want %d: every frame the gateway read", got, want)
		}
	})
}
