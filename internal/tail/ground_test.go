package tail

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// putMeta stores one frame per meta for station, with the ground-framing
// metadata a link sets, and waits for their PubAcks.
func (f *fixture) putMeta(station string, metas ...pipeline.Meta) {
	f.t.Helper()
	b := pipeline.NewBatch(f.own, len(metas)*64)
	for _, m := range metas {
		f.seqs[station]++
		seq := f.seqs[station]
		b.Add(pipeline.Frame{
			Station: station, Session: "gs-9@" + station, Seq: seq,
			Received: f.base.Add(time.Duration(seq) * time.Second),
			Payload:  fmt.Appendf(nil, "%s#%d", station, seq),
			Meta:     m,
		})
	}
	if err := f.agg.Put(context.Background(), b); err != nil {
		f.t.Fatal(err)
	}
	f.sent += len(metas)
	waitFor(f.t, "frames committed", func() bool { return f.own.count() == f.sent })
}

func frameMeta(vcid, vc uint8) pipeline.Meta {
	return pipeline.Meta{Link: "xband", Framing: "ccsds-frame", Kind: pipeline.MetaFrame, SCID: 42, VCID: vcid, MCCount: vc + 100, VCCount: vc}
}

func packetMeta(apid, seq uint16, bad bool) pipeline.Meta {
	return pipeline.Meta{Link: "modem", Framing: "ccsds-packet", Kind: pipeline.MetaPacket, APID: apid, Seq: seq, CRCBad: bad}
}

// TestTailGroundFramings: --station also takes a station's sub-token
// subjects, --vc and --apid select one channel or APID of one station or of
// all, and the ground-framing headers show in json and text.
func TestTailGroundFramings(t *testing.T) {
	f := newFixture(t)
	f.put("127.0.0.1", 2)                                                     // seq 1-2, Meridian frames
	f.putMeta("127.0.0.1", frameMeta(2, 1), frameMeta(7, 1), frameMeta(2, 2)) // seq 3-5
	f.putMeta("modem", packetMeta(5, 10, false), packetMeta(5, 11, true))     // seq 1-2
	f.putMeta("10.0.0.9", frameMeta(2, 9))                                    // seq 1

	seqs := func(o Options, n int) []string {
		t.Helper()
		o.All, o.Count, o.Format = true, n, FormatJSON
		var out []string
		for _, r := range decodeJSON(t, f.run(o)) {
			out = append(out, fmt.Sprintf("%s/%d", r.Station, r.Seq))
		}
		return out
	}
	intp := func(n int) *int { return &n }
	check := func(name string, o Options, want ...string) {
		t.Helper()
		if got := seqs(o, len(want)); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	o := f.opts()
	o.Station = "127.0.0.1"
	check("station with sub-subjects", o, "127.0.0.1/1", "127.0.0.1/2", "127.0.0.1/3", "127.0.0.1/4", "127.0.0.1/5")
	o = f.opts()
	o.VC = intp(2)
	check("vc 2 on every station", o, "127.0.0.1/3", "127.0.0.1/5", "10.0.0.9/1")
	o.Station = "127-0-0-1"
	check("vc 2 of one station", o, "127.0.0.1/3", "127.0.0.1/5")
	o = f.opts()
	o.APID = intp(5)
	check("apid 5", o, "modem/1", "modem/2")

	o = f.opts()
	o.VC, o.Last, o.Count, o.Format = intp(2), 1, 1, FormatJSON
	if recs := decodeJSON(t, f.run(o)); len(recs) != 1 || recs[0].Station != "10.0.0.9" {
		t.Errorf("--vc 2 --last 1: %+v", recs)
	}

	o = f.opts()
	o.APID, o.All, o.Count, o.Format = intp(5), true, 2, FormatJSON
	out := f.run(o)
	for _, k := range []string{`"subject":"telemetry.modem.apid5"`, `"link":"modem"`, `"framing":"ccsds-packet"`, `"apid":5`, `"seq_count":11`, `"crc":"bad"`} {
		if !strings.Contains(out, k) {
			t.Errorf("JSON lacks %s:\n%s", k, out)
		}
	}
	if strings.Contains(strings.SplitN(out, "\n", 2)[0], `"crc"`) {
		t.Errorf("a good packet is marked: %s", out)
	}
	o = f.opts()
	o.Station, o.All, o.Count = "127.0.0.1", true, 5
	lines := strings.Split(strings.TrimSpace(f.run(o)), "\n")
	if len(lines) != 5 || strings.Contains(lines[0], "link=") ||
		!strings.HasSuffix(lines[3], " link=xband framing=ccsds-frame scid=42 vcid=7 mc_count=101 vc_count=1") {
		t.Errorf("text lines:\n%s", strings.Join(lines, "\n"))
	}

	for _, bad := range []Options{{VC: intp(1), APID: intp(1)}, {VC: intp(8)}, {APID: intp(2048)}, {VC: intp(-1)}} {
		if err := Run(context.Background(), bad, &strings.Builder{}); !errors.Is(err, ErrUsage) {
			t.Errorf("Run(vc %v, apid %v) = %v, want ErrUsage", bad.VC, bad.APID, err)
		}
	}
}
