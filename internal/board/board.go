// Package board keeps the state behind the ops listener's station board: a
// sampler that records each session's receive rate for the sparklines,
// remembers recently ended sessions for a while, learns each station's
// cadence and flags the ones that have gone quiet. View turns that state and
// the gateway's live counters into the JSON model the page and scripts read.
//
// Rates, ages and the quiet flag are computed when View is called, from the
// live counters and the clock, so they keep moving when data stops; the
// sampler only supplies history.
package board

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"
)

// Session is one live session as the gateway reports it.
type Session struct {
	ID          string // session id, as in the logs
	Station     string // identity: remote IP, or TLS identity with mTLS
	Link        string // the link it came in on
	Framing     string // the ground framing it speaks
	RemoteAddr  string
	TLSIdentity string // empty without mTLS
	Since       time.Time
	Frames      uint64    // data frames received
	Bytes       uint64    // payload bytes received
	Acked       uint64    // frames committed and acknowledged
	LastFrame   time.Time // zero before the first frame

	// Optional: zero when the session does not report them.
	HeartbeatRTT time.Duration
	Quality      []Counter // link-quality counters, where the framing has them
}

// Counter is one named link-quality counter.
type Counter struct {
	Name  string
	Value uint64
}

// Gateway states, as View reports them.
const (
	GatewayStarting = "starting"
	GatewayReady    = "ready"
	GatewayDraining = "draining"
	GatewayLameDuck = "lame_duck"
	GatewayFailed   = "failed" // the sink failed: the gateway is shutting down
)

// Stream states, as View reports them.
const (
	StreamTaking       = "taking"       // frames flow to the stream
	StreamBackpressure = "backpressure" // the queue is full and sessions wait on it
	StreamOutage       = "outage"       // the stream does not take frames
	StreamNone         = "none"         // no durable stream (stdout or discard sink)
	StreamStarting     = "starting"     // the gateway is still opening it
)

// StreamStatus is the sink's condition as the gateway reports it.
type StreamStatus struct {
	Starting   bool      // not open yet: Configured is not known
	Configured bool      // false: no durable stream
	Down       bool      // not taking frames
	DownSince  time.Time // start of the outage; zero if unknown
	Outages    uint64    // outage episodes so far
	Detail     string    // why it is down, for operators; never a secret
}

// QueueStatus is the bounded queue between sessions and the sink.
type QueueStatus struct {
	Depth      int64         // frames waiting now
	Capacity   int64         // frames it holds at most
	BlockedFor time.Duration // cumulative time sessions waited on a full queue
	Waiting    int64         // sessions waiting on a full queue right now
}

// Source is what the board reads. Its functions are called from the
// sampler's goroutine and from HTTP handlers, and must be safe for that.
// Nil functions read as empty.
type Source struct {
	Sessions func() []Session
	Gateway  func() (state, detail string)
	Stream   func() StreamStatus
	Queue    func() QueueStatus
}

// Options tune the board. Every field may be left zero.
type Options struct {
	// Interval between samples; default 2s.
	Interval time.Duration
	// History is how far back the sparklines reach; default 3m.
	History time.Duration
	// Linger is how long an ended session stays listed; default 5m.
	Linger time.Duration
	// MaxGone bounds the ended sessions kept; default 64, oldest dropped.
	MaxGone int
	// QuietFloor is the shortest silence flagged as quiet, whatever the
	// learned cadence; default 10s.
	QuietFloor time.Duration
	// QuietFactor: a station is quiet when its last frame is older than
	// QuietFactor times its learned inter-frame interval; default 4.
	QuietFactor float64
	// RateWindow is the span the current rate is measured over; default 5s.
	RateWindow time.Duration
}

func (o Options) withDefaults() Options {
	o.Interval = cmp.Or(o.Interval, 2*time.Second)
	o.History = cmp.Or(o.History, 3*time.Minute)
	o.Linger = cmp.Or(o.Linger, 5*time.Minute)
	o.MaxGone = cmp.Or(o.MaxGone, 64)
	o.QuietFloor = cmp.Or(o.QuietFloor, 10*time.Second)
	o.QuietFactor = cmp.Or(o.QuietFactor, 4)
	o.RateWindow = cmp.Or(o.RateWindow, 5*time.Second)
	return o
}

// Board is the station board's state. Build it with New; Run samples until
// its context ends. View may be called concurrently with Run, and without
// it (then there is no history, but every live figure is there).
type Board struct {
	src    Source
	opts   Options
	points int // rate points per session: History / Interval

	mu       sync.Mutex // guards everything below; never held while calling src
	live     map[string]*track
	gone     []*track      // ended sessions, oldest first; at most opts.MaxGone
	sampled  bool          // Sample ran at least once
	blocked  time.Duration // queue BlockedFor at the last sample
	pressed  bool          // a session waited on the queue at, or since, the last sample
	stream   string        // stream state at the last observation
	streamAt time.Time     // when stream state last changed, as observed
}

