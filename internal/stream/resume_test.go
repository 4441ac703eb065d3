package stream

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A v2 frame is stored with its station's numbering (Meridian-Epoch,
// Meridian-Seq, Meridian-Acked, Meridian-Gap on the first frame after a
// loss) and the Msg-Id any session of the station gives it; LastStored reads
// the last one back from the leader. A v1 frame after it goes out as before.
func TestV2HeadersAndLastStored(t *testing.T) {
	st := openStream(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	if got, err := st.LastStored(ctx, "gs-eu-1"); err != nil || got.Found {
		t.Fatalf("LastStored on an empty subject = %+v, %v; want not found", got, err)
	}

	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 64)
	b := pipeline.NewBatch(rec, 1024)
	const epoch = 0x1122334455667788
	for seq := uint64(5); seq <= 7; seq++ {
		f := pipeline.Frame{
			Station: "gs-eu-1", Session: "gs-1@127.0.0.1:4000", Seq: seq,
			Received: time.Now(), Payload: payload("gs-eu-1", seq, 16),
			Epoch: epoch, Acked: seq - 2,
		}
		if seq == 5 {
			f.Gap = 3
		}
		b.Add(f)
	}
	// A v1 frame of another station in the same batch: no v2 header.
	b.Add(pipeline.Frame{Station: "10.0.0.7", Session: "gs-2@10.0.0.7:1", Seq: 1, Received: time.Now(), Payload: []byte("v1")})
	if err := agg.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	eventually(t, "4 frames committed", func() bool { return rec.count() == 4 })

	got, err := st.LastStored(ctx, "gs-eu-1")
	if err != nil {
		t.Fatal(err)
	}
	if want := (Stored{Found: true, Station: "gs-eu-1", Epoch: epoch, Seq: 7, Acked: 5}); got != want {
		t.Fatalf("LastStored = %+v, want %+v", got, want)
	}
	v1, err := st.LastStored(ctx, "10.0.0.7")
	if err != nil || !v1.Found || v1.Epoch != 0 || v1.Seq != 1 || v1.Station != "10.0.0.7" {
		t.Fatalf("LastStored of a v1 station = %+v, %v", v1, err)
	}

	s, err := st.JetStream().Stream(ctx, st.Name())
	if err != nil {
		t.Fatal(err)
	}
	for seq := uint64(1); seq <= 4; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		h := m.Header
		if m.Subject == "telemetry.10-0-0-7" {
			for _, k := range []string{HeaderEpoch, HeaderAcked, HeaderGap} {
				if h.Get(k) != "" {
					t.Fatalf("v1 message has %s: %q", k, h.Get(k))
				}
			}
			continue
		}
		stationSeq, _ := strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
		if id := h.Get(jetstream.MsgIDHeader); id != MsgIDv2("gs-eu-1", epoch, stationSeq) {
			t.Fatalf("Nats-Msg-Id %q", id)
		}
		if h.Get(HeaderEpoch) != strconv.FormatUint(epoch, 10) || h.Get(HeaderAcked) != strconv.FormatUint(stationSeq-2, 10) {
			t.Fatalf("message %d headers %v", seq, h)
		}
		wantGap := ""
		if stationSeq == 5 {
			wantGap = "3"
		}
		if h.Get(HeaderGap) != wantGap {
			t.Fatalf("message %d (seq %d): Meridian-Gap %q, want %q", seq, stationSeq, h.Get(HeaderGap), wantGap)
		}
	}
}

// A last message that is not the gateway's (another writer on the subject,
// unreadable or impossible numbering) comes back as found with no station:
// the gateway then resumes from its own record instead of being misled or
// locked out by it.
func TestLastStoredOfAForeignMessage(t *testing.T) {
	st := openStream(t, testConfig(t))
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for _, h := range []map[string]string{
		{HeaderStation: "gs-x", HeaderSeq: "abc"},
		{HeaderStation: "gs-x", HeaderSeq: "5", HeaderEpoch: "3", HeaderCount: "18446744073709551615"},
		{HeaderStation: "gs-x", HeaderSeq: "5", HeaderEpoch: "3", HeaderAcked: "9"},
	} {
		m := nats.NewMsg(Subject("gs-x"))
		for k, v := range h {
			m.Header.Set(k, v)
		}
		m.Data = []byte("not a gateway's")
		if _, err := st.JetStream().PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		got, err := st.LastStored(ctx, "gs-x")
		if err != nil || got != (Stored{Found: true}) {
			t.Fatalf("headers %v: LastStored = %+v, %v; want found, no station", h, got, err)
		}
	}
}
