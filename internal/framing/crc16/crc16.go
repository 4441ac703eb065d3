// Package crc16 computes CRC-16-CCITT as CCSDS uses it for the TM frame
// error control field (FECF) and for packet-level CRCs: polynomial 0x1021,
// initial value 0xFFFF, no reflection, no final xor (the "CRC-16/CCITT-FALSE"
// of the CRC catalogues). The check value of "123456789" is 0x29B1.
//
// It is sliced by 16: sixteen independent table lookups per 16 input bytes instead of one
// per byte, so that the FECF check does not dominate a frame decode.
package crc16

// Init is the initial value of the CCSDS CRC.
const Init uint16 = 0xFFFF

// Poly is the generator polynomial x^16 + x^12 + x^5 + 1.
const Poly uint16 = 0x1021

// tables[k][b] is the CRC contribution of byte b followed by k zero bytes,
// from a zero state. tables[0] is the classic byte-at-a-time table.
var tables = func() (t [16][256]uint16) {
	for b := 0; b < 256; b++ {
		c := uint16(b) << 8
		for i := 0; i < 8; i++ {
			if c&0x8000 != 0 {
				c = c<<1 ^ Poly
			} else {
				c <<= 1
			}
		}
		t[0][b] = c
	}
	for k := 1; k < 16; k++ {
		for b := 0; b < 256; b++ {
			p := t[k-1][b]
			t[k][b] = p<<8 ^ t[0][p>>8]
		}
	}
	return t
}()

// Checksum returns the CRC of b from Init.
func Checksum(b []byte) uint16 { return Update(Init, b) }

// Update continues a CRC over b.
func Update(crc uint16, b []byte) uint16 {
	t := &tables
	for len(b) >= 16 {
		// The state is linear: fold it into the first two bytes, then each
		// byte's contribution is its table for the bytes that follow it.
		_ = b[15] // one bounds check for the block
		c := crc ^ uint16(b[0])<<8 ^ uint16(b[1])
		crc = t[15][c>>8] ^ t[14][c&0xff] ^
			t[13][b[2]] ^ t[12][b[3]] ^ t[11][b[4]] ^ t[10][b[5]] ^
			t[9][b[6]] ^ t[8][b[7]] ^ t[7][b[8]] ^ t[6][b[9]] ^
			t[5][b[10]] ^ t[4][b[11]] ^ t[3][b[12]] ^ t[2][b[13]] ^
			t[1][b[14]] ^ t[0][b[15]]
		b = b[16:]
	}
	for _, v := range b {
		crc = crc<<8 ^ t[0][byte(crc>>8)^v]
	}
	return crc
}

// updateBytewise is the reference: one lookup per byte. Tests and the
// benchmark compare against it.
func updateBytewise(crc uint16, b []byte) uint16 {
	for _, v := range b {
		crc = crc<<8 ^ tables[0][byte(crc>>8)^v]
	}
	return crc
}

// updateBitwise is the definition, bit by bit, for tests.
func updateBitwise(crc uint16, b []byte) uint16 {
	for _, v := range b {
		crc ^= uint16(v) << 8
		for i := 0; i < 8; i++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ Poly
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