// track is one session's history. Memory per session is fixed, under 1 KiB
// at the defaults: a copy of its Session, the rate ring (4 bytes a point, 90
// points) and four marks. Live tracks are bounded by the gateway's session
// limit, ended ones by MaxGone.
type track struct {
	last    Session
	rates   []float32 // frames/s per interval, a ring; len grows to Board.points
	head    int       // next write position once the ring is full
	marks   [4]mark   // recent (time, frames) observations, newest last
	nmarks  int
	cadence time.Duration // learned mean inter-frame interval; 0 = not yet
	endedAt time.Time     // zero while live
	reason  string        // close reason, when the gateway reported the end
}

type mark struct {
	at     time.Time
	frames uint64
}

// New builds a board over src.
func New(src Source, opts Options) *Board {
	opts = opts.withDefaults()
	return &Board{
		src:    src,
		opts:   opts,
		points: max(1, int(opts.History/opts.Interval)),
		live:   make(map[string]*track),
	}
}

// Run samples every Interval until ctx ends, and returns ctx's error.
func (b *Board) Run(ctx context.Context) error {
	t := time.NewTicker(b.opts.Interval)
	defer t.Stop()
	b.Sample(time.Now())
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			b.Sample(now)
		}
	}
}

// Sample records one point of history at now: Run calls it on every tick.
func (b *Board) Sample(now time.Time) {
	sessions := b.sessions()
	var q QueueStatus
	if b.src.Queue != nil {
		q = b.src.Queue()
	}
	st := b.streamStatus()

	b.mu.Lock()
	defer b.mu.Unlock()
	// Pushed back: a session waits on the queue now, or waited since the
	// last sample (BlockedFor grows only when a wait ends).
	b.pressed = q.Waiting > 0 || (b.sampled && q.BlockedFor > b.blocked)
	b.blocked = q.BlockedFor
	b.sampled = true
	b.observeStreamLocked(now, st, q)
	b.reconcileLocked(now, sessions)
	for _, s := range sessions {
		tr, ok := b.live[s.ID]
		if !ok {
			continue // ended meanwhile (see reconcileLocked)
		}
		// A new track's first mark is the session's start, so its first
		// point is the rate since it connected.
		prev := tr.marks[tr.nmarks-1]
		if d := now.Sub(prev.at); d > 0 && s.Frames >= prev.frames {
			tr.push(float32(float64(s.Frames-prev.frames)/d.Seconds()), b.points)
		}
		tr.mark(now, s.Frames)
	}
}

// Ended records a session's end as the gateway reports it, with its final
// counters and close reason, so that a session shorter than a sampling
// interval is listed too and an ended one shows exact figures. A session
// the board already moved to the ended list is updated in place.
func (b *Board) Ended(s Session, reason string, at time.Time) {
	s.Link = cmp.Or(s.Link, "meridian")
	s.Framing = cmp.Or(s.Framing, "meridian")
	b.mu.Lock()
	defer b.mu.Unlock()
	if tr, ok := b.live[s.ID]; ok {
		delete(b.live, s.ID)
		tr.learn(s)
		tr.last, tr.endedAt, tr.reason = s, at, reason
		b.gone = append(b.gone, tr)
		b.trimGoneLocked(at)
		return
	}
	for _, tr := range b.gone {
		if tr.last.ID == s.ID {
			tr.last, tr.endedAt, tr.reason = s, at, reason
			return
		}
	}
	tr := &track{last: s, endedAt: at, reason: reason}
	tr.mark(s.Since, 0)
	b.gone = append(b.gone, tr)
	b.trimGoneLocked(at)
}

// sessions reads the live sessions, with the defaults filled in.
func (b *Board) sessions() []Session {
	if b.src.Sessions == nil {
		return nil
	}
	// A copy: the source's slice is not ours to write.
	list := slices.Clone(b.src.Sessions())
	for i := range list {
		list[i].Link = cmp.Or(list[i].Link, "meridian")
		list[i].Framing = cmp.Or(list[i].Framing, "meridian")
	}
	return list
}

func (b *Board) streamStatus() StreamStatus {
	if b.src.Stream == nil {
		return StreamStatus{}
	}
	return b.src.Stream()
}

