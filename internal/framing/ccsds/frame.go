package ccsds

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
)

// DefaultASM is the CCSDS attached sync marker, 1ACFFC1D.
var DefaultASM = []byte{0x1a, 0xcf, 0xfc, 0x1d}

// Frame length bounds: a primary header at least, and a 16-bit length.
const (
	MinFrame = FrameHeaderSize
	MaxFrame = 65535
)

// FrameConfig configures a "ccsds-frame" decoder. Start from
// DefaultFrameConfig and set FrameLength.
type FrameConfig struct {
	// ASM is the sync marker in front of each frame, 1 to 8 bytes.
	// Default 1ACFFC1D.
	ASM []byte
	// FrameLength is the fixed length of the transfer frame that follows
	// the ASM, in bytes, FECF included (for example 1115). Reed–Solomon
	// parity, if the modem leaves it on, counts as part of the frame and
	// then the FECF check cannot be used. Required: 6 to 65535.
	FrameLength int
	// FECF checks the frame error control field: CRC-16-CCITT (poly
	// 0x1021, init 0xFFFF) over the frame without its last two bytes,
	// which carry it big-endian.
	FECF bool
	// StripASM stores the frame without its ASM.
	StripASM bool
}

// DefaultFrameConfig returns the defaults: ASM 1ACFFC1D, no FECF check, the
// ASM kept. FrameLength has no default.
func DefaultFrameConfig() FrameConfig {
	return FrameConfig{ASM: bytes.Clone(DefaultASM)}
}

// Validate names the first bad field.
func (c FrameConfig) Validate() error {
	if len(c.ASM) < 1 || len(c.ASM) > framing.MaxMarker {
		return fmt.Errorf("%w: ASM of %d bytes, must be 1 to %d", ErrConfig, len(c.ASM), framing.MaxMarker)
	}
	min := MinFrame
	if c.FECF {
		min += FECFSize
	}
	if c.FrameLength < min || c.FrameLength > MaxFrame {
		return fmt.Errorf("%w: frame length %d, must be %d to %d", ErrConfig, c.FrameLength, min, MaxFrame)
	}
	return nil
}

// FrameDecoder finds CADUs in a byte stream: an ASM, then a frame of
// FrameLength bytes.
//
// In sync, it expects an ASM right after the previous frame. Anything else
// opens a sync-loss episode: it searches for the next ASM and discards the
// bytes before it. When the FECF is checked and a frame fails it, the
// decoder also looks for an ASM that begins inside the frame (reading up to
// ASM−1 bytes past it): one there means bytes were lost (the frame is cut
// short, RejectShort, its bytes discarded up to that ASM); none means the
// frame is corrupt in place (RejectCRC, the frame in Unit) and sync holds.
// A sync-loss episode ends at the next good frame.
type FrameDecoder struct {
	cfg  FrameConfig
	sync framing.Sync
	cadu int // ASM + frame
}

var _ framing.Decoder = (*FrameDecoder)(nil)

// NewFrameDecoder returns a decoder for cfg, or cfg's validation error.
func NewFrameDecoder(cfg FrameConfig) (*FrameDecoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &FrameDecoder{cfg: cfg, sync: framing.NewSync(cfg.ASM)}
	d.cfg.ASM = d.sync.Marker()
	d.cadu = len(cfg.ASM) + cfg.FrameLength
	return d, nil
}

// Name is "ccsds-frame".
func (d *FrameDecoder) Name() string { return framing.NameCCSDSFrame }

// MaxUnit is the CADU length, ASM plus frame, and with the FECF checked
// ASM−1 bytes more: after a bad FECF the decoder looks at the bytes just
// past the frame for an ASM that began inside it.
func (d *FrameDecoder) MaxUnit() int {
	if d.cfg.FECF {
		return d.cadu + d.sync.Len() - 1
	}
	return d.cadu
}

// Decode returns the next outcome at the front of buf.
func (d *FrameDecoder) Decode(buf []byte) framing.Result { return d.decode(buf, false) }

// Finish is Decode at EOF: a partial CADU is RejectShort, with its bytes
// (ASM stripped if configured) in Unit; bytes that do not start with the
// ASM are Discarded.
func (d *FrameDecoder) Finish(rest []byte) framing.Result {
	r := d.decode(rest, true)
	if r.N == 0 {
		d.sync.Reset()
	}
	return r
}

func (d *FrameDecoder) decode(buf []byte, eof bool) framing.Result {
	if max := d.MaxUnit(); len(buf) > max {
		// Never look further than one outcome needs; with this much input
		// there is progress to make, so it is not the end yet.
		buf, eof = buf[:max], false
	}
	asm := d.sync.Len()
	if len(buf) < asm || !d.sync.At(buf) {
		if len(buf) < asm && (!eof || len(buf) == 0) {
			return framing.Result{}
		}
		return d.sync.Skip(buf, 0, eof)
	}
	if len(buf) < d.cadu {
		if !eof {
			return framing.Result{}
		}
		r := framing.Result{N: len(buf), Wire: len(buf), Unit: buf[:len(buf):len(buf)], Meta: framing.Meta{Framing: framing.NameCCSDSFrame}, Reject: framing.RejectShort}
		if d.cfg.StripASM {
			r.Unit = buf[asm:len(buf):len(buf)]
		}
		if len(buf) >= asm+FrameHeaderSize {
			r.Meta = framing.Meta{Framing: framing.NameCCSDSFrame, Kind: framing.MetaFrame, Frame: ParseFrameHeader(buf[asm:])}
		}
		return r
	}
	frame := buf[asm:d.cadu:d.cadu]
	r := framing.Result{
		N:    d.cadu,
		Wire: d.cadu,
		Unit: buf[:d.cadu:d.cadu],
		Meta: framing.Meta{Framing: framing.NameCCSDSFrame, Kind: framing.MetaFrame, Frame: ParseFrameHeader(frame)},
	}
	if d.cfg.StripASM {
		r.Unit = frame
	}
	if d.cfg.FECF {
		n := len(frame) - FECFSize
		if crc16.Checksum(frame[:n]) != binary.BigEndian.Uint16(frame[n:]) {
			i, more := d.sync.Inside(buf, 1, d.cadu)
			if more && !eof {
				return framing.Result{}
			}
			if i > 0 {
				// The next ASM begins inside this frame: bytes were lost
				// and this "frame" is the start of one and the start of the
				// next. Keep the next one.
				return framing.Result{N: i, Discarded: i, Meta: r.Meta, Reject: framing.RejectShort, SyncLost: d.sync.Lose()}
			}
			r.Meta.CRC, r.Reject = framing.CRCBad, framing.RejectCRC
			return r
		}
		r.Meta.CRC = framing.CRCGood
	}
	r.SyncRegained = d.sync.Regain()
	return r
}
