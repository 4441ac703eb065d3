package stream

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
)

// BenchmarkV2Handshake1000 connects 1,000 v2 stations at once to a gateway
// that resumes from the embedded stream, and reports the time from connect
// to WELCOME: p50 and p99 over every station of every round. Each station
// has one frame stored, so every resume reads a message back.
//
//	go test -run '^$' -bench V2Handshake1000 -benchtime 5x ./internal/stream/
func BenchmarkV2Handshake1000(b *testing.B) {
	const stations = 1000
	st := openStream(b, testConfig(b))
	cfg := gatewaytest.Config()
	cfg.MaxSessions = 2 * stations
	g := gatewaytest.Start(b, cfg, st.Sink(), gateway.WithResume(func(ctx context.Context, id string) (gateway.Stored, error) {
		s, err := st.LastStored(ctx, id)
		return gateway.Stored(s), err
	}))
	// Round 0 stores one frame per station, untimed.
	var all []time.Duration
	for round := range b.N + 1 {
		if round == 1 {
			b.ResetTimer()
		}
		lat := make([]time.Duration, stations)
		var wg sync.WaitGroup
		errs := make(chan error, stations)
		for i := range stations {
			wg.Go(func() {
				d, err := handshakeOnce(g.Addr, fmt.Sprintf("bench-%04d", i), round == 0)
				lat[i] = d
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		if round > 0 {
			all = append(all, lat...)
		}
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
}

// handshakeOnce says HELLO as name, waits for WELCOME and returns how long
// that took from the connect; with send it stores one frame first.
func handshakeOnce(addr, name string, send bool) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: 7, First: 1, Name: name})); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	read := func() (frame.Control, error) {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return frame.Control{}, err
		}
		p := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(r, p); err != nil {
			return frame.Control{}, err
		}
		return frame.ParseControl(p)
	}
	w, err := read()
	if err != nil || w.Type != frame.TypeWelcome {
		return 0, fmt.Errorf("%s: want WELCOME, got %v, %v", name, w.Type, err)
	}
	d := time.Since(start)
	if send {
		if _, err := c.Write(frame.AppendData(nil, []byte(name))); err != nil {
			return 0, err
		}
		for {
			a, err := read()
			if err != nil {
				return 0, err
			}
			if a.Type == frame.TypeAck && a.Ack >= w.Next {
				break
			}
		}
	}
	return d, nil
}
