package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/session"
)

// Stored is what the stream holds last for a station: the resume point of
// protocol v2 (docs/protocol.md, "Where to resume").
type Stored struct {
	Found   bool   // the station's subject holds a message
	Station string // its Meridian-Station header: the identity that sent it
	Epoch   uint64 // its Meridian-Epoch; 0 for a v1 message
	Seq     uint64 // its Meridian-Seq
	Acked   uint64 // its Meridian-Acked: every frame of Epoch up to it was stored
	Count   uint64 // its Meridian-Count: a packed message of frames Seq to Seq+Count-1; 0 otherwise
}

// ResumeFunc reads the last message stored for a station identity, from
// the stream's leader.
type ResumeFunc func(ctx context.Context, identity string) (Stored, error)

// WithResume gives v2 stations their resume point from the stream. Without
// it (a discard sink) a v2 station resumes from what sessions of it that
// ended on this gateway had acknowledged, or from its first frame.
func WithResume(f ResumeFunc) Option { return func(s *Server) { s.resume = f } }

// V2Observer receives the counters of protocol v2; *metrics.Metrics
// implements it. An Observer that does not is simply not told.
type V2Observer interface {
	Superseded()
	Gap(frames uint64)
}

// live is a v2 session in the registry of identities.
type live struct {
	sess  *session.Session
	ident string        // the identity it claimed in byIdent; guarded by Server.mu
	prev  *live         // the session it superseded and waits for; guarded by Server.mu
	done  chan struct{} // closed once the session ended and its floor is recorded
}

// floor is what this gateway knows stored of a station's epoch: what its
// last session here acknowledged (where to resume), and what a gap is
// reckoned from (below acked while that session's gap was not yet marked on
// a stored frame).
type floor struct {
	epoch, acked, stored uint64
}

// maxFloors bounds the floors kept; they are a hint, the stream is the truth.
const maxFloors = 1 << 16

// errStreamUnavailable refuses a HELLO whose resume point cannot be read.
var errStreamUnavailable = errors.New("gateway: stream unavailable: cannot read the station's resume point")

// hello is the gateway's side of the v2 handshake (session.Handshaker): the
// identity, one writer per station, and where to resume.
type hello struct{ s *Server }

func (h hello) Hello(ctx context.Context, sess *session.Session, hl frame.Hello) (session.Welcome, frame.Reason, error) {
	s := h.s
	info := sess.Info()
	l := s.linkOf(sess)
	id := info.Station
	switch {
	case info.TLSIdentity != "":
		if hl.Name != "" && hl.Name != info.TLSIdentity {
			return session.Welcome{}, frame.ReasonUnauthorized,
				fmt.Errorf("gateway: HELLO names %q, the certificate %q", hl.Name, info.TLSIdentity)
		}
		id = info.TLSIdentity
	case hl.Name != "":
		id = hl.Name
		// A name is the station's word for itself: it may not take
		// another station's address as its identity.
		allowed := (func(string) bool)(nil)
		if l != nil {
			allowed = l.AllowedName
			if allowed == nil {
				allowed = l.Allowed
			}
		}
		if a, err := netip.ParseAddr(id); err == nil {
			if a.Unmap().String() != info.Station {
				return session.Welcome{}, frame.ReasonUnauthorized,
					fmt.Errorf("gateway: HELLO names the address %s, the station connects from %s", id, info.Station)
			}
			// Its own address: the identity it has without a name.
			id = info.Station
			if l != nil {
				allowed = l.Allowed
			}
		}
		if allowed != nil && !allowed(id) {
			return session.Welcome{}, frame.ReasonUnauthorized, fmt.Errorf("gateway: station %q not authorized", id)
		}
	case info.Unverified:
		return session.Welcome{}, frame.ReasonUnauthorized, fmt.Errorf("gateway: station %q not authorized", id)
	}
	if s.shutdown.Load() {
		return session.Welcome{}, frame.ReasonShutdown, errors.New("gateway: shutting down")
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.TLSHandshakeTimeout)
	defer cancel()

	// One writer per station: this session takes the identity now, and
	// the one it supersedes must have ended (final ACK, CLOSE 9) before
	// the resume point is read.
	s.mu.Lock()
	me := s.live[sess]
	prev := s.byIdent[id]
	if me != nil {
		s.byIdent[id], me.ident, me.prev = me, id, prev
	}
	s.mu.Unlock()
	if me == nil {
		return session.Welcome{}, frame.ReasonShutdown, errors.New("gateway: session not registered")
	}
	if prev != nil {
		// An older session already ending on its own (the station closed
		// it and reconnected at once) is not counted as superseded.
		if !prev.sess.Ending() {
			s.log.Info("station reconnected: superseding its older session", "station", id, "old", prev.sess.Info().ID, "new", info.ID)
			if o, ok := s.obs.(V2Observer); ok {
				o.Superseded()
			}
		}
		prev.sess.Supersede()
		// Wait for the whole chain: the session superseded may itself
		// have been waiting for an older one when it ended.
		for p := prev; p != nil; {
			select {
			case <-p.done:
			case <-sess.Superseded():
				return session.Welcome{}, frame.ReasonSuperseded, errSupersededInHandshake
			case <-ctx.Done():
				return session.Welcome{}, frame.ReasonBusy, fmt.Errorf("gateway: older session of %q did not end in time: %w", id, ctx.Err())
			}
			s.mu.Lock()
			p = p.prev
			s.mu.Unlock()
		}
		s.mu.Lock()
		me.prev = nil // all ended: nothing to hand the identity back to
		s.mu.Unlock()
	}

	if s.shutdown.Load() {
		// Shutdown began while it waited: it would only be told GOAWAY.
		return session.Welcome{}, frame.ReasonShutdown, errors.New("gateway: shutting down")
	}

	var lo, hi uint64 // stored of this epoch: every frame up to lo, none above hi
	// known: the stream, or a session here, says what is stored; without
	// either (a sink that stores nothing) no gap can be told.
	known := s.resume != nil
	if s.resume != nil {
		st, err := s.readResume(ctx, sess, id)
		if errors.Is(err, errSupersededInHandshake) {
			return session.Welcome{}, frame.ReasonSuperseded, err
		}
		if err != nil {
			return session.Welcome{}, frame.ReasonBusy, fmt.Errorf("%w: %w", errStreamUnavailable, err)
		}
		switch {
		case !st.Found:
		case st.Station != id:
			s.log.Warn("the station's subject ends with another identity's frame; resuming from this gateway's own record",
				"station", id, "other", st.Station)
		case st.Epoch == hl.Epoch && st.Count > 0:
			// A packed message: its session had no other in flight, so
			// everything of the epoch up to its last frame is stored.
			hi = st.Seq + st.Count - 1
			lo = hi
		case st.Epoch == hl.Epoch:
			lo, hi = st.Acked, st.Seq
		case st.Epoch != 0:
			s.log.Info("station began a new epoch", "station", id, "epoch", hl.Epoch,
				"previous_epoch", st.Epoch, "previous_last_seq", st.Seq)
		}
	}
	s.mu.Lock()
	if f, ok := s.floors[id]; ok && f.epoch == hl.Epoch {
		lo, hi, known = max(lo, f.acked), max(hi, f.stored), true
	}
	s.mu.Unlock()

	w := session.Welcome{Station: id, Next: max(lo+1, hl.First)}
	// From next, not first: a gap owed by an earlier session here that
	// stored nothing lies below its next (lo), and a HELLO whose first is
	// lower (a spool restarted on its oldest file) must still be told it.
	if known && w.Next > hi+1 {
		w.Gap = w.Next - 1 - hi
		s.log.Warn("station lost frames before its first: gap marked on the next stored frame",
			"station", id, "epoch", hl.Epoch, "first", hl.First, "next", w.Next, "stored_through", hi, "gap", w.Gap)
		// Counted by the session once the frame that marks it is stored:
		// a session that ends before would otherwise count it twice.
	}
	return w, 0, nil
}

