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
type session struct {
	c    *Client
	conn net.Conn
	base uint64        // c.acked when the session began: its ACK counts start here
	stop chan struct{} // closed when the reader ended: the writer exits

	goaway chan struct{} // closed by the reader on GOAWAY: the writer half-closes

	dlMu    sync.Mutex // orders read-deadline changes between reader and writer
	wfailed bool       // guarded by dlMu
	werr    error      // written by the writer before it exits

	lastAck    uint64 // reader only: last per-session ACK count
	progressed bool   // reader only: the gateway sent anything but CLOSE
	lat        []flushRec
}

// sessionEnd is why a session ended and whether it got anywhere, which
// decides the reconnect back-off.
type sessionEnd struct {
	err        error
	progressed bool
}

func (c *Client) session(conn net.Conn) sessionEnd {
	now := time.Now()
	c.mu.Lock()
	s := &session{c: c, conn: conn, base: c.acked, stop: make(chan struct{}), goaway: make(chan struct{})}
	c.written = c.acked
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

	end := sessionEnd{err: rerr, progressed: s.progressed}
	var ce *CloseError
	switch {
	case errors.As(rerr, &ce):
	case s.werr != nil:
		end.err = fmt.Errorf("station: write: %w", s.werr)
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		end.err = fmt.Errorf("%w: nothing heard for %s", ErrGatewayDead, c.opts.deadTimeout)
	case errors.Is(rerr, io.EOF):
		end.err = fmt.Errorf("station: gateway closed the connection: %w", io.EOF)
	}
	return end
}

// extendReadDeadline pushes the dead-gateway deadline forward, unless the
// writer already cut it short.
func (s *session) extendReadDeadline() {
	d := s.c.opts.deadTimeout
	if d <= 0 {
		return
	}
	s.dlMu.Lock()
	if !s.wfailed {
		s.conn.SetReadDeadline(time.Now().Add(d))
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
		switch ctl.Type {
		case frame.TypeHeartbeat:
			s.progressed = true
			if err := s.checkProgress(); err != nil {
				return err
			}
		case frame.TypeAck:
			s.progressed = true
			if err := s.ack(ctl.Ack); err != nil {
				return err
			}
		case frame.TypeClose:
			return &CloseError{Reason: Reason(ctl.Reason), Text: ctl.Text}
		case frame.TypeGoAway:
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

// ack applies a per-session cumulative ACK count: the session's frames are
// the global sequence numbers base+1, base+2, ...
func (s *session) ack(count uint64) error {
	c := s.c
	if count < s.lastAck {
		return fmt.Errorf("%w: ACK went back from %d to %d", ErrProtocol, s.lastAck, count)
	}
	s.lastAck = count
	now := time.Now()
	c.mu.Lock()
	g := s.base + count
	if g > c.written {
		w := c.written - s.base
		c.mu.Unlock()
		return fmt.Errorf("%w: ACK for %d frames, only %d written", ErrProtocol, count, w)
	}
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
// of Close.
func (s *session) writeLoop() {
	c := s.c
	window := uint64(len(c.ring))
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
		c.mu.Unlock()
		if from == to {
			if closing {
				s.halfClose()
				return
			}
			select {
			case <-c.wake:
			case <-s.goaway:
			case <-s.stop:
				return
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
		last := from
		for seq := from + 1; seq <= to; seq++ {
			f := c.ring[(seq-1)%window]
			if len(buf) > 0 && len(buf)+len(f) > cap(buf) {
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
