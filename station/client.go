package station

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/spool"
)

// writeBufSize bounds one socket write: frames are copied into a buffer of
// this size and written together, so that a busy client makes one syscall
// per batch rather than per frame.
const writeBufSize = 128 << 10

// Client is a connection to a gateway that survives the gateway: it queues
// frames, writes them in order, tracks their acknowledgement and resends the
// unacknowledged ones on a new session after a disconnect. Its methods are
// safe for concurrent use.
//
// Every frame gets a sequence number, from 1 (or WithFirstSeq), in the
// order Send accepted it; the numbering is the client's epoch (Epoch). Acked
// is the highest sequence number up to which the gateway's sink has durably
// accepted every frame; it never goes backwards, across sessions too.
type Client struct {
	addr  string
	opts  options
	log   *slog.Logger
	epoch uint64 // immutable after Dial
	// epochGiven: the caller chose the epoch (WithEpoch), to resume a
	// numbering of an earlier process; immutable after Dial.
	epochGiven bool

	// version is the protocol the next session speaks: 2, or 1 for a client
	// configured for v1 or fallen back to it. Written by run only.
	version atomic.Int32

	// ctx ends the client's goroutines; cancelled when Close gives up
	// waiting. Immutable after Dial.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when run returns

	wake chan struct{} // capacity 1: "there is something to write"

	// Lock-free mirrors of mu-guarded counters, for cheap progress reads.
	sentA, ackedA, reconnects, resent, skipped atomic.Uint64

	mu sync.Mutex // guards the fields below
	// ring holds the frames not yet acknowledged, framed (length prefix and
	// payload): frame seq lives in ring[(seq-1)%window]. A slot's buffer is
	// reused once its frame is acknowledged.
	ring       [][]byte
	sent       uint64 // highest sequence number handed to Send
	acked      uint64 // frames acknowledged, cumulative
	written    uint64 // highest sequence handed to the socket on this session
	maxWritten uint64 // highest sequence ever handed to a socket
	// storedThrough (v2, an epoch the caller gave): the stream holds the
	// epoch up to here, beyond what this client has numbered yet: a
	// restarted spool's frames that were stored but never acknowledged.
	// Send completes them at once instead of sending them again.
	storedThrough uint64
	closing       bool          // Close was called: Send refuses, the writer half-closes when done
	err           error         // terminal: Send and WaitAcked return it
	result        error         // what run ended with (nil: closed with everything acknowledged)
	ackWait       chan struct{} // closed when acked grows or err is set; nil without waiters
	flushes       []flushRec    // socket writes not fully acknowledged, oldest first (latency observer only)
	lastProgress  time.Time     // last ACK progress, or the write that started an unacknowledged run
	wbuf          []byte        // the writer's batch buffer; only the current session's writer uses it

	// With a spool (WithSpool); nil without one. Send appends to the spool,
	// and the writer loads synced frames from it into the ring: the ring
	// then holds (acked, loaded], and the window bounds only the frames in
	// flight.
	spool  *spool.Spool
	reader *spool.Reader // the current session's writer only
	loaded uint64        // highest sequence number copied into the ring
	// holeFrom..holeTo-1 are frames the spool no longer has (dropped, or
	// damaged): the writer stops before them, and the next session starts
	// after them once everything before is acknowledged, which the
	// gateway marks as a gap. 0: none.
	holeFrom, holeTo uint64
}

// flushRec remembers when frames first..last were handed to the socket.
type flushRec struct {
	first, last uint64
	at          time.Time
}

