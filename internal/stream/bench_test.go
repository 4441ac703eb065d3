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
	b.Release()
}

// BenchmarkSink measures 1 KiB frames from 16 stations into the embedded
// store, through the aggregator as the gateway uses it, reporting
// acknowledged frames/s and the p99 time from a frame entering the queue to
// its commit (its ACK to the station).
//
//   - saturate: stations send as fast as the sink takes frames (throughput;
//     latency is then mostly queueing behind the full window);
//   - paced-100k, paced-50k: stations send 100,000 (the target) or
//     50,000 frames/s in all, latency measured from each frame's scheduled
//     send time.
func BenchmarkSink(b *testing.B) {
	b.Run("saturate/sync=1s", func(b *testing.B) { benchSink(b, "1s", 0) })
	b.Run("paced-100k/sync=1s", func(b *testing.B) { benchSink(b, "1s", 100_000) })
	b.Run("paced-50k/sync=1s", func(b *testing.B) { benchSink(b, "1s", 50_000) })
	b.Run("saturate/sync=always", func(b *testing.B) {
		if b.N > 20_000 {
			b.Skip("fsync per frame: run with -benchtime 20000x or less")
		}
		benchSink(b, "always", 0)
	})
}

// benchSink sends b.N frames from 16 stations, at rate frames/s in all, or as
// fast as possible when rate is 0.
func benchSink(b *testing.B, mode string, rate int) {
	const stations, frameSize, perBatch = 16, 1024, 16
	cfg := testConfig(b)
	if mode == "always" {
		cfg.SyncAlways = true
	} else {
		d, err := time.ParseDuration(mode)
		if err != nil {
			b.Fatal(err)
		}
		cfg.SyncInterval = d
	}
	cfg.StoreMaxBytes = 4 << 30
	st := openStream(b, cfg)
	owner := &latencyOwner{all: make(chan struct{}), want: b.N}
	agg := runAggregator(b, st.Sink(), config.Default().Queue)
	ctx := context.Background()
	data := make([]byte, frameSize)
	var interval time.Duration // between one station's batches
	if rate > 0 {
		interval = time.Duration(float64(time.Second) * stations * perBatch / float64(rate))
	}

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
			// Stagger the stations over one interval.
			next := start.Add(interval * time.Duration(s) / stations)
			pace := time.NewTimer(0)
			defer pace.Stop()
			<-pace.C
			for n > 0 {
				sent := time.Now()
				if interval > 0 {
					// Pacing the load generator; latency counts from the
					// scheduled time, so a late send is not hidden.
					pace.Reset(time.Until(next))
					<-pace.C
					sent = next
					next = next.Add(interval)
				}
				batch := pipeline.NewBatch(owner, perBatch*frameSize)
				for k := 0; k < perBatch && n > 0; k++ {
					batch.Add(pipeline.Frame{Station: station, Session: session, Seq: seq, Received: sent, Payload: data})
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
	b.ReportMetric(float64(owner.lat[len(owner.lat)/2].Microseconds())/1000, "p50-ms")
}
