package session

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// owner is what a batch reports its commit to; the commit log's tests do
// not need a session.
type owner struct{}

func (owner) Committed(*pipeline.Batch) {}

func batchOf(seqs ...uint64) *pipeline.Batch {
	b := pipeline.NewBatch(owner{}, 64)
	for _, s := range seqs {
		b.Add(pipeline.Frame{Seq: s, Payload: []byte("x")})
	}
	return b
}

// Batches committed out of order move the ACK only over the prefix, and
// are handed back for release only once the prefix covers them.
func TestCommitLogOutOfOrder(t *testing.T) {
	var l commitLog
	b1, b2, b3 := batchOf(1, 2), batchOf(3), batchOf(4, 5, 6)
	for _, b := range []*pipeline.Batch{b1, b2, b3} {
		l.append(b)
	}
	rel, moved := l.commit(b3, nil)
	if moved || len(rel) != 0 || l.acked.Load() != 0 {
		t.Fatalf("after the third batch alone: moved %v, released %d, acked %d", moved, len(rel), l.acked.Load())
	}
	rel, moved = l.commit(b2, nil)
	if moved || len(rel) != 0 || l.acked.Load() != 0 {
		t.Fatalf("after the second: moved %v, released %d, acked %d", moved, len(rel), l.acked.Load())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.wait(ctx, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with the first batch outstanding = %v", err)
	}
	rel, moved = l.commit(b1, nil)
	if !moved || len(rel) != 3 || rel[0] != b1 || rel[1] != b2 || rel[2] != b3 {
		t.Fatalf("after the first: moved %v, released %v", moved, rel)
	}
	if got := l.acked.Load(); got != 6 {
		t.Fatalf("acked %d, want 6", got)
	}
	if err := l.wait(context.Background(), nil); err != nil {
		t.Fatalf("wait with nothing outstanding = %v", err)
	}
}

// A batch the queue refused is taken back: nothing waits for it, and the
// batches queued before it still complete the wait.
func TestCommitLogRollback(t *testing.T) {
	var l commitLog
	b1, b2 := batchOf(1), batchOf(2)
	l.append(b1)
	l.append(b2)
	l.rollback(b2)
	done := make(chan error, 1)
	go func() { done <- l.wait(context.Background(), nil) }()
	if rel, moved := l.commit(b1, nil); !moved || len(rel) != 1 {
		t.Fatalf("commit after rollback: moved %v, released %d", moved, len(rel))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := l.acked.Load(); got != 1 {
		t.Fatalf("acked %d, want 1", got)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("rollback of a batch that is not the last queued did not panic")
		}
	}()
	l.append(b1)
	l.append(b2)
	l.rollback(b1)
}

// A failed sink ends a commit wait that could never succeed.
func TestCommitLogWaitEndsWhenTheSinkFails(t *testing.T) {
	var l commitLog
	l.append(batchOf(1))
	failed := make(chan struct{})
	close(failed)
	if err := l.wait(context.Background(), failed); !errors.Is(err, errSinkFailed) {
		t.Fatalf("wait = %v, want errSinkFailed", err)
	}
}

// A session whose end races the gateway's GoAway (every shutdown under
// load) learns what is due from the control writer's close, under its lock:
// no data race, and a GOAWAY is never lost: the station either received it
// from the writer, or close hands it back with the final ACK and CLOSE.
func TestControlWriterCloseRacesGoAway(t *testing.T) {
	for i := range 200 {
		concurrent := i%2 == 0
		gw, station := net.Pipe()
		got := make(chan []frame.Control, 1)
		go func() {
			var ctls []frame.Control
			defer func() { got <- ctls }()
			for {
				var hdr [4]byte
				if _, err := ioReadFull(station, hdr[:]); err != nil {
					return
				}
				p := make([]byte, int(hdr[3]))
				if _, err := ioReadFull(station, p); err != nil {
					return
				}
				if c, err := frame.ParseControl(p); err == nil {
					ctls = append(ctls, c)
				}
			}
		}()
		w := newControlWriter(gw, Config{WriteTimeout: time.Second, AckInterval: time.Millisecond},
			func() uint64 { return 0 }, nopLogger(), nopObserver{})
		var wg sync.WaitGroup
		wg.Go(w.goAway)
		if !concurrent {
			wg.Wait() // the GOAWAY is queued before the session ends
		}
		due, usable := w.close(7, frame.ReasonShutdown)
		wg.Wait()
		if !usable {
			t.Fatal("writer reports a broken stream without a failed write")
		}
		gw.Write(due) // as the session does
		w.goAway()    // after close: does nothing
		gw.Close()
		ctls := <-got
		station.Close()
		var goAways, acks, closes int
		for _, c := range ctls {
			switch c.Type {
			case frame.TypeGoAway:
				goAways++
			case frame.TypeAck:
				if c.Ack == 7 {
					acks++
				}
			case frame.TypeClose:
				closes++
			}
		}
		// Racing the close, a GoAway may come too late to matter (the
		// session is ending anyway) but is never written twice; queued
		// before, it is never lost.
		if wantGoAway := 1; goAways > wantGoAway || (!concurrent && goAways != wantGoAway) || acks != 1 || closes != 1 {
			t.Fatalf("station got %d GOAWAY, %d final ACK, %d CLOSE (concurrent %v): %v", goAways, acks, closes, concurrent, ctls)
		}
		if due2, _ := w.close(7, 0); len(due2) != len(frame.AppendAck(nil, 7)) {
			t.Fatal("a GOAWAY queued after close is reported due")
		}
	}
}

// The control writer coalesces ACKs: many commits inside one interval give
// one ACK, and the last value is always written.
func TestControlWriterCoalescesAcks(t *testing.T) {
	gw, station := net.Pipe()
	defer station.Close()
	var acked struct {
		sync.Mutex
		n uint64
	}
	get := func() uint64 { acked.Lock(); defer acked.Unlock(); return acked.n }
	w := newControlWriter(gw, Config{WriteTimeout: time.Second, AckInterval: 20 * time.Millisecond}, get, nopLogger(), nopObserver{})
	defer func() { w.close(0, 0); gw.Close() }()
	got := make(chan uint64, 100)
	go func() {
		buf := make([]byte, 13)
		for {
			if _, err := ioReadFull(station, buf); err != nil {
				close(got)
				return
			}
			c, err := frame.ParseControl(buf[4:])
			if err == nil && c.Type == frame.TypeAck {
				got <- c.Ack
			}
		}
	}()
	for i := 1; i <= 50; i++ {
		acked.Lock()
		acked.n = uint64(i)
		acked.Unlock()
		w.kick()
	}
	deadline := time.After(5 * time.Second)
	var seen []uint64
	for len(seen) == 0 || seen[len(seen)-1] != 50 {
		select {
		case a := <-got:
			seen = append(seen, a)
		case <-deadline:
			t.Fatalf("ACKs %v, never 50", seen)
		}
	}
	if len(seen) > 3 {
		t.Fatalf("%d ACKs for 50 commits within one interval: %v", len(seen), seen)
	}
}

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// A header that announces a large frame costs nothing until its bytes
// arrive, and the buffer grows only as fast as they do.
func TestInbufGrowsWithWhatArrives(t *testing.T) {
	const maxFrame = 16 << 20
	var b inbuf
	b.init()
	hdr := frame.AppendHeader(nil, maxFrame-4)
	room := b.room(false)
	b.wrote(copy(room, hdr))
	if _, _, err := b.next(maxFrame); !errors.Is(err, frame.ErrShort) {
		t.Fatalf("next = %v", err)
	}
	// Feed the frame in full reads: past the pooled sizes the buffer holds
	// at most twice what arrived of it.
	sent := len(hdr)
	for sent < 4<<20 {
		r := b.room(false)
		if len(b.buf) > bufClasses[len(bufClasses)-1] && len(b.buf) > 2*sent {
			t.Fatalf("buffer of %d bytes after %d bytes of the frame arrived", len(b.buf), sent)
		}
		b.wrote(len(r))
		sent += len(r)
	}
	b.release()

	// A full read of small frames that ends in a header announcing 16 MiB:
	// the buffer does not grow for that frame, whose 4 bytes are all that
	// arrived of it.
	var c inbuf
	c.init()
	var stream []byte
	for len(stream) < 1<<20 {
		stream = frame.AppendData(stream, bytes.Repeat([]byte("x"), 60))
	}
	for pos := 0; ; {
		r := c.room(false)
		n := copy(r, stream[pos:])
		if pos+n == len(stream) { // the last read: end it with the header
			n += copy(r[n:], hdr)
			c.wrote(n)
			break
		}
		c.wrote(n)
		pos += n
		for {
			if _, _, err := c.next(maxFrame); err != nil {
				break
			}
		}
	}
	for {
		if _, _, err := c.next(maxFrame); err != nil {
			break
		}
	}
	c.room(false)
	if max := bufClasses[len(bufClasses)-1]; len(c.buf) > max {
		t.Fatalf("a %d-byte buffer for a frame of which 4 bytes arrived", len(c.buf))
	}
	c.release()
}

// FuzzInbuf feeds random input through the session's own buffered framing
// (room, wrote, next), cut into random reads, and checks it against
// frame.Split over the whole input: the same frames in the same order, the
// same error, and no buffer larger than what arrived calls for.
func FuzzInbuf(f *testing.F) {
	f.Add(frame.AppendData(frame.AppendData(nil, []byte("hi")), []byte("sat")), uint64(1))
	f.Add(append(frame.AppendHeader(nil, 0), frame.AppendData(nil, bytes.Repeat([]byte("x"), 5000))...), uint64(2))
	f.Add(frame.AppendHeader(nil, 1<<30), uint64(3))
	f.Add([]byte{0x80, 0, 0, 1, 1}, uint64(4))
	f.Fuzz(func(t *testing.T, input []byte, seed uint64) {
		const maxFrame = 1 << 20
		// The reference: frame.SplitAny over the whole input at once.
		var want [][]byte
		var wantErr error
		for rest := input; ; {
			p, n, _, err := frame.SplitAny(rest, maxFrame)
			if err != nil {
				if !errors.Is(err, frame.ErrShort) {
					wantErr = err
				}
				break
			}
			want = append(want, p)
			rest = rest[n:]
		}
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		var b inbuf
		b.init()
		var got [][]byte
		var gotErr error
		for pos := 0; pos < len(input) && gotErr == nil; {
			room := b.room(false)
			if len(room) == 0 {
				t.Fatal("room returned no space")
			}
			n := min(len(room), len(input)-pos, 1+rng.IntN(3000))
			copy(room, input[pos:pos+n])
			b.wrote(n)
			pos += n
			// Beyond the pooled sizes a buffer is a frame's own, and
			// holds at least half of it (what arrived of that frame).
			if have := b.w - b.r; len(b.buf) > bufClasses[len(bufClasses)-1] && have > 0 && len(b.buf) > 2*have {
				t.Fatalf("buffer of %d bytes holding %d of the frame in progress", len(b.buf), have)
			}
			for {
				p, _, err := b.next(maxFrame)
				if err != nil {
					if !errors.Is(err, frame.ErrShort) {
						gotErr = err
					}
					break
				}
				got = append(got, bytes.Clone(p))
			}
		}
		for _, sentinel := range []error{frame.ErrTooLarge, frame.ErrMalformed} {
			if errors.Is(gotErr, sentinel) != errors.Is(wantErr, sentinel) {
				t.Fatalf("error %v, want %v", gotErr, wantErr)
			}
		}
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("error %v, want %v", gotErr, wantErr)
		}
		if len(got) != len(want) {
			t.Fatalf("%d frames, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("frame %d differs", i)
			}
		}
		b.release()
	})
}

func nopLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
