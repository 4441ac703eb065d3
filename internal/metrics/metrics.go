// Package metrics is the gateway's Prometheus instrumentation: one value that
// owns every collector, with methods named after the events the gateway
// reports. No metric carries a per-session or per-station label, so the
// number of series is fixed at start-up whatever the number of stations;
// per-station detail lives on the ops server's /stations page instead.
//
// Every method is safe on a nil *Metrics, so code under test can pass nil
// instead of building a registry it never reads.
package metrics

import (
	"errors"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

const namespace = "meridian"

// Histogram buckets. Frame sizes span the whole range --max-frame allows
// (64 B to config.MaxFrameLimit, 64 MiB, ×4 per bucket; a test holds this);
// commit latency spans a local sink's milliseconds to a struggling
// replicated stream's tens of seconds.
var (
	frameSizeBuckets     = prometheus.ExponentialBuckets(64, 4, 11)
	commitLatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
)

// Metrics owns the gateway's collectors. Build it with New; the zero value is
// not usable, but a nil *Metrics is: every method is then a no-op.
type Metrics struct {
	reg prometheus.Registerer // nil: collectors exist but are not exported

	sessionsActive  prometheus.Gauge
	sessionsEnded   *prometheus.CounterVec
	framesReceived  prometheus.Counter
	bytesReceived   prometheus.Counter
	frameSize       prometheus.Histogram
	framesCommitted prometheus.Counter
	commitLatency   prometheus.Histogram
	acceptErrors    prometheus.Counter
	heartbeatsSent  prometheus.Counter
	heartbeatRTT    prometheus.Histogram
	superseded      prometheus.Counter
	gapFrames       prometheus.Counter
	acksSent        prometheus.Counter
	rejected        *prometheus.CounterVec
	tlsFailures     prometheus.Counter

	// Children of the two vectors for every known reason, resolved once so
	// that recording an ending is a map read and an atomic add, not a label
	// hash. Immutable after New.
	endedBy    map[frame.Reason]prometheus.Counter
	rejectedBy map[frame.Reason]prometheus.Counter
}

// New builds the gateway's metrics and registers them on reg.
//
// New also registers the Go runtime and process collectors on reg, so that a
// fresh prometheus.NewRegistry() exports go_* and process_* series too. A
// registry that already has them (prometheus.DefaultRegisterer does) keeps
// its own: the duplicate registration is ignored.
//
// A nil reg builds working collectors that nothing exports, for benchmarks
// and tests that only count. New panics, as prometheus.MustRegister does, if
// reg already holds a meridian_* metric: registering the gateway twice on one
// registry is a programming error.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		sessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "sessions_active",
			Help: "Station sessions open right now.",
		}),
		sessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_ended_total",
			Help: "Station sessions ended, by close reason.",
		}, []string{"reason"}),
		framesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "frames_received_total",
			Help: "Data frames read from stations.",
		}),
		bytesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "received_bytes_total",
			Help: "Payload bytes of the data frames read from stations.",
		}),
		frameSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "frame_size_bytes",
			Help:    "Payload size of data frames read from stations.",
			Buckets: frameSizeBuckets,
		}),
		framesCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "frames_committed_total",
			Help: "Data frames the sink has durably committed.",
		}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "commit_latency_seconds",
			Help:    "Time from reading a batch's first frame to the sink committing the batch.",
			Buckets: commitLatencyBuckets,
		}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "accept_errors_total",
			Help: "Errors returned by accept on the station listener.",
		}),
		heartbeatsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "heartbeats_sent_total",
			Help: "HEARTBEAT frames sent to stations.",
		}),
		heartbeatRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "heartbeat_rtt_seconds",
			Help:    "Round trip from a HEARTBEAT to the v2 station's PONG.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		superseded: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sessions_superseded_total",
			Help: "v2 sessions ended with CLOSE(9) because a newer session of the same station took over.",
		}),
		gapFrames: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "station_gap_frames_total",
			Help: "Frames v2 stations reported lost (HELLO first above what is stored), marked Meridian-Gap in the stream.",
		}),
		acksSent: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "acks_sent_total",
			Help: "ACK frames sent to stations.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rejected_connections_total",
			Help: "Station connections refused before a session started, by reason.",
		}, []string{"reason"}),
		tlsFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "tls_handshake_failures_total",
			Help: "TLS handshakes with stations that failed or timed out.",
		}),
		endedBy:    make(map[frame.Reason]prometheus.Counter),
		rejectedBy: make(map[frame.Reason]prometheus.Counter),
	}
	// Pre-create every reason so that a rate() over a reason that has not
	// happened yet reads 0 rather than "no data", which alerts cannot tell
	// from a broken scrape.
	for _, r := range frame.Reasons() {
		m.endedBy[r] = m.sessionsEnded.WithLabelValues(r.String())
		m.rejectedBy[r] = m.rejected.WithLabelValues(r.String())
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(
		m.sessionsActive, m.sessionsEnded, m.framesReceived, m.bytesReceived,
		m.frameSize, m.framesCommitted, m.commitLatency, m.acceptErrors,
		m.heartbeatsSent, m.heartbeatRTT, m.superseded, m.gapFrames, m.acksSent, m.rejected, m.tlsFailures,
	)
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			if are := (prometheus.AlreadyRegisteredError{}); !errors.As(err, &are) {
				panic(err)
			}
		}
	}
	return m
}

