package station

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"

	"github.com/meridian-telemetry/meridian/internal/spool"
)

// Defaults of SpoolOptions.
const (
	DefaultSpoolSync     = spool.DefaultSyncInterval
	DefaultSpoolMaxBytes = spool.DefaultMaxBytes
)

// SpoolFull says what Send does when the spool holds its MaxBytes.
type SpoolFull uint8

const (
	// SpoolBlock makes Send wait until the gateway's ACKs free space, or
	// its context ends. The default.
	SpoolBlock SpoolFull = iota
	// SpoolDropOldest discards the oldest spool files to make room, with
	// the frames in them not yet acknowledged: counted in Stats.Dropped and
	// logged. The client reports the frames it can no longer send to the
	// gateway as a gap: the next session's HELLO starts after them, so
	// that the stream marks the first frame after the gap with
	// Meridian-Gap. Frames that were already in flight on the connection
	// when their file went may still be stored (the client sends them
	// from memory), so the gap can be smaller than Dropped, never larger.
	SpoolDropOldest
)

func (f SpoolFull) String() string {
	switch f {
	case SpoolBlock:
		return "block"
	case SpoolDropOldest:
		return "drop-oldest"
	}
	return fmt.Sprintf("spoolfull(%d)", uint8(f))
}

// SpoolOptions configure WithSpool. The zero value means the defaults.
type SpoolOptions struct {
	// Sync is the group-commit interval: Send returns once the frame is
	// written to the spool file (it survives a crash of the process), and
	// an fdatasync every Sync makes what was written survive a power
	// failure too. 0 means DefaultSpoolSync (100 ms). A frame leaves for
	// the gateway only once it is synced, so Sync adds up to its length to
	// each frame's latency.
	Sync time.Duration
	// SyncAlways makes Send return only once an fdatasync covered its
	// frame (concurrent Sends share one): nothing Send returned for is lost
	// in a power failure.
	SyncAlways bool
	// MaxBytes bounds the spool's files; 0 means DefaultSpoolMaxBytes
	// (1 GiB).
	MaxBytes int64
	// Full is the policy when the spool holds MaxBytes.
	Full SpoolFull
	// SegmentBytes is the size of one spool file; 0 means 64 MiB, at most a
	// quarter of MaxBytes.
	SegmentBytes int64
}

// WithSpool keeps every frame in a spool directory on disk from Send until
// the gateway acknowledges it, so that neither a crash of the process nor a
// backhaul outage of any length loses a frame (store-and-forward). The
// spool holds the client's epoch and numbering: a client opened again on
// the same directory (after a crash, a restart, a reboot) resumes them,
// says HELLO with the oldest frame it still holds, and sends, exactly once,
// what the stream does not have yet. It implies protocol v2
// (ProtocolV2Only), and excludes WithEpoch and WithFirstSeq.
//
// With a spool, Send returns once the frame is in the spool (per Sync), and
// blocks only when the spool is full (SpoolBlock); the window bounds only
// the frames in flight on the connection. Dial succeeds even when the
// gateway cannot be reached: the client keeps trying in the background
// (the reconnect policy's MaxAttempts is ignored), and frames wait in the
// spool. Close waits, within its context, for the gateway to acknowledge
// what is spooled; what it did not acknowledge stays in the spool for the
// next run. The directory is locked by one client at a time: a second one
// gets ErrSpoolLocked. The format is in docs/station.md.
func WithSpool(dir string, o SpoolOptions) Option {
	return func(opts *options) {
		switch {
		case dir == "":
			opts.errs = append(opts.errs, fmt.Errorf("%w: spool directory is empty", ErrInvalidOption))
			return
		case o.Sync < 0:
			opts.errs = append(opts.errs, fmt.Errorf("%w: spool sync interval %s is negative", ErrInvalidOption, o.Sync))
			return
		case o.MaxBytes < 0:
			opts.errs = append(opts.errs, fmt.Errorf("%w: spool max bytes %d is negative", ErrInvalidOption, o.MaxBytes))
			return
		case o.Full != SpoolBlock && o.Full != SpoolDropOldest:
			opts.errs = append(opts.errs, fmt.Errorf("%w: spool full policy %s", ErrInvalidOption, o.Full))
			return
		case o.SegmentBytes != 0 && o.SegmentBytes < spool.MinSegmentBytes:
			opts.errs = append(opts.errs, fmt.Errorf("%w: spool segment of %d bytes is below %d", ErrInvalidOption, o.SegmentBytes, spool.MinSegmentBytes))
			return
		}
		opts.spoolDir = dir
		opts.spool = o
	}
}

