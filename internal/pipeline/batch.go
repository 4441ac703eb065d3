// Package pipeline carries data frames from sessions to a sink: the batch that
// groups them, the bounded queue that back-pressures sessions, the aggregator
// that feeds the sink, and the Sink contract itself.
package pipeline

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Frame is one data frame on its way to the sink.
type Frame struct {
	Station  string    // station identity: remote IP, or TLS identity with mTLS
	Session  string    // session id, gs-N@REMOTE_ADDR
	Seq      uint64    // v1: per-session sequence number, from 1; v2: the station's own
	Received time.Time // when the gateway read it
	// Epoch is the station's numbering in protocol v2, never 0 there; 0
	// for a v1 frame. With it the sink names the message by station,
	// epoch and Seq, so that JetStream drops a resend from any session.
	Epoch uint64
	// Acked (v2) is a floor under what is stored of this epoch: every
	// frame up to it was stored before this one was read. Resuming reads
	// it back from the stream (docs/protocol.md, "Where to resume").
	Acked uint64
	// Gap (v2) is the number of frames the station lost just before this
	// one, set on the first frame after the loss.
	Gap uint64
	// Packed (v2, stream layout "packed") says Payload holds Count frames
	// of the station, Seq to Seq+Count-1, each as a 4-byte big-endian
	// length and its bytes: one message in the stream for all of them.
	Packed bool
	Count  uint32
	// Payload is valid until the frame's batch is fully committed; a sink
	// that needs it longer must copy it.
	Payload []byte
	// Meta describes a unit read on a ground-framing link (package link).
	// It is the zero value for Meridian-protocol frames, whose stored
	// message it leaves exactly as it was.
	Meta Meta
}

// MetaKind says which header fields of Meta are set.
type MetaKind uint8

// Metadata kinds.
const (
	MetaNone   MetaKind = iota // no CCSDS header: only Link and Framing
	MetaPacket                 // APID and SeqCount are set
	MetaFrame                  // SCID, VCID, MCCount and VCCount are set
)

// Meta is what the sink needs to know about a unit of a ground framing: its
// link and framing, the CCSDS header fields that become message headers and
// a subject token, and whether its CRC was bad (stored under the "flag"
// policy). A small value without pointers beyond two constant strings, so
// that carrying it costs no allocation.
type Meta struct {
	Link    string // the configured link name; "" for a Meridian frame
	Framing string // the framing's name; "" for a Meridian frame
	Kind    MetaKind
	CRCBad  bool
	APID    uint16 // space packet
	Seq     uint16 // space packet sequence count, 14 bits
	SCID    uint16 // transfer frame
	VCID    uint8
	MCCount uint8
	VCCount uint8
}

// Owner learns when a batch it produced is fully committed.
type Owner interface {
	// Committed is called exactly once per batch, from whichever goroutine
	// committed its last frame. It must not block.
	Committed(b *Batch)
}

// Frames is the number of station frames f carries: Count when packed, else 1.
func (f *Frame) Frames() int {
	if f.Packed {
		return int(f.Count)
	}
	return 1
}

// LastSeq is the sequence number of the last station frame f carries.
func (f *Frame) LastSeq() uint64 { return f.Seq + uint64(f.Frames()) - 1 }

// PackedRecord is the size a frame of n bytes takes in a packed payload.
func PackedRecord(n int) int { return 4 + n }

// Batch is a run of consecutive frames from one session. Batches come from
// a pool so that the hot path allocates nothing per frame: payloads live in
// one slab owned by the batch.
type Batch struct {
	Frames []Frame
	// Bytes is the sum of the payload sizes.
	Bytes int
	// count is the number of station frames: len(Frames), plus what packed
	// frames carry beyond one each.
	count int

	owner   Owner
	agg     *Aggregator // counts commits; set by Put
	class   int         // index into slabClasses
	slab    []byte
	pending atomic.Int64
}

// Slab size classes. A batch gets the smallest slab that holds what its
// session has buffered, so that a station trickling small frames does not
// pin a large slab for every frame waiting on the store. Frames larger than
// the largest class travel in a batch of their own with a dedicated buffer.
var slabClasses = [...]int{4 << 10, 16 << 10, 64 << 10, 256 << 10}

// MaxSlab is the largest pooled slab.
const MaxSlab = 256 << 10

var batchPools [len(slabClasses)]sync.Pool

