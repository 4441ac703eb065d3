package session

import (
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// writerLinger is how long a writer goroutine that has just written an ACK
// waits for more work before it exits. A busy session keeps one writer for
// all its ACKs instead of starting one per ACK; a writer that wrote only a
// heartbeat or a GOAWAY exits at once, so an idle session holds none.
const writerLinger = 100 * time.Millisecond

// controlWriter owns the writes of a session's control frames: HEARTBEAT,
// ACK and GOAWAY. A writer goroutine runs only while there is something to
// write (and for writerLinger after), so an idle session costs no
// goroutine. No lock is held during I/O. Close hands the socket's write
// side back to the session, with what is still due.
type controlWriter struct {
	conn         net.Conn
	heartbeat    time.Duration // 0: none
	writeTimeout time.Duration
	ackInterval  time.Duration
	acked        func() uint64 // the session's acknowledged count, safe from any goroutine
	log          *slog.Logger
	obs          Observer

	wake chan struct{} // capacity 1: work for the running writer
	wg   sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	writing   bool       // a writer goroutine runs
	closed    bool       // Close was called: the session owns the socket
	broken    bool       // a write failed: nothing more is written
	goAwayDue bool
	hbDue     bool
	ackSent   uint64
	lastAckAt time.Time
	hbTimer   *time.Timer
	acking    bool   // the last write carried an ACK: frames are flowing
	buf       []byte // the writer's output; owned by the writer while writing

	// Protocol v2, set by welcome: the WELCOME goes out before any ACK
	// (a HEARTBEAT or GOAWAY that fell due during the handshake may precede
	// it), ACKs are absolute (at least base, next-1), and heartbeats go out
	// on schedule even while ACKs flow, for the PONGs that time the round
	// trip.
	v2         bool
	welcomeDue []byte
	base       uint64
	hbSentAt   time.Time // last HEARTBEAT written and not yet answered; zero if none
}

func newControlWriter(conn net.Conn, cfg Config, acked func() uint64, log *slog.Logger, obs Observer) *controlWriter {
	w := &controlWriter{
		conn:         conn,
		heartbeat:    cfg.Heartbeat,
		writeTimeout: cfg.WriteTimeout,
		ackInterval:  cfg.AckInterval,
		acked:        acked,
		log:          log,
		obs:          obs,
		wake:         make(chan struct{}, 1),
	}
	if w.heartbeat > 0 {
		w.hbTimer = time.AfterFunc(w.heartbeat, w.heartbeatDue)
	}
	return w
}

// welcome queues the v2 WELCOME frame and makes the session's ACKs absolute
// from base (next-1): an ACK says base + the session's count. The station
// knows base already from the WELCOME, so no ACK of it alone is sent.
func (w *controlWriter) welcome(msg []byte, base uint64) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.v2, w.welcomeDue, w.base, w.ackSent = true, msg, base, base
	w.mu.Unlock()
	w.kick()
}

// pong takes the station's answer to the last HEARTBEAT and returns the
// round trip; false when no heartbeat was waiting for one.
func (w *controlWriter) pong(now time.Time) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hbSentAt.IsZero() {
		return 0, false
	}
	d := now.Sub(w.hbSentAt)
	w.hbSentAt = time.Time{}
	return d, true
}

// goAway queues a GOAWAY; after close it does nothing (close has already
// reported what was due).
func (w *controlWriter) goAway() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.goAwayDue = true
	w.mu.Unlock()
	w.kick()
}

func (w *controlWriter) heartbeatDue() {
	w.mu.Lock()
	w.hbDue = true
	w.mu.Unlock()
	w.kick()
}

// kick makes sure a writer runs to look at what is due: the one running,
// or a new one.
func (w *controlWriter) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.broken {
		return
	}
	if w.writing {
		// Signalled under mu: a writer deciding to exit checks wake under
		// mu too, so this wake-up cannot fall between its check and its
		// exit.
		select {
		case w.wake <- struct{}{}:
		default: // already woken
		}
		return
	}
	w.writing = true
	w.wg.Add(1)
	go w.run()
}

