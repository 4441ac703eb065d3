package link

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/sequence"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
)

// MinBuffer is how far a connection's read buffer grows at least, when
// data keeps filling it. A decoder needs only MaxUnit bytes, but reading
// 1,119-byte CADUs one read at a time would cost a system call per unit.
const MinBuffer = 64 << 10

// startBuffer is a connection's read buffer before anything arrived.
const startBuffer = 4 << 10

// End says why a connection's reader stopped. The values are stable log
// words.
type End uint8

// Ends of a connection.
const (
	EndEOF        End = iota // the equipment closed the connection
	EndFatal                 // the decoder cannot find another unit boundary
	EndCRC                   // a bad CRC under the disconnect policy
	EndReadError             // the connection failed
	EndShutdown              // the gateway is stopping: the drain ended, or forced
	EndSinkFailed            // the queue refused a batch: the sink failed
)

func (e End) String() string {
	switch e {
	case EndEOF:
		return "equipment_closed"
	case EndFatal:
		return "unframeable"
	case EndCRC:
		return "crc_disconnect"
	case EndReadError:
		return "read_error"
	case EndShutdown:
		return "shutdown"
	case EndSinkFailed:
		return "sink_failed"
	}
	return "end"
}

// Queue is where a connection puts its batches: the aggregator.
type Queue interface {
	Put(ctx context.Context, b *pipeline.Batch) error
	BatchLimit() int
}

// Info describes a connection for logs, /stations and stored frames.
type Info struct {
	ID          string // session id, gs-N@REMOTE_ADDR: Meridian-Session
	Station     string // identity: remote IP or TLS identity, or the dial link's name
	RemoteAddr  string
	TLSIdentity string
}

// Stats is a snapshot of a connection's counters.
type Stats struct {
	Since     time.Time
	Frames    uint64    // units stored (queued), flagged ones included
	Bytes     uint64    // their bytes
	Committed uint64    // units the sink has committed (nobody is told)
	LastFrame time.Time // zero before the first
	Quality   Quality
}

// goOn is account's "the connection goes on".
const goOn End = 255

// Conn reads one equipment connection. The gateway never writes to the
// equipment: it stores what arrives, in order, and nothing is acknowledged.
// Create it with NewConn and call Run once.
type Conn struct {
	info   Info
	cfg    Config
	nc     net.Conn
	dec    framing.Decoder
	queue  Queue
	log    *slog.Logger
	totals *Counters // the link's, shared with its other connections
	start  time.Time

	// Reader state, owned by Run.
	buf      []byte
	batch    *pipeline.Batch
	seq      uint64 // Meridian-Seq of the last unit added
	t        tally
	packets  *sequence.Packets
	frames   *sequence.Frames
	lostAt   uint64    // Discarded total when the sync-loss episode began
	now      time.Time // when the current read returned: its units' receive time
	hint     int       // bytes of the current read not yet decoded, when it returned
	unqueued uint64    // units read but never queued; final after Run

	draining atomic.Bool
	drainAt  atomic.Int64 // unix nanos; set before draining

	own       Counters
	stored    atomic.Uint64
	storedB   atomic.Uint64
	lastFrame atomic.Int64
	committed atomic.Uint64
}

// NewConn prepares the reader of nc for the link cfg; totals, which may be
// nil, receives the link's totals. The decoder is built here: cfg must be
// valid (Config.Validate).
func NewConn(nc net.Conn, info Info, cfg Config, q Queue, log *slog.Logger, totals *Counters) (*Conn, error) {
	dec, err := cfg.NewDecoder()
	if err != nil {
		return nil, err
	}
	if totals == nil {
		totals = new(Counters)
	}
	c := &Conn{
		info: info, cfg: cfg, nc: nc, dec: dec, queue: q, totals: totals, start: time.Now(),
		log: log.With("link", cfg.Name, "session", info.ID, "station", info.Station),
	}
	switch cfg.Framing {
	case framing.NameCCSDSPacket:
		c.packets = new(sequence.Packets)
	case framing.NameCCSDSFrame:
		c.frames = new(sequence.Frames)
	}
	return c, nil
}

// Info returns the connection's identity.
func (c *Conn) Info() Info { return c.info }

