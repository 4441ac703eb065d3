package sink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/sink"
)

type owner struct{ n int }

func (o *owner) Committed(*pipeline.Batch) { o.n++ }

func queued(o *owner, frames ...pipeline.Frame) *pipeline.Batch {
	b := pipeline.NewBatch(o, 1024)
	for _, f := range frames {
		b.Add(f)
	}
	// Arm the batch the way the queue does.
	a := pipeline.New(sink.NewDiscard(), 16)
	if err := a.Put(context.Background(), b); err != nil {
		panic(err)
	}
	a.Close()
	return b
}

func TestStdoutLineFormat(t *testing.T) {
	var out bytes.Buffer
	s := sink.NewStdout(&out)
	o := &owner{}
	at := time.Date(2026, 11, 26, 6, 7, 8, 123456789, time.UTC)
	b := queued(o, pipeline.Frame{Session: "gs-1@127.0.0.1:50312", Seq: 1, Received: at, Payload: []byte("hello")})
	if err := s.Write(context.Background(), []*pipeline.Batch{b}); err != nil {
		t.Fatal(err)
	}
	want := `{"session":"gs-1@127.0.0.1:50312","seq":1,"received":"2026-11-26T06:07:08.123456789Z","size":5,"payload":"aGVsbG8="}` + "\n"
	if out.String() != want {
		t.Fatalf("got  %s\nwant %s", out.String(), want)
	}
	var rec map[string]any
	if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if o.n != 1 {
		t.Fatal("the batch was not committed after the line was written")
	}
}

func TestStdoutQuotesOddSessionIDs(t *testing.T) {
	var rec struct{ Session string }
	line := sink.AppendJSON(nil, &pipeline.Frame{Session: "gs-2@[fd00::1]:7\"x", Payload: []byte{0, 0xff}})
	if err := json.Unmarshal(line, &rec); err != nil || rec.Session != "gs-2@[fd00::1]:7\"x" {
		t.Fatalf("%s: %v", line, err)
	}
}

func TestDiscardCounts(t *testing.T) {
	d := sink.NewDiscard()
	o := &owner{}
	b := queued(o, pipeline.Frame{Seq: 1, Payload: []byte("ab")}, pipeline.Frame{Seq: 2, Payload: []byte("cde")})
	if err := d.Write(context.Background(), []*pipeline.Batch{b}); err != nil {
		t.Fatal(err)
	}
	if f, by := d.Counts(); f != 2 || by != 5 || o.n != 1 {
		t.Fatalf("counts %d %d, commits %d", f, by, o.n)
	}
}
