// Package bench is the load generator behind `meridian bench`: N stations,
// each a station.Client, send fixed-size frames at a rate or flat out for a
// bounded time, and the run ends with a Report of throughput, ACK latency,
// reconnects and errors. Verify reads the durable stream afterwards and
// checks that every frame arrived exactly once.
package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"github.com/meridian-telemetry/meridian/station"
)

// Defaults of Options.
const (
	DefaultWindow           = 4096
	DefaultDrain            = 30 * time.Second
	DefaultMaxFramesRun     = 10 * time.Minute
	DefaultProgressInterval = time.Second
	DefaultNamePrefix       = "bench"
)

// ErrOptions means Options are out of range; the message names the field.
var ErrOptions = errors.New("bench: invalid options")

// Options describe a run. The run always ends: sending stops after Duration
// or Frames per station, whichever comes first, and the whole run, waiting
// for the last ACKs included, is cut at MaxDuration.
type Options struct {
	Addr     string
	Stations int     // concurrent stations (connections), ≥ 1
	Size     int     // payload bytes per frame, ≥ HeaderSize
	Rate     float64 // frames per second per station; 0 sends as fast as the window allows
	Duration time.Duration
	Frames   uint64 // per station; 0 means no count limit
	// MaxDuration bounds the whole run. 0 means Duration + DefaultDrain, or
	// DefaultMaxFramesRun for a run bounded by Frames only.
	MaxDuration time.Duration

	Window   int // unacknowledged frames per station; 0 means DefaultWindow
	MaxFrame int // 0: the client's default
	TLS      *tls.Config
	RunID    uint64 // 0 picks a random one

	// Protocol is what the stations speak; 0 means station.ProtocolV2 (v2,
	// falling back to v1 against a v1 gateway).
	Protocol station.Protocol
	// NamePrefix names the v2 stations PREFIX-INDEX in their HELLO, so that
	// the gateway sees one identity per station even though all come from
	// one IP; empty means DefaultNamePrefix. Two benches against one
	// gateway at once need different prefixes, or their stations supersede
	// each other. With a client certificate the HELLO carries no name: the
	// certificate is the identity.
	NamePrefix string

	// Progress, when set, is called every ProgressInterval from Run's
	// goroutine with the counts so far.
	Progress         func(Progress)
	ProgressInterval time.Duration
	Log              *slog.Logger
}

// Validate reports the first bad field.
func (o *Options) Validate() error {
	switch {
	case o.Addr == "":
		return fmt.Errorf("%w: addr is empty", ErrOptions)
	case o.Stations < 1:
		return fmt.Errorf("%w: stations must be at least 1, got %d", ErrOptions, o.Stations)
	case o.Size < HeaderSize:
		return fmt.Errorf("%w: size must be at least %d (the bench header), got %d", ErrOptions, HeaderSize, o.Size)
	case o.MaxFrame > 0 && o.Size > o.MaxFrame:
		return fmt.Errorf("%w: size %d is above max frame %d", ErrOptions, o.Size, o.MaxFrame)
	case o.Rate < 0:
		return fmt.Errorf("%w: rate must not be negative", ErrOptions)
	case o.Duration < 0 || o.MaxDuration < 0:
		return fmt.Errorf("%w: durations must not be negative", ErrOptions)
	case o.Duration == 0 && o.Frames == 0:
		return fmt.Errorf("%w: set a duration or a frame count", ErrOptions)
	case o.Window < 0:
		return fmt.Errorf("%w: window must not be negative", ErrOptions)
	case o.Protocol != 0 && o.Protocol != station.ProtocolV1 && o.Protocol != station.ProtocolV2 && o.Protocol != station.ProtocolV2Only:
		return fmt.Errorf("%w: protocol %s is not v1 or v2", ErrOptions, o.Protocol)
	case o.clientCert() && o.Stations > 1 && o.Protocol != station.ProtocolV1:
		// Every station would be the certificate's identity, and each
		// HELLO would supersede the previous station's session.
		return fmt.Errorf("%w: with a client certificate all %d stations are one v2 station identity; use protocol 1 or 1 station", ErrOptions, o.Stations)
	}
	return nil
}

