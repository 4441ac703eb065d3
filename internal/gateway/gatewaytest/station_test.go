package gatewaytest

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestCheckV2 shows that the exactly-once checker sees each way a stream
// can be wrong: it is what every exactly-once test relies on.
func TestCheckV2(t *testing.T) {
	a := NewV2Station(V2Config{Name: "gs-a", Epoch: 7, Frames: 3, Size: 40})
	b := NewV2Station(V2Config{Name: "gs-b", Epoch: 9, Frames: 2, Size: 10})
	rec := func(st *V2Station, seq uint64) V2Record {
		return V2Record{Station: st.Name(), Epoch: st.Epoch(), Seq: seq, Data: V2Payload(st.Name(), st.Epoch(), seq, st.Size())}
	}
	all := []V2Record{rec(a, 1), rec(a, 2), rec(a, 3), rec(b, 2), rec(b, 1)}
	if r := CheckV2([]*V2Station{a, b}, all); !r.OK() || r.Stored != 5 {
		t.Fatalf("a complete stream: %s", r)
	}

	corrupt := rec(a, 2)
	corrupt.Data = append([]byte(nil), corrupt.Data...)
	corrupt.Data[len(corrupt.Data)-1] ^= 1
	otherEpoch := rec(b, 1)
	otherEpoch.Epoch = 10
	for _, c := range []struct {
		name string
		recs []V2Record
		want func(V2Report) bool
	}{
		{"missing", []V2Record{rec(a, 1), rec(a, 3), rec(b, 1), rec(b, 2)}, func(r V2Report) bool { return r.Missing == 1 }},
		{"duplicate", append(all, rec(a, 2), rec(a, 2)), func(r V2Report) bool { return r.Duplicates == 2 }},
		{"corrupt", []V2Record{rec(a, 1), corrupt, rec(a, 3), rec(b, 1), rec(b, 2)}, func(r V2Report) bool { return r.Corrupt == 1 }},
		{"another epoch", []V2Record{rec(a, 1), rec(a, 2), rec(a, 3), otherEpoch, rec(b, 2)}, func(r V2Report) bool { return r.Foreign == 1 && r.Missing == 1 }},
		{"beyond the last frame", append(all, rec(b, 3)), func(r V2Report) bool { return r.Foreign == 1 }},
	} {
		r := CheckV2([]*V2Station{a, b}, c.recs)
		if r.OK() || !c.want(r) {
			t.Errorf("%s: %s", c.name, r)
		}
	}
}

func TestV2Payload(t *testing.T) {
	p := V2Payload("gs-a", 7, 12, 30)
	if len(p) != 30 || !strings.HasPrefix(string(p), "gs-a/7/12") {
		t.Fatalf("payload %q", p)
	}
	if short := V2Payload("gs-a", 7, 12, 0); string(short) != "gs-a/7/12" {
		t.Fatalf("payload %q: never shorter than its label", short)
	}
	if string(V2Payload("gs-a", 7, 13, 30)) == string(p) || string(V2Payload("gs-a", 8, 12, 30)) == string(p) {
		t.Fatal("payloads of different frames are equal")
	}
}