// SessionStarted counts a session that passed admission and is now open.
func (m *Metrics) SessionStarted() {
	if m == nil {
		return
	}
	m.sessionsActive.Inc()
}

// SessionEnded counts the end of a session begun with SessionStarted.
func (m *Metrics) SessionEnded(r frame.Reason) {
	if m == nil {
		return
	}
	m.sessionsActive.Dec()
	reasonCounter(m.endedBy, m.sessionsEnded, r).Inc()
}

// Received counts a batch of frames read from one station; bytes is the sum
// of their payload sizes.
func (m *Metrics) Received(frames, bytes int) {
	if m == nil {
		return
	}
	m.framesReceived.Add(float64(frames))
	m.bytesReceived.Add(float64(bytes))
}

// ObserveFrameSize records one frame's payload size. It is called per frame,
// so it does nothing but the histogram's lock-free observe.
func (m *Metrics) ObserveFrameSize(n int) {
	if m == nil {
		return
	}
	m.frameSize.Observe(float64(n))
}

// Committed counts a batch the sink committed; latency is the age of the
// batch's first frame at commit, the longest wait of any frame in it.
func (m *Metrics) Committed(frames int, latency time.Duration) {
	if m == nil {
		return
	}
	m.framesCommitted.Add(float64(frames))
	m.commitLatency.Observe(latency.Seconds())
}

// AcceptError counts an error from accept on the station listener.
func (m *Metrics) AcceptError() {
	if m == nil {
		return
	}
	m.acceptErrors.Inc()
}

// HeartbeatSent counts a HEARTBEAT frame written to a station.
func (m *Metrics) HeartbeatSent() {
	if m == nil {
		return
	}
	m.heartbeatsSent.Inc()
}

// HeartbeatRTT observes the round trip of a HEARTBEAT answered by a PONG.
func (m *Metrics) HeartbeatRTT(d time.Duration) {
	if m == nil {
		return
	}
	m.heartbeatRTT.Observe(d.Seconds())
}

// Superseded counts a v2 session ended by a newer one of its station.
func (m *Metrics) Superseded() {
	if m == nil {
		return
	}
	m.superseded.Inc()
}

// Gap counts frames a v2 station reported lost.
func (m *Metrics) Gap(frames uint64) {
	if m == nil {
		return
	}
	m.gapFrames.Add(float64(frames))
}

// AckSent counts an ACK frame written to a station.
func (m *Metrics) AckSent() {
	if m == nil {
		return
	}
	m.acksSent.Inc()
}

// Rejected counts a connection refused before its session started, for
// example frame.ReasonBusy at a session limit or frame.ReasonUnauthorized for
// an identity not on the allow-list.
func (m *Metrics) Rejected(r frame.Reason) {
	if m == nil {
		return
	}
	reasonCounter(m.rejectedBy, m.rejected, r).Inc()
}

