package station

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// maxControlFrame bounds a gateway→station frame: control frames are tiny,
// so a huge length means the stream is not the Meridian protocol.
const maxControlFrame = 64 << 10

// drainGrace is how long the reader may still read after the writer failed,
// so that a CLOSE frame already on its way explains the failure.
const drainGrace = 2 * time.Second

// session is one connection. The reader runs on run's goroutine, the writer
// on its own; session returns after both ended, so no goroutine outlives it.
//
// A v2 session opens with the writer's HELLO; the writer then waits for the
// reader to take the WELCOME (welcome closed) before it writes anything
// else, and the reader holds the handshake deadline until then. A v1
// session starts with welcome already closed.
type session struct {
	c     *Client
	conn  net.Conn
	v2    bool          // this session speaks protocol v2; immutable
	base  uint64        // c.acked when the session began: v1 ACK counts start here
	first uint64        // v2: the HELLO's first, base+1; immutable
	stop  chan struct{} // closed when the reader ended: the writer exits

	goaway  chan struct{} // closed by the reader on GOAWAY: the writer half-closes
	welcome chan struct{} // closed by the reader once WELCOME is applied (v2)

	pongs  atomic.Int64  // HEARTBEATs read and not yet answered (v2)
	pongCh chan struct{} // capacity 1: "there are PONGs to write"

	dlMu    sync.Mutex // orders read-deadline changes between reader and writer
	wfailed bool       // guarded by dlMu
	werr    error      // written by the writer before it exits

	rolled   bool  // written by the writer before it exits: it half-closed before a spool's hole
	spoolErr error // written by the writer before it exits: reading the spool failed

	lastAck    uint64 // reader only: last ACK (v1: per-session count; v2: sequence)
	progressed bool   // reader only: the gateway sent anything but CLOSE
	welcomed   bool   // reader only: v1, or v2 after WELCOME
	lat        []flushRec
}

// sessionEnd is why a session ended and whether it got anywhere, which
// decides the reconnect back-off; fallback means a v1 gateway refused the
// HELLO and the client should go on with v1.
type sessionEnd struct {
	err        error
	progressed bool
	fallback   bool
	rolled     bool  // it ended at a spool's hole, everything before it acknowledged: reconnect at once
	spoolErr   error // reading the spool failed: the client stops
}

func (c *Client) session(conn net.Conn) sessionEnd {
	now := time.Now()
	c.mu.Lock()
	if c.spool != nil {
		c.skipHoleLocked()
	}
	s := &session{
		c: c, conn: conn, v2: c.version.Load() == 2,
		base: c.acked, first: c.acked + 1,
		stop: make(chan struct{}), goaway: make(chan struct{}), welcome: make(chan struct{}),
		pongCh: make(chan struct{}, 1),
	}
	if !s.v2 {
		s.welcomed = true
		close(s.welcome)
	}
	c.written = c.acked
	// What a WELCOME said stored holds for its own session only: the next
	// gateway numbers frames from its own next.
	c.storedThrough = 0
	c.flushes = c.flushes[:0]
	c.lastProgress = now
	c.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.writeLoop()
	}()
	// A forced Close cancels c.ctx; closing the socket unblocks both loops.
	stopWatch := context.AfterFunc(c.ctx, func() { conn.Close() })
	rerr := s.readLoop()
	stopWatch()
	close(s.stop)
	conn.Close()
	wg.Wait()

	c.mu.Lock()
	// Rolled over only if the final ACK came: a gateway that reset the
	// connection before it gets the back-off like any other failure.
	rolled := s.rolled && c.holeTo != 0 && c.acked+1 >= c.holeFrom
	c.mu.Unlock()
	end := sessionEnd{err: rerr, progressed: s.progressed, rolled: rolled, spoolErr: s.spoolErr}
	var ce *CloseError
	switch {
	case errors.As(rerr, &ce):
		// A v1 gateway answers the HELLO with CLOSE(5): the only v2 refusal
		// that means "speak v1" rather than "you broke the protocol".
		end.fallback = s.v2 && !s.welcomed && ce.Reason == ReasonControl && c.opts.protocol == ProtocolV2
	case s.werr != nil:
		end.err = fmt.Errorf("station: write: %w", s.werr)
	case errors.Is(rerr, os.ErrDeadlineExceeded) && !s.welcomed:
		end.err = fmt.Errorf("%w: no WELCOME within %s of the HELLO", ErrGatewayDead, c.opts.dialTimeout)
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		end.err = fmt.Errorf("%w: nothing heard for %s", ErrGatewayDead, c.opts.deadTimeout)
	case errors.Is(rerr, io.EOF):
		end.err = fmt.Errorf("station: gateway closed the connection: %w", io.EOF)
	}
	return end
}

