// Package lengthfield is the generic length-field decoder ("length-field")
// that Netty (LengthFieldBasedFrameDecoder), Yamcs (GenericPacketInputStream)
// and OpenC3 COSMOS (LengthProtocol) all offer, with an optional sync marker
// in front and an optional trailing CRC-16-CCITT.
//
// All offsets and lengths count from the first byte of the unit, which is the
// first byte of the sync marker when there is one:
//
//	total = Offset + Size + value×Scale + Adjustment
//
// where value is the unsigned Size-byte length field at Offset. With Scale 1
// this is exactly Netty's frameLength = lengthFieldOffset +
// lengthFieldLength + value + lengthAdjustment. The stored unit is the
// total bytes minus the first Strip (Netty's initialBytesToStrip, COSMOS'
// discard leading bytes). docs/framing.md maps each Netty, Yamcs and COSMOS
// setting onto these.
package lengthfield

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("lengthfield: invalid configuration")

// Bounds on the configuration.
const (
	MaxSize   = 4        // length field, bytes
	MaxScale  = 16       // bytes per count
	MaxLength = 16 << 20 // largest Max allowed: 16 MiB
	// DefaultMax is the default bound on a unit's total length.
	DefaultMax = 65536 + 4
	crcSize    = 2
)

// Config configures a "length-field" decoder. Start from DefaultConfig.
type Config struct {
	// Sync is an optional marker in front of every unit, 0 to 8 bytes.
	// With one, the decoder searches for it and resynchronises after bad
	// input, as the ccsds-frame decoder does; without, a bad length is
	// Fatal.
	Sync []byte
	// Offset is where the length field starts, from the first byte of the
	// unit (the sync marker's first byte if any). It must not be inside the
	// sync marker.
	Offset int
	// Size is the length field's size, 1 to 4 bytes.
	Size int
	// LittleEndian reads the field little-endian; the default is
	// big-endian (network order).
	LittleEndian bool
	// Scale is how many bytes one count of the field stands for (COSMOS'
	// length bytes per count), 1 to 16. Default 1.
	Scale int
	// Adjustment is added to compute the total (Netty's lengthAdjustment).
	Adjustment int
	// Strip is how many bytes at the front of the unit are not stored, 0 to
	// Offset+Size.
	Strip int
	// Max bounds the total length of a unit, sync marker included. It is the
	// caller's buffer size (MaxUnit). Default DefaultMax, at most MaxLength.
	Max int
	// CRC checks a CRC-16-CCITT (poly 0x1021, init 0xFFFF), carried
	// big-endian in the unit's last two bytes, over the unit after the sync
	// marker and before those two bytes. A stored unit keeps them.
	CRC bool
}

// DefaultConfig returns the defaults: no sync, a 4-byte big-endian length
// at offset 0 counting the bytes after it (Meridian's own u32 prefix),
// Scale 1, nothing stripped, Max DefaultMax, no CRC.
func DefaultConfig() Config {
	return Config{Size: 4, Scale: 1, Max: DefaultMax}
}

// Validate names the first bad field.
func (c Config) Validate() error {
	switch {
	case len(c.Sync) > framing.MaxMarker:
		return fmt.Errorf("%w: sync marker of %d bytes, at most %d", ErrConfig, len(c.Sync), framing.MaxMarker)
	case c.Size < 1 || c.Size > MaxSize:
		return fmt.Errorf("%w: length field size %d, must be 1 to %d", ErrConfig, c.Size, MaxSize)
	case c.Offset < len(c.Sync):
		return fmt.Errorf("%w: length field offset %d is inside the %d-byte sync marker", ErrConfig, c.Offset, len(c.Sync))
	case c.Offset > MaxLength:
		return fmt.Errorf("%w: length field offset %d, at most %d", ErrConfig, c.Offset, MaxLength)
	case c.Scale < 1 || c.Scale > MaxScale:
		return fmt.Errorf("%w: scale %d, must be 1 to %d", ErrConfig, c.Scale, MaxScale)
	case c.Adjustment < -MaxLength || c.Adjustment > MaxLength:
		return fmt.Errorf("%w: adjustment %d, must be within ±%d", ErrConfig, c.Adjustment, MaxLength)
	case c.Strip < 0 || c.Strip > c.Offset+c.Size:
		return fmt.Errorf("%w: strip %d, must be 0 to offset+size (%d)", ErrConfig, c.Strip, c.Offset+c.Size)
	case c.Max < c.Offset+c.Size || c.Max > MaxLength:
		return fmt.Errorf("%w: max %d, must be %d to %d", ErrConfig, c.Max, c.Offset+c.Size, MaxLength)
	case c.CRC && c.Max < c.minTotal():
		return fmt.Errorf("%w: max %d leaves no room for the CRC", ErrConfig, c.Max)
	}
	return nil
}

// minTotal is the smallest total a length may give: the length field ends
// inside the unit, and a CRC needs its two bytes after the sync marker.
func (c Config) minTotal() int {
	m := c.Offset + c.Size
	if c.CRC && m < len(c.Sync)+crcSize {
		m = len(c.Sync) + crcSize
	}
	return m
}

// meta is the metadata of every length-field unit: the framing's name; the
// CRC state is added per unit.
var meta = framing.Meta{Framing: framing.NameLengthField}