// TLSHandshakeFailed counts a station TLS handshake that failed or timed out.
func (m *Metrics) TLSHandshakeFailed() {
	if m == nil {
		return
	}
	m.tlsFailures.Inc()
}

// Queue exports the aggregator's queue depth and back-pressure time, read
// from stats at each scrape. Call it once, when the aggregator exists; stats
// must be safe to call from the scraping goroutine.
func (m *Metrics) Queue(stats func() pipeline.Stats) {
	if m == nil || m.reg == nil || stats == nil {
		return
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "queue_depth_frames",
			Help: "Frames waiting in the queue between sessions and the sink.",
		}, func() float64 { return float64(stats().Depth) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "backpressure_seconds_total",
			Help: "Time sessions spent blocked on a full queue, summed over sessions.",
		}, func() float64 { return stats().BlockedFor.Seconds() }),
	)
}

// QueueCapacity exports the queue's capacity in frames (--queue), so that
// alerts compare meridian_queue_depth_frames with it instead of a number
// copied from the configuration. Call it once, with the aggregator's Limit.
func (m *Metrics) QueueCapacity(frames int) {
	if m == nil || m.reg == nil {
		return
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "queue_capacity_frames",
		Help: "Frames the queue between sessions and the sink holds at most (--queue).",
	})
	g.Set(float64(frames))
	m.reg.MustRegister(g)
}

// StreamStats is what the durable sink reports; see Stream.
type StreamStats struct {
	Pending int // frames published and not yet acknowledged by JetStream
	// PendingBytes is their payload, bounded by --publish-window-bytes.
	PendingBytes int64
	Down         bool   // the stream is not taking frames right now
	Outages      uint64 // episodes of the stream not taking frames
	Resent       uint64 // publishes retried (same Nats-Msg-Id)
	Timeouts     uint64 // PubAcks that did not come within the publish timeout
	// Duplicates counts resent frames JetStream dropped because their
	// original was stored (PubAck "duplicate": true).
	Duplicates uint64
	// InProcess counts resends answered "duplicate message id is in
	// process" (err_code 10158): waited for, no outage.
	InProcess uint64
}

// Stream registers the durable sink's metrics, read from stats at scrape
// time. Call it once, only when the jetstream sink is in use.
func (m *Metrics) Stream(stats func() StreamStats) {
	if m == nil || m.reg == nil || stats == nil {
		return
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "stream_pending_frames",
			Help: "Frames published to JetStream and not yet acknowledged by it.",
		}, func() float64 { return float64(stats().Pending) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "stream_pending_bytes",
			Help: "Payload bytes of the frames published to JetStream and not yet acknowledged (bounded by --publish-window-bytes).",
		}, func() float64 { return float64(stats().PendingBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "stream_up",
			Help: "1 while the stream takes frames, 0 during an outage (back-pressure on every station).",
		}, func() float64 {
			if stats().Down {
				return 0
			}
			return 1
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "stream_outages_total",
			Help: "Episodes of the stream not taking frames.",
		}, func() float64 { return float64(stats().Outages) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "stream_resent_total",
			Help: "Publishes retried with the same Nats-Msg-Id after a failed or missing PubAck.",
		}, func() float64 { return float64(stats().Resent) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "stream_ack_timeouts_total",
			Help: "PubAcks that did not arrive within the publish timeout.",
		}, func() float64 { return float64(stats().Timeouts) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "stream_duplicates_dropped_total",
			Help: "Resent frames JetStream dropped because their original was stored (same Nats-Msg-Id).",
		}, func() float64 { return float64(stats().Duplicates) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: namespace, Name: "stream_resends_in_process_total",
			Help: "Resends answered 'duplicate message id is in process' (err_code 10158): the original was still being stored; waited for, not an outage.",
		}, func() float64 { return float64(stats().InProcess) }),
	)
}

