package stream

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// latencyOwner records, per committed batch, how long its oldest frame
// waited for its PubAck.
type latencyOwner struct {
	mu   sync.Mutex
	lat  []time.Duration
	done int
	all  chan struct{}
	want int
}

func (o *latencyOwner) Committed(b *pipeline.Batch) {
	now := time.Now()
	o.mu.Lock()
	o.lat = append(o.lat, now.Sub(b.Frames[0].Received))
	o.done += b.Len()
	if o.done == o.want {
		close(o.all)
	}
	o.mu.Unlock()
	// Not released: see recorder.Committed.
}

// BenchmarkSink measures acknowledged throughput of 1 KiB frames from 16
// stations into the embedded store (--sync 1s), through the aggregator as the
// gateway uses it. It reports frames/s and the p99 time from a frame entering
// the queue to its commit.
func BenchmarkSink(b *testing.B) {
	for _, mode := range []string{"1s", "always"} {
		b.Run("sync="+mode, func(b *testing.B) {
			if mode == "always" && b.N > 20000 {
				b.Skip("fsync per frame: only a short run")
			}
			benchSink(b, mode)
		})
	}
}

func benchSink(b *testing.B, mode string) {
	const stations, frameSize, perBatch = 16, 1024, 32
	cfg := testConfig(b)
	cfg.Sync = mode
	cfg.StoreMaxBytes = 4 * config.GiB
	st := openStream(b, cfg)
	owner := &latencyOwner{all: make(chan struct{}), want: b.N}
	agg := runAggregator(b, st.Sink(), config.Default().Queue)
	ctx := context.Background()
	data := make([]byte, frameSize)

	b.SetBytes(frameSize)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for s := range stations {
		n := b.N / stations
		if s < b.N%stations {
			n++
		}
		station := fmt.Sprintf("10.0.0.%d", s+1)
		session := fmt.Sprintf("gs-%d@%s:40000", s+1, station)
		wg.Go(func() {
			seq := uint64(1)
			for n > 0 {
				batch := pipeline.NewBatch(owner)
				now := time.Now()
				for k := 0; k < perBatch && n > 0; k++ {
					batch.Add(pipeline.Frame{Station: station, Session: session, Seq: seq, Received: now, Payload: data})
					seq++
					n--
				}
				if err := agg.Put(ctx, batch); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	<-owner.all
	elapsed := time.Since(start)
	b.StopTimer()
	slices.Sort(owner.lat)
	p99 := owner.lat[len(owner.lat)*99/100]
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}
