package session_test

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/session"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

// GoAway's first call sets the drain deadline and later calls do nothing.
// The gateway can call it twice for a session registered while shutdown
// begins (serveConn, and goAwayAll); a second call with an earlier (or the
// zero) deadline must not end the drain at once, or the station, told "what
// you send until you half-close is still accepted", would lose the frames it
// sends after GOAWAY.
func TestSecondGoAwayDoesNotMoveTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gw, station := net.Pipe()
		mem := sink.NewMemory()
		agg := pipeline.New(mem, 16)
		aggDone := make(chan struct{})
		go func() { defer close(aggDone); agg.Run(context.Background()) }()
		cfg := session.Config{MaxFrame: 1024, IdleTimeout: time.Minute, FrameTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
		sess := session.New(gw, session.Info{ID: "gs-1@pipe", Station: "pipe"}, cfg, agg, slog.New(slog.DiscardHandler), nil)
		ended := make(chan frame.Reason, 1)
		go func() { ended <- sess.Run(context.Background()) }()

		acks := make(chan uint64, 1)
		go func() {
			var last uint64
			for {
				var hdr [4]byte
				if _, err := io.ReadFull(station, hdr[:]); err != nil {
					acks <- last
					return
				}
				p := make([]byte, binary.BigEndian.Uint32(hdr[:]))
				if _, err := io.ReadFull(station, p); err != nil {
					acks <- last
					return
				}
				if c, err := frame.ParseControl(p); err == nil && c.Type == frame.TypeAck {
					last = c.Ack
				}
			}
		}()

		sess.GoAway(time.Now().Add(5 * time.Second)) // the drain runs 5 s
		sess.GoAway(time.Time{})                     // "later calls do nothing"
		time.Sleep(time.Second)
		// Well inside the 5 s drain, the station sends one frame and
		// stops sending; the drain then ends at its deadline (net.Pipe
		// cannot half-close, and closing it would lose the final ACK).
		station.Write(frame.AppendData(nil, []byte("sent during the drain")))
		ack := <-acks
		<-ended
		station.Close()
		agg.Close()
		<-aggDone
		if ack != 1 || mem.Len() != 1 {
			t.Fatalf("final ACK %d, sink holds %d frames; want 1 and 1: the second GoAway ended the drain", ack, mem.Len())
		}
	})
}