// Stats returns the connection's counters; safe from any goroutine.
func (c *Conn) Stats() Stats {
	st := Stats{Since: c.start, Frames: c.stored.Load(), Bytes: c.storedB.Load(), Committed: c.committed.Load(), Quality: c.own.Quality()}
	if t := c.lastFrame.Load(); t != 0 {
		st.LastFrame = time.Unix(0, t)
	}
	return st
}

// Unqueued is the number of units read but never handed to the queue (a
// Put refused). Final once Run has returned; the gateway counts them as
// abandoned.
func (c *Conn) Unqueued() uint64 { return c.unqueued }

// Drain starts the end: the reader goes on reading until deadline, then
// stops. Safe from any goroutine, also before Run; the first call's
// deadline holds.
func (c *Conn) Drain(deadline time.Time) {
	if !c.drainAt.CompareAndSwap(0, deadline.UnixNano()) {
		return
	}
	c.draining.Store(true)
	// Wake a blocked Read so that it takes the drain deadline.
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
}

// Run reads until the equipment closes, the stream cannot be framed, the
// policy closes it, the drain ends, or ctx (the forced stop) ends, and
// returns why. It closes the connection before it returns and leaves no
// goroutine behind. Every unit read has been queued when it returns, unless
// the queue refused it (Unqueued).
func (c *Conn) Run(ctx context.Context) End {
	stop := context.AfterFunc(ctx, func() { c.nc.Close() })
	defer stop()
	c.totals.connected.Add(1)
	defer c.totals.connected.Add(-1)
	c.log.Info("link connection started", "framing", c.cfg.Framing, "remote", c.info.RemoteAddr)

	end, err := c.loop(ctx)
	if ctx.Err() != nil {
		end = EndShutdown
	}
	c.nc.Close()
	c.flushCounts()
	st := c.Stats()
	attrs := []any{"end", end.String(), "frames", st.Frames, "bytes_read", st.Quality.Bytes,
		"bad", st.Quality.Bad, "discarded_bytes", st.Quality.Discarded}
	if err != nil && end != EndEOF {
		attrs = append(attrs, "err", err)
	}
	c.log.Info("link connection ended", attrs...)
	return end
}

func (c *Conn) loop(ctx context.Context) (End, error) {
	// The buffer starts small and grows only with what arrives: by
	// doubling after a read that filled it, up to the largest unit the
	// framing allows (or MinBuffer). A connection that sends nothing, or a
	// header announcing a large unit and nothing more, costs the small one.
	full := max(c.dec.MaxUnit(), MinBuffer)
	c.buf = make([]byte, min(full, startBuffer))
	start, end := 0, 0
	filled := false // the last read filled all the room it had
	for {
		if start == end {
			start, end = 0, 0
		} else if len(c.buf)-end < min(c.dec.MaxUnit(), len(c.buf)) || end == len(c.buf) {
			// What is left is less than one unit (the decoders make
			// progress on a full MaxUnit): move it to the front.
			end = copy(c.buf, c.buf[start:end])
			start = 0
		}
		if filled && len(c.buf) < full {
			nb := make([]byte, min(full, 2*len(c.buf)))
			end = copy(nb, c.buf[start:end])
			start, c.buf = 0, nb
		}
		room := len(c.buf) - end
		n, rerr := c.read(end)
		filled = n == room
		end += n
		c.t[cBytes] += uint64(n)
		// Decode everything that arrived before looking at the error: the
		// bytes of the read that also reported EOF count.
		c.now, c.hint = time.Now(), end-start
		stopWith := goOn
		for stopWith == goOn {
			r := c.dec.Decode(c.buf[start:end])
			if r.More() {
				break
			}
			start += r.N
			stopWith = c.account(ctx, r, c.buf[start-r.N:])
		}
		if qerr := c.flushBatch(ctx); qerr != nil {
			c.abandon(start, end)
			return EndSinkFailed, qerr
		}
		switch stopWith {
		case goOn:
		case EndFatal:
			c.finish(ctx, start, end) // what is left is discarded
			return stopWith, c.flushBatch(ctx)
		case EndCRC:
			c.t[cDiscarded] += uint64(end - start) // read, never framed
			return stopWith, nil
		default: // EndSinkFailed: the queue refused a batch
			c.abandon(start, end)
			return stopWith, nil
		}
		c.flushCounts()
		if rerr == nil {
			continue
		}
		if errors.Is(rerr, os.ErrDeadlineExceeded) && c.draining.Load() && time.Now().UnixNano() >= c.drainAt.Load() {
			c.finish(ctx, start, end) // a unit in progress is cut short
			if qerr := c.flushBatch(ctx); qerr != nil {
				return EndSinkFailed, qerr
			}
			return EndShutdown, nil
		}
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			continue // woken early by Drain: recompute the deadline
		}
		if errors.Is(rerr, io.EOF) {
			c.finish(ctx, start, end)
			if qerr := c.flushBatch(ctx); qerr != nil {
				return EndSinkFailed, qerr
			}
			return EndEOF, nil
		}
		c.abandon(start, end) // a forced stop, a reset: what is left is never stored
		return EndReadError, rerr
	}
}

