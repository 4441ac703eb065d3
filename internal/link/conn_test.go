package link

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/lengthfield"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// fakeQueue keeps a copy of every frame and releases the batch at once, or
// refuses batches with err.
type fakeQueue struct {
	mu     sync.Mutex
	err    error
	accept int // with err set: batches accepted before Put fails
	frames []pipeline.Frame
}

func (q *fakeQueue) Put(_ context.Context, b *pipeline.Batch) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil && q.accept == 0 {
		return q.err
	}
	if q.accept > 0 {
		q.accept--
	}
	for _, f := range b.Frames {
		f.Payload = append([]byte(nil), f.Payload...)
		q.frames = append(q.frames, f)
	}
	// What Conn.Committed does once the sink has them all (Commit needs
	// the real queue's bookkeeping).
	b.Release()
	return nil
}

func (q *fakeQueue) BatchLimit() int { return 4 }

func lengthLink(cfg lengthfield.Config) Config {
	return Config{Name: "lf", Framing: framing.NameLengthField, LengthField: cfg}
}

// u32 is payload behind a 4-byte big-endian length: length-field's default.
func u32(payload string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

// run serves cfg on one end of a pipe, writes in, closes, and returns the
// end and the connection.
func run(t *testing.T, cfg Config, q *fakeQueue, in []byte) (End, *Conn, *Counters) {
	t.Helper()
	a, b := net.Pipe()
	totals := new(Counters)
	c, err := NewConn(a, Info{ID: "gs-1@pipe", Station: "eq"}, cfg, q, slog.New(slog.DiscardHandler), totals)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan End, 1)
	go func() { done <- c.Run(context.Background()) }()
	_, _ = b.Write(in) // fails once the reader closed: that is the point of some cases
	b.Close()
	return <-done, c, totals
}

func TestConnUnitsInOrderWithMeta(t *testing.T) {
	q := &fakeQueue{}
	var in []byte
	for _, p := range []string{"one", "two", "", "three", "four", "five"} {
		in = append(in, u32(p)...)
	}
	end, c, totals := run(t, lengthLink(lengthfield.DefaultConfig()), q, in)
	if end != EndEOF {
		t.Fatalf("end %s, want %s", end, EndEOF)
	}
	want := []string{"one", "two", "", "three", "four", "five"}
	if len(q.frames) != len(want) {
		t.Fatalf("%d frames, want %d", len(q.frames), len(want))
	}
	for i, f := range q.frames {
		if string(f.Payload[4:]) != want[i] || f.Seq != uint64(i+1) || f.Station != "eq" || f.Session != "gs-1@pipe" ||
			f.Meta != (pipeline.Meta{Link: "lf", Framing: framing.NameLengthField}) {
			t.Errorf("frame %d: %+v", i, f)
		}
	}
	q1, q2 := c.Stats().Quality, totals.Quality()
	if q1 != q2 || q1 != (Quality{Bytes: uint64(len(in)), Good: 6, Stored: 6}) {
		t.Errorf("connection %+v, link %+v", q1, q2)
	}
	if c.Unqueued() != 0 {
		t.Errorf("unqueued %d", c.Unqueued())
	}
}

// TestConnFatal: a length above max without a sync marker cannot be
// framed: the connection closes, the rejection is counted, and every byte
// read is accounted for as discarded.
func TestConnFatal(t *testing.T) {
	cfg := lengthfield.DefaultConfig()
	cfg.Max = 64
	in := append(u32("ok"), binary.BigEndian.AppendUint32(nil, 1000)...)
	in = append(in, make([]byte, 100)...)
	end, c, _ := run(t, lengthLink(cfg), &fakeQueue{}, in)
	if end != EndFatal {
		t.Fatalf("end %s, want %s", end, EndFatal)
	}
	q := c.Stats().Quality
	if q.Good != 1 || q.Bad != 1 || q.Oversize != 1 || q.Stored != 1 || q.Bytes != 6+q.Discarded || q.Discarded == 0 {
		t.Errorf("counters %+v", q)
	}
}

// TestConnShortAtEOF: a unit cut by the end of the stream is counted short
// and not stored.
func TestConnShortAtEOF(t *testing.T) {
	in := append(u32("whole"), u32("cut short")[:7]...)
	end, c, _ := run(t, lengthLink(lengthfield.DefaultConfig()), &fakeQueue{}, in)
	if end != EndEOF {
		t.Fatalf("end %s", end)
	}
	if q := c.Stats().Quality; q != (Quality{Bytes: uint64(len(in)), Good: 1, Bad: 1, Short: 1, Stored: 1}) {
		t.Errorf("counters %+v", q)
	}
}

