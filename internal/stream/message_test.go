package stream

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// FuzzUnpack: a packed payload splits into exactly the frames a count
// announces, or fails; the frames re-encode to the payload; and the count
// header never makes Unpack allocate beyond what arrived.
func FuzzUnpack(f *testing.F) {
	f.Add(append(frame.AppendData(nil, []byte("ab")), frame.AppendData(nil, []byte("c"))...), "2")
	f.Add(frame.AppendData(nil, nil), "1")
	f.Add([]byte{0, 0, 0, 9, 1}, "1")
	f.Add([]byte{}, "1000000000")
	f.Add([]byte{0, 0}, "x")
	f.Fuzz(func(t *testing.T, payload []byte, count string) {
		frames, err := Unpack(payload, count)
		if err != nil {
			return
		}
		if n, _ := strconv.Atoi(count); n != len(frames) {
			t.Fatalf("%d frames for count %q", len(frames), count)
		}
		if cap(frames) > len(payload)/4+1 {
			t.Fatalf("capacity %d for a payload of %d bytes", cap(frames), len(payload))
		}
		var re []byte
		for _, fr := range frames {
			re = binary.BigEndian.AppendUint32(re, uint32(len(fr)))
			re = append(re, fr...)
		}
		if !bytes.Equal(re, payload) {
			t.Fatal("frames do not re-encode to the payload")
		}
	})
}
