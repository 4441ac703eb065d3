package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scrape serves reg over a real HTTP listener for the duration of the test.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestCountersOverHTTP(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	url := scrape(t, reg)

	m.SessionStarted()
	m.SessionStarted()
	m.SessionStarted()
	m.SessionEnded(frame.ReasonIdleTimeout)
	m.SessionEnded(frame.Reason(42)) // unknown reasons are still counted
	m.Received(3, 300)
	m.Received(2, 50)
	m.ObserveFrameSize(100)
	m.ObserveFrameSize(5000)
	m.Committed(5, 20*time.Millisecond)
	m.AcceptError()
	m.HeartbeatSent()
	m.AckSent()
	m.AckSent()
	m.Rejected(frame.ReasonBusy)
	m.Rejected(frame.ReasonUnauthorized)
	m.Rejected(frame.ReasonUnauthorized)
	m.TLSHandshakeFailed()
	m.Queue(func() pipeline.Stats { return pipeline.Stats{Depth: 17, BlockedFor: 1500 * time.Millisecond} })

	want := `
# HELP meridian_sessions_active Station sessions open right now.
# TYPE meridian_sessions_active gauge
meridian_sessions_active 1
# HELP meridian_frames_received_total Data frames read from stations.
# TYPE meridian_frames_received_total counter
meridian_frames_received_total 5
# HELP meridian_received_bytes_total Payload bytes of the data frames read from stations.
# TYPE meridian_received_bytes_total counter
meridian_received_bytes_total 350
# HELP meridian_frames_committed_total Data frames the sink has durably committed.
# TYPE meridian_frames_committed_total counter
meridian_frames_committed_total 5
# HELP meridian_accept_errors_total Errors returned by accept on the station listener.
# TYPE meridian_accept_errors_total counter
meridian_accept_errors_total 1
# HELP meridian_heartbeats_sent_total HEARTBEAT frames sent to stations.
# TYPE meridian_heartbeats_sent_total counter
meridian_heartbeats_sent_total 1
# HELP meridian_acks_sent_total ACK frames sent to stations.
# TYPE meridian_acks_sent_total counter
meridian_acks_sent_total 2
# HELP meridian_tls_handshake_failures_total TLS handshakes with stations that failed or timed out.
# TYPE meridian_tls_handshake_failures_total counter
meridian_tls_handshake_failures_total 1
# HELP meridian_queue_depth_frames Frames waiting in the queue between sessions and the sink.
# TYPE meridian_queue_depth_frames gauge
meridian_queue_depth_frames 17
# HELP meridian_backpressure_seconds_total Time sessions spent blocked on a full queue, summed over sessions.
# TYPE meridian_backpressure_seconds_total counter
meridian_backpressure_seconds_total 1.5
`
	names := []string{
		"meridian_sessions_active", "meridian_frames_received_total", "meridian_received_bytes_total",
		"meridian_frames_committed_total", "meridian_accept_errors_total", "meridian_heartbeats_sent_total",
		"meridian_acks_sent_total", "meridian_tls_handshake_failures_total", "meridian_queue_depth_frames",
		"meridian_backpressure_seconds_total",
	}
	if err := testutil.ScrapeAndCompare(url, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}

	check := func(c prometheus.Collector, want float64) {
		t.Helper()
		if got := testutil.ToFloat64(c); got != want {
			t.Errorf("got %v, want %v", got, want)
		}
	}
	check(m.sessionsEnded.WithLabelValues("idle_timeout"), 1)
	check(m.sessionsEnded.WithLabelValues("reason_42"), 1)
	check(m.sessionsEnded.WithLabelValues("shutdown"), 0)
	check(m.rejected.WithLabelValues("server_busy"), 1)
	check(m.rejected.WithLabelValues("not_authorized"), 2)

	if n := testutil.CollectAndCount(m.frameSize); n != 1 {
		t.Errorf("frame size histogram: %d series, want 1", n)
	}
	if err := testutil.CollectAndCompare(m.commitLatency, strings.NewReader(`
# HELP meridian_commit_latency_seconds Time from reading a batch's first frame to the sink committing the batch.
# TYPE meridian_commit_latency_seconds histogram
meridian_commit_latency_seconds_bucket{le="0.001"} 0
meridian_commit_latency_seconds_bucket{le="0.0025"} 0
meridian_commit_latency_seconds_bucket{le="0.005"} 0
meridian_commit_latency_seconds_bucket{le="0.01"} 0
meridian_commit_latency_seconds_bucket{le="0.025"} 1
meridian_commit_latency_seconds_bucket{le="0.05"} 1
meridian_commit_latency_seconds_bucket{le="0.1"} 1
meridian_commit_latency_seconds_bucket{le="0.25"} 1
meridian_commit_latency_seconds_bucket{le="0.5"} 1
meridian_commit_latency_seconds_bucket{le="1"} 1
meridian_commit_latency_seconds_bucket{le="2.5"} 1
meridian_commit_latency_seconds_bucket{le="5"} 1
meridian_commit_latency_seconds_bucket{le="10"} 1
meridian_commit_latency_seconds_bucket{le="30"} 1
meridian_commit_latency_seconds_bucket{le="+Inf"} 1
meridian_commit_latency_seconds_sum 0.02
meridian_commit_latency_seconds_count 1
`)); err != nil {
		t.Error(err)
	}
}

