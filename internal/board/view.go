package board

import (
	"cmp"
	"slices"
	"time"
)

// Station states, as View reports them. Each is shown on the page as text
// and an icon, never as colour alone.
const (
	StateConnected    = "connected"
	StateQuiet        = "quiet" // connected, but silent for longer than its cadence
	StateDisconnected = "disconnected"
)

// View is the board's JSON model, served at /api/board. Fields marked
// omitempty or omitzero are absent when unknown.
type View struct {
	Now             time.Time     `json:"now"`
	IntervalSeconds float64       `json:"interval_seconds"` // spacing of the rate history points
	Gateway         GatewayView   `json:"gateway"`
	Stream          StreamView    `json:"stream"`
	Queue           QueueView     `json:"queue"`
	Totals          Totals        `json:"totals"`
	Stations        []StationView `json:"stations"` // live first, then ended; each by station, id
}

// GatewayView is the gateway's state: starting, ready, draining, lame_duck.
type GatewayView struct {
	State  string `json:"state"`
	Detail string `json:"detail,omitempty"`
}

// StreamView is the stream's state: taking, backpressure, outage or none.
type StreamView struct {
	State   string    `json:"state"`
	Since   time.Time `json:"since,omitzero"` // when it entered State
	Outages uint64    `json:"outages"`
	Detail  string    `json:"detail,omitempty"`
}

// QueueView is the bounded queue's fill.
type QueueView struct {
	Depth    int64 `json:"depth_frames"`
	Capacity int64 `json:"capacity_frames"`
}

// Totals sum the live sessions (ended ones are not counted).
type Totals struct {
	Connected       int     `json:"connected"` // live sessions, quiet ones included
	Quiet           int     `json:"quiet"`
	Disconnected    int     `json:"disconnected"` // ended sessions still listed
	Frames          uint64  `json:"frames"`
	Bytes           uint64  `json:"bytes"`
	FramesAcked     uint64  `json:"frames_acked"`
	AckLag          uint64  `json:"ack_lag"`
	FramesPerSecond float64 `json:"frames_per_second"`
}

// StationView is one session on the board.
type StationView struct {
	ID              string    `json:"id"`
	Station         string    `json:"station"` // identity: remote IP, or TLS identity with mTLS
	Link            string    `json:"link"`
	Framing         string    `json:"framing"`
	RemoteAddr      string    `json:"remote_addr"`
	TLSIdentity     string    `json:"tls_identity,omitempty"`
	State           string    `json:"state"` // connected, quiet or disconnected
	ConnectedSince  time.Time `json:"connected_since"`
	DisconnectedAt  time.Time `json:"disconnected_at,omitzero"`
	CloseReason     string    `json:"close_reason,omitempty"` // why it ended, when known`
	Frames          uint64    `json:"frames"`
	Bytes           uint64    `json:"bytes"`
	FramesAcked     uint64    `json:"frames_acked"`
	AckLag          uint64    `json:"ack_lag"` // frames received and not yet acknowledged
	FramesPerSecond float64   `json:"frames_per_second"`
	// RateHistory is frames/s per interval, oldest first, for the sparkline.
	RateHistory []float64 `json:"rate_history"`
	LastFrameAt time.Time `json:"last_frame_at,omitzero"`
	// LastFrameAgeSeconds is the age of the last frame, or of the session
	// before its first frame; it keeps growing while nothing arrives.
	LastFrameAgeSeconds float64 `json:"last_frame_age_seconds"`
	// QuietAfterSeconds is the silence after which the station is flagged
	// quiet: the learned cadence times the factor, at least the floor.
	QuietAfterSeconds float64           `json:"quiet_after_seconds"`
	CadenceSeconds    float64           `json:"cadence_seconds,omitempty"` // learned inter-frame interval
	HeartbeatRTTMS    float64           `json:"heartbeat_rtt_ms,omitempty"`
	LinkQuality       map[string]uint64 `json:"link_quality,omitempty"`
}

