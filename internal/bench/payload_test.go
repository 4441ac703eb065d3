package bench

import (
	"errors"
	"testing"
)

// FuzzParseHeader: any stream message decodes to a header or ErrNotBench,
// and a header written by PutHeader reads back unchanged.
func FuzzParseHeader(f *testing.F) {
	p := make([]byte, HeaderSize+8)
	PutHeader(p, Header{RunID: 42, Station: 7, Frame: 1000})
	f.Add(p)
	f.Add([]byte("MBF1"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := ParseHeader(p)
		if err != nil {
			if !errors.Is(err, ErrNotBench) {
				t.Fatalf("error %v", err)
			}
			return
		}
		q := make([]byte, HeaderSize)
		PutHeader(q, h)
		if back, err := ParseHeader(q); err != nil || back != h {
			t.Fatalf("round trip %+v -> %+v, %v", h, back, err)
		}
	})
}