// observeStreamLocked notes the stream state and when it last changed.
func (b *Board) observeStreamLocked(now time.Time, st StreamStatus, q QueueStatus) {
	state := b.streamStateLocked(st, q)
	if state != b.stream {
		b.stream, b.streamAt = state, now
	}
}

func (b *Board) streamStateLocked(st StreamStatus, q QueueStatus) string {
	switch {
	case st.Starting:
		return StreamStarting
	case !st.Configured:
		if b.pressed || (q.Capacity > 0 && q.Depth >= q.Capacity) {
			return StreamBackpressure // a slow stdout sink pushes back too
		}
		return StreamNone
	case st.Down:
		return StreamOutage
	case b.pressed || (q.Capacity > 0 && q.Depth >= q.Capacity):
		return StreamBackpressure
	}
	return StreamTaking
}

// reconcileLocked moves sessions that are no longer live to the gone list,
// starts tracks for new ones, refreshes the last-seen counters and learns
// cadences; it also forgets ended sessions past Linger.
func (b *Board) reconcileLocked(now time.Time, sessions []Session) {
	seen := make(map[string]struct{}, len(sessions))
	var ended map[string]bool // sessions whose end the gateway reported
	for _, tr := range b.gone {
		if tr.reason != "" {
			if ended == nil {
				ended = make(map[string]bool)
			}
			ended[tr.last.ID] = true
		}
	}
	for _, s := range sessions {
		tr, ok := b.live[s.ID]
		if !ok && ended[s.ID] {
			continue // read before it ended: the report is newer
		}
		seen[s.ID] = struct{}{}
		if !ok {
			tr = &track{}
			tr.mark(s.Since, 0)
			b.live[s.ID] = tr
		}
		tr.learn(s)
		tr.last = s
	}
	for id, tr := range b.live {
		if _, ok := seen[id]; ok {
			continue
		}
		delete(b.live, id)
		tr.endedAt = now
		b.gone = append(b.gone, tr)
	}
	b.trimGoneLocked(now)
}

// trimGoneLocked keeps the newest MaxGone ended sessions, none older than
// Linger.
func (b *Board) trimGoneLocked(now time.Time) {
	slices.SortStableFunc(b.gone, func(x, y *track) int { return x.endedAt.Compare(y.endedAt) })
	if n := len(b.gone) - b.opts.MaxGone; n > 0 {
		clear(b.gone[:n])
		b.gone = b.gone[n:]
	}
	i := 0
	for i < len(b.gone) && now.Sub(b.gone[i].endedAt) > b.opts.Linger {
		b.gone[i] = nil
		i++
	}
	b.gone = b.gone[i:]
}

// learn updates the cadence from the frames that arrived since the last
// observation: the mean interval between them, smoothed.
func (tr *track) learn(s Session) {
	p := tr.last
	if s.Frames <= p.Frames || p.LastFrame.IsZero() || !s.LastFrame.After(p.LastFrame) {
		return
	}
	iv := s.LastFrame.Sub(p.LastFrame) / time.Duration(s.Frames-p.Frames)
	if tr.cadence == 0 {
		tr.cadence = iv
		return
	}
	// An exponential average with weight 1/4 on the newest: a station that
	// slows down is learned within a few samples, one gap does not reset it.
	tr.cadence = (3*tr.cadence + iv) / 4
}

func (tr *track) push(r float32, points int) {
	if len(tr.rates) < points {
		tr.rates = append(tr.rates, r)
		return
	}
	tr.rates[tr.head] = r
	tr.head = (tr.head + 1) % points
}

func (tr *track) mark(at time.Time, frames uint64) {
	if tr.nmarks == len(tr.marks) {
		copy(tr.marks[:], tr.marks[1:])
		tr.nmarks--
	}
	tr.marks[tr.nmarks] = mark{at: at, frames: frames}
	tr.nmarks++
}

// history returns the rate ring oldest first.
func (tr *track) history() []float64 {
	out := make([]float64, 0, len(tr.rates))
	for i := range tr.rates {
		out = append(out, float64(tr.rates[(tr.head+i)%len(tr.rates)]))
	}
	return out
}

// rate is the frames/s over roughly the last window up to now: from the
// newest mark at least window old (or the oldest one) to the live counter.
func (tr *track) rate(now time.Time, frames uint64, window time.Duration) float64 {
	if tr.nmarks == 0 {
		return 0
	}
	ref := tr.marks[0]
	for _, m := range tr.marks[:tr.nmarks] {
		if now.Sub(m.at) >= window {
			ref = m
		}
	}
	d := now.Sub(ref.at).Seconds()
	if d <= 0 || frames < ref.frames {
		return 0
	}
	return float64(frames-ref.frames) / d
}
