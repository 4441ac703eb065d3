package tail

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/stream"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitTimeout = 30 * time.Second

// counter is a pipeline.Owner counting committed frames.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) Committed(b *pipeline.Batch) {
	c.mu.Lock()
	c.n += b.Len()
	c.mu.Unlock()
	b.Release()
}

func (c *counter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// fixture is an embedded gateway stream with a client listener and a way to
// put frames into it through the real sink.
type fixture struct {
	t    *testing.T
	cfg  stream.Config
	st   *stream.Stream
	agg  *pipeline.Aggregator
	own  *counter
	sent int
	seqs map[string]uint64
	base time.Time
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	cfg := stream.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", StoreMaxBytes: 64 << 20}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	st, err := stream.Open(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, cfg: cfg, st: st, own: &counter{}, seqs: map[string]uint64{},
		base: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	f.agg = pipeline.New(st.Sink(), 64)
	done := make(chan error, 1)
	go func() { done <- f.agg.Run(context.Background()) }()
	t.Cleanup(func() {
		f.agg.Close()
		<-done
		_ = st.Close()
	})
	return f
}

// put stores n frames of station and waits for their PubAcks.
func (f *fixture) put(station string, n int) {
	f.t.Helper()
	b := pipeline.NewBatch(f.own, n*64)
	for range n {
		f.seqs[station]++
		seq := f.seqs[station]
		b.Add(pipeline.Frame{
			Station:  station,
			Session:  "gs-1@" + station,
			Seq:      seq,
			Received: f.base.Add(time.Duration(seq) * time.Second),
			Payload:  fmt.Appendf(nil, "%s#%d", station, seq),
		})
	}
	if err := f.agg.Put(context.Background(), b); err != nil {
		f.t.Fatal(err)
	}
	f.sent += n
	waitFor(f.t, "frames committed", func() bool { return f.own.count() == f.sent })
}

func (f *fixture) opts() Options {
	return Options{NATS: stream.Client{URL: f.st.ClientURL()}, DataDir: f.cfg.DataDir}
}

func (f *fixture) run(o Options) string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var out bytes.Buffer
	if err := Run(ctx, o, &out); err != nil {
		f.t.Fatalf("Run(%+v): %v", o, err)
	}
	return out.String()
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func decodeJSON(t *testing.T, out string) []record {
	t.Helper()
	var recs []record
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var r record
		if err := dec.Decode(&r); err == io.EOF {
			return recs
		} else if err != nil {
			t.Fatalf("bad JSON %q: %v", out, err)
		}
		recs = append(recs, r)
	}
}

func TestTail(t *testing.T) {
	f := newFixture(t)
	f.put("127.0.0.1", 5)
	f.put("fd00::1", 4)
	f.put("gs-eu-1.example.net", 3)
	f.put("127.0.0.1", 2)

	t.Run("json", func(t *testing.T) {
		o := f.opts()
		o.Since, o.Count, o.Format = "1h", 14, FormatJSON
		recs := decodeJSON(t, f.run(o))
		if len(recs) != 14 {
			t.Fatalf("%d records, want 14", len(recs))
		}
		r := recs[5]
		want := record{StreamSeq: 6, Subject: "telemetry.fd00--1", Station: "fd00::1", Session: "gs-1@fd00::1", Seq: 1,
			Received: "2026-05-01T12:00:01Z", Size: len("fd00::1#1"), Payload: []byte("fd00::1#1")}
		if fmt.Sprint(r) != fmt.Sprint(want) {
			t.Errorf("record 6 = %+v, want %+v", r, want)
		}
		// The raw JSON keys are the documented ones, payload in base64.
		line := strings.SplitN(f.run(o), "\n", 2)[0]
		for _, k := range []string{`"stream_seq":1`, `"subject":"telemetry.127-0-0-1"`, `"station":"127.0.0.1"`, `"seq":1`, `"size":11`, `"payload":"MTI3LjAuMC4xIzE="`} {
			if !strings.Contains(line, k) {
				t.Errorf("JSON line %s lacks %s", line, k)
			}
		}
	})

	t.Run("station by identity and by token", func(t *testing.T) {
		for _, st := range []string{"127.0.0.1", "127-0-0-1"} {
			o := f.opts()
			o.Station, o.Since, o.Count, o.Format = st, "2026-05-01T00:00:00Z", 7, FormatJSON
			recs := decodeJSON(t, f.run(o))
			for i, r := range recs {
				if r.Station != "127.0.0.1" || r.Seq != uint64(i+1) {
					t.Errorf("--station %s: record %d is %s seq %d", st, i, r.Station, r.Seq)
				}
			}
		}
		o := f.opts()
		o.Station, o.Since, o.Count = "gs-eu-1.example.net", "1h", 3
		if out := f.run(o); strings.Count(out, "station=gs-eu-1.example.net") != 3 {
			t.Errorf("text output:\n%s", out)
		}
	})

	t.Run("last", func(t *testing.T) {
		check := func(station string, last int, want ...string) {
			t.Helper()
			o := f.opts()
			o.Station, o.Last, o.Count, o.Format = station, last, len(want), FormatJSON
			var got []string
			for _, r := range decodeJSON(t, f.run(o)) {
				got = append(got, string(r.Payload))
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("--station %q --last %d: %v, want %v", station, last, got, want)
			}
		}
		check("127.0.0.1", 3, "127.0.0.1#5", "127.0.0.1#6", "127.0.0.1#7")
		check("fd00::1", 1, "fd00::1#4")
		check("fd00::1", 10, "fd00::1#1", "fd00::1#2", "fd00::1#3", "fd00::1#4")
		check("", 2, "127.0.0.1#6", "127.0.0.1#7")
	})

	t.Run("raw", func(t *testing.T) {
		o := f.opts()
		o.Station, o.Since, o.Count, o.Format = "fd00::1", "1h", 4, FormatRaw
		out := []byte(f.run(o))
		for i := 1; i <= 4; i++ {
			n := binary.BigEndian.Uint32(out)
			if got, want := string(out[4:4+n]), fmt.Sprintf("fd00::1#%d", i); got != want {
				t.Fatalf("raw frame %d = %q, want %q", i, got, want)
			}
			out = out[4+n:]
		}
		if len(out) != 0 {
			t.Errorf("%d trailing bytes", len(out))
		}
	})

	t.Run("hex", func(t *testing.T) {
		o := f.opts()
		o.Station, o.Last, o.Count, o.Format = "gs-eu-1.example.net", 1, 1, FormatHex
		out := f.run(o)
		if !strings.Contains(out, "seq=3 size=21") || !strings.Contains(out, "00000000  67 73 2d 65 75") {
			t.Errorf("hex output:\n%s", out)
		}
	})
}

