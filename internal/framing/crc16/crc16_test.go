package crc16

import (
	"math/rand/v2"
	"testing"
)

func TestKnownAnswers(t *testing.T) {
	f := func(in []byte, want uint16) {
		t.Helper()
		if got := Checksum(in); got != want {
			t.Fatalf("Checksum(% x) = %#04x, want %#04x", in, got, want)
		}
	}
	f([]byte("123456789"), 0x29B1) // CRC-16/CCITT-FALSE check value
	f(nil, 0xFFFF)
	f([]byte{0x00}, 0xE1F0)
	// A CCSDS-style frame whose FECF is appended big-endian checks to zero.
	b := []byte("any frame at all, of 26 b")
	c := Checksum(b)
	if got := Checksum(append(b, byte(c>>8), byte(c))); got != 0 {
		t.Fatalf("CRC over data+FECF = %#04x, want 0", got)
	}
}

// TestSlicedMatchesBitwise checks the sliced tables against the definition
// at every length and alignment that matters (0..64 bytes, and an
// incremental split).
func TestSlicedMatchesBitwise(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 2000)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	for n := 0; n <= 64; n++ {
		for off := 0; off < 16; off++ {
			in := b[off : off+n]
			if got, want := Checksum(in), updateBitwise(Init, in); got != want {
				t.Fatalf("len %d off %d: %#04x, want %#04x", n, off, got, want)
			}
		}
	}
	whole := Checksum(b)
	if whole != updateBytewise(Init, b) {
		t.Fatal("sliced and bytewise differ on 2000 bytes")
	}
	for cut := 0; cut <= len(b); cut += 37 {
		if got := Update(Update(Init, b[:cut]), b[cut:]); got != whole {
			t.Fatalf("split at %d: %#04x, want %#04x", cut, got, whole)
		}
	}
}

func benchmarkCRC(b *testing.B, n int, fn func(uint16, []byte) uint16) {
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.SetBytes(int64(n))
	var sink uint16
	for b.Loop() {
		sink ^= fn(Init, buf)
	}
	_ = sink
}

func BenchmarkCRC(b *testing.B) {
	b.Run("sliced16/1113B", func(b *testing.B) { benchmarkCRC(b, 1113, Update) })
	b.Run("sliced16/64KiB", func(b *testing.B) { benchmarkCRC(b, 64<<10, Update) })
	b.Run("bytewise/1113B", func(b *testing.B) { benchmarkCRC(b, 1113, updateBytewise) })
}