// extendReadDeadline pushes the dead-gateway deadline forward, unless the
// writer already cut it short or the v2 handshake deadline stands.
func (s *session) extendReadDeadline() {
	d := s.c.opts.deadTimeout
	if d <= 0 || !s.welcomed {
		return
	}
	s.setReadDeadline(time.Now().Add(d))
}

func (s *session) setReadDeadline(t time.Time) {
	s.dlMu.Lock()
	if !s.wfailed {
		s.conn.SetReadDeadline(t)
	}
	s.dlMu.Unlock()
}

// readLoop reads gateway frames until the connection ends; it returns a
// *CloseError when the gateway said why.
func (s *session) readLoop() error {
	c := s.c
	br := bufio.NewReaderSize(s.conn, 4096)
	var hdr [frame.HeaderSize]byte
	buf := make([]byte, 64)
	if !s.welcomed {
		// The WELCOME is due within the dial timeout of the HELLO.
		s.setReadDeadline(time.Now().Add(c.opts.dialTimeout))
	}
	for {
		s.extendReadDeadline()
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: connection ended inside a frame header", ErrProtocol)
			}
			return err
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > maxControlFrame {
			return fmt.Errorf("%w: gateway frame of %d bytes", ErrProtocol, n)
		}
		if int(n) > cap(buf) {
			buf = make([]byte, n)
		}
		payload := buf[:n]
		if _, err := io.ReadFull(br, payload); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: connection ended inside a frame", ErrProtocol)
			}
			return err
		}
		if n == 0 {
			continue // not defined gateway→station; harmless, skip it
		}
		ctl, err := frame.ParseControl(payload)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		switch {
		case ctl.Type == frame.TypeHeartbeat:
			s.progressed = true
			if s.v2 {
				s.pongs.Add(1)
				select {
				case s.pongCh <- struct{}{}:
				default:
				}
			}
			if err := s.checkProgress(); err != nil {
				return err
			}
		case ctl.Type == frame.TypeAck && !s.welcomed:
			// A gateway refusing the HELLO may send its final ACK, which
			// covers nothing, before the CLOSE; anything more is a breach.
			if ctl.Ack != 0 && ctl.Ack >= s.first {
				return fmt.Errorf("%w: ACK %d before WELCOME", ErrProtocol, ctl.Ack)
			}
		case ctl.Type == frame.TypeAck:
			s.progressed = true
			var err error
			if s.v2 {
				err = s.ackSeq(ctl.Ack)
			} else {
				err = s.ack(ctl.Ack)
			}
			if err != nil {
				return err
			}
		case ctl.Type == frame.TypeWelcome && s.v2:
			if s.welcomed {
				return fmt.Errorf("%w: a second WELCOME", ErrProtocol)
			}
			if err := s.applyWelcome(ctl); err != nil {
				return err
			}
			s.progressed = true
		case ctl.Type == frame.TypeClose:
			return &CloseError{Reason: Reason(ctl.Reason), Text: ctl.Text}
		case ctl.Type == frame.TypeGoAway:
			s.progressed = true
			c.log.Info("station: gateway going away; draining session")
			select {
			case <-s.goaway:
			default:
				close(s.goaway)
			}
		default:
			// The protocol lets later gateways add frame types; a v1
			// station skips them.
			c.log.Debug("station: skipping unknown gateway frame", "type", ctl.Type.String())
		}
	}
}