func TestTailFollow(t *testing.T) {
	f := newFixture(t)
	f.put("10.0.0.1", 3) // before tail: not shown without --since/--last
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	o := f.opts()
	o.Count = 2
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o, &out) }()
	js := f.st.JetStream()
	waitFor(t, "tail's consumer", func() bool {
		s, err := js.Stream(ctx, stream.DefaultName)
		return err == nil && s.CachedInfo().State.Consumers == 1
	})
	f.put("10.0.0.1", 2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "seq=4 ") || !strings.Contains(got, "seq=5 ") || strings.Contains(got, "seq=3 ") {
		t.Errorf("follow output:\n%s", got)
	}
	// The consumer is gone with tail.
	if s, err := js.Stream(ctx, stream.DefaultName); err != nil {
		t.Fatal(err)
	} else if n := s.CachedInfo().State.Consumers; n != 0 {
		t.Errorf("%d consumers left after tail exited", n)
	}

	// Interrupting a follower is a normal end.
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { done <- Run(ctx2, f.opts(), io.Discard) }()
	waitFor(t, "tail's consumer", func() bool {
		s, err := js.Stream(ctx, stream.DefaultName)
		return err == nil && s.CachedInfo().State.Consumers == 1
	})
	cancel2()
	if err := <-done; err != nil {
		t.Errorf("interrupted tail: %v", err)
	}
}

