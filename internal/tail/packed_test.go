package tail

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// putPacked stores n frames of a v2 station in one message of the packed
// layout, from seq first, and waits for its PubAck.
func (f *fixture) putPacked(station string, epoch, first uint64, n int) {
	f.t.Helper()
	b := pipeline.NewBatch(f.own, n*64)
	for i := range n {
		seq := first + uint64(i)
		b.AddPacked(pipeline.Frame{
			Station: station, Session: "gs-7@" + station, Seq: seq, Epoch: epoch, Acked: first - 1,
			Received: f.base, Payload: fmt.Appendf(nil, "%s#%d", station, seq),
		})
	}
	if err := f.agg.Put(context.Background(), b); err != nil {
		f.t.Fatal(err)
	}
	f.sent++
	waitFor(f.t, "packed message committed", func() bool { return f.own.count() == f.sent })
}

// TestTailPacked: a message of the packed layout comes out as the frames it
// carries, each with its own sequence number, in every format; --count
// counts frames, also inside a message; raw output is the frames in
// Meridian's framing, as for messages of one frame.
func TestTailPacked(t *testing.T) {
	f := newFixture(t)
	f.putPacked("gs-a", 9, 11, 3) // seq 11-13
	f.put("127.0.0.1", 1)         // a one-frame message after it

	o := f.opts()
	o.All, o.Count, o.Format = true, 4, FormatJSON
	var got []string
	for _, r := range decodeJSON(t, f.run(o)) {
		got = append(got, fmt.Sprintf("%s/%d/%d/%s", r.Station, r.Epoch, r.Seq, r.Payload))
	}
	want := []string{"gs-a/9/11/gs-a#11", "gs-a/9/12/gs-a#12", "gs-a/9/13/gs-a#13", "127.0.0.1/0/1/127.0.0.1#1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("json: got %v, want %v", got, want)
	}

	o.Count, o.Format = 2, FormatText
	text := f.run(o)
	if lines := strings.Split(strings.TrimSpace(text), "\n"); len(lines) != 2 ||
		!strings.Contains(lines[0], "seq=11") || !strings.Contains(lines[1], "seq=12 size=7 epoch=9") {
		t.Fatalf("text with --count 2 inside one message:\n%s", text)
	}

	o.Count, o.Format = 3, FormatRaw
	raw := []byte(f.run(o))
	for i := range 3 {
		p, n, err := frame.Split(raw, 1<<20)
		if err != nil || string(p) != fmt.Sprintf("gs-a#%d", 11+i) {
			t.Fatalf("raw frame %d: %q, %v", i, p, err)
		}
		raw = raw[n:]
	}
	if len(raw) != 0 {
		t.Fatalf("raw: %d bytes after the 3 frames", len(raw))
	}
}
