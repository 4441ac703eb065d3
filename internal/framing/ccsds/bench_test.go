package ccsds

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
)

// decodeStream runs a decoder over a buffer of many units the way a link's
// reader does, b.N units in all; the buffer is re-decoded from the start
// when it runs out.
func decodeStream(b *testing.B, d framing.Decoder, stream []byte, unit int) {
	b.SetBytes(int64(unit))
	b.ReportAllocs()
	buf := stream
	for b.Loop() {
		r := d.Decode(buf)
		if r.Wire != unit || r.Reject != framing.RejectNone {
			b.Fatalf("result %+v", r)
		}
		buf = buf[r.N:]
		if len(buf) == 0 {
			buf = stream
		}
	}
}

// BenchmarkFrameDecode: 1115-byte TM frames behind the 4-byte ASM, FECF
// checked, one decoder, in memory.
func BenchmarkFrameDecode(b *testing.B) {
	for _, fecf := range []bool{true, false} {
		name := "fecf"
		if !fecf {
			name = "nofecf"
		}
		b.Run(name+"/1115B", func(b *testing.B) {
			var stream []byte
			for i := range 64 {
				f := AppendFrameHeader(append([]byte{}, DefaultASM...), framing.FrameHeader{SCID: 42, VCID: uint8(i % 8), MCCount: uint8(i), VCCount: uint8(i)})
				for len(f) < 4+1113 {
					f = append(f, byte(len(f)*31))
				}
				f = binary.BigEndian.AppendUint16(f, crc16.Checksum(f[4:]))
				stream = append(stream, f...)
			}
			d, _ := NewFrameDecoder(FrameConfig{ASM: DefaultASM, FrameLength: 1115, FECF: fecf})
			decodeStream(b, d, stream, 1119)
		})
	}
}

// BenchmarkPacketDecode: space packets of 64 B, 1 KiB and 4 KiB, with and
// without the packet CRC.
func BenchmarkPacketDecode(b *testing.B) {
	for _, size := range []int{64, 1024, 4096} {
		for _, crc := range []bool{false, true} {
			name := "nocrc"
			if crc {
				name = "crc"
			}
			b.Run(fmt.Sprintf("%s/%dB", name, size), func(b *testing.B) {
				var stream []byte
				for i := range 64 {
					p := packetBytes(uint16(i), uint16(i), size-PacketHeaderSize)
					binary.BigEndian.PutUint16(p[size-2:], crc16.Checksum(p[:size-2]))
					stream = append(stream, p...)
				}
				d, _ := NewPacketDecoder(PacketConfig{MaxLength: MaxPacket, CRC: crc})
				decodeStream(b, d, stream, size)
			})
		}
	}
}
