package ccsds_test

import (
	"encoding/hex"
	"fmt"

	"github.com/meridian-telemetry/meridian/internal/framing/ccsds"
)

// A link reader's loop: append what arrives, decode until the decoder needs
// more. Here two CADUs (toy 16-byte frames with an FECF) arrive in three
// reads, with 3 bytes of noise in front.
func ExampleFrameDecoder() {
	cfg := ccsds.DefaultFrameConfig()
	cfg.FrameLength, cfg.FECF, cfg.StripASM = 16, true, true
	dec, err := ccsds.NewFrameDecoder(cfg)
	if err != nil {
		panic(err)
	}
	cadu, _ := hex.DecodeString("1ACFFC1D02A5FE0118000102030405060708C911")
	stream := append([]byte{0xde, 0xad, 0x00}, append(cadu, cadu...)...)
	reads := [][]byte{stream[:10], stream[10:30], stream[30:]}

	buf := make([]byte, 0, dec.MaxUnit())
	for _, read := range reads {
		for len(read) > 0 {
			n := min(len(read), cap(buf)-len(buf))
			buf, read = append(buf, read[:n]...), read[n:]
			start := 0
			for {
				r := dec.Decode(buf[start:])
				start += r.N
				if r.Discarded > 0 {
					fmt.Printf("discarded %d bytes (sync lost: %v)\n", r.Discarded, r.SyncLost)
				}
				if r.Unit != nil {
					h := r.Meta.Frame
					fmt.Printf("frame SCID %d VC %d count %d, %d bytes, crc %v, regained %v\n",
						h.SCID, h.VCID, h.VCCount, len(r.Unit), r.Meta.CRC, r.SyncRegained)
				}
				if r.N == 0 {
					break
				}
			}
			buf = buf[:copy(buf, buf[start:])]
		}
	}
	// Output:
	// discarded 3 bytes (sync lost: true)
	// frame SCID 42 VC 2 count 1, 16 bytes, crc good, regained true
	// frame SCID 42 VC 2 count 1, 16 bytes, crc good, regained false
}
