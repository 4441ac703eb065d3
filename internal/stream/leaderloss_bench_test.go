package stream

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// BenchmarkLeaderLossStall measures how long ACKs stall when the stream
// leader of an R3 cluster shuts down under load: from the shutdown to the
// new leader's election (JetStream's own), and from the election to the
// first frame committed after it (the gateway's part: the sink resends on
// the leader-elected advisory instead of waiting for --publish-timeout).
// Each round starts its own cluster.
//
//	go test -run '^$' -bench LeaderLossStall -benchtime 5x ./internal/stream/
func BenchmarkLeaderLossStall(b *testing.B) {
	var election, resume []time.Duration
	for range b.N {
		e, r := leaderLossOnce(b)
		election, resume = append(election, e), append(resume, r)
	}
	med := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	b.ReportMetric(med(election), "election-ms")
	b.ReportMetric(med(resume), "commit-after-election-ms")
	b.ReportMetric(float64(slices.Max(resume).Microseconds())/1000, "max-commit-after-election-ms")
}

func leaderLossOnce(b *testing.B) (election, resume time.Duration) {
	b.StopTimer()
	c := startCluster(b)
	cfg := testConfig(b)
	cfg.Client.URL = strings.Join(c.urls, ",")
	cfg.Replicas = 3
	st := openStream(b, cfg)
	rec := newRecorder()
	agg := runAggregator(b, st.Sink(), 512)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var leader *server.Server
	eventually(b, "the stream leader's name", func() bool {
		info, err := st.JetStream().Stream(ctx, cfg.Name)
		if err == nil && info.CachedInfo().Cluster != nil {
			leader = c.byName(info.CachedInfo().Cluster.Leader)
		}
		return leader != nil
	})
	// The advisory is watched from a server that stays up.
	var other string
	for i, srv := range c.servers {
		if srv != leader {
			other = c.urls[i]
		}
	}
	nc, err := nats.Connect(other)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	elected := make(chan time.Time, 4)
	sub, err := nc.Subscribe(LeaderElectedSubject(cfg.Name), func(*nats.Msg) {
		select {
		case elected <- time.Now():
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}

	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range 4 {
		f := newFeeder(fmt.Sprintf("10.0.0.%d", i+1), i+1, rec)
		f.size = 1024
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if f.feed(ctx, agg, 64) != nil {
					return
				}
			}
		})
	}
	defer func() { close(stop); cancel(); wg.Wait() }()
	eventually(b, "load under way", func() bool { return rec.count() >= 5000 })

	b.StartTimer()
	down := time.Now()
	leader.Shutdown()
	var at time.Time
	select {
	case at = <-elected:
	case <-time.After(30 * time.Second):
		b.Fatal("no leader elected within 30 s")
	}
	n := rec.count()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for rec.count() == n {
		if time.Since(at) > 30*time.Second {
			b.Fatal("nothing committed within 30 s of the election")
		}
		<-tick.C
	}
	b.StopTimer()
	return at.Sub(down), time.Since(at)
}
