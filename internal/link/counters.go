package link

import (
	"sync/atomic"

	"github.com/meridian-telemetry/meridian/internal/framing"
)

// Quality is a snapshot of a link's or a connection's counters
// (docs/framing.md, section 8). Every byte read is in Bytes, and Bytes is
// the wire length of the units plus Discarded.
type Quality struct {
	Bytes     uint64 `json:"bytes_read"`       // bytes read from the equipment
	Good      uint64 `json:"good"`             // good units
	Bad       uint64 `json:"bad"`              // rejected units, of every kind below
	CRC       uint64 `json:"crc"`              // bad CRC (FECF, packet CRC, length-field CRC)
	Oversize  uint64 `json:"oversize"`         // announced length above the maximum
	Undersize uint64 `json:"undersize"`        // announced length too small for the unit's header or CRC
	Short     uint64 `json:"short"`            // unit cut short: EOF inside it, or bytes lost behind a sync marker
	Version   uint64 `json:"version"`          // CCSDS version field not the framing's
	Flagged   uint64 `json:"flagged"`          // bad-CRC units stored with Meridian-Crc: bad (policy flag)
	Stored    uint64 `json:"stored"`           // units handed to the queue
	Discarded uint64 `json:"discarded_bytes"`  // bytes in no unit
	SyncLoss  uint64 `json:"sync_losses"`      // sync-loss episodes
	SyncBack  uint64 `json:"sync_regained"`    // sync regained (episodes ended by a good unit)
	Gaps      uint64 `json:"sequence_gaps"`    // units missing by the CCSDS counters: packet count per APID, VC count per VC
	Repeats   uint64 `json:"sequence_repeats"` // the same count twice in a row
	MCGaps    uint64 `json:"mc_gaps"`          // transfer frames missing by the master channel count
}

// Rejected returns the count of one rejection kind.
func (q Quality) Rejected(r framing.Reject) uint64 {
	switch r {
	case framing.RejectCRC:
		return q.CRC
	case framing.RejectOversize:
		return q.Oversize
	case framing.RejectUndersize:
		return q.Undersize
	case framing.RejectShort:
		return q.Short
	case framing.RejectVersion:
		return q.Version
	}
	return 0
}

// Rejects lists the rejection kinds, the bounded values of the reason label.
var Rejects = []framing.Reject{framing.RejectCRC, framing.RejectOversize, framing.RejectUndersize, framing.RejectShort, framing.RejectVersion}

// counter indexes the counters; the order is Quality's.
type counter int

const (
	cBytes counter = iota
	cGood
	cBad
	cCRC
	cOversize
	cUndersize
	cShort
	cVersion
	cFlagged
	cStored
	cDiscarded
	cSyncLoss
	cSyncBack
	cGaps
	cRepeats
	cMCGaps
	nCounters
)

func rejectCounter(r framing.Reject) counter {
	switch r {
	case framing.RejectCRC:
		return cCRC
	case framing.RejectOversize:
		return cOversize
	case framing.RejectUndersize:
		return cUndersize
	case framing.RejectShort:
		return cShort
	}
	return cVersion
}

// tally is a reader's counts since its last flush: plain integers, owned by
// the reader, so that counting a unit is no atomic operation.
type tally [nCounters]uint64

// Counters are counters safe to read from any goroutine. A link's totals
// are one Counters shared by its connections, each of which adds to it once
// per read, not per unit.
type Counters struct {
	v         [nCounters]atomic.Uint64
	connected atomic.Int64 // connections open now
}

func (c *Counters) add(t *tally) {
	for i, n := range t {
		if n != 0 {
			c.v[i].Add(n)
		}
	}
}

// Connected is the number of connections open on the link now.
func (c *Counters) Connected() int64 { return c.connected.Load() }

// Quality returns a snapshot. Counters move independently, so a snapshot
// taken while a reader flushes may hold part of one read's counts.
func (c *Counters) Quality() Quality {
	var v [nCounters]uint64
	for i := range v {
		v[i] = c.v[i].Load()
	}
	return Quality{
		Bytes: v[cBytes], Good: v[cGood], Bad: v[cBad], CRC: v[cCRC], Oversize: v[cOversize],
		Undersize: v[cUndersize], Short: v[cShort], Version: v[cVersion], Flagged: v[cFlagged],
		Stored: v[cStored], Discarded: v[cDiscarded], SyncLoss: v[cSyncLoss], SyncBack: v[cSyncBack],
		Gaps: v[cGaps], Repeats: v[cRepeats], MCGaps: v[cMCGaps],
	}
}