// clientCert reports whether the stations present a TLS client
// certificate, which is their identity at a gateway that verifies it.
func (o *Options) clientCert() bool {
	return o.TLS != nil && (len(o.TLS.Certificates) > 0 || o.TLS.GetClientCertificate != nil)
}

// stationName is the HELLO name of station i: empty with a client
// certificate, whose identity the gateway takes instead.
func (o *Options) stationName(i uint32) string {
	if o.clientCert() {
		return ""
	}
	p := o.NamePrefix
	if p == "" {
		p = DefaultNamePrefix
	}
	return fmt.Sprintf("%s-%d", p, i)
}

func (o *Options) maxDuration() time.Duration {
	switch {
	case o.MaxDuration > 0:
		return o.MaxDuration
	case o.Duration > 0:
		return o.Duration + DefaultDrain
	}
	return DefaultMaxFramesRun
}

// Progress is a live snapshot of a run.
type Progress struct {
	Elapsed      time.Duration
	Sent, Acked  uint64
	InFlight     uint64  // sent, not yet acknowledged
	FramesPerSec float64 // acknowledged, since the previous snapshot
	MBPerSec     float64 // acknowledged payload, 10^6 bytes/s, since the previous snapshot
	Reconnects   uint64
}

// Report is the outcome of a run. Rates count acknowledged frames over the
// whole run, from the first dial to the last ACK.
type Report struct {
	RunID        uint64            `json:"run_id"`
	Addr         string            `json:"addr"`
	Stations     int               `json:"stations"`
	Size         int               `json:"size"`
	Rate         float64           `json:"rate_per_station"`
	Start        time.Time         `json:"start"`
	Elapsed      time.Duration     `json:"-"`
	Seconds      float64           `json:"elapsed_seconds"`
	Sent         uint64            `json:"sent"`
	Acked        uint64            `json:"acked"`
	Resent       uint64            `json:"resent"`
	Skipped      uint64            `json:"skipped"` // v2: not resent because the WELCOME said stored
	FramesPerSec float64           `json:"frames_per_sec"`
	MBPerSec     float64           `json:"mb_per_sec"`
	Reconnects   uint64            `json:"reconnects"`
	Errors       map[string]uint64 `json:"errors"`
	Latency      Latency           `json:"latency"`
	PerStation   []StationReport   `json:"per_station"`
	Verify       *VerifyReport     `json:"verify,omitempty"`

	// Histogram holds every ACK latency, one per acknowledged frame.
	Histogram *Histogram `json:"-"`
}

// StationReport is one station's share of a run. Name, Epoch and Protocol
// say how the gateway knew it: in v2 its frames are stored as (Name, Epoch,
// frame number), which Verify checks.
type StationReport struct {
	Index      uint32 `json:"index"`
	Name       string `json:"name,omitempty"`
	Epoch      uint64 `json:"epoch"`
	Protocol   int    `json:"protocol"`
	Sent       uint64 `json:"sent"`
	Acked      uint64 `json:"acked"`
	Reconnects uint64 `json:"reconnects"`
	Err        string `json:"error,omitempty"`
}

// Latency summarises ACK latency: from the write that handed a frame to
// the socket to the ACK that covered it.
type Latency struct {
	Count uint64         `json:"count"`
	Mean  float64        `json:"mean_ms"`
	P50   float64        `json:"p50_ms"`
	P90   float64        `json:"p90_ms"`
	P99   float64        `json:"p99_ms"`
	P999  float64        `json:"p999_ms"`
	Max   float64        `json:"max_ms"`
	Rows  []LatencyCount `json:"histogram"`
}

