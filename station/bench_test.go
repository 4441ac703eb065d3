package station_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/frame"
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
