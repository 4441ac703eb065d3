package ccsds

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("ccsds: invalid configuration")

// PacketConfig configures a "ccsds-packet" decoder. The zero value is not
// valid; start from DefaultPacketConfig.
type PacketConfig struct {
	// MaxLength bounds a whole packet, header included, in bytes: 7 to
	// 65542. A longer packet is RejectOversize and ends the stream. The
	// default, 65542, is the longest packet CCSDS allows, so only the
	// version check can refuse a header; Yamcs' CcsdsPacketInputStream
	// defaults to 1500. It is also the caller's buffer size (MaxUnit).
	MaxLength int
	// CRC checks a CRC-16-CCITT over the whole packet, carried big-endian
	// in its last two bytes (a mission convention, not part of 133.0-B).
	CRC bool
}

// DefaultPacketConfig returns the defaults: MaxLength 65542, no CRC.
func DefaultPacketConfig() PacketConfig {
	return PacketConfig{MaxLength: MaxPacket}
}

// Validate names the first bad field.
func (c PacketConfig) Validate() error {
	if c.MaxLength < MinPacket || c.MaxLength > MaxPacket {
		return fmt.Errorf("%w: max length %d, must be %d to %d", ErrConfig, c.MaxLength, MinPacket, MaxPacket)
	}
	if c.CRC && c.MaxLength < PacketHeaderSize+FECFSize {
		return fmt.Errorf("%w: max length %d leaves no room for a CRC", ErrConfig, c.MaxLength)
	}
	return nil
}

// PacketDecoder splits a stream of space packets, the length of each taken
// from its primary header (packet data length + 7). Space packets have no
// sync marker: after a header that cannot be right (version not 0, length
// above MaxLength) there is no way to find the next packet, so the result
// is Fatal and the caller closes the link.
type PacketDecoder struct {
	cfg   PacketConfig
	fatal framing.Result // set once a fatal header was seen; Fatal is true then
}

var _ framing.Decoder = (*PacketDecoder)(nil)

// NewPacketDecoder returns a decoder for cfg, or cfg's validation error.
func NewPacketDecoder(cfg PacketConfig) (*PacketDecoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &PacketDecoder{cfg: cfg}, nil
}

// Name is "ccsds-packet".
func (d *PacketDecoder) Name() string { return framing.NameCCSDSPacket }

// MaxUnit is MaxLength.
func (d *PacketDecoder) MaxUnit() int { return d.cfg.MaxLength }

// Decode returns the next packet at the front of buf.
func (d *PacketDecoder) Decode(buf []byte) framing.Result { return d.decode(buf, false) }

// Finish is Decode at EOF: bytes of a packet cut short are RejectShort,
// their bytes in Unit; after a Fatal result the bytes left are Discarded.
func (d *PacketDecoder) Finish(rest []byte) framing.Result {
	if d.fatal.Fatal {
		if len(rest) > 0 {
			return framing.Result{N: len(rest), Discarded: len(rest)}
		}
		d.fatal = framing.Result{}
		return framing.Result{}
	}
	return d.decode(rest, true)
}

func (d *PacketDecoder) decode(buf []byte, eof bool) framing.Result {
	if max := d.MaxUnit(); len(buf) > max {
		// Never look further than one outcome needs; with this much input
		// there is progress to make, so it is not the end yet.
		buf, eof = buf[:max], false
	}
	if d.fatal.Fatal {
		return d.fatal
	}
	if len(buf) < PacketHeaderSize {
		if eof && len(buf) > 0 {
			return framing.Result{N: len(buf), Wire: len(buf), Unit: buf[:len(buf):len(buf)], Meta: framing.Meta{Framing: framing.NameCCSDSPacket}, Reject: framing.RejectShort}
		}
		return framing.Result{}
	}
	h := ParsePacketHeader(buf)
	meta := framing.Meta{Framing: framing.NameCCSDSPacket, Kind: framing.MetaPacket, Packet: h}
	if h.Version != 0 {
		d.fatal = framing.Result{Meta: meta, Reject: framing.RejectVersion, Fatal: true}
		return d.fatal
	}
	total := int(h.DataLength) + MinPacket
	if total > d.cfg.MaxLength {
		d.fatal = framing.Result{Meta: meta, Reject: framing.RejectOversize, Fatal: true}
		return d.fatal
	}
	if len(buf) < total {
		if eof {
			return framing.Result{N: len(buf), Wire: len(buf), Unit: buf[:len(buf):len(buf)], Meta: meta, Reject: framing.RejectShort}
		}
		return framing.Result{}
	}
	r := framing.Result{N: total, Wire: total, Unit: buf[:total:total], Meta: meta}
	if d.cfg.CRC {
		if total < PacketHeaderSize+FECFSize {
			// The length is known, so the stream goes on; there is no CRC
			// field to check, so the packet is not stored.
			r.Unit, r.Reject = nil, framing.RejectUndersize
			return r
		}
		r.Meta.CRC = framing.CRCGood
		if crc16.Checksum(buf[:total-FECFSize]) != binary.BigEndian.Uint16(buf[total-FECFSize:total]) {
			r.Meta.CRC, r.Reject = framing.CRCBad, framing.RejectCRC
		}
	}
	return r
}
