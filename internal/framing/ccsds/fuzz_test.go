package ccsds

import (
	"bytes"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/framingtest"
)

// checkChunking decodes data whole and split at the points cuts gives: the
// outcome must not depend on where a read ends, and each run must keep the
// decoder's contract (framingtest.Run checks it on every result).
func checkChunking(t *testing.T, mk func() framing.Decoder, data, cuts []byte) {
	whole, err := framingtest.Run(mk(), [][]byte{data})
	if err != nil {
		t.Fatalf("whole: %v", err)
	}
	split, err := framingtest.Run(mk(), framingtest.Split(data, cuts))
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	if err := framingtest.Equal(whole, split); err != nil {
		t.Fatalf("chunking changes the outcome: %v", err)
	}
	flat, err := framingtest.RunFlat(mk(), data)
	if err != nil {
		t.Fatalf("flat: %v", err)
	}
	if err := framingtest.Equal(whole, flat); err != nil {
		t.Fatalf("an unbounded buffer changes the outcome: %v", err)
	}
	bytewise, err := framingtest.Run(mk(), framingtest.Split(data, bytes.Repeat([]byte{1}, len(data))))
	if err != nil {
		t.Fatalf("byte by byte: %v", err)
	}
	if err := framingtest.Equal(whole, bytewise); err != nil {
		t.Fatalf("byte by byte changes the outcome: %v", err)
	}
}

func FuzzPacketDecoder(f *testing.F) {
	f.Add(packetBytes(1, 2, 10), []byte{3, 1}, uint16(100), false)
	f.Add(append(packetBytes(1, 2, 10), 0x20, 0, 0, 0, 0, 0), []byte{7}, uint16(0), false)
	f.Add(append(packetBytes(1, 2, 3), packetBytes(5, 9, 90)...), []byte{2, 2, 2}, uint16(50), true)
	if b := readFile(f, "packets_crc.bin"); len(b) > 600 {
		f.Add(b[:600], []byte{100, 3, 250}, uint16(0), true)
	}
	f.Fuzz(func(t *testing.T, data, cuts []byte, max uint16, crc bool) {
		cfg := PacketConfig{MaxLength: MinPacket + int(max)%(MaxPacket-MinPacket+1), CRC: crc}
		if cfg.Validate() != nil {
			return
		}
		checkChunking(t, func() framing.Decoder { d, _ := NewPacketDecoder(cfg); return d }, data, cuts)
	})
}

func FuzzFrameDecoder(f *testing.F) {
	fr := func(asm []byte, n int) []byte {
		b := append([]byte{}, asm...)
		b = AppendFrameHeader(b, framing.FrameHeader{SCID: 5, VCID: 1, MCCount: 3})
		for len(b) < len(asm)+n {
			b = append(b, byte(len(b)))
		}
		return b
	}
	f.Add(append(fr(DefaultASM, 16), fr(DefaultASM, 16)...), []byte{5, 30}, uint8(4), uint8(16), false, false)
	f.Add(append([]byte{1, 2, 0x1a, 0xcf}, fr(DefaultASM, 16)...), []byte{1}, uint8(4), uint8(16), true, true)
	f.Add(append(fr([]byte{0x7e}, 10), fr([]byte{0x7e}, 10)[:5]...), []byte{}, uint8(1), uint8(10), true, false)
	if b := readFile(f, "cadu.bin"); len(b) > 3000 {
		f.Add(b[1000:3000], []byte{200, 17, 4}, uint8(4), uint8(0), true, false)
	}
	f.Fuzz(func(t *testing.T, data, cuts []byte, asmLen, frameLen uint8, fecf, strip bool) {
		// The ASM is the default's first bytes (or 1..8 repeated), so that
		// fuzzed input finds it; small frames keep runs fast. frameLen 0
		// stands for 1115.
		n := int(asmLen)%framing.MaxMarker + 1
		asm := make([]byte, n)
		for i := range asm {
			asm[i] = DefaultASM[i%4]
		}
		cfg := FrameConfig{ASM: asm, FrameLength: int(frameLen), FECF: fecf, StripASM: strip}
		if frameLen == 0 {
			cfg.FrameLength = 1115
		}
		if cfg.Validate() != nil {
			return
		}
		checkChunking(t, func() framing.Decoder { d, _ := NewFrameDecoder(cfg); return d }, data, cuts)
	})
}
