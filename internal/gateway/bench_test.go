package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// BenchmarkEndToEnd sends b.N frames over loopback TCP, spread over the
// stations, into the discard sink, and stops the clock when every station
// has its final ACK: the figure is frames accepted, not frames written.
//
//	go test -run XXX -bench EndToEnd -benchtime 2000000x ./internal/gateway
func BenchmarkEndToEnd(b *testing.B) {
	for _, stations := range []int{1, 16, 64} {
		for _, size := range []int{64, 1024, 64 * 1024} {
			b.Run(fmt.Sprintf("stations=%d/size=%d", stations, size), func(b *testing.B) {
				benchEndToEnd(b, stations, size)
			})
		}
	}
}

func benchEndToEnd(b *testing.B, stations, size int) {
	cfg := gatewaytest.Config()
	cfg.MaxFrame = 64 * 1024
	cfg.Heartbeat = 0
	discard := sink.NewDiscard()
	g := gatewaytest.Start(b, cfg, discard)

	// One chunk of pre-encoded frames per station, written repeatedly: the
	// client's cost stays small next to the gateway's.
	const chunkBytes = 256 * 1024
	per := max(1, chunkBytes/(size+frame.HeaderSize))
	var chunk []byte
	payload := make([]byte, size)
	for range per {
		chunk = frame.AppendData(chunk, payload)
	}
	conns := make([]net.Conn, stations)
	for i := range conns {
		c, err := net.Dial("tcp", g.Addr)
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, c := range conns {
		n := b.N / stations
		if i < b.N%stations {
			n++
		}
		wg.Go(func() {
			defer c.Close()
			for sent := 0; sent < n; {
				k := min(per, n-sent)
				if _, err := c.Write(chunk[:k*(size+frame.HeaderSize)]); err != nil {
					b.Error(err)
					return
				}
				sent += k
			}
			c.(*net.TCPConn).CloseWrite()
			// Read to EOF: the last ACK is the final one.
			r := bufio.NewReader(c)
			var last uint64
			var hdr [4]byte
			for {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					break
				}
				p := make([]byte, int(hdr[3]))
				if _, err := io.ReadFull(r, p); err != nil {
					break
				}
				if ctl, err := frame.ParseControl(p); err == nil && ctl.Type == frame.TypeAck {
					last = ctl.Ack
				}
			}
			if last != uint64(n) {
				b.Errorf("final ACK %d, want %d", last, n)
			}
		})
	}
	wg.Wait()
	elapsed := b.Elapsed()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "frames/s")
	if frames, _ := discard.Counts(); frames != uint64(b.N) {
		b.Fatalf("sink counted %d frames, want %d", frames, b.N)
	}

}