// Dial connects to the gateway at addr (host:port) and returns a client
// ready to Send. The first connection attempt is bounded by ctx and is not
// retried: an unreachable gateway is reported here. Later disconnects are
// handled by the reconnect policy.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	o := options{
		maxFrame:    DefaultMaxFrame,
		window:      DefaultWindow,
		deadTimeout: DefaultDeadTimeout,
		keepalive:   DefaultKeepalive,
		dialTimeout: DefaultDialTimeout,
		reconnect:   DefaultReconnect,
		log:         slog.New(slog.DiscardHandler),
		protocol:    ProtocolV2,
		firstSeq:    1,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.spoolDir != "" {
		switch {
		case o.epoch != 0 || o.firstSeq != 1:
			o.errs = append(o.errs, fmt.Errorf("%w: WithSpool keeps its own epoch and numbering: not with WithEpoch or WithFirstSeq", ErrInvalidOption))
		case o.protocol == ProtocolV1:
			o.errs = append(o.errs, fmt.Errorf("%w: WithSpool needs protocol v2, not ProtocolV1", ErrInvalidOption))
		}
		// Falling back to v1 would give up exactly-once: a spool's
		// client speaks v2 or stops.
		o.protocol = ProtocolV2Only
	}
	if err := errors.Join(o.errs...); err != nil {
		return nil, err
	}
	o.reconnect = o.reconnect.withDefaults()
	epoch := o.epoch
	c0epochGiven := epoch != 0
	c := &Client{
		addr:       addr,
		opts:       o,
		log:        o.log.With("gateway", addr),
		epochGiven: c0epochGiven,
		done:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		ring:       make([][]byte, o.window),
		wbuf:       make([]byte, 0, writeBufSize),
	}
	if o.protocol == ProtocolV1 {
		c.version.Store(1)
	} else {
		c.version.Store(2)
	}
	// Frames before the first sequence number count as acknowledged: they
	// are not this client's to send.
	base := o.firstSeq - 1
	if o.spoolDir != "" {
		sp, err := spool.Open(o.spoolDir, spool.Options{
			SyncInterval: o.spool.Sync,
			SyncAlways:   o.spool.SyncAlways,
			MaxBytes:     o.spool.MaxBytes,
			Full:         spool.Full(o.spool.Full),
			SegmentBytes: o.spool.SegmentBytes,
			MaxRecord:    o.maxFrame,
			Log:          o.log,
			// New synced frames are the writer's to load.
			OnSynced: func(uint64) { c.kick() },
		})
		if err != nil {
			return nil, fmt.Errorf("station: %w", err)
		}
		st := sp.Stats()
		epoch = st.Epoch
		c.spool = sp
		c.reader = sp.NewReader(st.Oldest)
		// The spool's frames are this client's to send, from its oldest:
		// the gateway's WELCOME says which of them the stream has.
		base = st.Oldest - 1
		c.sent, c.loaded = st.Last, base
		c.sentA.Store(st.Last)
	}
	for epoch == 0 {
		epoch = rand.Uint64()
	}
	c.epoch = epoch
	c.acked, c.written, c.maxWritten = base, base, base
	if c.spool == nil {
		c.sent = base
		c.sentA.Store(base)
	}
	c.ackedA.Store(base)
	conn, err := c.dial(ctx)
	if err != nil && c.spool == nil {
		return nil, fmt.Errorf("station: gateway %s unreachable: %w", addr, err)
	}
	if err != nil {
		// Store and forward: the frames wait in the spool while the
		// client keeps trying.
		c.log.Warn("station: gateway unreachable; spooling and retrying", "err", err)
		conn = nil
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.run(conn)
	return c, nil
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	if c.opts.tls == nil {
		return d.DialContext(ctx, "tcp", c.addr)
	}
	td := &tls.Dialer{NetDialer: d, Config: c.opts.tls}
	return td.DialContext(ctx, "tcp", c.addr)
}

// Send queues a copy of payload as the next frame and returns; the frame is
// written in the background and kept until the gateway acknowledges it.
// Send blocks while the window is full, until ctx ends. A payload above the
// maximum frame size fails with ErrPayloadTooLarge, an empty one with
// ErrEmptyPayload, and one after Close with ErrClosed; after a fatal error (see Err) Send returns that error.
func (c *Client) Send(ctx context.Context, payload []byte) error {
	if len(payload) == 0 {
		return ErrEmptyPayload
	}
	if len(payload) > c.opts.maxFrame {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, len(payload), c.opts.maxFrame)
	}
	if c.spool != nil {
		return c.sendSpooled(ctx, payload)
	}
	window := uint64(len(c.ring))
	c.mu.Lock()
	for {
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return err
		}
		if c.closing {
			c.mu.Unlock()
			return ErrClosed
		}
		if c.sent-c.acked < window {
			break
		}
		ch := c.ackWaitLocked()
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		c.mu.Lock()
	}
	seq := c.sent + 1
	if seq <= c.storedThrough && c.acked == c.sent {
		// Stored already (a restarted spool's frame): acknowledged now.
		c.sent, c.acked, c.written = seq, seq, seq
		c.maxWritten = max(c.maxWritten, seq)
		c.sentA.Store(seq)
		c.ackedA.Store(seq)
		c.skipped.Add(1)
		c.signalLocked()
		c.mu.Unlock()
		if c.opts.onAck != nil {
			c.opts.onAck(seq)
		}
		return nil
	}
	slot := &c.ring[(seq-1)%window]
	if n := frame.HeaderSize + len(payload); cap(*slot) < n {
		*slot = make([]byte, 0, n)
	}
	*slot = frame.AppendData((*slot)[:0], payload)
	c.sent = seq
	c.sentA.Store(seq)
	c.mu.Unlock()
	c.kick()
	return nil
}

func (c *Client) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// ackWaitLocked returns a channel closed at the next change of acked or err.
func (c *Client) ackWaitLocked() chan struct{} {
	if c.ackWait == nil {
		c.ackWait = make(chan struct{})
	}
	return c.ackWait
}

