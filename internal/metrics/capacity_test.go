package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meridian-telemetry/meridian/internal/config"
)

func TestQueueCapacity(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.QueueCapacity(1024)
	want := `
# HELP meridian_queue_capacity_frames Frames the queue between sessions and the sink holds at most (--queue).
# TYPE meridian_queue_capacity_frames gauge
meridian_queue_capacity_frames 1024
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meridian_queue_capacity_frames"); err != nil {
		t.Error(err)
	}
	// Without a registry, or on nil, it does nothing.
	New(nil).QueueCapacity(1)
	(*Metrics)(nil).QueueCapacity(1)
}

// TestFrameSizeBucketsSpanMaxFrame holds the comment on frameSizeBuckets:
// the top bucket reaches the largest frame --max-frame allows.
func TestFrameSizeBucketsSpanMaxFrame(t *testing.T) {
	if top := frameSizeBuckets[len(frameSizeBuckets)-1]; top < config.MaxFrameLimit {
		t.Errorf("top frame size bucket %v < config.MaxFrameLimit %d", top, config.MaxFrameLimit)
	}
	if frameSizeBuckets[0] != 64 {
		t.Errorf("first bucket %v, want 64", frameSizeBuckets[0])
	}
}
