package stream

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// TestMsgBuilderGroundHeaders: a ground-framing unit gets its sub-token
// subject and its headers, and a Meridian frame built after it gets exactly
// the headers it always had: the reused header map keeps nothing over.
func TestMsgBuilderGroundHeaders(t *testing.T) {
	s := &Sink{prefix: "_INBOX.x.", bootID: "boot"}
	mb := newMsgBuilder()
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	b := pipeline.NewBatch(nil, 4096)
	add := func(station string, seq uint64, m pipeline.Meta) {
		b.Add(pipeline.Frame{Station: station, Session: "gs-1@x", Seq: seq, Received: at, Payload: []byte("p"), Meta: m})
	}
	add("127.0.0.1", 1, pipeline.Meta{})
	add("127.0.0.1", 2, pipeline.Meta{Link: "xband", Framing: "ccsds-frame", Kind: pipeline.MetaFrame, SCID: 42, VCID: 2, MCCount: 254, VCCount: 13})
	add("modem", 3, pipeline.Meta{Link: "modem", Framing: "ccsds-packet", Kind: pipeline.MetaPacket, APID: 291, Seq: 16383, CRCBad: true})
	add("cosmos", 4, pipeline.Meta{Link: "cosmos", Framing: "length-field"})
	add("127.0.0.1", 5, pipeline.Meta{})

	base := []string{HeaderStation, HeaderSession, HeaderSeq, HeaderReceived, HeaderMsgID}
	cases := []struct {
		subject string
		headers map[string]string
	}{
		{"telemetry.127-0-0-1", nil},
		{"telemetry.127-0-0-1.vc2", map[string]string{HeaderFraming: "ccsds-frame", HeaderLink: "xband",
			HeaderSCID: "42", HeaderVCID: "2", HeaderMCCount: "254", HeaderVCCount: "13"}},
		{"telemetry.modem.apid291", map[string]string{HeaderFraming: "ccsds-packet", HeaderLink: "modem",
			HeaderAPID: "291", HeaderSeqCount: "16383", HeaderCRC: "bad"}},
		{"telemetry.cosmos", map[string]string{HeaderFraming: "length-field", HeaderLink: "cosmos"}},
		{"telemetry.127-0-0-1", nil},
	}
	for i, c := range cases {
		m := mb.build(s, b, i, uint64(i+1))
		if m.Subject != c.subject {
			t.Errorf("frame %d: subject %s, want %s", i, m.Subject, c.subject)
		}
		want := slices.Clone(base)
		for k := range c.headers {
			want = append(want, k)
		}
		slices.Sort(want)
		if got := slices.Sorted(maps.Keys(m.Header)); !slices.Equal(got, want) {
			t.Errorf("frame %d: headers %v, want %v", i, got, want)
		}
		for k, v := range c.headers {
			if got := m.Header.Get(k); got != v {
				t.Errorf("frame %d: %s = %q, want %q", i, k, got, v)
			}
		}
		if got, want := m.Header.Get(HeaderSeq), string(rune('1'+i)); got != want {
			t.Errorf("frame %d: Meridian-Seq %q, want %q", i, got, want)
		}
		if got, want := m.Header.Get(HeaderMsgID), MsgID("boot", "gs-1@x", uint64(i+1)); got != want {
			t.Errorf("frame %d: Nats-Msg-Id %q, want %q", i, got, want)
		}
	}
}

// BenchmarkMsgBuilderGround measures building a transfer frame's message.
func BenchmarkMsgBuilderGround(b *testing.B) {
	s := &Sink{prefix: "_INBOX.x.", bootID: "boot"}
	mb := newMsgBuilder()
	bt := pipeline.NewBatch(nil, 4096)
	bt.Add(pipeline.Frame{Station: "127.0.0.1", Session: "gs-1@x", Seq: 1, Received: time.Now(), Payload: []byte("p"),
		Meta: pipeline.Meta{Link: "xband", Framing: "ccsds-frame", Kind: pipeline.MetaFrame, SCID: 42, VCID: 2, MCCount: 254, VCCount: 13}})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		mb.build(s, bt, 0, uint64(i))
	}
}