// sendSpooled is Send with a spool: the frame is the spool's once Append
// returned; the writer loads it from there once it is synced.
func (c *Client) sendSpooled(ctx context.Context, payload []byte) error {
	c.mu.Lock()
	err, closing := c.err, c.closing
	c.mu.Unlock()
	switch {
	case err != nil:
		return err
	case closing:
		return ErrClosed
	}
	seq, err := c.spool.Append(ctx, payload)
	switch {
	case errors.Is(err, spool.ErrClosed):
		return ErrClosed
	case err != nil:
		return fmt.Errorf("station: %w", err)
	}
	c.mu.Lock()
	if seq > c.sent {
		c.sent = seq
		c.sentA.Store(seq)
	}
	c.mu.Unlock()
	return nil
}

// load copies synced frames from the spool into the free slots of the
// ring, up to room of them, and returns how many. It stops before a frame
// that does not follow the last one loaded, or at the end of what is synced
// when the reader passed frames it did not return: those frames are not in
// the spool (dropped, damaged, lost at its end), and it records them as the
// hole that the next session starts after. Only the session's writer calls it: the slots
// after loaded are not in flight, so they are written without the lock.
func (c *Client) load(room uint64) (int, error) {
	window := uint64(len(c.ring))
	c.mu.Lock()
	loaded := c.loaded
	c.mu.Unlock()
	n := 0
	var holeFrom, holeTo uint64
	for uint64(n) < room {
		rec, ok, err := c.reader.Next()
		if err != nil && n > 0 {
			break // send what was loaded; the next call meets it again
		}
		if err != nil {
			return 0, fmt.Errorf("station: reading the spool: %w", err)
		}
		if !ok {
			// The reader passed frames it did not return (the end of the
			// spool lost, a number burnt by a cut): a hole at the end.
			if t := c.reader.Through(); t > loaded {
				holeFrom, holeTo = loaded+1, t+1
			}
			break
		}
		if rec.Seq <= loaded {
			continue // stored already, said the WELCOME
		}
		if rec.Seq != loaded+1 {
			c.reader.Unread()
			holeFrom, holeTo = loaded+1, rec.Seq
			break
		}
		slot := &c.ring[(rec.Seq-1)%window]
		if k := frame.HeaderSize + len(rec.Payload); cap(*slot) < k {
			*slot = make([]byte, 0, k)
		}
		*slot = frame.AppendData((*slot)[:0], rec.Payload)
		loaded = rec.Seq
		n++
	}
	c.mu.Lock()
	c.loaded = loaded
	if loaded > c.sent {
		// Synced before the Send that appended it returned.
		c.sent = loaded
		c.sentA.Store(loaded)
	}
	if holeTo != 0 && c.holeTo == 0 {
		c.holeFrom, c.holeTo = holeFrom, holeTo
		c.log.Warn("station: frames missing from the spool (dropped when it was full, or damaged): the gateway will be told of the gap",
			"from", holeFrom, "to", holeTo-1)
	}
	c.mu.Unlock()
	return n, nil
}

// skipHoleLocked moves past the spool's hole once every frame before it is
// acknowledged: those frames count as done, and the session about to begin
// says HELLO with the first frame after them.
func (c *Client) skipHoleLocked() {
	if c.holeTo == 0 || c.acked+1 < c.holeFrom {
		return
	}
	// A WELCOME may have gone past the hole already (the stream holds
	// frames that an earlier process sent before they were damaged here).
	to := max(c.holeTo-1, c.acked)
	c.holeFrom, c.holeTo = 0, 0
	c.acked, c.loaded, c.sent = to, to, max(c.sent, to)
	c.sentA.Store(c.sent)
	c.written, c.maxWritten = to, max(c.maxWritten, to)
	c.ackedA.Store(to)
	c.spool.Ack(to)
	c.signalLocked()
}
