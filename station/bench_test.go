package station_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/station"
)

// BenchmarkSend measures Send (protocol v2, the default) against a loopback
// peer that acknowledges every read. Once the window's slots hold buffers,
// Send allocates nothing: the frame copy goes into the slot of a frame
// already acknowledged.
func BenchmarkSend(b *testing.B) {
	for _, bc := range []struct {
		name string
		size int
	}{{"64B", 64}, {"1KiB", 1024}} {
		b.Run(bc.name, func(b *testing.B) {
			addr, stop := startAckPeer(b)
			defer stop()
			ctx := context.Background()
			const window = 4096
			c, err := station.Dial(ctx, addr, station.WithWindow(window))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			payload := make([]byte, bc.size)
			for range 2 * window { // give every slot its buffer
				if err := c.Send(ctx, payload); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(int64(bc.size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := c.Send(ctx, payload); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.WaitAcked(ctx, c.Sent()); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// startAckPeer is a gateway stand-in that allocates nothing per frame, so
// that the benchmark's allocation count is the client's. It answers the
// HELLO with a WELCOME resuming at its first frame; its ACKs, the count of
// frames read, are then the sequence numbers v2 wants.
func startAckPeer(b *testing.B) (addr string, stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		var have int
		var count uint64
		ack := make([]byte, 0, 16)
		for {
			n, err := c.Read(buf[have:])
			have += n
			off := 0
			for {
				p, m, ctl, serr := frame.SplitAny(buf[off:have], station.DefaultMaxFrame)
				if serr != nil {
					break
				}
				switch {
				case ctl && len(p) > 0 && frame.CtlType(p[0]) == frame.CtlHello:
					sc, err := frame.ParseStationControl(p)
					if err != nil {
						return
					}
					c.Write(frame.AppendWelcome(ack[:0], frame.Version2, sc.Hello.Epoch, sc.Hello.First))
				case ctl: // PONG
				case m > frame.HeaderSize:
					count++
				}
				off += m
			}
			have = copy(buf, buf[off:have])
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				c.Write(frame.AppendAck(ack[:0], count))
				return
			}
			if _, err := c.Write(frame.AppendAck(ack[:0], count)); err != nil {
				return
			}
		}
	})
	return ln.Addr().String(), func() { ln.Close(); wg.Wait() }
}

// BenchmarkSpoolSend measures a station with a spool end to end: 1 KiB
// frames through Send into the spool, synced, loaded, sent to a real
// gateway on loopback with the discard sink, and acknowledged. frames/s
// counts from the first Send to the ACK of the last; the sync policies side
// by side: the default 100 ms group commit, and always (an fdatasync before
// Send returns), from one goroutine and from 16 that share each fdatasync.
func BenchmarkSpoolSend(b *testing.B) {
	for _, bc := range []struct {
		name    string
		o       *station.SpoolOptions // nil: no spool, the same client in memory
		senders int
	}{
		{"nospool", nil, 1},
		{"sync=100ms", &station.SpoolOptions{}, 1},
		{"sync=always", &station.SpoolOptions{SyncAlways: true}, 1},
		{"sync=always,senders=16", &station.SpoolOptions{SyncAlways: true}, 16},
	} {
		b.Run(bc.name, func(b *testing.B) {
			gw := gatewaytest.Start(b, gatewaytest.Config(), sink.NewDiscard())
			ctx := context.Background()
			opts := []station.Option{station.WithName("bench-spool")}
			if bc.o != nil {
				opts = append(opts, station.WithSpool(b.TempDir(), *bc.o))
			}
			c, err := station.Dial(ctx, gw.Addr, opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			payload := make([]byte, 1024)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			start := time.Now()
			if bc.senders > 1 {
				b.SetParallelism(bc.senders / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := c.Send(ctx, payload); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for b.Loop() {
					if err := c.Send(ctx, payload); err != nil {
						b.Fatal(err)
					}
				}
			}
			if err := c.WaitAcked(ctx, c.Sent()); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "frames/s")
		})
	}
}