// checkProgress fails the session when frames have waited for an ACK longer
// than the dead-gateway timeout although the gateway still sends heartbeats.
func (s *session) checkProgress() error {
	c := s.c
	d := c.opts.deadTimeout
	if d <= 0 {
		return nil
	}
	c.mu.Lock()
	stalled := c.written > c.acked && time.Since(c.lastProgress) > d
	c.mu.Unlock()
	if stalled {
		return fmt.Errorf("%w: no ACK progress for %s", ErrGatewayDead, d)
	}
	return nil
}

// applyWelcome resumes a v2 session where the gateway says: frames below
// next are stored, so they count as acknowledged and are not sent again;
// the writer goes on from next.
func (s *session) applyWelcome(ctl frame.Control) error {
	c := s.c
	if ctl.Version != frame.Version2 || ctl.Epoch != c.epoch {
		return fmt.Errorf("%w: WELCOME for version %d epoch %d, the HELLO said version %d epoch %d",
			ErrProtocol, ctl.Version, ctl.Epoch, frame.Version2, c.epoch)
	}
	next := ctl.Next
	base := next - 1 // the WELCOME's: what an ACK of this session may not go below
	now := time.Now()
	c.mu.Lock()
	switch {
	case next-1 < c.acked:
		acked := c.acked
		c.mu.Unlock()
		return fmt.Errorf("%w: WELCOME next %d goes back behind ACK %d", ErrProtocol, next, acked)
	case next < s.first:
		c.mu.Unlock()
		return fmt.Errorf("%w: WELCOME next %d is below the HELLO's first %d", ErrProtocol, next, s.first)
	case c.spool != nil && next-1 > c.spool.Last():
		last := c.spool.Last()
		c.mu.Unlock()
		return fmt.Errorf("%w: the gateway holds epoch %d up to frame %d, the spool only up to %d (a copy of this spool directory in use elsewhere?)", ErrEpochConflict, c.epoch, next-1, last)
	case c.spool != nil:
		// The stream may hold spooled frames not loaded yet: the writer
		// loads from next on.
		c.loaded = max(c.loaded, next-1)
		if c.holeTo != 0 && next >= c.holeTo {
			c.holeFrom, c.holeTo = 0, 0 // the stream has what the spool lost
		}
		if next-1 > c.sent {
			c.sent = next - 1
			c.sentA.Store(c.sent)
		}
	case next-1 > c.sent && !c.epochGiven:
		sent := c.sent
		c.mu.Unlock()
		return fmt.Errorf("%w: the gateway holds epoch %d up to frame %d, this client numbered only up to %d", ErrEpochConflict, c.epoch, next-1, sent)
	case next-1 > c.sent:
		// A numbering resumed by the caller (WithEpoch, WithFirstSeq):
		// the stream holds frames it has not handed to Send yet. Those
		// it has are stored; Send completes the rest as they come.
		c.storedThrough = next - 1
		next = c.sent + 1
	}
	// The writer has written nothing since the HELLO: written is base.
	prev := c.acked
	skipped := next - 1 - prev
	c.written = next - 1
	c.lastProgress = now
	if skipped > 0 {
		c.acked = next - 1
		c.ackedA.Store(c.acked)
		c.skipped.Add(skipped)
		c.signalLocked()
	}
	c.mu.Unlock()
	if skipped > 0 && c.spool != nil {
		c.spool.Ack(next - 1)
	}
	s.lastAck = base
	s.welcomed = true
	if c.opts.deadTimeout <= 0 {
		s.setReadDeadline(time.Time{}) // the handshake deadline ends here
	}
	close(s.welcome)
	c.log.Debug("station: welcome", "epoch", c.epoch, "next", next, "skipped", skipped)
	if skipped > 0 && c.opts.onAck != nil {
		c.opts.onAck(next - 1)
	}
	return nil
}