// run writes what is due until nothing has been due for writerLinger.
func (w *controlWriter) run() {
	defer w.wg.Done()
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		w.mu.Lock()
		if w.closed {
			w.writing = false
			w.mu.Unlock()
			return
		}
		out, wait, acks, hbs := w.gatherLocked(time.Now())
		if len(out) == 0 {
			idle := wait == 0
			if idle && !w.acking {
				// Nothing due, and the last write was no ACK (a heartbeat,
				// a GOAWAY): an idle session holds no writer.
				w.writing = false
				w.mu.Unlock()
				return
			}
			if idle {
				wait = writerLinger
				w.acking = false // one linger per run of ACKs
			}
			w.mu.Unlock()
			if t == nil {
				t = time.NewTimer(wait)
			} else {
				t.Reset(wait)
			}
			select {
			case <-w.wake:
				continue
			case <-t.C:
			}
			if !idle {
				continue // the coalesced ACK is due now
			}
			w.mu.Lock()
			// Nothing came in the linger time; exit unless work arrived
			// between the timer and the lock (kick saw writing set and
			// only signalled wake).
			select {
			case <-w.wake:
				w.mu.Unlock()
				continue
			default:
			}
			w.writing = false
			w.mu.Unlock()
			return
		}
		w.buf = out
		w.mu.Unlock()

		_ = w.conn.SetWriteDeadline(time.Now().Add(w.writeTimeout))
		if _, err := w.conn.Write(out); err != nil {
			w.mu.Lock()
			w.broken = true
			w.writing = false
			w.mu.Unlock()
			// Logged once: after a failed write the stream to the station
			// may hold half a frame, so nothing more is written at all.
			w.log.Warn("station not reading; control frames dropped from now on", "err", err)
			return
		}
		// Counted once written, not when queued.
		for range acks {
			w.obs.AckSent()
		}
		for range hbs {
			w.obs.HeartbeatSent()
		}
		w.mu.Lock()
		if w.hbTimer != nil && (!w.v2 || hbs > 0) {
			// Any write proves we are alive; in v2 only a heartbeat
			// restarts the schedule, so that PONGs keep timing the link.
			w.hbTimer.Reset(w.heartbeat)
		}
		w.mu.Unlock()
	}
}

// gatherLocked appends the due control frames to the writer's buffer. When
// an ACK is due but falls inside the coalescing interval, it returns how
// long to wait for it instead.
func (w *controlWriter) gatherLocked(now time.Time) (out []byte, wait time.Duration, acks, hbs int) {
	out = w.buf[:0]
	if w.welcomeDue != nil {
		out = append(out, w.welcomeDue...)
		w.welcomeDue = nil
	}
	if w.goAwayDue {
		w.goAwayDue = false
		out = frame.AppendGoAway(out)
	}
	if ack := max(w.base, w.acked()); ack > w.ackSent {
		if d := w.ackInterval - now.Sub(w.lastAckAt); d > 0 {
			wait = d
		} else {
			out = frame.AppendAck(out, ack)
			w.ackSent, w.lastAckAt = ack, now
			w.acking = true
			acks++
		}
	}
	if w.hbDue {
		w.hbDue = false
		if len(out) == 0 || w.v2 { // any other frame already shows we are alive
			out = frame.AppendHeartbeat(out)
			hbs++
			w.hbSentAt = now
		}
	}
	return out, wait, acks, hbs
}

// close stops the writer: it waits for a write in progress and stops the
// timers. It returns what is still due to the station, for the session to
// write itself now that it owns the socket's write side: a GOAWAY queued
// and never written, the final ACK of ack frames, and the CLOSE of reason
// when the reason is one the protocol announces. usable is false once a
// write failed: the stream to the station may then hold half a frame, and
// nothing more may be written. A later goAway or kick does nothing.
func (w *controlWriter) close(ack uint64, reason frame.Reason) (due []byte, usable bool) {
	return w.closeWith(&ack, reason)
}

// closeRefused is close for a connection refused before it said who it is:
// no final ACK, only the CLOSE, as a refusal at connect time sends.
func (w *controlWriter) closeRefused(reason frame.Reason) (due []byte, usable bool) {
	return w.closeWith(nil, reason)
}

func (w *controlWriter) closeWith(ack *uint64, reason frame.Reason) (due []byte, usable bool) {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}: // a lingering writer sees closed at once
	default:
	}
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.hbTimer != nil {
		w.hbTimer.Stop()
	}
	due = w.buf[:0]
	if w.welcomeDue != nil {
		due = append(due, w.welcomeDue...) // a refused handshake never has one
		w.welcomeDue = nil
	}
	if w.goAwayDue {
		due = frame.AppendGoAway(due) // the drain ended before the writer ran
		w.goAwayDue = false
	}
	if ack != nil {
		due = frame.AppendAck(due, *ack)
	}
	if reason.Wire() {
		due = frame.AppendClose(due, reason, reason.Text())
	}
	return due, !w.broken
}