func TestTailAuth(t *testing.T) {
	f := newFixture(t)
	f.put("10.0.0.1", 1)
	o := f.opts()
	o.DataDir = t.TempDir() // no token there
	o.Since, o.Count = "1h", 1
	if err := Run(context.Background(), o, io.Discard); err == nil {
		t.Error("tail without a token connected")
	}
	tok, err := stream.ReadToken(f.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	o.NATS.Token = tok
	if out := f.run(o); !strings.Contains(out, "station=10.0.0.1") {
		t.Errorf("output with --nats-token: %q", out)
	}
}

func TestOptions(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	f := func(o Options, wantErr bool, wantStart string) {
		t.Helper()
		start, err := o.normalize(now)
		if wantErr {
			if !errors.Is(err, ErrUsage) {
				t.Errorf("%+v: err %v, want ErrUsage", o, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		got := ""
		if start != nil {
			got = start.UTC().Format(time.RFC3339)
		}
		if got != wantStart {
			t.Errorf("%+v: start %q, want %q", o, got, wantStart)
		}
	}
	f(Options{}, false, "")
	f(Options{Since: "90s"}, false, "2026-05-01T11:58:30Z")
	f(Options{Since: "2d"}, false, "2026-04-29T12:00:00Z")
	f(Options{Since: "2026-04-30T08:00:00+02:00"}, false, "2026-04-30T06:00:00Z")
	f(Options{Since: "yesterday"}, true, "")
	f(Options{Since: "1h", Last: 3}, true, "")
	f(Options{Format: "xml"}, true, "")
	f(Options{Last: -1}, true, "")
	f(Options{Count: -1}, true, "")
	f(Options{All: true}, false, "")
	f(Options{All: true, Since: "1h"}, true, "")
	f(Options{All: true, Last: 2}, true, "")
}

// TestTailAll: --all starts at the stream's first frame, and --count N
// ends it after N, whether the stream has more or not.
func TestTailAll(t *testing.T) {
	f := newFixture(t)
	f.put("10.0.0.1", 3)
	f.put("10.0.0.2", 2)
	seqs := func(o Options) []uint64 {
		t.Helper()
		var got []uint64
		for _, r := range decodeJSON(t, f.run(o)) {
			got = append(got, r.StreamSeq)
		}
		return got
	}
	o := f.opts()
	o.All, o.Count, o.Format = true, 5, FormatJSON
	if got := seqs(o); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Errorf("--all --count 5: stream seqs %v", got)
	}
	o.Count = 2 // fewer than the stream holds: exits after 2
	if got := seqs(o); fmt.Sprint(got) != "[1 2]" {
		t.Errorf("--all --count 2: stream seqs %v", got)
	}
	o.Station, o.Count = "10.0.0.2", 2
	if got := seqs(o); fmt.Sprint(got) != "[4 5]" {
		t.Errorf("--all --station 10.0.0.2 --count 2: stream seqs %v", got)
	}
	o = f.opts()
	o.Since, o.Count, o.Format = "1h", 4, FormatJSON
	if got := seqs(o); fmt.Sprint(got) != "[1 2 3 4]" {
		t.Errorf("--since 1h --count 4: stream seqs %v", got)
	}
}

// TestTailHint: a follower on a quiet stream says once, on a terminal, why
// nothing shows; not on a pipe, and not when it replays.
func TestTailHint(t *testing.T) {
	f := newFixture(t)
	f.put("10.0.0.1", 2)
	follow := func(o Options, terminal bool) string {
		t.Helper()
		var stderr syncbuf.Buffer
		o.Stderr, o.HintAfter = &stderr, 10*time.Millisecond
		o.IsTerminal = func(w io.Writer) bool { return terminal && w == &stderr }
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- Run(ctx, o, io.Discard) }()
		if terminal && !o.All && o.Last == 0 && o.Since == "" {
			waitFor(t, "the hint", func() bool { return stderr.String() != "" })
		} else {
			// Wait until tail has had its frames, then past HintAfter.
			waitFor(t, "tail's consumer", func() bool {
				s, err := f.st.JetStream().Stream(ctx, stream.DefaultName)
				return err == nil && s.CachedInfo().State.Consumers == 1
			})
			<-time.After(50 * time.Millisecond) // 5× HintAfter: a hint would be out by now
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return stderr.String()
	}
	if got := follow(f.opts(), true); got != Hint+"\n" {
		t.Errorf("terminal, following: stderr %q, want the hint once", got)
	}
	if got := follow(f.opts(), false); got != "" {
		t.Errorf("not a terminal: stderr %q, want nothing", got)
	}
	o := f.opts()
	o.All = true
	if got := follow(o, true); got != "" {
		t.Errorf("--all on a terminal: stderr %q, want nothing", got)
	}
	o = f.opts()
	o.Last = 1
	if got := follow(o, true); got != "" {
		t.Errorf("--last on a terminal: stderr %q, want nothing", got)
	}

	// A frame before the hint is due cancels it.
	var stderr syncbuf.Buffer
	o = f.opts()
	o.Stderr, o.HintAfter, o.Count = &stderr, time.Hour, 1
	o.IsTerminal = func(io.Writer) bool { return true }
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), o, io.Discard) }()
	waitFor(t, "tail's consumer", func() bool {
		s, err := f.st.JetStream().Stream(context.Background(), stream.DefaultName)
		return err == nil && s.CachedInfo().State.Consumers == 1
	})
	f.put("10.0.0.1", 1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := stderr.String(); got != "" {
		t.Errorf("frame arrived: stderr %q, want nothing", got)
	}
}

func TestIsTerminal(t *testing.T) {
	if IsTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is not a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if IsTerminal(w) {
		t.Error("a pipe is not a terminal")
	}
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		defer tty.Close()
		if !IsTerminal(tty) {
			t.Error("/dev/tty is a terminal")
		}
	}
}