func (c *Client) signalLocked() {
	if c.ackWait != nil {
		close(c.ackWait)
		c.ackWait = nil
	}
}

// Sent returns the sequence number of the last frame Send accepted: how
// many frames it accepted, when numbering starts at 1.
func (c *Client) Sent() uint64 { return c.sentA.Load() }

// Acked returns the highest sequence number up to which the gateway has
// acknowledged every frame: how many frames, counted from the first, when
// numbering starts at 1.
func (c *Client) Acked() uint64 { return c.ackedA.Load() }

// Epoch returns the epoch that names this client's numbering of frames: the
// one given with WithEpoch, or the random one Dial picked.
func (c *Client) Epoch() uint64 { return c.epoch }

// ProtocolVersion returns the protocol version the client speaks: 2, or 1
// when configured with ProtocolV1 or after falling back against a v1
// gateway. The fallback happens on the first session, so the value read
// right after Dial may still change from 2 to 1 once; it never changes back.
func (c *Client) ProtocolVersion() int { return int(c.version.Load()) }

// Stats is a snapshot of a client's counters.
type Stats struct {
	Sent   uint64 // frames accepted by Send (the last one's sequence number)
	Acked  uint64 // frames acknowledged (the highest sequence number of them)
	Resent uint64 // frame writes repeated on a new session after a disconnect
	// Skipped counts frames written but not acknowledged before a
	// disconnect that the gateway's WELCOME (v2) then reported stored: they
	// were acknowledged on resume instead of being sent again.
	Skipped    uint64
	Reconnects uint64 // sessions opened after the first
	// With a spool (WithSpool); zero without one.
	Dropped    uint64 // frames discarded unacknowledged to make room (SpoolDropOldest); those in flight may still arrive
	Damaged    uint64 // frames found damaged in the spool and skipped, never sent
	SpoolBytes int64  // size of the spool's files now
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	st := Stats{
		Sent:       c.sentA.Load(),
		Acked:      c.ackedA.Load(),
		Resent:     c.resent.Load(),
		Skipped:    c.skipped.Load(),
		Reconnects: c.reconnects.Load(),
	}
	if c.spool != nil {
		sp := c.spool.Stats()
		st.Dropped, st.Damaged, st.SpoolBytes = sp.Dropped, sp.Corrupt, sp.Bytes
	}
	return st
}

// WaitAcked blocks until at least n frames are acknowledged. It fails when
// ctx ends, or with the client's terminal error (ErrClosed after Close, or
// the fatal error in Err) if those frames can no longer be acknowledged.
func (c *Client) WaitAcked(ctx context.Context, n uint64) error {
	c.mu.Lock()
	for c.acked < n {
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return err
		}
		ch := c.ackWaitLocked()
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("station: waiting for %d acknowledged frames: %w", n, ctx.Err())
		}
		c.mu.Lock()
	}
	c.mu.Unlock()
	return nil
}

// Done is closed when the client has stopped: after Close, or after a fatal
// error (a CLOSE reason that retrying cannot fix, or an exhausted reconnect
// policy).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the client runs, ErrClosed after a clean Close, and
// otherwise the error that stopped it.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close stops accepting frames, writes what is queued, waits until the
// gateway has acknowledged every frame, half-closes the connection and waits
// for the gateway to close its side: a clean end in which nothing is lost.
// Reconnects go on meanwhile. When ctx ends first, Close drops the connection
// and reports how many frames were left unacknowledged (with a spool, they
// stay in it for the next client). Close returns the fatal error if the
// client had already stopped on one. Calling it again waits for the first
// call's outcome.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	if c.spool != nil {
		// The tail leaves once synced: sync it now rather than at the
		// next interval. A failure is the spool's to report (Send).
		c.spool.Sync()
	}
	c.kick()
	var ctxErr error
	select {
	case <-c.done:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		c.cancel()
		<-c.done
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.result == nil {
		return nil
	}
	if ctxErr != nil && errors.Is(c.result, ErrClosed) && c.spool != nil {
		return fmt.Errorf("station: close: %d frames unacknowledged stay in the spool %s: %w", c.sent-c.acked, c.opts.spoolDir, ctxErr)
	}
	if ctxErr != nil && errors.Is(c.result, ErrClosed) {
		return fmt.Errorf("station: close: %d of %d frames unacknowledged: %w", c.sent-c.acked, c.sent, ctxErr)
	}
	return c.result
}

// finish records how run ended and releases every waiter.
func (c *Client) finish(err error) {
	c.mu.Lock()
	c.result = err
	if err == nil {
		c.err = ErrClosed
	} else {
		c.err = err
	}
	c.signalLocked()
	c.mu.Unlock()
	c.cancel()
}

