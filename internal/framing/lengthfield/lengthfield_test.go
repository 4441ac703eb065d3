package lengthfield

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
	"github.com/meridian-telemetry/meridian/internal/framing/framingtest"
)

func mustNew(t testing.TB, c Config) *Decoder {
	t.Helper()
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func cfg(offset, size, adj, strip int) Config {
	c := DefaultConfig()
	c.Offset, c.Size, c.Adjustment, c.Strip = offset, size, adj, strip
	return c
}

func h(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestNettyExamples are the cases of Netty's LengthFieldBasedFrameDecoder
// documentation, byte for byte: the same settings give the same frames.
func TestNettyExamples(t *testing.T) {
	hw := []byte("HELLO, WORLD")
	f := func(c Config, in, want []byte) {
		t.Helper()
		d := mustNew(t, c)
		in = append(in, 0xee) // the start of a next frame stays unread
		r := d.Decode(in)
		if r.Reject != framing.RejectNone || r.N != len(in)-1 || !bytes.Equal(r.Unit, want) {
			t.Fatalf("%+v on % x: %+v, want unit % x", c, in, r, want)
		}
	}
	cat := func(b ...[]byte) []byte { return bytes.Join(b, nil) }
	// 2 bytes length field at offset 0, do not strip header.
	f(cfg(0, 2, 0, 0), cat(h("000c"), hw), cat(h("000c"), hw))
	// ... strip header.
	f(cfg(0, 2, 0, 2), cat(h("000c"), hw), hw)
	// The length counts the whole message.
	f(cfg(0, 2, -2, 0), cat(h("000e"), hw), cat(h("000e"), hw))
	// 3 bytes length field at the end of a 5-byte header.
	f(cfg(2, 3, 0, 0), cat(h("cafe00000c"), hw), cat(h("cafe00000c"), hw))
	// 3 bytes length field at the start of a 5-byte header.
	f(cfg(0, 3, 2, 0), cat(h("00000ccafe"), hw), cat(h("00000ccafe"), hw))
	// Length field at offset 1 in a 4-byte header, strip the first 3.
	f(cfg(1, 2, 1, 3), cat(h("ca000cfe"), hw), cat(h("fe"), hw))
	// ... the length counts the whole message.
	f(cfg(1, 2, -3, 3), cat(h("ca0010fe"), hw), cat(h("fe"), hw))
	// Little-endian, 4 bytes, and a scale of 2 bytes per count.
	le := cfg(0, 4, 0, 4)
	le.LittleEndian = true
	f(le, cat(h("0c000000"), hw), hw)
	sc := cfg(0, 1, 0, 1)
	sc.Scale = 2
	f(sc, cat(h("06"), hw), hw)
}

func TestValidate(t *testing.T) {
	f := func(c Config, ok bool) {
		t.Helper()
		err := c.Validate()
		if (err == nil) != ok || (err != nil && !errors.Is(err, ErrConfig)) {
			t.Fatalf("%+v: Validate = %v, want ok=%v", c, err, ok)
		}
	}
	f(DefaultConfig(), true)
	f(cfg(0, 0, 0, 0), false)
	f(cfg(0, 5, 0, 0), false)
	f(cfg(0, 2, 0, 3), false) // strip beyond the header
	c := cfg(2, 2, 0, 0)
	c.Sync = []byte{1, 2, 3}
	f(c, false) // field inside the marker
	c.Offset = 3
	f(c, true)
	c.Sync = make([]byte, 9)
	c.Offset = 9
	f(c, false)
	c = DefaultConfig()
	c.Scale = 0
	f(c, false)
	c = DefaultConfig()
	c.Max = MaxLength + 1
	f(c, false)
	c.Max = 3
	f(c, false)
}

// cosmos is COSMOS' CCSDS example, LengthProtocol 64 16 11 1 BIG_ENDIAN 4
// 0x1ACFFC1D, mapped as docs/framing.md says: bit offset 64 → byte offset 8
// (counted from the sync marker), 16 bits → 2 bytes, value offset 11 → an
// adjustment of 11 − (8+2) = 1, discard 4 → strip 4.
func cosmos() Config {
	return Config{Sync: h("1acffc1d"), Offset: 8, Size: 2, Scale: 1, Adjustment: 1, Strip: 4, Max: 4 + 65542}
}

type fixturePacket struct{ Hex string }

func fixture(t *testing.T) (stream, synced []byte, packets [][]byte) {
	t.Helper()
	var err error
	stream, err = os.ReadFile("../ccsds/testdata/packets.bin")
	if err != nil {
		t.Fatal(err)
	}
	synced, err = os.ReadFile("../ccsds/testdata/sync_packets.bin")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../ccsds/testdata/packets.json")
	if err != nil {
		t.Fatal(err)
	}
	var fx struct{ Packets []fixturePacket }
	if err := json.Unmarshal(b, &fx); err != nil {
		t.Fatal(err)
	}
	for _, p := range fx.Packets {
		packets = append(packets, h(p.Hex))
	}
	return stream, synced, packets
}

var chunkings = map[string][]byte{
	"whole":  nil,
	"bytes":  bytes.Repeat([]byte{1}, 1<<15),
	"ragged": bytes.Repeat([]byte{3, 250, 7, 0, 91, 200, 1, 13}, 1<<12),
}

func run(t *testing.T, c Config, data, cuts []byte) framingtest.Outcome {
	t.Helper()
	o, err := framingtest.Run(mustNew(t, c), framingtest.Split(data, cuts))
	if err != nil {
		t.Fatalf("decoder contract: %v", err)
	}
	return o
}

// TestCOSMOSExample decodes gr-satellites' space packets behind the ASM
// with COSMOS' settings, and the bare packets with Yamcs'
// GenericPacketInputStream settings for CCSDS (offset 4, length 2,
// adjustment 7 − 6 = 1).
func TestCOSMOSAndYamcsOnCCSDS(t *testing.T) {
	stream, synced, packets := fixture(t)
	for name, cuts := range chunkings {
		o := run(t, cosmos(), synced, cuts)
		if g := o.Good(); !reflect.DeepEqual(g, packets) || o.Counters.Discarded != 0 || o.Counters.SyncLosses != 0 {
			t.Fatalf("COSMOS/%s: %d of %d packets, counters %+v", name, len(g), len(packets), o.Counters)
		}
		o = run(t, cfg(4, 2, 1, 0), stream, cuts)
		if g := o.Good(); !reflect.DeepEqual(g, packets) {
			t.Fatalf("Yamcs/%s: %d of %d packets", name, len(g), len(packets))
		}
	}
}

// TestSyncDamage: the same corruptions as CADUs, behind a sync marker, with
// exact counters.
func TestSyncDamage(t *testing.T) {
	_, synced, packets := fixture(t)
	// offsets of each unit in the synced stream
	var at []int
	off := 0
	for _, p := range packets {
		at = append(at, off)
		off += 4 + len(p)
	}
	type want struct {
		good, oversize, undersize, short, discarded, losses, regained int
	}
	f := func(name string, c Config, data []byte, w want, lost ...int) {
		t.Helper()
		for cname, cuts := range chunkings {
			o := run(t, c, data, cuts)
			k := o.Counters
			got := want{k.Good, k.Rejects[framing.RejectOversize], k.Rejects[framing.RejectUndersize], k.Rejects[framing.RejectShort],
				k.Discarded, k.SyncLosses, k.SyncRegained}
			if got != w {
				t.Fatalf("%s/%s: %+v, want %+v", name, cname, got, w)
			}
			var wantGood [][]byte
			for i, p := range packets {
				if !contains(lost, i) {
					wantGood = append(wantGood, p)
				}
			}
			if !reflect.DeepEqual(o.Good(), wantGood) {
				t.Fatalf("%s/%s: %d good units, want %d", name, cname, len(o.Good()), len(wantGood))
			}
		}
	}
	edit := func(fn func(b []byte) []byte) []byte { return fn(bytes.Clone(synced)) }
	n := len(packets)
	f("clean", cosmos(), synced, want{good: n})
	garbage := []byte("not a packet \x1a\xcf\xfc")
	f("garbage", cosmos(), edit(func(b []byte) []byte {
		return append(b[:at[3]], append(bytes.Clone(garbage), b[at[3]:]...)...)
	}), want{good: n, discarded: len(garbage), losses: 1, regained: 1})
	// A length above the maximum behind a good marker: the marker's first
	// byte is dropped, the search finds the next unit.
	small := cosmos()
	small.Max = 4 + 6 + 300
	var big []int
	for i, p := range packets {
		if 4+len(p) > small.Max {
			big = append(big, i)
		}
	}
	bigBytes, episodes := 0, 0
	for j, i := range big {
		bigBytes += 4 + len(packets[i])
		if j == 0 || big[j-1] != i-1 {
			episodes++ // oversize units in a row are one episode
		}
	}
	if len(big) < 2 || episodes < 1 {
		t.Fatal("fixture has no large packets")
	}
	f("oversize", small, synced, want{good: n - len(big), oversize: len(big), discarded: bigBytes, losses: episodes, regained: episodes}, big...)
	// A length that says less than the header (the length counts the whole
	// unit, marker included, and reads 3): undersize, the marker's first
	// byte dropped, the rest discarded up to the next unit.
	whole := Config{Sync: h("1acffc1d"), Offset: 4, Size: 2, Scale: 1, Adjustment: -6, Max: 100}
	u1, u2 := h("1acffc1d000701"), h("1acffc1d0008ab02")
	o := run(t, whole, bytes.Join([][]byte{u1, h("1acffc1d0003"), []byte("xyz"), u2}, nil), nil)
	if k := o.Counters; k.Good != 2 || k.Rejects[framing.RejectUndersize] != 1 || k.Discarded != 9 || k.SyncLosses != 1 || k.SyncRegained != 1 ||
		!reflect.DeepEqual(o.Good(), [][]byte{u1, u2}) {
		t.Fatalf("undersize: %+v", k)
	}
	// Bytes cut from one unit with the CRC on: the next marker is inside
	// its window; the unit is short, the next ones are recovered.
	crc := cosmos()
	crc.CRC = true
	var crcStream []byte
	var crcUnits [][]byte
	for _, p := range packets[:10] {
		u := append(bytes.Clone(p), 0, 0)
		binary.BigEndian.PutUint16(u[4:], uint16(len(u)-7))
		binary.BigEndian.PutUint16(u[len(u)-2:], crc16.Checksum(u[:len(u)-2]))
		crcUnits = append(crcUnits, u)
		crcStream = append(append(crcStream, h("1acffc1d")...), u...)
	}
	o = run(t, crc, crcStream, nil)
	if !reflect.DeepEqual(o.Good(), crcUnits) {
		t.Fatalf("crc: %d good", len(o.Good()))
	}
	// unit 5 is the largest; cut 3 bytes from its middle
	p5 := 0
	for _, u := range crcUnits[:5] {
		p5 += 4 + len(u)
	}
	cut := append(bytes.Clone(crcStream[:p5+4+len(crcUnits[5])/2]), crcStream[p5+4+len(crcUnits[5])/2+3:]...)
	o = run(t, crc, cut, nil)
	k := o.Counters
	if k.Good != 9 || k.Rejects[framing.RejectShort] != 1 || k.Discarded != 4+len(crcUnits[5])-3 || k.SyncLosses != 1 || k.SyncRegained != 1 {
		t.Fatalf("cut with CRC: %+v", k)
	}
	want9 := append(append([][]byte{}, crcUnits[:5]...), crcUnits[6:]...)
	if !reflect.DeepEqual(o.Good(), want9) {
		t.Fatal("cut with CRC: the units after the cut are not all recovered")
	}
	// A flipped CRC bit, no loss: RejectCRC, the unit kept for a flag policy.
	flip := bytes.Clone(crcStream)
	flip[p5+4+len(crcUnits[5])-1] ^= 1
	o = run(t, crc, flip, nil)
	if k := o.Counters; k.Good != 9 || k.Rejects[framing.RejectCRC] != 1 || k.Stored != 10 || k.SyncLosses != 0 {
		t.Fatalf("flipped CRC: %+v", k)
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestNoSyncIsFatal: without a marker a bad length ends the stream.
func TestNoSyncIsFatal(t *testing.T) {
	c := cfg(0, 2, 0, 2)
	c.Max = 10
	in := []byte{0, 3, 'a', 'b', 'c', 0, 9, 1, 2, 3}
	o := run(t, c, in, nil)
	k := o.Counters
	if k.Good != 1 || !k.Fatal || k.Rejects[framing.RejectOversize] != 1 {
		t.Fatalf("counters %+v", k)
	}
	d := mustNew(t, cfg(1, 1, -3, 0))
	if r := d.Decode([]byte{9, 1, 0}); !r.Fatal || r.Reject != framing.RejectUndersize {
		t.Fatalf("undersize: %+v", r)
	}
	if r := d.Decode([]byte{9, 9, 0}); !r.Fatal {
		t.Fatalf("fatal is not sticky: %+v", r)
	}
}

func TestFinish(t *testing.T) {
	c := cosmos()
	d := mustNew(t, c)
	r := d.Finish(h("1acffc1d0001"))
	if r.Reject != framing.RejectShort || !bytes.Equal(r.Unit, h("0001")) || r.Wire != 6 {
		t.Fatalf("truncated: %+v", r)
	}
	r = d.Finish(h("1acf"))
	if r.Discarded != 2 || r.Unit != nil {
		t.Fatalf("marker prefix at EOF: %+v", r)
	}
}

func TestZeroAllocs(t *testing.T) {
	_, synced, _ := fixture(t)
	d := mustNew(t, cosmos())
	if n := testing.AllocsPerRun(100, func() { d.Decode(synced) }); n != 0 {
		t.Fatalf("%v allocs", n)
	}
}

func FuzzDecoder(f *testing.F) {
	f.Add([]byte("\x00\x03abc\x00\x01x"), []byte{2, 2}, uint8(0), uint8(2), int8(0), uint8(2), uint16(40), false, false, false)
	f.Add(append(h("1acffc1d0000000000020000"), h("1acffc1d00000000ffff")...), []byte{5, 1}, uint8(8), uint8(2), int8(1), uint8(4), uint16(200), true, false, false)
	f.Add(h("1acffc1d0300ab1acffc1d01ff"), []byte{}, uint8(4), uint8(1), int8(2), uint8(0), uint16(30), true, true, true)
	f.Fuzz(func(t *testing.T, data, cuts []byte, offset, size uint8, adj int8, strip uint8, max uint16, sync, little, crc bool) {
		c := Config{Offset: int(offset % 16), Size: int(size%4) + 1, LittleEndian: little, Scale: 1,
			Adjustment: int(adj), Strip: int(strip % 20), Max: int(max), CRC: crc}
		if sync {
			c.Sync = h("1acffc1d")[:c.Offset%5]
		}
		if c.Validate() != nil {
			return
		}
		mk := func() *Decoder { return mustNew(t, c) }
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
	})
}

func BenchmarkCOSMOS(b *testing.B) {
	var stream []byte
	for i := range 64 {
		p := []byte{0x08, byte(i), 0xc0, 0, 0x03, 0xf9} // 1018 data bytes → 1024-byte packet
		p = append(p, make([]byte, 1018)...)
		stream = append(append(stream, 0x1a, 0xcf, 0xfc, 0x1d), p...)
	}
	d := mustNew(b, cosmos())
	b.SetBytes(1028)
	b.ReportAllocs()
	buf := stream
	for b.Loop() {
		r := d.Decode(buf)
		if r.Wire != 1028 {
			b.Fatalf("%+v", r)
		}
		buf = buf[r.N:]
		if len(buf) == 0 {
			buf = stream
		}
	}
}
