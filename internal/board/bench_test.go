package board

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// BenchmarkView measures one /api/board request's work on the board's side
// (reading, reconciling, building and encoding the view) with 1,000 live
// sessions, each with a full sparkline history.
func BenchmarkView(b *testing.B) {
	const n = 1000
	sessions := make([]Session, n)
	for i := range sessions {
		sessions[i] = Session{ID: fmt.Sprintf("gs-%d@10.0.%d.%d:4000", i, i/256, i%256), Station: fmt.Sprintf("10.0.%d.%d", i/256, i%256),
			RemoteAddr: "10.0.0.1:4000", Since: t0}
	}
	src := Source{Sessions: func() []Session { return sessions }}
	bd := New(src, Options{})
	at := t0
	for range bd.points {
		at = at.Add(2 * time.Second)
		for i := range sessions {
			sessions[i].Frames += 20
			sessions[i].LastFrame = at
		}
		bd.Sample(at)
	}
	b.ReportAllocs()
	var size int
	for b.Loop() {
		out, err := json.Marshal(bd.View(at.Add(time.Second)))
		if err != nil {
			b.Fatal(err)
		}
		size = len(out)
	}
	b.ReportMetric(float64(size)/n, "json-bytes/session")
}

// BenchmarkSample measures one sampling tick with 1,000 live sessions.
func BenchmarkSample(b *testing.B) {
	const n = 1000
	sessions := make([]Session, n)
	for i := range sessions {
		sessions[i] = Session{ID: fmt.Sprintf("gs-%d", i), Station: "s", Since: t0}
	}
	bd := New(Source{Sessions: func() []Session { return sessions }}, Options{})
	at := t0
	b.ReportAllocs()
	for b.Loop() {
		at = at.Add(2 * time.Second)
		bd.Sample(at)
	}
}
