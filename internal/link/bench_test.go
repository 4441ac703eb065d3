package link_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/framing/ccsds"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/link"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// BenchmarkGroundEndToEnd sends b.N units over loopback TCP, spread over 16
// links with one equipment connection each, into the discard sink, and
// stops the clock when the sink has counted every unit: frames stored, not
// frames written. The meridian cases are the same load on the default
// listener (16 stations, final ACK awaited), for comparison.
//
//	go test -run XXX -bench GroundEndToEnd -benchtime 2000000x ./internal/link
func BenchmarkGroundEndToEnd(b *testing.B) {
	b.Run("ccsds-frame/fecf/size=1115", func(b *testing.B) { benchGround(b, "frame", 1115) })
	for _, size := range []int{64, 1024, 4096} {
		b.Run(fmt.Sprintf("ccsds-packet/size=%d", size), func(b *testing.B) { benchGround(b, "packet", size) })
		b.Run(fmt.Sprintf("meridian/size=%d", size), func(b *testing.B) { benchGround(b, "meridian", size) })
	}
}

const benchLinks = 16

// chunkOf pre-encodes about 256 KiB of units, written repeatedly, so that
// the client's cost stays small next to the gateway's.
func chunkOf(kind string, size int) (chunk []byte, per, unit int) {
	const chunkBytes = 256 << 10
	switch kind {
	case "frame":
		unit = 4 + size
		per = chunkBytes / unit
		for i := range per {
			f := make([]byte, size)
			binary.BigEndian.PutUint16(f[0:], 42<<4|2<<1) // SCID 42, VCID 2
			f[2], f[3] = byte(i), byte(i)                 // MC and VC counts
			binary.BigEndian.PutUint16(f[size-2:], crc16.Checksum(f[:size-2]))
			chunk = append(append(chunk, ccsds.DefaultASM...), f...)
		}
	case "packet":
		unit = size
		per = chunkBytes / unit
		for i := range per {
			p := make([]byte, size)
			binary.BigEndian.PutUint16(p[0:], 0x0800|uint16(i%2048)) // sec header flag, APID
			binary.BigEndian.PutUint16(p[2:], 0xC000|uint16(i))      // unsegmented, count
			binary.BigEndian.PutUint16(p[4:], uint16(size-7))
			chunk = append(chunk, p...)
		}
	default:
		unit = size + frame.HeaderSize
		per = chunkBytes / unit
		payload := make([]byte, size)
		for range per {
			chunk = frame.AppendData(chunk, payload)
		}
	}
	return chunk, per, unit
}

func benchGround(b *testing.B, kind string, size int) {
	cfg := gatewaytest.Config()
	cfg.Heartbeat = 0
	discard := sink.NewDiscard()
	g := gatewaytest.Start(b, cfg, discard)
	addrs := make([]string, benchLinks)
	var served sync.WaitGroup
	for i := range addrs {
		if kind == "meridian" {
			addrs[i] = g.Addr
			continue
		}
		name := fmt.Sprintf("l%d", i)
		l := gateway.Link{Name: name, Ground: &link.Config{Name: name}}
		switch kind {
		case "frame":
			fc := ccsds.DefaultFrameConfig()
			fc.FrameLength, fc.FECF = size, true
			l.Ground.Framing, l.Ground.Frame = "ccsds-frame", fc
		case "packet":
			l.Ground.Framing, l.Ground.Packet = "ccsds-packet", ccsds.DefaultPacketConfig()
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addrs[i] = ln.Addr().String()
		served.Go(func() { _ = g.Server.ServeLink(ln, l) })
	}
	defer func() {
		g.Server.Close()
		served.Wait()
	}()
	chunk, per, unit := chunkOf(kind, size)
	conns := make([]net.Conn, benchLinks)
	for i := range conns {
		c, err := net.Dial("tcp", addrs[i])
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	b.SetBytes(int64(unit))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, c := range conns {
		n := b.N / benchLinks
		if i < b.N%benchLinks {
			n++
		}
		wg.Go(func() {
			defer c.Close()
			for sent := 0; sent < n; {
				k := min(per, n-sent)
				if _, err := c.Write(chunk[:k*unit]); err != nil {
					b.Error(err)
					return
				}
				sent += k
			}
			if kind != "meridian" {
				return // equipment reads nothing: close, and the sink's count says when it is stored
			}
			c.(*net.TCPConn).CloseWrite()
			r := bufio.NewReader(c)
			var hdr [4]byte
			for {
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					return
				}
				if _, err := r.Discard(int(hdr[3])); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	tick := time.NewTicker(100 * time.Microsecond) // polling the count, not synchronisation
	defer tick.Stop()
	deadline := time.Now().Add(time.Minute)
	for {
		if frames, _ := discard.Counts(); frames >= uint64(b.N) || time.Now().After(deadline) {
			break
		}
		<-tick.C
	}
	elapsed := b.Elapsed()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "frames/s")
	if frames, _ := discard.Counts(); frames != uint64(b.N) {
		b.Fatalf("sink counted %d units, want %d", frames, b.N)
	}
}
