package session_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/session"
)

// gatedSink holds every batch until the test commits it, and records how
// many of them were outstanding when each arrived.
type gatedSink struct {
	mu          sync.Mutex
	outstanding int
	maxAtWrite  int
	got         chan *pipeline.Batch
}

func (g *gatedSink) Write(_ context.Context, batches []*pipeline.Batch) error {
	for _, b := range batches {
		g.mu.Lock()
		g.maxAtWrite = max(g.maxAtWrite, g.outstanding)
		g.outstanding++
		g.mu.Unlock()
		g.got <- b
	}
	return nil
}

func (g *gatedSink) commit(b *pipeline.Batch) {
	g.mu.Lock()
	g.outstanding--
	g.mu.Unlock()
	b.Commit(b.Len())
}

func (*gatedSink) Flush(context.Context) error { return nil }
func (*gatedSink) Close() error                { return nil }

// TestPackedOneBatchInFlight: in the packed layout a v2 session puts each
// batch into one frame carrying its frames (Packed, Count, Seq of the
// first), and queues the next batch only once the one before is committed,
// so that the stream always holds a prefix of the epoch. Frames the station
// sends meanwhile wait in the socket and go out together. Real TCP: the
// kernel buffers what the session does not read while it waits.
func TestPackedOneBatchInFlight(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	station, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer station.Close()
	gw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}

	g := &gatedSink{got: make(chan *pipeline.Batch, 64)}
	agg := pipeline.New(g, 1024)
	aggDone := make(chan struct{})
	go func() { defer close(aggDone); agg.Run(context.Background()) }()
	cfg := defaults()
	cfg.Hello, cfg.Packed = welcomeFirst{}, true
	sess := session.New(gw, session.Info{ID: "gs-1@tcp", Station: "127.0.0.1"}, cfg, agg, quiet, nil)
	reason := make(chan frame.Reason, 1)
	go func() { reason <- sess.Run(context.Background()) }()

	_ = station.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := station.Write(frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: 5, First: 1})); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(station)
	if c := readControl(t, r); c.Type != frame.TypeWelcome || c.Next != 1 {
		t.Fatalf("want WELCOME next 1, got %+v", c)
	}
	const n = 50
	payload := func(i int) []byte { return fmt.Appendf(nil, "frame-%03d", i) }
	if _, err := station.Write(frame.AppendData(nil, payload(1))); err != nil {
		t.Fatal(err)
	}
	first := <-g.got // held: the session may queue nothing more meanwhile
	for i := 2; i <= n; i++ {
		if _, err := station.Write(frame.AppendData(nil, payload(i))); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	take := func(b *pipeline.Batch) {
		t.Helper()
		if b.Len() != 1 || !b.Frames[0].Packed || int(b.Frames[0].Count) != b.Count() {
			t.Fatalf("batch of %d messages, first %+v: want one packed frame", b.Len(), b.Frames[0])
		}
		f := b.Frames[0]
		rest := f.Payload
		for k := range int(f.Count) {
			l := binary.BigEndian.Uint32(rest)
			if got, want := string(rest[4:4+l]), string(payload(int(f.Seq)+k)); got != want {
				t.Fatalf("frame %d of the packed frame at seq %d: %q, want %q", k, f.Seq, got, want)
			}
			rest = rest[4+l:]
			seqs = append(seqs, f.Seq+uint64(k))
		}
		if len(rest) != 0 || f.Epoch != 5 || f.Acked != f.Seq-1 {
			t.Fatalf("packed frame at seq %d: %d bytes left, epoch %d, acked %d", f.Seq, len(rest), f.Epoch, f.Acked)
		}
		g.commit(b)
	}
	take(first)
	batches := 1
	for len(seqs) < n {
		take(<-g.got)
		batches++
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("sequences %v", seqs)
		}
	}
	if g.maxAtWrite != 0 || batches >= n {
		t.Fatalf("%d batches for %d frames, up to %d outstanding when one arrived: want one in flight, frames packed", batches, n, g.maxAtWrite)
	}
	if err := station.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for {
		c, err := readControlErr(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.Type == frame.TypeAck {
			last = c.Ack
		}
	}
	if last != n {
		t.Fatalf("final ACK %d, want %d", last, n)
	}
	<-reason
	agg.Close()
	<-aggDone
}

func readControl(t *testing.T, r *bufio.Reader) frame.Control {
	t.Helper()
	c, err := readControlErr(r)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readControlErr(r *bufio.Reader) (frame.Control, error) {
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