// Decoder is the length-field decoder.
type Decoder struct {
	cfg    Config
	sync   framing.Sync // used when cfg.Sync is set
	hdrEnd int
	min    int
	fatal  framing.Result
}

var _ framing.Decoder = (*Decoder)(nil)

// New returns a decoder for cfg, or cfg's validation error.
func New(cfg Config) (*Decoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Decoder{cfg: cfg, hdrEnd: cfg.Offset + cfg.Size, min: cfg.minTotal()}
	if len(cfg.Sync) > 0 {
		d.sync = framing.NewSync(cfg.Sync)
		d.cfg.Sync = d.sync.Marker()
	}
	return d, nil
}

// Name is "length-field".
func (d *Decoder) Name() string { return framing.NameLengthField }

// MaxUnit is Max, and with a sync marker and the CRC checked Len(Sync)−1
// bytes more: after a bad CRC the decoder looks just past the unit for a
// marker that began inside it.
func (d *Decoder) MaxUnit() int {
	if d.cfg.CRC && len(d.cfg.Sync) > 0 {
		return d.cfg.Max + len(d.cfg.Sync) - 1
	}
	return d.cfg.Max
}

// field reads the length field's value.
func (d *Decoder) field(b []byte) uint64 {
	b = b[d.cfg.Offset:d.hdrEnd]
	var v uint64
	if d.cfg.LittleEndian {
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		return v
	}
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

// Total returns the total length that the header at the front of b
// announces; b must hold Offset+Size bytes. It is exported for tools and
// docs examples.
func (d *Decoder) Total(b []byte) int64 {
	return int64(d.hdrEnd) + int64(d.field(b))*int64(d.cfg.Scale) + int64(d.cfg.Adjustment)
}

// Decode returns the next outcome at the front of buf.
func (d *Decoder) Decode(buf []byte) framing.Result { return d.decode(buf, false) }

// Finish is Decode at EOF: a unit cut short is RejectShort, in Unit with
// Strip applied when it is long enough; bytes that do not start a unit (no
// sync marker, or after a Fatal result) are Discarded.
func (d *Decoder) Finish(rest []byte) framing.Result {
	if d.fatal.Fatal {
		if len(rest) > 0 {
			return framing.Result{N: len(rest), Discarded: len(rest)}
		}
		d.fatal = framing.Result{}
		return framing.Result{}
	}
	r := d.decode(rest, true)
	if r.N == 0 && len(d.cfg.Sync) > 0 {
		d.sync.Reset()
	}
	return r
}

// short is the truncated unit at EOF.
func (d *Decoder) short(buf []byte) framing.Result {
	unit := buf[:len(buf):len(buf)]
	if len(unit) >= d.cfg.Strip {
		unit = unit[d.cfg.Strip:]
	}
	return framing.Result{N: len(buf), Wire: len(buf), Unit: unit, Meta: meta, Reject: framing.RejectShort}
}

func (d *Decoder) decode(buf []byte, eof bool) framing.Result {
	if max := d.MaxUnit(); len(buf) > max {
		// Never look further than one outcome needs; with this much input
		// there is progress to make, so it is not the end yet.
		buf, eof = buf[:max], false
	}
	if d.fatal.Fatal {
		return d.fatal
	}
	if len(buf) == 0 {
		return framing.Result{}
	}
	synced := len(d.cfg.Sync) > 0
	if synced && (len(buf) < d.sync.Len() || !d.sync.At(buf)) {
		if len(buf) < d.sync.Len() && !eof {
			return framing.Result{}
		}
		return d.sync.Skip(buf, 0, eof)
	}
	if len(buf) < d.hdrEnd {
		if eof {
			return d.short(buf)
		}
		return framing.Result{}
	}
	total := d.Total(buf)
	var reject framing.Reject
	switch {
	case total > int64(d.cfg.Max):
		reject = framing.RejectOversize
	case total < int64(d.min):
		reject = framing.RejectUndersize
	}
	if reject != framing.RejectNone {
		if !synced {
			d.fatal = framing.Result{Reject: reject, Fatal: true}
			return d.fatal
		}
		// The marker was a false one, or the header is damaged: drop its
		// first byte; the next Decode searches on from there. (One byte, so
		// that the outcome does not depend on how much input is buffered.)
		return framing.Result{N: 1, Discarded: 1, Reject: reject, SyncLost: d.sync.Lose()}
	}
	n := int(total)
	if len(buf) < n {
		if eof {
			return d.short(buf)
		}
		return framing.Result{}
	}
	r := framing.Result{N: n, Wire: n, Unit: buf[d.cfg.Strip:n:n], Meta: meta}
	if d.cfg.CRC {
		from := len(d.cfg.Sync)
		if crc16.Checksum(buf[from:n-crcSize]) != binary.BigEndian.Uint16(buf[n-crcSize:n]) {
			if synced {
				i, more := d.sync.Inside(buf, 1, n)
				if more && !eof {
					return framing.Result{}
				}
				if i > 0 {
					// The next marker begins inside this unit: bytes were
					// lost. Keep the next unit.
					return framing.Result{N: i, Discarded: i, Reject: framing.RejectShort, SyncLost: d.sync.Lose()}
				}
			}
			r.Meta.CRC, r.Reject = framing.CRCBad, framing.RejectCRC
			return r
		}
		r.Meta.CRC = framing.CRCGood
	}
	if synced {
		r.SyncRegained = d.sync.Regain()
	}
	return r
}