// ack applies a v1 per-session cumulative ACK count: the session's frames
// are the client's sequence numbers base+1, base+2, ...
func (s *session) ack(count uint64) error {
	c := s.c
	if count < s.lastAck {
		return fmt.Errorf("%w: ACK went back from %d to %d", ErrProtocol, s.lastAck, count)
	}
	s.lastAck = count
	c.mu.Lock()
	g := s.base + count
	if g > c.written {
		w := c.written - s.base
		c.mu.Unlock()
		return fmt.Errorf("%w: ACK for %d frames, only %d written", ErrProtocol, count, w)
	}
	return s.ackLocked(g)
}

// ackSeq applies a v2 ACK: the highest sequence number of the epoch up to
// which every frame is stored, the same on every session.
func (s *session) ackSeq(seq uint64) error {
	c := s.c
	if seq < s.lastAck {
		return fmt.Errorf("%w: ACK went back from %d to %d", ErrProtocol, s.lastAck, seq)
	}
	s.lastAck = seq
	c.mu.Lock()
	if seq <= c.storedThrough && c.written < seq {
		// Stored before this client numbered it (a resumed spool):
		// Send completes those frames itself.
		c.mu.Unlock()
		return nil
	}
	if seq > c.written {
		w := c.written
		c.mu.Unlock()
		return fmt.Errorf("%w: ACK for frame %d, only written up to %d", ErrProtocol, seq, w)
	}
	return s.ackLocked(seq)
}

// ackLocked moves acked to g, the sequence number now acknowledged, and
// unlocks c.mu before it calls the observers.
func (s *session) ackLocked(g uint64) error {
	c := s.c
	now := time.Now()
	if g <= c.acked {
		c.mu.Unlock()
		return nil
	}
	prev := c.acked
	c.acked = g
	c.ackedA.Store(g)
	c.lastProgress = now
	s.lat = s.lat[:0]
	if c.opts.onLatency != nil {
		s.lat = c.takeFlushesLocked(s.lat, prev, g)
	}
	c.signalLocked()
	c.mu.Unlock()
	if c.spool != nil {
		c.spool.Ack(g)
		c.kick() // the writer may load into the slots freed
	}

	for _, r := range s.lat {
		c.opts.onLatency(r.last-r.first+1, now.Sub(r.at))
	}
	if c.opts.onAck != nil {
		c.opts.onAck(g)
	}
	return nil
}

// takeFlushesLocked appends to dst, for each socket write with frames in
// (prev, acked], the part of it that is now acknowledged, and drops the
// writes that are wholly acknowledged.
func (c *Client) takeFlushesLocked(dst []flushRec, prev, acked uint64) []flushRec {
	i := 0
	for ; i < len(c.flushes); i++ {
		r := c.flushes[i]
		first := max(r.first, prev+1)
		last := min(r.last, acked)
		if first <= last {
			dst = append(dst, flushRec{first: first, last: last, at: r.at})
		}
		if r.last > acked {
			break
		}
	}
	// Shift the rest down; the slice stays within the window's size, so this
	// reuses its array instead of growing.
	n := copy(c.flushes, c.flushes[i:])
	c.flushes = c.flushes[:n]
	return dst
}