// abandon accounts for what is left in the buffer when the connection ends
// without storing it (the queue refused a batch, a forced stop, a read
// error): whole units are counted as read and never queued (Unqueued, which
// a forced stop reports as abandoned), the rest as discarded bytes, so that
// every byte read stays accounted for.
func (c *Conn) abandon(start, end int) {
	for start < end {
		r := c.dec.Decode(c.buf[start:end])
		if r.N == 0 {
			break // more needed, or a fatal header: the rest is discarded
		}
		start += r.N
		c.t[cDiscarded] += uint64(r.Discarded)
		switch {
		case r.Reject != framing.RejectNone:
			c.t[cBad]++
			c.t[rejectCounter(r.Reject)]++
			if r.Reject == framing.RejectCRC && r.Unit != nil && c.cfg.CRC == PolicyFlag {
				c.unqueued++
			}
		case r.Unit != nil:
			c.t[cGood]++
			c.unqueued++
		}
	}
	c.t[cDiscarded] += uint64(end - start)
}

// read reads into c.buf[at:] within the drain deadline, if any. No other
// deadline applies: equipment may be silent for hours between passes, and a
// dead peer is found by TCP keep-alive (on by default in Go).
func (c *Conn) read(at int) (int, error) {
	for {
		d := c.deadline()
		_ = c.nc.SetReadDeadline(d)
		// Drain may have poked the deadline between deadline() and the set
		// above; if so d is stale.
		if !d.Equal(c.deadline()) {
			continue
		}
		return c.nc.Read(c.buf[at:])
	}
}

// deadline is the drain deadline while draining, else none.
func (c *Conn) deadline() time.Time {
	if c.draining.Load() {
		return time.Unix(0, c.drainAt.Load())
	}
	return time.Time{}
}

// finish hands the decoder what is left at the end of the stream.
func (c *Conn) finish(ctx context.Context, start, end int) {
	for {
		r := c.dec.Finish(c.buf[start:end])
		if r.N == 0 {
			return
		}
		start += r.N
		// At the end nothing stops the accounting: a fatal or CRC outcome
		// changes nothing that is left to do.
		c.account(ctx, r, c.buf[start-r.N:])
	}
}

// account counts one outcome, stores its unit per the CRC policy, and says
// whether the connection must end (goOn: it goes on). at is the input from
// the outcome's first byte, for the log of a fatal header.
func (c *Conn) account(ctx context.Context, r framing.Result, at []byte) End {
	c.t[cDiscarded] += uint64(r.Discarded)
	if r.SyncLost {
		c.t[cSyncLoss]++
		c.lostAt = c.own.v[cDiscarded].Load() + c.t[cDiscarded] - uint64(r.Discarded)
		c.log.Warn("sync lost; searching for the next marker", "framing", c.cfg.Framing)
	}
	if r.Fatal {
		c.t[cBad]++
		c.t[rejectCounter(r.Reject)]++
		c.log.Error("stream cannot be framed; closing the connection", "reject", r.Reject.String(),
			"header", hex.EncodeToString(at[:min(len(at), 16)]))
		return EndFatal
	}
	if r.Reject != framing.RejectNone {
		c.t[cBad]++
		c.t[rejectCounter(r.Reject)]++
		if r.Reject != framing.RejectCRC || r.Unit == nil {
			return goOn
		}
		switch c.cfg.CRC {
		case PolicyFlag:
			c.t[cFlagged]++
			if err := c.store(ctx, r); err != nil {
				return EndSinkFailed
			}
		case PolicyDisconnect:
			c.log.Warn("bad CRC; closing the connection (crc-policy disconnect)")
			return EndCRC
		}
		return goOn
	}
	if r.Unit == nil {
		return goOn
	}
	c.t[cGood]++
	if r.SyncRegained {
		c.t[cSyncBack]++
		lost := c.own.v[cDiscarded].Load() + c.t[cDiscarded] - c.lostAt
		c.log.Info("sync regained", "discarded_bytes", lost)
	}
	c.sequence(r.Meta)
	if err := c.store(ctx, r); err != nil {
		return EndSinkFailed
	}
	return goOn
}