func init() {
	for i, size := range slabClasses {
		batchPools[i].New = func() any {
			return &Batch{slab: make([]byte, 0, size), class: i}
		}
	}
}

// NewBatch takes an empty batch from the pool with room for at least hint
// payload bytes (up to MaxSlab).
func NewBatch(owner Owner, hint int) *Batch {
	class := len(slabClasses) - 1
	for i, size := range slabClasses {
		if hint <= size {
			class = i
			break
		}
	}
	b := batchPools[class].Get().(*Batch)
	b.owner = owner
	return b
}

// Release returns b to the pool. Only the owner calls it, once Committed has
// told it the batch is done (or when the batch was never queued).
func (b *Batch) Release() {
	clear(b.Frames) // drop payload and string references
	b.Frames = b.Frames[:0]
	b.Bytes = 0
	b.count = 0
	b.owner = nil
	b.agg = nil
	if cap(b.slab) != slabClasses[b.class] {
		// It carried one oversized frame: drop that buffer.
		b.slab = make([]byte, 0, slabClasses[b.class])
	}
	b.slab = b.slab[:0]
	batchPools[b.class].Put(b)
}

// Room reports how many payload bytes still fit in the slab.
func (b *Batch) Room() int { return cap(b.slab) - len(b.slab) }

// Add copies payload into the batch. The caller checks Room first, or adds
// one oversized payload to an empty batch, which then owns a new buffer.
func (b *Batch) Add(f Frame) {
	if len(f.Payload) > b.Room() {
		if len(b.Frames) != 0 {
			panic("pipeline: payload does not fit the batch")
		}
		b.slab = make([]byte, 0, len(f.Payload))
	}
	start := len(b.slab)
	b.slab = append(b.slab, f.Payload...)
	f.Payload = b.slab[start:len(b.slab):len(b.slab)]
	b.Frames = append(b.Frames, f)
	b.Bytes += len(f.Payload)
	b.count += f.Frames()
}

// AddPacked appends one station frame to the batch's packed frame, which
// it starts when the batch is empty (with f's metadata, Seq and Gap: the
// first frame's). A packed batch holds that one frame only. The caller
// checks Room for PackedRecord(len(f.Payload)) first, or adds one
// oversized frame to an empty batch, which then owns a new buffer.
func (b *Batch) AddPacked(f Frame) {
	payload := f.Payload
	need := PackedRecord(len(payload))
	if len(b.Frames) == 0 {
		if need > b.Room() {
			b.slab = make([]byte, 0, need)
		}
		f.Packed, f.Count, f.Payload = true, 0, nil
		b.Frames = append(b.Frames, f)
	} else if need > b.Room() {
		panic("pipeline: packed frame does not fit the batch")
	}
	pf := &b.Frames[0]
	start := len(b.slab) - len(pf.Payload)
	b.slab = binary.BigEndian.AppendUint32(b.slab, uint32(len(payload)))
	b.slab = append(b.slab, payload...)
	pf.Payload = b.slab[start:len(b.slab):len(b.slab)]
	pf.Count++
	b.Bytes += need
	b.count++
}

// Count is the number of station frames in the batch; Len counts the
// messages they make (a packed frame is one).
func (b *Batch) Count() int { return b.count }

// footprint is the memory the batch holds for its payloads: its slab.
func (b *Batch) footprint() int { return cap(b.slab) }

// Len is the number of frames in the batch.
func (b *Batch) Len() int { return len(b.Frames) }

// LastSeq is the sequence number of the batch's last station frame.
func (b *Batch) LastSeq() uint64 {
	if len(b.Frames) == 0 {
		return 0
	}
	return b.Frames[len(b.Frames)-1].LastSeq()
}

// arm prepares the batch to count commits; the queue calls it on Put.
func (b *Batch) arm(a *Aggregator) {
	b.agg = a
	b.pending.Store(int64(len(b.Frames)))
}

// Commit marks n frames of b as accepted by the sink. Frames may be committed
// in any order, from any goroutine, each exactly once. The call that commits
// the last one hands the batch back to its owner, after which the sink must
// not touch the batch again.
func (b *Batch) Commit(n int) {
	left := b.pending.Add(-int64(n))
	if left == 0 {
		if b.agg != nil {
			b.agg.committed.Add(uint64(b.count))
		}
		b.owner.Committed(b)
	} else if left < 0 {
		panic("pipeline: batch committed more often than it has frames")
	}
}