// LatencyCount is a row of the coarse histogram: values in (previous, Upper].
type LatencyCount struct {
	UpperMS float64 `json:"le_ms"`
	Count   uint64  `json:"count"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// errorCounts counts errors by a short reason label.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (e *errorCounts) add(err error) {
	e.mu.Lock()
	e.m[ErrorLabel(err)]++
	e.mu.Unlock()
}

// ErrorLabel is the reason label a run counts err under: the gateway's
// close reason name (server_busy), or a class of local failure.
func ErrorLabel(err error) string {
	var ce *station.CloseError
	switch {
	case errors.As(err, &ce):
		return ce.Reason.String()
	case errors.Is(err, station.ErrGatewayDead):
		return "gateway_dead"
	case errors.Is(err, station.ErrProtocol):
		return "protocol"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, io.EOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	}
	return "network"
}

// Run runs the bench and returns its report. It fails only when no station
// could connect or ctx ends before the run starts; errors afterwards are
// counted in the report.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.RunID == 0 {
		o.RunID = rand.Uint64() | 1
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.ProgressInterval <= 0 {
		o.ProgressInterval = DefaultProgressInterval
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	runCtx, cancel := context.WithTimeout(ctx, o.maxDuration())
	defer cancel()
	// sendCtx ends the sending phase; Sends blocked on a full window return.
	sendCtx, stopSending := context.WithCancel(runCtx)
	defer stopSending()
	if o.Duration > 0 {
		var stopTimer func()
		sendCtx, stopTimer = context.WithTimeout(sendCtx, o.Duration)
		defer stopTimer()
	}

	errs := &errorCounts{m: map[string]uint64{}}
	start := time.Now()
	stations := make([]*runner, o.Stations)
	for i := range stations {
		stations[i] = &runner{index: uint32(i), o: &o, errs: errs, log: log}
	}
	// Dial all first so that a wrong address fails the run at once.
	var wg sync.WaitGroup
	for _, r := range stations {
		wg.Go(func() { r.dial(runCtx) })
	}
	wg.Wait()
	var dialErr error
	connected := 0
	for _, r := range stations {
		if r.client != nil {
			connected++
		} else if dialErr == nil {
			dialErr = r.err
		}
	}
	if connected == 0 {
		return nil, fmt.Errorf("bench: no station could connect: %w", dialErr)
	}

	for _, r := range stations {
		if r.client != nil {
			wg.Go(func() { r.run(sendCtx, runCtx) })
		}
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	o.watch(stations, start, finished)
	elapsed := time.Since(start)

	rep := &Report{
		RunID:     o.RunID,
		Addr:      o.Addr,
		Stations:  o.Stations,
		Size:      o.Size,
		Rate:      o.Rate,
		Start:     start,
		Elapsed:   elapsed,
		Seconds:   elapsed.Seconds(),
		Errors:    errs.m,
		Histogram: &Histogram{},
	}
	for _, r := range stations {
		sr := StationReport{Index: r.index}
		if r.client != nil {
			st := r.client.Stats()
			sr.Sent, sr.Acked, sr.Reconnects = st.Sent, st.Acked, st.Reconnects
			sr.Epoch, sr.Protocol = r.client.Epoch(), r.client.ProtocolVersion()
			if sr.Protocol == 2 {
				sr.Name = o.stationName(r.index)
			}
			rep.Resent += st.Resent
			rep.Skipped += st.Skipped
		}
		if r.err != nil {
			sr.Err = r.err.Error()
		}
		rep.Sent += sr.Sent
		rep.Acked += sr.Acked
		rep.Reconnects += sr.Reconnects
		rep.Histogram.Merge(&r.hist)
		rep.PerStation = append(rep.PerStation, sr)
	}
	if s := elapsed.Seconds(); s > 0 {
		rep.FramesPerSec = float64(rep.Acked) / s
		rep.MBPerSec = float64(rep.Acked) * float64(o.Size) / s / 1e6
	}
	h := rep.Histogram
	rep.Latency = Latency{
		Count: h.Count(),
		Mean:  ms(h.Mean()),
		P50:   ms(h.Quantile(0.50)),
		P90:   ms(h.Quantile(0.90)),
		P99:   ms(h.Quantile(0.99)),
		P999:  ms(h.Quantile(0.999)),
		Max:   ms(h.Max()),
	}
	for _, b := range h.Coarse() {
		rep.Latency.Rows = append(rep.Latency.Rows, LatencyCount{UpperMS: ms(b.Upper), Count: b.Count})
	}
	return rep, nil
}

// watch reports progress until finished is closed.
func (o *Options) watch(stations []*runner, start time.Time, finished <-chan struct{}) {
	if o.Progress == nil {
		<-finished
		return
	}
	t := time.NewTicker(o.ProgressInterval)
	defer t.Stop()
	var prevAcked uint64
	prevAt := start
	for {
		select {
		case <-finished:
			return
		case now := <-t.C:
			p := Progress{Elapsed: now.Sub(start)}
			for _, r := range stations {
				if r.client == nil {
					continue
				}
				st := r.client.Stats()
				p.Sent += st.Sent
				p.Acked += st.Acked
				p.Reconnects += st.Reconnects
			}
			p.InFlight = p.Sent - p.Acked
			if s := now.Sub(prevAt).Seconds(); s > 0 {
				p.FramesPerSec = float64(p.Acked-prevAcked) / s
				p.MBPerSec = p.FramesPerSec * float64(o.Size) / 1e6
			}
			prevAcked, prevAt = p.Acked, now
			o.Progress(p)
		}
	}
}

// runner is one bench station.
type runner struct {
	index  uint32
	o      *Options
	errs   *errorCounts
	log    *slog.Logger
	client *station.Client
	err    error     // dial or terminal error
	hist   Histogram // written by the client's reader only; read after Close
}

func (r *runner) dial(ctx context.Context) {
	opts := []station.Option{
		station.WithWindow(r.o.Window),
		station.WithLogger(r.log.With("station", r.index)),
		station.WithLatencyObserver(func(n uint64, d time.Duration) { r.hist.RecordN(d, n) }),
		station.WithOnDisconnect(r.errs.add),
	}
	if r.o.Protocol != 0 {
		opts = append(opts, station.WithProtocol(r.o.Protocol))
	}
	if r.o.Protocol != station.ProtocolV1 {
		opts = append(opts, station.WithName(r.o.stationName(r.index)))
	}
	if r.o.MaxFrame > 0 {
		opts = append(opts, station.WithMaxFrame(r.o.MaxFrame))
	}
	if r.o.TLS != nil {
		opts = append(opts, station.WithTLS(r.o.TLS))
	}
	c, err := station.Dial(ctx, r.o.Addr, opts...)
	if err != nil {
		r.err = err
		r.errs.add(err)
		return
	}
	r.client = c
}

// run sends until sendCtx ends or the frame count is reached, then closes
// the client, which waits for the last ACKs until runCtx ends.
func (r *runner) run(sendCtx, runCtx context.Context) {
	payload := make([]byte, r.o.Size)
	h := Header{RunID: r.o.RunID, Station: r.index}
	PutHeader(payload, h)
	send := func(n uint64) bool {
		h.Frame = n
		PutHeader(payload, h)
		if err := r.client.Send(sendCtx, payload); err != nil {
			if sendCtx.Err() == nil {
				r.err = err
			}
			return false
		}
		return true
	}
	limit := r.o.Frames
	if limit == 0 {
		limit = ^uint64(0)
	}
	if r.o.Rate <= 0 {
		for n := uint64(1); n <= limit && sendCtx.Err() == nil; n++ {
			if !send(n) {
				break
			}
		}
	} else {
		r.paced(sendCtx, limit, send)
	}
	if err := r.client.Close(runCtx); err != nil && !errors.Is(err, station.ErrClosed) {
		if r.err == nil {
			r.err = err
		}
		r.errs.add(err)
	}
}

// paced sends at Rate frames per second: each tick sends what is due since
// the start, so that one timestamp serves a whole batch and a slow tick is
// caught up on the next.
func (r *runner) paced(ctx context.Context, limit uint64, send func(uint64) bool) {
	interval := 10 * time.Millisecond
	if per := time.Duration(float64(time.Second) / r.o.Rate); per > interval {
		interval = per
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	start := time.Now()
	var n uint64
	for {
		elapsed := time.Since(start)
		if r.o.Duration > 0 {
			// A late timer must not let the pacer exceed rate × duration.
			elapsed = min(elapsed, r.o.Duration)
		}
		due := min(uint64(r.o.Rate*elapsed.Seconds())+1, limit)
		for n < due && ctx.Err() == nil {
			if !send(n + 1) {
				return
			}
			n++
		}
		if n >= limit {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