// Each read of the resume point gets resumeTry; a read lost in a leader
// election is asked again (after resumeRetry) instead of waiting out the
// whole handshake bound, which would push the station's resent overlap
// past the dedup window.
const (
	resumeTry   = 2 * time.Second
	resumeRetry = 100 * time.Millisecond
)

var errSupersededInHandshake = errors.New("gateway: superseded during the handshake")

// ErrResumeTransient marks a ResumeFunc error that may pass by asking
// again (a leader election): the handshake asks again, as it does when one
// read runs out of its resumeTry, within its bound. Any other error refuses
// the HELLO with CLOSE(6) at once.
var ErrResumeTransient = errors.New("gateway: resume point temporarily unavailable")

// readResume reads the resume point, again and again within ctx, and gives
// up early when a newer session supersedes this one.
func (s *Server) readResume(ctx context.Context, sess *session.Session, id string) (Stored, error) {
	for {
		tctx, cancel := context.WithTimeout(ctx, resumeTry)
		st, err := s.resume(tctx, id)
		timedOut := tctx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return st, nil
		}
		if !timedOut && !errors.Is(err, ErrResumeTransient) {
			return Stored{}, err
		}
		t := time.NewTimer(resumeRetry)
		select {
		case <-t.C:
		case <-sess.Superseded():
			t.Stop()
			return Stored{}, errSupersededInHandshake
		case <-ctx.Done():
			t.Stop()
			return Stored{}, fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
	}
}

// linkOf is the link a session came in on.
func (s *Server) linkOf(sess *session.Session) *linkRT {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[sess]
}

// v2Ended records a v2 session's end: its identity is free again, and what it
// acknowledged is a floor for its next session here.
func (s *Server) v2Ended(sess *session.Session) {
	s.mu.Lock()
	me := s.live[sess]
	delete(s.live, sess)
	if info := sess.Info(); info.Epoch != 0 {
		if len(s.floors) >= maxFloors {
			clear(s.floors)
		}
		st := sess.Stats()
		s.floors[info.Station] = floor{epoch: info.Epoch, acked: st.AckedSeq, stored: st.StoredThrough}
	}
	if me != nil {
		// Closed under mu: a newer session's v2Ended, which looks at
		// done under mu to hand the identity back, then sees it ended.
		close(me.done)
	}
	if me != nil && me.ident != "" && s.byIdent[me.ident] == me {
		// It may end before the sessions it superseded did (its wait
		// timed out): the identity goes back to the newest of them still
		// running, so that the next HELLO waits for it (and its chain).
		p := me.prev
		for p != nil && closed(p.done) {
			p = p.prev
		}
		if p != nil {
			s.byIdent[me.ident] = p
		} else {
			delete(s.byIdent, me.ident)
		}
	}
	s.mu.Unlock()
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