// reasonCounter returns the pre-created child for r, and falls back to the
// vector for a reason frame.Reasons does not list, so that a new reason is
// still counted, under its numeric label, rather than lost.
func reasonCounter(known map[frame.Reason]prometheus.Counter, vec *prometheus.CounterVec, r frame.Reason) prometheus.Counter {
	if c, ok := known[r]; ok {
		return c
	}
	return vec.WithLabelValues(r.String())
}

// LinkStats are one configured link's totals; see Links.
type LinkStats struct {
	Name      string // the configured link name: a bounded label value
	Dial      bool   // a dial-out link: meridian_link_connected is exported
	Connected int64  // connections open now
	Bytes     uint64
	Good, Bad uint64
	Rejected  map[string]uint64 // by reason: crc, oversize, undersize, short, version
	Discarded uint64
	SyncLoss  uint64
	Gaps      uint64
	Repeats   uint64
}

// LinkReasons are the values of meridian_link_rejected_total's reason label.
var LinkReasons = []string{"crc", "oversize", "undersize", "short", "version"}

// Links exports the ground-framing links' counters, read from stats at each
// scrape, aggregated by link (and result or reason): the labels are bounded
// by the configuration, never by the stations. Call it once; stats must be
// safe to call from the scraping goroutine. With no link configured the
// families are still described, and have no series.
func (m *Metrics) Links(stats func() []LinkStats) {
	if m == nil || m.reg == nil || stats == nil {
		return
	}
	m.reg.MustRegister(&linkCollector{stats: stats})
}

var (
	linkFramesDesc = prometheus.NewDesc(namespace+"_link_frames_total",
		"Units read on ground-framing links, by result (good, bad).", []string{"link", "result"}, nil)
	linkRejectedDesc = prometheus.NewDesc(namespace+"_link_rejected_total",
		"Units rejected on ground-framing links, by reason (crc, oversize, undersize, short, version).", []string{"link", "reason"}, nil)
	linkBytesDesc = prometheus.NewDesc(namespace+"_link_received_bytes_total",
		"Bytes read from ground equipment, units and discarded bytes.", []string{"link"}, nil)
	linkDiscardedDesc = prometheus.NewDesc(namespace+"_link_discarded_bytes_total",
		"Bytes read on ground-framing links that belong to no unit (sync search, units cut short).", []string{"link"}, nil)
	linkSyncDesc = prometheus.NewDesc(namespace+"_link_sync_losses_total",
		"Sync-loss episodes on ground-framing links.", []string{"link"}, nil)
	linkGapsDesc = prometheus.NewDesc(namespace+"_link_sequence_gaps_total",
		"Units missing by the CCSDS sequence counters (packet count per APID, VC frame count per VC).", []string{"link"}, nil)
	linkRepeatsDesc = prometheus.NewDesc(namespace+"_link_sequence_repeats_total",
		"Units whose CCSDS sequence count repeated the previous one.", []string{"link"}, nil)
	linkConnectedDesc = prometheus.NewDesc(namespace+"_link_connected",
		"1 while a dial-out link is connected to its equipment, 0 while it retries.", []string{"link"}, nil)
)

type linkCollector struct{ stats func() []LinkStats }

func (c *linkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{linkFramesDesc, linkRejectedDesc, linkBytesDesc, linkDiscardedDesc, linkSyncDesc, linkGapsDesc, linkRepeatsDesc, linkConnectedDesc} {
		ch <- d
	}
}

func (c *linkCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, l := range c.stats() {
		counter(linkFramesDesc, l.Good, l.Name, "good")
		counter(linkFramesDesc, l.Bad, l.Name, "bad")
		for _, r := range LinkReasons {
			counter(linkRejectedDesc, l.Rejected[r], l.Name, r)
		}
		counter(linkBytesDesc, l.Bytes, l.Name)
		counter(linkDiscardedDesc, l.Discarded, l.Name)
		counter(linkSyncDesc, l.SyncLoss, l.Name)
		counter(linkGapsDesc, l.Gaps, l.Name)
		counter(linkRepeatsDesc, l.Repeats, l.Name)
		if l.Dial {
			up := 0.0
			if l.Connected > 0 {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(linkConnectedDesc, prometheus.GaugeValue, up, l.Name)
		}
	}
}
