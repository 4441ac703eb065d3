// Package sink holds the gateway's non-durable sinks: discard (for
// benchmarks), stdout (one JSON line per frame) and memory (for tests and
// embedding). The durable sink lives in package stream.
package sink

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// Discard counts frames and bytes and commits them at once.
type Discard struct {
	frames atomic.Uint64
	bytes  atomic.Uint64
}

// NewDiscard returns a sink that keeps nothing.
func NewDiscard() *Discard { return &Discard{} }

// Write implements pipeline.Sink.
func (d *Discard) Write(_ context.Context, batches []*pipeline.Batch) error {
	for _, b := range batches {
		d.frames.Add(uint64(b.Count()))
		d.bytes.Add(uint64(b.Bytes))
		b.Commit(b.Len())
	}
	return nil
}

// Flush implements pipeline.Sink; everything is committed on Write.
func (d *Discard) Flush(context.Context) error { return nil }

// Close implements pipeline.Sink.
func (d *Discard) Close() error { return nil }

// Counts returns the frames and bytes seen so far.
func (d *Discard) Counts() (frames, bytes uint64) { return d.frames.Load(), d.bytes.Load() }

// Stdout writes one JSON line per frame:
//
//	{"session":"gs-1@127.0.0.1:50312","seq":1,"received":"…","size":5,"payload":"<base64>"}
//
// Frames are committed once the line is written and flushed to w.
type Stdout struct {
	w   *bufio.Writer
	buf []byte
}

// NewStdout returns a sink writing JSON lines to w (os.Stdout in serve).
func NewStdout(w io.Writer) *Stdout {
	return &Stdout{w: bufio.NewWriterSize(w, 64*1024)}
}

// Write implements pipeline.Sink.
func (s *Stdout) Write(_ context.Context, batches []*pipeline.Batch) error {
	for _, b := range batches {
		for i := range b.Frames {
			s.buf = AppendJSON(s.buf[:0], &b.Frames[i])
			if _, err := s.w.Write(s.buf); err != nil {
				return fmt.Errorf("stdout sink: %w", err)
			}
		}
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("stdout sink: %w", err)
	}
	for _, b := range batches {
		b.Commit(b.Len())
	}
	return nil
}

// Flush implements pipeline.Sink; Write already flushed.
func (s *Stdout) Flush(context.Context) error { return nil }

// Close implements pipeline.Sink.
func (s *Stdout) Close() error { return s.w.Flush() }

// AppendJSON appends f as one JSON line, without reflection: session ids and
// timestamps need no escaping, and the payload is base64.
func AppendJSON(dst []byte, f *pipeline.Frame) []byte {
	dst = append(dst, `{"session":`...)
	dst = strconv.AppendQuote(dst, f.Session)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, f.Seq, 10)
	dst = append(dst, `,"received":"`...)
	dst = f.Received.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","size":`...)
	dst = strconv.AppendInt(dst, int64(len(f.Payload)), 10)
	dst = append(dst, `,"payload":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, f.Payload)
	return append(dst, "\"}\n"...)
}

// Memory keeps copies of every frame, in commit order. It is a real sink for
// tests and for programs that embed the gateway.
type Memory struct {
	mu     sync.Mutex
	frames []pipeline.Frame
	notify chan struct{} // closed and replaced on every Write
	hold   chan struct{} // while non-nil, Write blocks (an unavailable store)
}

// NewMemory returns an empty memory sink.
func NewMemory() *Memory { return &Memory{notify: make(chan struct{})} }

// Write implements pipeline.Sink.
func (m *Memory) Write(ctx context.Context, batches []*pipeline.Batch) error {
	m.mu.Lock()
	hold := m.hold
	m.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	for _, b := range batches {
		for _, f := range b.Frames {
			f.Payload = append([]byte(nil), f.Payload...)
			m.frames = append(m.frames, f)
		}
	}
	close(m.notify)
	m.notify = make(chan struct{})
	m.mu.Unlock()
	for _, b := range batches {
		b.Commit(b.Len())
	}
	return nil
}

// Flush implements pipeline.Sink.
func (m *Memory) Flush(context.Context) error { return nil }

// Close implements pipeline.Sink.
func (m *Memory) Close() error { return nil }

// Hold makes Write block, as a store that cannot take frames would, until
// the returned function is called.
func (m *Memory) Hold() (resume func()) {
	ch := make(chan struct{})
	m.mu.Lock()
	m.hold = ch
	m.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			m.hold = nil
			m.mu.Unlock()
			close(ch)
		})
	}
}

// Frames returns a copy of the frames stored so far.
func (m *Memory) Frames() []pipeline.Frame {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]pipeline.Frame(nil), m.frames...)
}

// Len is the number of frames stored.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.frames)
}

// WaitLen blocks until at least n frames are stored or ctx ends.
func (m *Memory) WaitLen(ctx context.Context, n int) error {
	for {
		m.mu.Lock()
		l, ch := len(m.frames), m.notify
		m.mu.Unlock()
		if l >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("memory sink holds %d frames, want %d: %w", l, n, ctx.Err())
		}
	}
}

// BySession groups the stored payloads by session id, in sequence order as
// stored.
func (m *Memory) BySession() map[string][]pipeline.Frame {
	out := make(map[string][]pipeline.Frame)
	for _, f := range m.Frames() {
		out[f.Session] = append(out[f.Session], f)
	}
	return out
}