// sequence checks the CCSDS counters of a good unit.
func (c *Conn) sequence(m framing.Meta) {
	switch {
	case c.packets != nil && m.Kind == framing.MetaPacket:
		s := c.packets.Observe(m.Packet.APID, m.Packet.SeqCount)
		c.t[cGaps] += uint64(s.Missing)
		if s.Repeat {
			c.t[cRepeats]++
		}
	case c.frames != nil && m.Kind == framing.MetaFrame:
		s := c.frames.Observe(m.Frame.SCID, m.Frame.VCID, m.Frame.MCCount, m.Frame.VCCount)
		c.t[cGaps] += uint64(s.VC.Missing)
		c.t[cMCGaps] += uint64(s.MC.Missing)
		if s.VC.Repeat {
			c.t[cRepeats]++
		}
	}
}

// store copies the unit into the current batch, queueing the batch first
// when it is full.
func (c *Conn) store(ctx context.Context, r framing.Result) error {
	if c.batch != nil && (c.batch.Room() < len(r.Unit) || c.batch.Len() >= c.queue.BatchLimit()) {
		if err := c.flushBatch(ctx); err != nil {
			c.unqueued++ // this unit too was read and never queued
			return err
		}
	}
	if c.batch == nil {
		// What this read brought bounds what the batch can take from it.
		c.batch = pipeline.NewBatch(c, len(r.Unit)+c.hint)
	}
	c.seq++
	c.batch.Add(pipeline.Frame{
		Station:  c.info.Station,
		Session:  c.info.ID,
		Seq:      c.seq,
		Received: c.now,
		Payload:  r.Unit,
		Meta:     c.meta(r),
	})
	c.t[cStored]++
	return nil
}

func (c *Conn) meta(r framing.Result) pipeline.Meta {
	m := pipeline.Meta{Link: c.cfg.Name, Framing: c.cfg.Framing, CRCBad: r.Reject == framing.RejectCRC}
	switch r.Meta.Kind {
	case framing.MetaPacket:
		m.Kind, m.APID, m.Seq = pipeline.MetaPacket, r.Meta.Packet.APID, r.Meta.Packet.SeqCount
	case framing.MetaFrame:
		h := r.Meta.Frame
		m.Kind, m.SCID, m.VCID, m.MCCount, m.VCCount = pipeline.MetaFrame, h.SCID, h.VCID, h.MCCount, h.VCCount
	}
	return m
}

// flushBatch queues the current batch, blocking while the queue is full.
func (c *Conn) flushBatch(ctx context.Context) error {
	b := c.batch
	if b == nil {
		return nil
	}
	c.batch = nil
	frames, bytes, last := b.Len(), b.Bytes, b.Frames[b.Len()-1].Received
	if err := c.queue.Put(ctx, b); err != nil {
		c.unqueued += uint64(frames)
		// Counted as stored by store, in this same read's tally (a batch
		// never outlives the read that filled it): take them back.
		c.t[cStored] -= uint64(frames)
		b.Release()
		return err
	}
	// b may be committed and recycled by now: use the copies.
	c.stored.Add(uint64(frames))
	c.storedB.Add(uint64(bytes))
	c.lastFrame.Store(last.UnixNano())
	return nil
}

// flushCounts publishes the reader's counts to the connection's and the
// link's counters.
func (c *Conn) flushCounts() {
	c.own.add(&c.t)
	c.totals.add(&c.t)
	c.t = tally{}
}

// Committed is called once the sink has committed every unit of b. Nobody
// is acknowledged: the units are counted and the batch goes back to its
// pool.
func (c *Conn) Committed(b *pipeline.Batch) {
	c.committed.Add(uint64(b.Len()))
	b.Release()
}
