package framingtest

import (
	"strings"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/framing"
)

// fake is a decoder of fixed 4-byte units with a fault switched on, to show
// that Run catches each breach of the contract.
type fake struct {
	fault string
}

func (f *fake) Name() string { return "fake" }
func (f *fake) MaxUnit() int { return 8 }
func (f *fake) Decode(buf []byte) framing.Result {
	if len(buf) < 4 {
		return framing.Result{}
	}
	r := framing.Result{N: 4, Wire: 4, Unit: buf[:4:4]}
	switch f.fault {
	case "overconsume":
		r.N, r.Wire = len(buf)+1, len(buf)+1
	case "accounting":
		r.Discarded = 1
	case "alias":
		r.Unit = []byte("copy")
	case "stall":
		return framing.Result{}
	case "fatal-consumes":
		r.Fatal = true
	}
	return r
}
func (f *fake) Finish(rest []byte) framing.Result {
	if f.fault == "finish-leaves" || len(rest) == 0 {
		return framing.Result{}
	}
	return framing.Result{N: len(rest), Discarded: len(rest)}
}

func TestRunCatchesBreaches(t *testing.T) {
	data := []byte("abcdefghijk") // two units and 3 bytes left
	o, err := Run(&fake{}, Split(data, []byte{3, 5}))
	if err != nil {
		t.Fatal(err)
	}
	if c := o.Counters; c.Good != 2 || c.Discarded != 3 || c.Consumed != len(data) {
		t.Fatalf("counters %+v", c)
	}
	for _, fault := range []string{"overconsume", "accounting", "alias", "stall", "fatal-consumes", "finish-leaves"} {
		if _, err := Run(&fake{fault: fault}, [][]byte{data}); err == nil {
			t.Errorf("fault %q not caught", fault)
		}
	}
}

func TestSplit(t *testing.T) {
	got := Split([]byte("abcdef"), []byte{2, 0, 9})
	var parts []string
	for _, c := range got {
		parts = append(parts, string(c))
	}
	// 2 → "ab"; 0 → an empty read; 9 % 5 = 4 → "cdef"; the rest is empty.
	if s := strings.Join(parts, "|"); s != "ab||cdef|" {
		t.Fatalf("chunks %q", s)
	}
}