// writeLoop writes queued frames in order, batching them into one socket
// write, sends keepalives when idle and half-closes on GOAWAY or at the end
// of Close. In v2 it opens with the HELLO and waits for the WELCOME, and it
// answers each HEARTBEAT with a PONG, ahead of the next frames.
func (s *session) writeLoop() {
	c := s.c
	window := uint64(len(c.ring))
	var pongBuf []byte
	if s.v2 {
		hello := frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: c.epoch, First: s.first, Name: c.opts.name})
		if !s.write(hello) {
			return
		}
		select {
		case <-s.welcome:
		case <-s.goaway:
			s.halfClose()
			return
		case <-s.stop:
			return
		}
		pongBuf = make([]byte, 0, 64)
	}
	var keepalive <-chan time.Time
	var kaTimer *time.Timer
	if c.opts.keepalive > 0 {
		kaTimer = time.NewTimer(c.opts.keepalive)
		defer kaTimer.Stop()
		keepalive = kaTimer.C
	}
	for {
		select {
		case <-s.goaway:
			s.halfClose()
			return
		default:
		}
		c.mu.Lock()
		from, to, closing := c.written, c.sent, c.closing
		var room uint64
		hole := false
		if c.spool != nil {
			to, room, hole = c.loaded, window-(c.loaded-c.acked), c.holeTo != 0
			closing = closing && c.loaded == c.sent
		}
		c.mu.Unlock()
		if from == to && room > 0 && !hole {
			n, err := c.load(room)
			if err != nil {
				s.spoolErr = err
				s.fail(err)
				return
			}
			if n > 0 {
				continue
			}
			c.mu.Lock()
			hole = c.holeTo != 0
			closing = c.closing && c.loaded == c.sent
			c.mu.Unlock()
		}
		if from == to {
			if hole {
				// The gateway numbers frames in order: the frames after
				// the hole need a new session, whose HELLO starts after
				// it. The final ACK covers what this one wrote.
				s.rolled = true
				s.halfClose()
				return
			}
			if closing {
				s.halfClose()
				return
			}
			select {
			case <-c.wake:
			case <-s.goaway:
			case <-s.stop:
				return
			case <-s.pongCh:
				// The PONGs may have gone out with frames already.
				pongBuf = s.appendPongs(pongBuf[:0])
				if len(pongBuf) > 0 && !s.write(pongBuf) {
					return
				}
			case <-keepalive:
				var ka [frame.HeaderSize]byte
				if !s.write(ka[:]) {
					return
				}
				kaTimer.Reset(c.opts.keepalive)
			}
			continue
		}
		// Frames from+1..to cannot be overwritten while unacknowledged,
		// and the gateway cannot acknowledge what is not yet written, so
		// the slots are read without the lock.
		buf := c.wbuf[:0]
		if s.v2 {
			buf = s.appendPongs(buf)
		}
		last := from
		for seq := from + 1; seq <= to; seq++ {
			f := c.ring[(seq-1)%window]
			if last > from && len(buf)+len(f) > cap(buf) {
				break
			}
			buf = append(buf, f...)
			last = seq
		}
		if cap(buf) <= writeBufSize {
			c.wbuf = buf
		}
		now := time.Now()
		c.mu.Lock()
		if c.written == c.acked {
			c.lastProgress = now
		}
		// written moves before the write: an ACK may arrive before Write
		// returns.
		c.written = last
		if last > c.maxWritten {
			if from < c.maxWritten {
				c.resent.Add(c.maxWritten - from)
			}
			c.maxWritten = last
		} else {
			c.resent.Add(last - from)
		}
		if c.opts.onLatency != nil {
			c.flushes = append(c.flushes, flushRec{first: from + 1, last: last, at: now})
		}
		c.mu.Unlock()
		if !s.write(buf) {
			return
		}
		if kaTimer != nil {
			kaTimer.Reset(c.opts.keepalive)
		}
	}
}

// appendPongs appends a PONG for each HEARTBEAT read since the last call.
func (s *session) appendPongs(b []byte) []byte {
	for n := s.pongs.Swap(0); n > 0; n-- {
		b = frame.AppendPong(b)
	}
	return b
}

// write writes b with the dead-gateway timeout as deadline. On failure it
// records the error and lets the reader drain briefly before the session
// ends.
func (s *session) write(b []byte) bool {
	if d := s.c.opts.deadTimeout; d > 0 {
		s.conn.SetWriteDeadline(time.Now().Add(d))
	}
	if _, err := s.conn.Write(b); err != nil {
		s.fail(err)
		return false
	}
	return true
}

func (s *session) fail(err error) {
	select {
	case <-s.stop:
		return // the reader ended first; its reason stands
	default:
	}
	s.werr = err
	s.dlMu.Lock()
	s.wfailed = true
	s.conn.SetReadDeadline(time.Now().Add(drainGrace))
	s.dlMu.Unlock()
}

// halfClose ends the write side so that the gateway reads EOF at a frame
// boundary, sends its final ACK and closes.
func (s *session) halfClose() {
	cw, ok := s.conn.(interface{ CloseWrite() error })
	if !ok {
		return
	}
	if err := cw.CloseWrite(); err != nil {
		s.fail(err)
	}
}
