package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestLinks: the link families carry one series per configured link (and
// result or reason), read at scrape time; meridian_link_connected only for
// dial-out links.
func TestLinks(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	stats := []LinkStats{
		{Name: "xband", Bytes: 26856, Good: 22, Bad: 2, Rejected: map[string]uint64{"crc": 1, "short": 1}, Discarded: 1155, SyncLoss: 2, Gaps: 4},
		{Name: "modem", Dial: true, Connected: 1, Good: 49, Gaps: 3, Repeats: 1},
	}
	m.Links(func() []LinkStats { return stats })
	want := `
# HELP meridian_link_connected 1 while a dial-out link is connected to its equipment, 0 while it retries.
# TYPE meridian_link_connected gauge
meridian_link_connected{link="modem"} 1
# HELP meridian_link_frames_total Units read on ground-framing links, by result (good, bad).
# TYPE meridian_link_frames_total counter
meridian_link_frames_total{link="modem",result="bad"} 0
meridian_link_frames_total{link="modem",result="good"} 49
meridian_link_frames_total{link="xband",result="bad"} 2
meridian_link_frames_total{link="xband",result="good"} 22
# HELP meridian_link_sequence_gaps_total Units missing by the CCSDS sequence counters (packet count per APID, VC frame count per VC).
# TYPE meridian_link_sequence_gaps_total counter
meridian_link_sequence_gaps_total{link="modem"} 3
meridian_link_sequence_gaps_total{link="xband"} 4
# HELP meridian_link_discarded_bytes_total Bytes read on ground-framing links that belong to no unit (sync search, units cut short).
# TYPE meridian_link_discarded_bytes_total counter
meridian_link_discarded_bytes_total{link="modem"} 0
meridian_link_discarded_bytes_total{link="xband"} 1155
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"meridian_link_connected", "meridian_link_frames_total", "meridian_link_sequence_gaps_total", "meridian_link_discarded_bytes_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "meridian_link_rejected_total"); err != nil || n != 2*len(LinkReasons) {
		t.Errorf("meridian_link_rejected_total: %d series (%v), want every reason of both links", n, err)
	}
	stats[0].Good = 30 // read at scrape time
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP meridian_link_frames_total Units read on ground-framing links, by result (good, bad).
# TYPE meridian_link_frames_total counter
meridian_link_frames_total{link="modem",result="bad"} 0
meridian_link_frames_total{link="modem",result="good"} 49
meridian_link_frames_total{link="xband",result="bad"} 2
meridian_link_frames_total{link="xband",result="good"} 30
`), "meridian_link_frames_total"); err != nil {
		t.Error(err)
	}
}
