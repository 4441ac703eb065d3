// Package ccsds decodes the CCSDS framings ground equipment puts on TCP:
// space packets (CCSDS 133.0-B, framing "ccsds-packet") and CADUs, an
// attached sync marker followed by a fixed-length TM transfer frame (CCSDS
// 131.0-B / 132.0-B, framing "ccsds-frame"). Both implement
// framing.Decoder; docs/framing.md gives the byte layouts and every outcome.
package ccsds

import (
	"encoding/binary"

	"github.com/meridian-telemetry/meridian/internal/framing"
)

// Header sizes.
const (
	PacketHeaderSize = 6 // space packet primary header
	FrameHeaderSize  = 6 // TM transfer frame primary header
	FECFSize         = 2 // frame error control field, CRC-16-CCITT
)

// Space packet lengths: a header and 1 to 65536 data bytes.
const (
	MinPacket = PacketHeaderSize + 1
	MaxPacket = PacketHeaderSize + 65536 // 65542
)

// ParsePacketHeader parses a space packet primary header from the first 6
// bytes of b, which must hold them.
func ParsePacketHeader(b []byte) framing.PacketHeader {
	id := binary.BigEndian.Uint16(b[0:2])
	seq := binary.BigEndian.Uint16(b[2:4])
	return framing.PacketHeader{
		Version:    uint8(id >> 13),
		Type:       uint8(id>>12) & 1,
		SecHeader:  id&(1<<11) != 0,
		APID:       id & 0x7ff,
		SeqFlags:   uint8(seq >> 14),
		SeqCount:   seq & 0x3fff,
		DataLength: binary.BigEndian.Uint16(b[4:6]),
	}
}

// AppendPacketHeader appends h as a 6-byte primary header. Fields are cut to
// their widths. It is the inverse of ParsePacketHeader, for tests and tools.
func AppendPacketHeader(dst []byte, h framing.PacketHeader) []byte {
	id := uint16(h.Version&7)<<13 | uint16(h.Type&1)<<12 | h.APID&0x7ff
	if h.SecHeader {
		id |= 1 << 11
	}
	dst = binary.BigEndian.AppendUint16(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, uint16(h.SeqFlags&3)<<14|h.SeqCount&0x3fff)
	return binary.BigEndian.AppendUint16(dst, h.DataLength)
}

// ParseFrameHeader parses a TM transfer frame primary header from the first
// 6 bytes of b, which must hold them.
func ParseFrameHeader(b []byte) framing.FrameHeader {
	id := binary.BigEndian.Uint16(b[0:2])
	return framing.FrameHeader{
		Version:         uint8(id >> 14),
		SCID:            (id >> 4) & 0x3ff,
		VCID:            uint8(id>>1) & 7,
		OCF:             id&1 != 0,
		MCCount:         b[2],
		VCCount:         b[3],
		DataFieldStatus: binary.BigEndian.Uint16(b[4:6]),
	}
}

// AppendFrameHeader appends h as a 6-byte TM frame primary header, the
// inverse of ParseFrameHeader.
func AppendFrameHeader(dst []byte, h framing.FrameHeader) []byte {
	id := uint16(h.Version&3)<<14 | (h.SCID&0x3ff)<<4 | uint16(h.VCID&7)<<1
	if h.OCF {
		id |= 1
	}
	dst = binary.BigEndian.AppendUint16(dst, id)
	dst = append(dst, h.MCCount, h.VCCount)
	return binary.BigEndian.AppendUint16(dst, h.DataFieldStatus)
}
