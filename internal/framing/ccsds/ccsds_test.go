package ccsds

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/crc16"
	"github.com/meridian-telemetry/meridian/internal/framing/framingtest"
	"github.com/meridian-telemetry/meridian/internal/framing/sequence"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readJSON(t testing.TB, name string, v any) {
	t.Helper()
	if err := json.Unmarshal(readFile(t, name), v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// chunkings are the read patterns every fixture is decoded with.
var chunkings = map[string][]byte{
	"whole":   nil,
	"bytes":   bytes.Repeat([]byte{1}, 1<<16),
	"ragged":  bytes.Repeat([]byte{3, 250, 7, 0, 91, 200, 1, 13}, 1<<12),
	"prime17": bytes.Repeat([]byte{17}, 1<<12),
}

func run(t testing.TB, dec framing.Decoder, data, cuts []byte) framingtest.Outcome {
	t.Helper()
	o, err := framingtest.Run(dec, framingtest.Split(data, cuts))
	if err != nil {
		t.Fatalf("decoder contract: %v", err)
	}
	return o
}

func TestHeaders(t *testing.T) {
	// 0x0B 0x45: version 0, type 0, secondary header, APID 0x345;
	// 0xC0 0x07: unsegmented, count 7; data length 0x0010.
	ph := ParsePacketHeader([]byte{0x0b, 0x45, 0xc0, 0x07, 0x00, 0x10})
	want := framing.PacketHeader{SecHeader: true, APID: 0x345, SeqFlags: 3, SeqCount: 7, DataLength: 16}
	if ph != want {
		t.Fatalf("packet header %+v, want %+v", ph, want)
	}
	if b := AppendPacketHeader(nil, ph); !bytes.Equal(b, []byte{0x0b, 0x45, 0xc0, 0x07, 0x00, 0x10}) {
		t.Fatalf("packet header encodes to % x", b)
	}
	// 0x02 0xA5: version 0, SCID 0x02A, VCID 2, OCF 1; MC 0xFE, VC 0x01.
	fh := ParseFrameHeader([]byte{0x02, 0xa5, 0xfe, 0x01, 0x18, 0x00})
	wantF := framing.FrameHeader{SCID: 0x2a, VCID: 2, OCF: true, MCCount: 0xfe, VCCount: 1, DataFieldStatus: 0x1800}
	if fh != wantF {
		t.Fatalf("frame header %+v, want %+v", fh, wantF)
	}
	if b := AppendFrameHeader(nil, fh); !bytes.Equal(b, []byte{0x02, 0xa5, 0xfe, 0x01, 0x18, 0x00}) {
		t.Fatalf("frame header encodes to % x", b)
	}
}

func TestConfigValidate(t *testing.T) {
	f := func(err error, ok bool) {
		t.Helper()
		if (err == nil) != ok || (err != nil && !errors.Is(err, ErrConfig)) {
			t.Fatalf("Validate = %v, want ok=%v", err, ok)
		}
	}
	f(DefaultPacketConfig().Validate(), true)
	f(PacketConfig{MaxLength: 6}.Validate(), false)
	f(PacketConfig{MaxLength: MaxPacket + 1}.Validate(), false)
	f(PacketConfig{MaxLength: 7}.Validate(), true)
	fc := DefaultFrameConfig()
	f(fc.Validate(), false) // no frame length
	fc.FrameLength = 1115
	f(fc.Validate(), true)
	fc.ASM = nil
	f(fc.Validate(), false)
	fc.ASM = make([]byte, 9)
	f(fc.Validate(), false)
	f(FrameConfig{ASM: []byte{0x7e}, FrameLength: 7, FECF: true}.Validate(), false)
	f(FrameConfig{ASM: []byte{0x7e}, FrameLength: 8, FECF: true}.Validate(), true)
}

type fixturePacket struct {
	Offset, Length, Version, Type int
	SecHeader                     bool `json:"sec_header"`
	APID                          int
	SeqFlags                      int `json:"seq_flags"`
	SeqCount                      int `json:"seq_count"`
	DataLength                    int `json:"data_length"`
	Hex                           string
	CRCOK                         *bool `json:"crc_ok"`
}

type nodePacket struct {
	APID       int
	Type       int
	SecHeader  bool   `json:"sec_header"`
	SeqFlags   int    `json:"seq_flags"`
	SeqCount   int    `json:"seq_count"`
	DataLength int    `json:"data_length"`
	DataHex    string `json:"data_hex"`
}

func checkPacket(t *testing.T, i int, e framingtest.Event, p fixturePacket) {
	t.Helper()
	h := e.Meta.Packet
	got := fixturePacket{Length: e.Wire, Version: int(h.Version), Type: int(h.Type), SecHeader: h.SecHeader,
		APID: int(h.APID), SeqFlags: int(h.SeqFlags), SeqCount: int(h.SeqCount), DataLength: int(h.DataLength),
		Hex: hex.EncodeToString(e.Unit), Offset: p.Offset, CRCOK: p.CRCOK}
	if e.Meta.Kind != framing.MetaPacket || !reflect.DeepEqual(got, p) {
		t.Fatalf("packet %d: got %+v\nwant %+v", i, got, p)
	}
}

// TestPacketsFromGrSatellites decodes the packets gr-satellites built and
// compares every header field and byte with what gr-satellites parsed, and
// with what @serialport/parser-spacepacket split from the same stream.
func TestPacketsFromGrSatellites(t *testing.T) {
	data := readFile(t, "packets.bin")
	var want struct{ Packets []fixturePacket }
	readJSON(t, "packets.json", &want)
	var node struct{ Packets []nodePacket }
	readJSON(t, "packets.node.json", &node)
	if len(want.Packets) != len(node.Packets) || len(want.Packets) < 40 {
		t.Fatalf("fixtures disagree: %d vs %d packets", len(want.Packets), len(node.Packets))
	}
	for name, cuts := range chunkings {
		t.Run(name, func(t *testing.T) {
			dec, err := NewPacketDecoder(DefaultPacketConfig())
			if err != nil {
				t.Fatal(err)
			}
			o := run(t, dec, data, cuts)
			if len(o.Events) != len(want.Packets) {
				t.Fatalf("%d events, want %d packets: %v", len(o.Events), len(want.Packets), o.Events)
			}
			var track sequence.Packets
			for i, e := range o.Events {
				if e.Reject != framing.RejectNone || e.Meta.CRC != framing.CRCNone {
					t.Fatalf("packet %d: %v", i, e)
				}
				checkPacket(t, i, e, want.Packets[i])
				n := node.Packets[i]
				h := e.Meta.Packet
				gotNode := nodePacket{APID: int(h.APID), Type: int(h.Type), SecHeader: h.SecHeader,
					SeqFlags: int(h.SeqFlags), SeqCount: int(h.SeqCount), DataLength: int(h.DataLength),
					DataHex: hex.EncodeToString(e.Unit[PacketHeaderSize:])}
				if gotNode != n {
					t.Fatalf("packet %d against the Node parser: %+v, want %+v", i, gotNode, n)
				}
				track.Observe(h.APID, h.SeqCount)
			}
			// The generator skipped 3 counts once, and wrapped APID 0x123
			// past 16383.
			if s := track.Stats(); s.Missing != 3 || s.Repeats != 0 {
				t.Fatalf("sequence %+v, want 3 missing", s)
			}
		})
	}
}

func TestPacketCRCFromGrSatellites(t *testing.T) {
	data := readFile(t, "packets_crc.bin")
	var want struct{ Packets []fixturePacket }
	readJSON(t, "packets_crc.json", &want)
	cfg := DefaultPacketConfig()
	cfg.CRC = true
	for name, cuts := range chunkings {
		t.Run(name, func(t *testing.T) {
			dec, _ := NewPacketDecoder(cfg)
			o := run(t, dec, data, cuts)
			bad := 0
			for i, e := range o.Events {
				p := want.Packets[i]
				checkPacket(t, i, e, p)
				wantCRC, wantReject := framing.CRCGood, framing.RejectNone
				if !*p.CRCOK {
					wantCRC, wantReject = framing.CRCBad, framing.RejectCRC
					bad++
				}
				if e.Meta.CRC != wantCRC || e.Reject != wantReject {
					t.Fatalf("packet %d: crc %v reject %v, gr-satellites says ok=%v", i, e.Meta.CRC, e.Reject, *p.CRCOK)
				}
			}
			c := o.Counters
			if len(o.Events) != len(want.Packets) || bad != len(want.Packets)/5 || c.Rejects[framing.RejectCRC] != bad ||
				c.Good != len(want.Packets)-bad || c.Stored != len(want.Packets) {
				t.Fatalf("counters %+v with %d bad", c, bad)
			}
		})
	}
}

func packetBytes(apid, count uint16, n int) []byte {
	b := AppendPacketHeader(nil, framing.PacketHeader{APID: apid, SeqFlags: 3, SeqCount: count, DataLength: uint16(n - 1)})
	return append(b, bytes.Repeat([]byte{byte(count)}, n)...)
}

// TestPacketDamage: each kind of bad input has one defined outcome, counted
// exactly, and the packets before it are all delivered.
func TestPacketDamage(t *testing.T) {
	var good []byte
	for i := range 5 {
		good = append(good, packetBytes(7, uint16(i), 10+i)...)
	}
	type want struct {
		good    int
		rejects map[framing.Reject]int
		fatal   bool
		stored  int
		discard int
	}
	f := func(name string, cfg PacketConfig, data []byte, w want) {
		t.Helper()
		for cname, cuts := range chunkings {
			dec, err := NewPacketDecoder(cfg)
			if err != nil {
				t.Fatal(err)
			}
			o := run(t, dec, data, cuts)
			c := o.Counters
			if w.rejects == nil {
				w.rejects = map[framing.Reject]int{}
			}
			for k, v := range c.Rejects {
				if v == 0 {
					delete(c.Rejects, k)
				}
			}
			if c.Good != w.good || !reflect.DeepEqual(c.Rejects, w.rejects) || c.Fatal != w.fatal || c.Stored != w.stored || c.Discarded != w.discard {
				t.Fatalf("%s/%s: counters %+v, want %+v", name, cname, c, w)
			}
			for i, u := range o.Good() {
				if i < 5 && !cfg.CRC && !bytes.Equal(u, packetBytes(7, uint16(i), 10+i)) {
					t.Fatalf("%s/%s: good packet %d is % x", name, cname, i, u)
				}
			}
		}
	}
	def := DefaultPacketConfig()
	f("clean", def, good, want{good: 5, stored: 5})
	badVersion := append(bytes.Clone(good), 0x20, 0, 0xc0, 0, 0, 0, 1) // version 1
	f("version", def, badVersion, want{good: 5, rejects: map[framing.Reject]int{framing.RejectVersion: 1}, fatal: true, stored: 5})
	f("oversize", PacketConfig{MaxLength: 100}, append(bytes.Clone(good), packetBytes(7, 5, 95)...),
		want{good: 5, rejects: map[framing.Reject]int{framing.RejectOversize: 1}, fatal: true, stored: 5})
	f("at the maximum", PacketConfig{MaxLength: 101}, append(bytes.Clone(good), packetBytes(7, 5, 95)...), want{good: 6, stored: 6})
	f("truncated last", def, append(bytes.Clone(good), packetBytes(7, 5, 40)[:20]...),
		want{good: 5, rejects: map[framing.Reject]int{framing.RejectShort: 1}, stored: 6})
	f("truncated header", def, append(bytes.Clone(good), 0x00, 0x07),
		want{good: 5, rejects: map[framing.Reject]int{framing.RejectShort: 1}, stored: 6})
	// With a CRC, a 7-byte packet has no room for one: undersize, not stored,
	// and the stream goes on.
	crcCfg := PacketConfig{MaxLength: MaxPacket, CRC: true}
	withCRC := func(p []byte) []byte {
		c := crc16.Checksum(p[:len(p)-2])
		return binary.BigEndian.AppendUint16(p[:len(p)-2], c)
	}
	var crcStream []byte
	crcStream = append(crcStream, withCRC(packetBytes(7, 0, 10))...)
	crcStream = append(crcStream, packetBytes(7, 1, 1)...)
	crcStream = append(crcStream, withCRC(packetBytes(7, 2, 12))...)
	f("undersize for a CRC", crcCfg, crcStream, want{good: 2, rejects: map[framing.Reject]int{framing.RejectUndersize: 1}, stored: 2})
}

// TestPacketFatalIsSticky: after a fatal header, Decode keeps saying so and
// consumes nothing, even when good bytes follow.
func TestPacketFatalIsSticky(t *testing.T) {
	dec, _ := NewPacketDecoder(DefaultPacketConfig())
	bad := append([]byte{0xe0, 0, 0, 0, 0, 0, 0}, packetBytes(1, 1, 3)...)
	for range 3 {
		r := dec.Decode(bad)
		if !r.Fatal || r.N != 0 || r.Reject != framing.RejectVersion || r.Meta.Packet.Version != 7 {
			t.Fatalf("result %+v", r)
		}
	}
	if r := dec.Finish(bad); r.Discarded != len(bad) || r.Reject != framing.RejectNone {
		t.Fatalf("Finish after fatal: %+v", r)
	}
	if r := dec.Finish(nil); r.N != 0 || r.Fatal {
		t.Fatalf("Finish on nothing: %+v", r)
	}
	if r := dec.Decode(packetBytes(1, 1, 3)); r.Fatal || r.Wire != 9 {
		t.Fatalf("after Finish the decoder is not reset: %+v", r)
	}
}

type fixtureFrame struct {
	Offset, Version, SCID, VCID int
	OCF                         bool
	MCCount                     int `json:"mc_count"`
	VCCount                     int `json:"vc_count"`
	DataFieldStatus             int `json:"data_field_status"`
	FECF                        int
	CRCOK                       bool `json:"crc_ok"`
}

type caduFixture struct {
	ASM         string
	FrameLength int `json:"frame_length"`
	Frames      []fixtureFrame
	data        []byte
}

func loadCADU(t testing.TB) caduFixture {
	var fx caduFixture
	readJSON(t, "cadu.json", &fx)
	fx.data = readFile(t, "cadu.bin")
	if fx.ASM != "1acffc1d" || fx.FrameLength != 1115 || len(fx.data) != len(fx.Frames)*1119 {
		t.Fatalf("unexpected fixture: asm %s length %d, %d bytes", fx.ASM, fx.FrameLength, len(fx.data))
	}
	return fx
}

func (fx caduFixture) frame(i int) []byte { return fx.data[i*1119+4 : (i+1)*1119] }

func frameDecoder(t testing.TB, fecf, strip bool) *FrameDecoder {
	t.Helper()
	cfg := DefaultFrameConfig()
	cfg.FrameLength, cfg.FECF, cfg.StripASM = 1115, fecf, strip
	d, err := NewFrameDecoder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestFramesFromGrSatellites decodes gr-satellites' CADUs with the FECF
// checked and compares every header field, then the sequence tracker's
// view of the counts.
func TestFramesFromGrSatellites(t *testing.T) {
	fx := loadCADU(t)
	for name, cuts := range chunkings {
		t.Run(name, func(t *testing.T) {
			o := run(t, frameDecoder(t, true, true), fx.data, cuts)
			if len(o.Events) != len(fx.Frames) || o.Counters.Good != len(fx.Frames) {
				t.Fatalf("events %v", o.Events)
			}
			var track sequence.Frames
			for i, e := range o.Events {
				h := e.Meta.Frame
				w := fx.Frames[i]
				got := fixtureFrame{Offset: w.Offset, Version: int(h.Version), SCID: int(h.SCID), VCID: int(h.VCID),
					OCF: h.OCF, MCCount: int(h.MCCount), VCCount: int(h.VCCount), DataFieldStatus: int(h.DataFieldStatus),
					FECF: int(binary.BigEndian.Uint16(e.Unit[len(e.Unit)-2:])), CRCOK: e.Meta.CRC == framing.CRCGood}
				if got != w || e.Meta.Kind != framing.MetaFrame || e.Wire != 1119 || !bytes.Equal(e.Unit, fx.frame(i)) {
					t.Fatalf("frame %d: %+v, want %+v", i, got, w)
				}
				track.Observe(h.SCID, h.VCID, h.MCCount, h.VCCount)
			}
			// The generator skipped 4 counts on one virtual channel; master
			// channel counts run through their wrap without a gap.
			want := sequence.FrameStats{Frames: 24, VCMissing: 4, Spacecraft: 2}
			if s := track.Stats(); s != want {
				t.Fatalf("sequence %+v, want %+v", s, want)
			}
		})
	}
}

// TestFrameDamage corrupts gr-satellites' CADUs and checks the exact
// counters, and that every frame the damage did not touch is recovered.
func TestFrameDamage(t *testing.T) {
	fx := loadCADU(t)
	const cadu = 1119
	at := func(i int) int { return i * cadu }
	type want struct {
		good      int
		crc       int
		short     int
		discarded int
		losses    int
		regained  int
		lost      []int          // frames not delivered as good
		altered   map[int][]byte // frames delivered as good but not as sent
	}
	f := func(name string, fecf bool, data []byte, w want) {
		t.Helper()
		for cname, cuts := range chunkings {
			o := run(t, frameDecoder(t, fecf, true), data, cuts)
			c := o.Counters
			got := want{good: c.Good, crc: c.Rejects[framing.RejectCRC], short: c.Rejects[framing.RejectShort],
				discarded: c.Discarded, losses: c.SyncLosses, regained: c.SyncRegained, lost: w.lost, altered: w.altered}
			if !reflect.DeepEqual(got, w) {
				t.Fatalf("%s/%s: %+v, want %+v\n%v", name, cname, got, w, o.Events)
			}
			var wantGood [][]byte
			for i := range fx.Frames {
				if a, ok := w.altered[i]; ok {
					wantGood = append(wantGood, a)
				} else if !contains(w.lost, i) {
					wantGood = append(wantGood, fx.frame(i))
				}
			}
			if g := o.Good(); !reflect.DeepEqual(g, wantGood) {
				t.Fatalf("%s/%s: %d good frames recovered, want %d", name, cname, len(g), len(wantGood))
			}
		}
	}
	edit := func(fn func(b []byte) []byte) []byte { return fn(bytes.Clone(fx.data)) }

	f("clean", true, fx.data, want{good: 24})
	f("FECF bit flipped", true, edit(func(b []byte) []byte { b[at(6)-1] ^= 0x10; return b }),
		want{good: 23, crc: 1, lost: []int{5}})
	f("data bits flipped in two frames", true, edit(func(b []byte) []byte {
		b[at(2)+600] ^= 0x01
		b[at(9)+7] ^= 0x80
		return b
	}), want{good: 22, crc: 2, lost: []int{2, 9}})
	// 100 bytes cut from frame 7's data: its window runs 100 bytes into
	// CADU 8, whose ASM is found inside it. Frame 7 is short, 1019 bytes
	// are discarded, and frame 8 on is recovered.
	f("bytes cut out", true, edit(func(b []byte) []byte {
		return append(b[:at(7)+500], b[at(7)+600:]...)
	}), want{good: 23, short: 1, discarded: cadu - 100, losses: 1, regained: 1, lost: []int{7}})
	// 3 bytes cut: the window ends inside CADU 8's ASM, which the decoder
	// finds by looking 3 bytes past it.
	f("3 bytes cut out", true, edit(func(b []byte) []byte {
		return append(b[:at(7)+500], b[at(7)+503:]...)
	}), want{good: 23, short: 1, discarded: cadu - 3, losses: 1, regained: 1, lost: []int{7}})
	f("3 bytes cut out of the last frame", true, edit(func(b []byte) []byte {
		return append(b[:at(23)+500], b[at(23)+503:]...)
	}), want{good: 23, short: 1, lost: []int{23}})
	// A cut that takes the start of CADU 11's ASM: frame 10 fails its FECF
	// with no ASM inside (bad, in place), CADU 11 cannot be found and is
	// discarded up to CADU 12.
	f("cut through an ASM", true, edit(func(b []byte) []byte {
		return append(b[:at(10)+1000], b[at(11)+2:]...)
	}), want{good: 22, crc: 1, discarded: 2*cadu - 121 - cadu, losses: 1, regained: 1, lost: []int{10, 11}})
	garbage := bytes.Repeat([]byte{0x55, 0x1a, 0xcf}, 13) // 39 bytes, ASM prefixes but no ASM
	f("garbage between CADUs", true, edit(func(b []byte) []byte {
		return append(b[:at(4)], append(bytes.Clone(garbage), b[at(4):]...)...)
	}), want{good: 24, discarded: len(garbage), losses: 1, regained: 1})
	f("garbage twice", true, edit(func(b []byte) []byte {
		b = append(b[:at(20)], append(bytes.Clone(garbage[:5]), b[at(20):]...)...)
		return append(b[:at(4)], append(bytes.Clone(garbage), b[at(4):]...)...)
	}), want{good: 24, discarded: len(garbage) + 5, losses: 2, regained: 2})
	f("joined mid-stream", true, fx.data[300:], want{good: 23, discarded: cadu - 300, losses: 1, regained: 1, lost: []int{0}})
	f("truncated last", true, fx.data[:len(fx.data)-500], want{good: 23, short: 1, lost: []int{23}})
	f("garbage at the end", true, append(bytes.Clone(fx.data), 1, 2, 3), want{good: 24, discarded: 3, losses: 1})
	// Without the FECF a cut is seen at the next boundary only: frame 7 is
	// delivered with 100 bytes of frame 8 in it (nothing can tell), and
	// frame 8, now misaligned, is discarded up to CADU 9.
	noFECF := edit(func(b []byte) []byte { return append(b[:at(7)+500], b[at(7)+600:]...) })
	f("bytes cut out, no FECF", false, noFECF, want{good: 23, discarded: cadu - 100, losses: 1, regained: 1,
		lost: []int{8}, altered: map[int][]byte{7: noFECF[at(7)+4 : at(8)]}})
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestFrameKeepsOrStripsASM(t *testing.T) {
	fx := loadCADU(t)
	o := run(t, frameDecoder(t, true, false), fx.data[:2*1119], nil)
	if len(o.Events) != 2 || !bytes.Equal(o.Events[1].Unit, fx.data[1119:2*1119]) {
		t.Fatalf("ASM not kept: %v", o.Events)
	}
	// A short marker (one byte, 0x7E) and a short frame.
	d, err := NewFrameDecoder(FrameConfig{ASM: []byte{0x7e}, FrameLength: 8, FECF: true})
	if err != nil {
		t.Fatal(err)
	}
	fr := AppendFrameHeader(nil, framing.FrameHeader{SCID: 1, VCID: 3, MCCount: 9, VCCount: 4})
	fr = binary.BigEndian.AppendUint16(fr, crc16.Checksum(fr))
	stream := append(append([]byte{0x00, 0x7e}, fr...), append([]byte{0x7e}, fr...)...)
	o = run(t, d, stream, nil)
	c := o.Counters
	if c.Good != 2 || c.Discarded != 1 || c.SyncLosses != 1 || o.Events[1].Meta.Frame.VCID != 3 {
		t.Fatalf("counters %+v events %v", c, o.Events)
	}
}

func TestZeroAllocs(t *testing.T) {
	fx := loadCADU(t)
	fd := frameDecoder(t, true, false)
	if n := testing.AllocsPerRun(100, func() { fd.Decode(fx.data) }); n != 0 {
		t.Fatalf("frame decode: %v allocs", n)
	}
	pd, _ := NewPacketDecoder(PacketConfig{MaxLength: MaxPacket, CRC: true})
	p := packetBytes(3, 3, 1024)
	if n := testing.AllocsPerRun(100, func() { pd.Decode(p) }); n != 0 {
		t.Fatalf("packet decode: %v allocs", n)
	}
}

// TestDocExamples checks the worked examples of docs/framing.md.
func TestDocExamples(t *testing.T) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pd, _ := NewPacketDecoder(DefaultPacketConfig())
	r := pd.Decode(unhex("0801C005000341424344"))
	want := framing.PacketHeader{SecHeader: true, APID: 1, SeqFlags: 3, SeqCount: 5, DataLength: 3}
	if r.Wire != 10 || r.Meta.Packet != want {
		t.Fatalf("packet example: %+v", r)
	}
	pc, _ := NewPacketDecoder(PacketConfig{MaxLength: MaxPacket, CRC: true})
	if r := pc.Decode(unhex("0801C0050003414205C9")); r.Meta.CRC != framing.CRCGood {
		t.Fatalf("packet CRC example: %+v", r)
	}
	cadu := unhex("1ACFFC1D" + "02A5FE011800" + "0102030405060708" + "C911")
	cfg := FrameConfig{ASM: DefaultASM, FrameLength: 16, FECF: true}
	fd, _ := NewFrameDecoder(cfg)
	r = fd.Decode(cadu)
	wantF := framing.FrameHeader{SCID: 42, VCID: 2, OCF: true, MCCount: 0xfe, VCCount: 1, DataFieldStatus: 0x1800}
	if r.Meta.CRC != framing.CRCGood || r.Meta.Frame != wantF || r.Wire != 20 {
		t.Fatalf("frame example: %+v", r)
	}
	f := func(name string, data []byte, good, crc, short, discarded, losses, regained int) {
		t.Helper()
		fd, _ := NewFrameDecoder(cfg)
		k := run(t, fd, data, nil).Counters
		if k.Good != good || k.Rejects[framing.RejectCRC] != crc || k.Rejects[framing.RejectShort] != short ||
			k.Discarded != discarded || k.SyncLosses != losses || k.SyncRegained != regained {
			t.Fatalf("%s: %+v", name, k)
		}
	}
	two := append(bytes.Clone(cadu), cadu...)
	flipped := bytes.Clone(two)
	flipped[9] ^= 4
	f("bit flipped", flipped, 1, 1, 0, 0, 0, 0)
	f("3 bytes lost", append(bytes.Clone(cadu[:12]), two[15:]...), 1, 0, 1, 17, 1, 1)
	f("garbage", append(append(bytes.Clone(cadu), bytes.Repeat([]byte{0x55, 0x1a, 0xcf}, 13)...), cadu...), 2, 0, 0, 39, 1, 1)
}
