package bench

import (
	"encoding/binary"
	"errors"
)

// HeaderSize is the size of the header every bench payload starts with:
//
//	offset size field
//	0      4    magic "MBF1"
//	4      8    run id, big endian (random per run)
//	12     4    station index, big endian, from 0
//	16     8    frame number, big endian, from 1 per station
//
// The rest of the payload, up to --size, is zero. A frame resent after a
// reconnect carries the same header, which is how --verify finds
// duplicates.
const HeaderSize = 24

var magic = [4]byte{'M', 'B', 'F', '1'}

// ErrNotBench means a payload does not start with a bench header.
var ErrNotBench = errors.New("bench: not a bench payload")

// Header identifies one bench frame.
type Header struct {
	RunID   uint64
	Station uint32
	Frame   uint64
}

// PutHeader writes h at the start of p, which must hold HeaderSize bytes.
func PutHeader(p []byte, h Header) {
	copy(p, magic[:])
	binary.BigEndian.PutUint64(p[4:], h.RunID)
	binary.BigEndian.PutUint32(p[12:], h.Station)
	binary.BigEndian.PutUint64(p[16:], h.Frame)
}

// ParseHeader reads the header at the start of p.
func ParseHeader(p []byte) (Header, error) {
	if len(p) < HeaderSize || [4]byte(p[:4]) != magic {
		return Header{}, ErrNotBench
	}
	return Header{
		RunID:   binary.BigEndian.Uint64(p[4:]),
		Station: binary.BigEndian.Uint32(p[12:]),
		Frame:   binary.BigEndian.Uint64(p[16:]),
	}, nil
}