// View returns the board as of now: live counters read from the source at
// this moment, history from the sampler.
func (b *Board) View(now time.Time) View {
	sessions := b.sessions()
	var q QueueStatus
	if b.src.Queue != nil {
		q = b.src.Queue()
	}
	st := b.streamStatus()
	gw := GatewayView{State: GatewayReady}
	if b.src.Gateway != nil {
		gw.State, gw.Detail = b.src.Gateway()
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	// Reconcile here too, not only in Sample: an ended session shows as
	// disconnected on the next request, not up to an interval later.
	b.reconcileLocked(now, sessions)
	b.observeStreamLocked(now, st, q)

	v := View{
		Now:             now,
		IntervalSeconds: b.opts.Interval.Seconds(),
		Gateway:         gw,
		Stream:          StreamView{State: b.stream, Since: b.streamAt, Outages: st.Outages, Detail: st.Detail},
		Queue:           QueueView{Depth: q.Depth, Capacity: q.Capacity},
		Stations:        make([]StationView, 0, len(sessions)+len(b.gone)),
	}
	if v.Stream.State == StreamOutage && !st.DownSince.IsZero() {
		v.Stream.Since = st.DownSince // the sink knows better than our sampling
	}
	if v.Stream.State == StreamNone {
		v.Stream.Since = time.Time{}
	}
	live := make([]StationView, 0, len(sessions))
	for _, s := range sessions {
		tr, ok := b.live[s.ID]
		if !ok {
			continue // ended meanwhile: listed below with its final figures
		}
		sv := b.station(now, tr, s)
		sv.FramesPerSecond = tr.rate(now, s.Frames, b.opts.RateWindow)
		if sv.State == StateQuiet {
			v.Totals.Quiet++
		}
		v.Totals.Connected++
		v.Totals.Frames += s.Frames
		v.Totals.Bytes += s.Bytes
		v.Totals.FramesAcked += s.Acked
		v.Totals.AckLag += sv.AckLag
		v.Totals.FramesPerSecond += sv.FramesPerSecond
		live = append(live, sv)
	}
	slices.SortFunc(live, byStation)
	v.Stations = append(v.Stations, live...)
	ended := make([]StationView, 0, len(b.gone))
	for _, tr := range b.gone {
		sv := b.station(tr.endedAt, tr, tr.last)
		sv.State = StateDisconnected
		sv.DisconnectedAt = tr.endedAt
		sv.CloseReason = tr.reason
		// The age keeps counting after the end: it is the time since the
		// station was last heard of.
		sv.LastFrameAgeSeconds = now.Sub(cmp.Or(tr.last.LastFrame, tr.last.Since)).Seconds()
		ended = append(ended, sv)
	}
	slices.SortFunc(ended, byStation)
	v.Totals.Disconnected = len(ended)
	v.Stations = append(v.Stations, ended...)
	return v
}

// station builds the view of one session as of now, with State connected or
// quiet; FramesPerSecond is left to the caller.
func (b *Board) station(now time.Time, tr *track, s Session) StationView {
	sv := StationView{
		ID:             s.ID,
		Station:        s.Station,
		Link:           s.Link,
		Framing:        s.Framing,
		RemoteAddr:     s.RemoteAddr,
		TLSIdentity:    s.TLSIdentity,
		State:          StateConnected,
		ConnectedSince: s.Since,
		Frames:         s.Frames,
		Bytes:          s.Bytes,
		FramesAcked:    s.Acked,
		RateHistory:    tr.history(),
		LastFrameAt:    s.LastFrame,
		CadenceSeconds: tr.cadence.Seconds(),
	}
	if s.Frames > s.Acked {
		sv.AckLag = s.Frames - s.Acked
	}
	quietAfter := max(b.opts.QuietFloor, time.Duration(b.opts.QuietFactor*float64(tr.cadence)))
	sv.QuietAfterSeconds = quietAfter.Seconds()
	age := now.Sub(cmp.Or(s.LastFrame, s.Since))
	sv.LastFrameAgeSeconds = max(0, age.Seconds())
	if age > quietAfter {
		sv.State = StateQuiet
	}
	if s.HeartbeatRTT > 0 {
		sv.HeartbeatRTTMS = float64(s.HeartbeatRTT) / float64(time.Millisecond)
	}
	if len(s.Quality) > 0 {
		sv.LinkQuality = make(map[string]uint64, len(s.Quality))
		for _, c := range s.Quality {
			sv.LinkQuality[c.Name] = c.Value
		}
	}
	return sv
}

// byStation orders stations by identity, then session id.
func byStation(a, b StationView) int {
	return cmp.Or(cmp.Compare(a.Station, b.Station), cmp.Compare(a.ID, b.ID))
}