// run owns the connection: it runs one session at a time and, between
// them, decides whether to reconnect. It is the client's only long-lived
// goroutine; sessions add a writer that run waits for. conn is nil when a
// spool's client could not reach the gateway in Dial.
func (c *Client) run(conn net.Conn) {
	defer close(c.done)
	if c.spool != nil {
		// After finish: Send refuses by then, or fails with the spool's
		// ErrClosed, which it reports as ErrClosed.
		defer func() {
			c.reader.Close()
			if err := c.spool.Close(); err != nil {
				c.log.Error("station: closing the spool", "err", err)
			}
		}()
	}
	failures := 0
	var lastErr error = errors.New("not connected yet")
	wait := conn == nil
	hadSession := conn != nil // false until the first session of a client whose Dial could not connect
	for {
		if conn != nil {
			end := c.session(conn)
			switch {
			case c.closedClean():
				c.log.Debug("station: closed", "acked", c.ackedA.Load())
				c.finish(nil)
				return
			case c.ctx.Err() != nil:
				c.finish(ErrClosed)
				return
			}
			var ce *CloseError
			isClose := errors.As(end.err, &ce)
			// The writer ended the session before a spool's hole, and the
			// gateway closed it after its final ACK: nothing failed.
			rolled := end.rolled && !isClose
			switch {
			case end.fallback:
				// Logged once: the client stays on v1 from now on.
				c.log.Warn("station: the gateway speaks protocol v1 only (it answered HELLO with CLOSE(5)); continuing with v1, at-least-once after a crash")
				c.version.Store(1)
			case isClose && ce.Reason.Fatal(), errors.Is(end.err, ErrEpochConflict):
				c.log.Error("station: session refused", "err", end.err)
				c.finish(end.err)
				return
			case end.spoolErr != nil:
				// Not the network's: retrying would read the same file.
				c.log.Error("station: stopped: the spool cannot be read", "err", end.spoolErr)
				c.finish(end.spoolErr)
				return
			case rolled:
				c.log.Info("station: frames missing from the spool; starting a new session after them")
			default:
				c.log.Info("station: session ended, reconnecting", "err", end.err, "unacked", c.sentA.Load()-c.ackedA.Load())
				if c.opts.onDisconnect != nil {
					c.opts.onDisconnect(end.err)
				}
			}
			switch {
			case end.fallback, rolled:
			case end.progressed && !(isClose && ce.Reason == ReasonSuperseded):
				failures = 0
			default:
				// Superseded counts as a failure even after progress, so
				// that two clients of one identity back off instead of
				// taking the session from each other at the initial delay.
				failures++
			}
			lastErr = end.err
			// After a fallback or a spool's new session the next dial goes
			// at once: nothing failed.
			wait = !end.fallback && !rolled
		}
		conn = c.redial(&failures, &lastErr, wait)
		if conn == nil {
			return // finished
		}
		wait = true
		if !hadSession {
			// Dial could not connect (a spool's client): this is the
			// first session, not a reconnect.
			hadSession = true
			c.log.Info("station: connected")
			continue
		}
		c.reconnects.Add(1)
		c.log.Info("station: reconnected", "resend", c.sentA.Load()-c.ackedA.Load())
	}
}

// closedClean reports whether Close was called and every frame is
// acknowledged: the client may end.
func (c *Client) closedClean() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing && c.acked == c.sent
}

// redial dials until it has a connection, waiting the policy's back-off
// before each attempt (before the first too when wait). It returns nil
// after it finished the client: the policy gave up, or Close forced the end.
func (c *Client) redial(failures *int, lastErr *error, wait bool) net.Conn {
	p := c.opts.reconnect
	if c.spool != nil {
		// Store and forward: the frames wait in the spool, however long
		// the gateway is away.
		p.MaxAttempts = 0
	}
	for {
		if wait && (p.MaxAttempts < 0 || (p.MaxAttempts > 0 && *failures >= p.MaxAttempts)) {
			c.finish(fmt.Errorf("%w after %d attempts: %w", ErrReconnectGaveUp, *failures, *lastErr))
			return nil
		}
		if wait {
			t := time.NewTimer(p.delay(max(*failures, 1)))
		backoff:
			for {
				select {
				case <-t.C:
					break backoff
				case <-c.wake:
					// Close with nothing left to send (a spool's client
					// that never reached the gateway) needs no session.
					if c.closedClean() {
						t.Stop()
						c.finish(nil)
						return nil
					}
				case <-c.ctx.Done():
					t.Stop()
					c.finish(ErrClosed)
					return nil
				}
			}
		}
		wait = true
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.dialTimeout)
		conn, err := c.dial(ctx)
		cancel()
		if err == nil {
			return conn
		}
		if c.ctx.Err() != nil {
			c.finish(ErrClosed)
			return nil
		}
		c.log.Debug("station: reconnect failed", "err", err, "attempt", *failures+1)
		*lastErr = err
		*failures++
	}
}