// TestConnSinkFailed: a refused Put ends the connection and counts the
// units it held as unqueued, for the gateway's forced-stop count.
func TestConnSinkFailed(t *testing.T) {
	q := &fakeQueue{err: pipeline.ErrSinkFailed}
	in := append(u32("a"), u32("b")...)
	end, c, _ := run(t, lengthLink(lengthfield.DefaultConfig()), q, in)
	if end != EndSinkFailed {
		t.Fatalf("end %s", end)
	}
	if c.Unqueued() != 2 || c.Stats().Frames != 0 || c.Stats().Quality.Stored != 0 {
		t.Errorf("unqueued %d, stored %d (quality %d); want 2 and 0", c.Unqueued(), c.Stats().Frames, c.Stats().Quality.Stored)
	}
}

// When the queue refuses a batch in the middle of a read, every unit of
// that read is accounted for exactly: those queued before are stored, the
// refused batch and the units still undecoded in the buffer are unqueued
// (a forced stop reports them abandoned), and the bytes add up.
func TestConnQueueRefusedMidRead(t *testing.T) {
	q := &fakeQueue{err: pipeline.ErrSinkFailed, accept: 1}
	var in []byte
	for i := range 20 {
		in = append(in, u32(fmt.Sprintf("unit-%02d", i))...)
	}
	in = append(in, 0, 0, 0) // and the start of a header
	end, c, _ := run(t, lengthLink(lengthfield.DefaultConfig()), q, in)
	if end != EndSinkFailed {
		t.Fatalf("end %s", end)
	}
	st := c.Stats()
	queued := uint64(len(q.frames))
	if queued != 4 || st.Quality.Stored != queued || c.Unqueued() != 20-queued {
		t.Fatalf("queued %d, stored %d, unqueued %d; want 4, 4 and 16", queued, st.Quality.Stored, c.Unqueued())
	}
	// Every byte read is in a unit (20 × 11 bytes) or discarded (3).
	if st.Quality.Bytes != uint64(len(in)) || st.Quality.Good != 20 || st.Quality.Discarded != 3 {
		t.Fatalf("bytes %d good %d discarded %d; want %d, 20, 3", st.Quality.Bytes, st.Quality.Good, st.Quality.Discarded, len(in))
	}
}

// TestConnDrain: after Drain the reader keeps reading until the deadline,
// then stops, although the equipment never closes.
func TestConnDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		defer b.Close()
		q := &fakeQueue{}
		c, err := NewConn(a, Info{ID: "gs-1@pipe", Station: "eq"}, lengthLink(lengthfield.DefaultConfig()), q, slog.New(slog.DiscardHandler), nil)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan End, 1)
		go func() { done <- c.Run(context.Background()) }()
		start := time.Now()
		c.Drain(start.Add(time.Second))
		if _, err := b.Write(u32("during the drain")); err != nil {
			t.Fatal(err)
		}
		end := <-done
		if end != EndShutdown || time.Since(start) != time.Second {
			t.Errorf("end %s after %s, want %s after 1s", end, time.Since(start), EndShutdown)
		}
		if len(q.frames) != 1 {
			t.Errorf("%d frames stored during the drain, want 1", len(q.frames))
		}
	})
}

// TestConnForced: cancelling Run's context closes the connection at once.
func TestConnForced(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c, err := NewConn(a, Info{}, lengthLink(lengthfield.DefaultConfig()), &fakeQueue{}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan End, 1)
	go func() { done <- c.Run(ctx) }()
	cancel()
	if end := <-done; end != EndShutdown {
		t.Errorf("end %s", end)
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second, Jitter: 0.2}
	f := func(n int, want time.Duration) {
		t.Helper()
		for range 100 {
			d := b.Delay(n)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("Delay(%d) = %s, want %s ±20%%", n, d, want)
			}
		}
	}
	f(1, 100*time.Millisecond)
	f(2, 200*time.Millisecond)
	f(4, 800*time.Millisecond)
	f(8, 10*time.Second)
	f(100, 10*time.Second)
	if d := (Backoff{Min: time.Second, Max: time.Second}).Delay(3); d != time.Second {
		t.Errorf("without jitter: %s", d)
	}
}

func TestPolicyAndConfig(t *testing.T) {
	for _, s := range []string{"drop", "flag", "disconnect"} {
		p, err := ParsePolicy(s)
		if err != nil || p.String() != s {
			t.Errorf("ParsePolicy(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParsePolicy("ignore"); !errors.Is(err, ErrPolicy) {
		t.Errorf("ParsePolicy(ignore) = %v", err)
	}
	if _, err := (Config{Framing: "hdlc"}).NewDecoder(); !errors.Is(err, ErrFraming) {
		t.Errorf("NewDecoder(hdlc) = %v", err)
	}
	if n := lengthLink(lengthfield.DefaultConfig()).MaxUnit(); n != lengthfield.DefaultMax {
		t.Errorf("MaxUnit = %d", n)
	}
}