// Every reason label exists before anything happened, so rate() reads 0.
func TestReasonLabelsPrecreated(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	n := len(frame.Reasons())
	for _, name := range []string{"meridian_sessions_ended_total", "meridian_rejected_connections_total"} {
		got, err := testutil.GatherAndCount(reg, name)
		if err != nil {
			t.Fatal(err)
		}
		if got != n {
			t.Errorf("%s: %d series, want %d (one per frame.Reasons())", name, got, n)
		}
	}
}

func TestRuntimeCollectors(t *testing.T) {
	t.Run("fresh registry gets them", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		New(reg)
		for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
			if n, err := testutil.GatherAndCount(reg, name); err != nil || n != 1 {
				t.Errorf("%s: %d series, err %v; want 1", name, n, err)
			}
		}
	})
	t.Run("registry that has them keeps its own", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		New(reg) // must not panic
		if n, err := testutil.GatherAndCount(reg, "go_goroutines"); err != nil || n != 1 {
			t.Errorf("go_goroutines: %d series, err %v; want 1", n, err)
		}
	})
}

func TestNamesFollowConventions(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Queue(func() pipeline.Stats { return pipeline.Stats{} })
	m.ObserveFrameSize(1)
	m.Committed(1, time.Millisecond)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "meridian_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestDoubleRegistrationPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	defer func() {
		if recover() == nil {
			t.Fatal("second New on one registry did not panic")
		}
	}()
	New(reg)
}

func TestNilSafe(t *testing.T) {
	var m *Metrics
	m.SessionStarted()
	m.SessionEnded(frame.ReasonShutdown)
	m.Received(1, 1)
	m.ObserveFrameSize(1)
	m.Committed(1, time.Second)
	m.AcceptError()
	m.HeartbeatSent()
	m.AckSent()
	m.Rejected(frame.ReasonBusy)
	m.TLSHandshakeFailed()
	m.Queue(func() pipeline.Stats { return pipeline.Stats{} })

	// Unregistered metrics work too, and Queue is then a no-op.
	u := New(nil)
	u.Received(1, 2)
	u.Queue(func() pipeline.Stats { return pipeline.Stats{} })
	if got := testutil.ToFloat64(u.bytesReceived); got != 2 {
		t.Errorf("bytes: got %v, want 2", got)
	}
}

func BenchmarkObserveFrameSize(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		n := 0
		for pb.Next() {
			m.ObserveFrameSize(n & 0xffff)
			n++
		}
	})
}

func BenchmarkReceived(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Received(64, 64*512)
		}
	})
}

func BenchmarkCommitted(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Committed(64, 3*time.Millisecond)
		}
	})
}

func BenchmarkSessionEnded(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	for b.Loop() {
		m.SessionStarted()
		m.SessionEnded(frame.ReasonStationClosed)
	}
}

func BenchmarkNil(b *testing.B) {
	var m *Metrics
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveFrameSize(100)
		m.Received(1, 100)
	}
}
