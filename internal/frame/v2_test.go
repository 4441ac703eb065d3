package frame

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

// hello builds a HELLO payload (without its length word) field by field, so
// that tests can write bodies the encoder would never produce.
func hello(version byte, epoch, first uint64, nameLen uint16, name string) []byte {
	p := []byte{byte(CtlHello), version}
	p = be64(p, epoch)
	p = be64(p, first)
	p = append(p, byte(nameLen>>8), byte(nameLen))
	return append(p, name...)
}

func be64(b []byte, v uint64) []byte {
	for i := 56; i >= 0; i -= 8 {
		b = append(b, byte(v>>i))
	}
	return b
}

func TestParseStationControl(t *testing.T) {
	f := func(in []byte, want StationControl, wantErr error) {
		t.Helper()
		c, err := ParseStationControl(in)
		if !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("ParseStationControl(% x) err = %v, want %v", in, err, wantErr)
		}
		if c != want {
			t.Fatalf("ParseStationControl(% x) = %+v, want %+v", in, c, want)
		}
	}
	ok := func(epoch, first uint64, name string) StationControl {
		return StationControl{Type: CtlHello, Hello: Hello{Version: Version2, Epoch: epoch, First: first, Name: name}}
	}
	long := strings.Repeat("n", MaxName)

	f(nil, StationControl{}, ErrMalformed)
	f([]byte{byte(CtlPong)}, StationControl{Type: CtlPong}, nil)
	f([]byte{byte(CtlPong), 0xaa}, StationControl{Type: CtlPong}, nil) // later versions may extend it
	f([]byte{0x00}, StationControl{}, ErrUnknownControl)
	f([]byte{0x03, 1, 2, 3}, StationControl{}, ErrUnknownControl)
	f([]byte{0xff}, StationControl{}, ErrUnknownControl)

	f(hello(2, 7, 1, 0, ""), ok(7, 1, ""), nil)
	f(hello(2, 1<<63, 1<<63+5, 7, "gs-eu-1"), ok(1<<63, 1<<63+5, "gs-eu-1"), nil)
	f(hello(2, ^uint64(0), ^uint64(0), MaxName, long), ok(^uint64(0), ^uint64(0), long), nil)
	f(hello(2, 7, 1, 3, "abcdef"), ok(7, 1, "abc"), nil) // bytes after the name: an extension
	f(hello(2, 7, 1, 2, "é"), ok(7, 1, "é"), nil)

	f(hello(2, 7, 1, 0, "")[:helloFixedSize-1], StationControl{}, ErrMalformed) // one byte short
	f([]byte{byte(CtlHello)}, StationControl{}, ErrMalformed)
	f(hello(1, 7, 1, 0, ""), StationControl{}, ErrMalformed)                    // version 1 has no HELLO
	f(hello(3, 7, 1, 0, ""), StationControl{}, ErrMalformed)                    // a version this gateway does not speak
	f(hello(2, 0, 1, 0, ""), StationControl{}, ErrMalformed)                    // epoch 0
	f(hello(2, 7, 0, 0, ""), StationControl{}, ErrMalformed)                    // first 0
	f(hello(2, 7, 1, MaxName+1, long+"n"), StationControl{}, ErrMalformed)      // name too long
	f(hello(2, 7, 1, 8, "gs-eu-1"), StationControl{}, ErrMalformed)             // name cut short
	f(hello(2, 7, 1, 0xffff, ""), StationControl{}, ErrMalformed)               // announced, absent
	f(hello(2, 7, 1, 2, "\xff\xfe"), StationControl{}, ErrMalformed)            // not UTF-8
	f(hello(2, 7, 1, 1, "é"), StationControl{}, ErrMalformed)                   // a rune cut in two
	f(append(hello(2, 7, 1, 0, ""), 0xff, 0xfe), ok(7, 1, ""), nil)             // bytes after, not UTF-8: not the name
	f(hello(2, 7, 1, 0, "")[:helloFixedSize-2], StationControl{}, ErrMalformed) // no name length
}

func TestParseStationControlNameDoesNotAliasInput(t *testing.T) {
	p := hello(2, 7, 1, 3, "abc")
	c, err := ParseStationControl(p)
	if err != nil {
		t.Fatal(err)
	}
	copy(p[helloFixedSize:], "xyz") // a session reuses its read buffer
	if c.Hello.Name != "abc" {
		t.Fatalf("name %q changed with the buffer", c.Hello.Name)
	}
}

func TestV2Frames(t *testing.T) {
	f := func(got []byte, want string) {
		t.Helper()
		w, err := hex.DecodeString(strings.ReplaceAll(want, " ", ""))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("got % x\nwant % x", got, w)
		}
	}
	f(AppendHello(nil, Hello{Version: Version2, Epoch: 1, First: 1}),
		"80000014 01 02 0000000000000001 0000000000000001 0000")
	f(AppendHello([]byte{0xee}, Hello{Version: Version2, Epoch: 0x0102030405060708, First: 0x1112131415161718, Name: "ab"}),
		"ee 80000016 01 02 0102030405060708 1112131415161718 0002 6162")
	f(AppendPong(nil), "80000001 02")
	f(AppendPong([]byte{0xee}), "ee 80000001 02")
	f(AppendWelcome(nil, Version2, 0x1122334455667788, 42),
		"00000012 05 02 1122334455667788 000000000000002a")
	f(AppendClose(nil, ReasonSuperseded, ReasonSuperseded.Text()),
		"0000000d 03 0009 73757065727365646564") // CLOSE(9, "superseded")
	// The longest HELLO is exactly MaxControl bytes of payload.
	long := AppendHello(nil, Hello{Version: Version2, Epoch: 1, First: 1, Name: strings.Repeat("n", MaxName)})
	if len(long) != HeaderSize+MaxControl || MaxControl != 275 {
		t.Fatalf("longest HELLO: %d bytes, MaxControl %d", len(long), MaxControl)
	}
}

func TestReasonSuperseded(t *testing.T) {
	r := ReasonSuperseded
	if uint16(r) != 9 || r.String() != "superseded" || !r.Wire() {
		t.Fatalf("reason 9: %d %q wire=%v", uint16(r), r, r.Wire())
	}
}

func TestHelloRoundTrip(t *testing.T) {
	for _, h := range []Hello{
		{Version: Version2, Epoch: 1, First: 1},
		{Version: Version2, Epoch: 0x1122334455667788, First: 1, Name: "gs-eu-1"},
		{Version: Version2, Epoch: ^uint64(0), First: ^uint64(0), Name: "kiruna.gs.example"},
		{Version: Version2, Epoch: 9, First: 1 << 40, Name: strings.Repeat("é", MaxName/2)},
	} {
		b := AppendHello(nil, h)
		p, n, control, err := SplitAny(b, 0)
		if err != nil || !control || n != len(b) {
			t.Fatalf("SplitAny(HELLO %+v) = %d, %v, %v", h, n, control, err)
		}
		c, err := ParseStationControl(p)
		if err != nil || c.Type != CtlHello || c.Hello != h {
			t.Fatalf("round trip %+v -> %+v, %v", h, c, err)
		}
	}
}

func TestAppendHelloCutsNameAtARuneBoundary(t *testing.T) {
	for _, name := range []string{
		strings.Repeat("é", MaxName),         // 2 bytes each: the cut falls inside one
		strings.Repeat("n", MaxName+1),       // one byte over
		"n" + strings.Repeat("€", MaxName),   // 3 bytes each
		strings.Repeat("🛰", MaxName/4+1),     // 4 bytes each
		strings.Repeat("n", MaxName),         // exactly the limit: kept whole
		strings.Repeat("n", MaxName-1) + "é", // 256 bytes: the é goes
	} {
		b := AppendHello(nil, Hello{Version: Version2, Epoch: 1, First: 1, Name: name})
		p, _, _, err := SplitAny(b, 0)
		if err != nil {
			t.Fatalf("%d-byte name: %v", len(name), err)
		}
		c, err := ParseStationControl(p)
		if err != nil {
			t.Fatalf("%d-byte name: %v", len(name), err)
		}
		got := c.Hello.Name
		if len(got) > MaxName || !utf8.ValidString(got) || !strings.HasPrefix(name, got) || len(got) < MaxName-3 {
			t.Fatalf("%d-byte name cut to %d bytes (valid UTF-8 %v)", len(name), len(got), utf8.ValidString(got))
		}
		if len(name) <= MaxName && got != name {
			t.Fatalf("a %d-byte name was cut", len(name))
		}
	}
}

func TestParseWelcome(t *testing.T) {
	f := func(in []byte, want Control, wantErr error) {
		t.Helper()
		c, err := ParseControl(in)
		if !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("ParseControl(% x) err = %v, want %v", in, err, wantErr)
		}
		if c != want {
			t.Fatalf("ParseControl(% x) = %+v, want %+v", in, c, want)
		}
	}
	w := AppendWelcome(nil, Version2, 0x1122334455667788, 42)
	want := Control{Type: TypeWelcome, Version: Version2, Epoch: 0x1122334455667788, Next: 42}
	f(w[HeaderSize:], want, nil)
	f(append(w[HeaderSize:len(w):len(w)], 0xaa), want, nil) // extended by a later version
	f(w[HeaderSize:len(w)-1], Control{}, ErrMalformed)
	f([]byte{byte(TypeWelcome)}, Control{}, ErrMalformed)
	f(AppendWelcome(nil, 3, ^uint64(0), ^uint64(0))[HeaderSize:],
		Control{Type: TypeWelcome, Version: 3, Epoch: ^uint64(0), Next: ^uint64(0)}, nil)
}

func TestSplitAny(t *testing.T) {
	f := func(in []byte, max uint32, wantPayload []byte, wantN int, wantControl bool, wantErr error) {
		t.Helper()
		p, n, control, err := SplitAny(in, max)
		if !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("SplitAny(% x) err = %v, want %v", in, err, wantErr)
		}
		if n != wantN || control != wantControl || !bytes.Equal(p, wantPayload) {
			t.Fatalf("SplitAny(% x) = % x, %d, %v; want % x, %d, %v", in, p, n, control, wantPayload, wantN, wantControl)
		}
	}
	f(nil, 10, nil, 0, false, ErrShort)
	f([]byte{0x80, 0, 0}, 10, nil, 0, false, ErrShort)
	// Data frames: exactly Split.
	f([]byte{0, 0, 0, 0}, 10, []byte{}, 4, false, nil)
	f([]byte{0, 0, 0, 2, 'h', 'i', 'x'}, 10, []byte("hi"), 6, false, nil)
	f([]byte{0, 0, 0, 2, 'h'}, 10, nil, 0, false, ErrShort)
	f([]byte{0, 0, 0, 11}, 10, nil, 0, false, ErrTooLarge)
	// Control frames.
	f([]byte{0x80, 0, 0, 1, 2, 0, 0}, 10, []byte{2}, 5, true, nil)
	f([]byte{0x80, 0, 0, 0}, 10, []byte{}, 4, true, nil) // empty: ParseStationControl refuses it
	f([]byte{0x80, 0, 0, 2, 1}, 10, nil, 0, true, ErrShort)
	f([]byte{0x80, 0, 0, 20}, 10, nil, 0, true, ErrShort)             // a control frame is not bound by max-frame
	f([]byte{0x80, 0, 0x01, 0x13}, 1<<20, nil, 0, true, ErrShort)     // 275 = MaxControl
	f([]byte{0x80, 0, 0x01, 0x14}, 1<<20, nil, 0, true, ErrMalformed) // 276: judged on the header
	f([]byte{0xff, 0xff, 0xff, 0xff}, 1<<30, nil, 0, true, ErrMalformed)
	f(append([]byte{0x80, 0, 0x01, 0x14}, make([]byte, 276)...), 1<<20, nil, 0, true, ErrMalformed)
}

func TestSplitAnyPayloadCannotGrowIntoNextFrame(t *testing.T) {
	b := append(AppendPong(nil), AppendData(nil, []byte("b"))...)
	p, _, _, _ := SplitAny(b, 10)
	if cap(p) != 1 {
		t.Fatalf("payload cap %d: an append would overwrite the next frame", cap(p))
	}
}

// docFrames returns the frames the worked example of docs/protocol.md
// (section 9.14) lists, in order: every line of its code blocks that starts
// with a length word, read as hex bytes up to the first word that is not a
// byte.
func docFrames(t *testing.T) [][]byte {
	t.Helper()
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "\n### 9.14 A worked example\n")
	if !ok {
		t.Fatal(`docs/protocol.md has no "### 9.14 A worked example"`)
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	if !strings.Contains(sec, fmt.Sprint(uint64(exampleEpoch))) {
		t.Fatalf("the example does not give the epoch in decimal, %d", uint64(exampleEpoch))
	}
	isByte := func(w string) bool {
		_, err := hex.DecodeString(w)
		return len(w) == 2 && err == nil
	}
	var frames [][]byte
	inCode := false
	for _, line := range strings.Split(sec, "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
			continue
		}
		words := strings.Fields(line)
		if !inCode || len(words) < HeaderSize || !isByte(words[0]) {
			continue
		}
		var b []byte
		for _, w := range words {
			if !isByte(w) {
				break
			}
			v, _ := hex.DecodeString(w)
			b = append(b, v...)
		}
		frames = append(frames, b)
	}
	return frames
}

const exampleEpoch = 0x1122334455667788

// TestWorkedExample proves the worked example of docs/protocol.md against
// the codec, byte for byte, and decodes each frame as its reader would.
func TestWorkedExample(t *testing.T) {
	helloFrame := func(first uint64) []byte {
		return AppendHello(nil, Hello{Version: Version2, Epoch: exampleEpoch, First: first, Name: "gs-eu-1"})
	}
	want := []struct {
		frame   []byte
		station bool // station → gateway
	}{
		{helloFrame(1), true},
		{AppendWelcome(nil, Version2, exampleEpoch, 1), false},
		{AppendData(nil, []byte("hi")), true},
		{AppendData(nil, []byte("sat")), true},
		{AppendAck(nil, 2), false},
		{AppendHeartbeat(nil), false},
		{AppendPong(nil), true},
		// The resume after a crash.
		{helloFrame(3), true},
		{AppendWelcome(nil, Version2, exampleEpoch, 3), false},
		{AppendData(nil, []byte("p3")), true},
		{AppendData(nil, []byte("p4")), true},
		{AppendData(nil, []byte("p5")), true},
		{AppendAck(nil, 5), false},
		// Supersede.
		{AppendClose(nil, ReasonSuperseded, ReasonSuperseded.Text()), false},
	}
	got := docFrames(t)
	if len(got) != len(want) {
		t.Fatalf("the document lists %d frames, the test expects %d", len(got), len(want))
	}
	for i, w := range want {
		if !bytes.Equal(got[i], w.frame) {
			t.Errorf("frame %d: document % x\n          codec    % x", i, got[i], w.frame)
			continue
		}
		// Each documented line is exactly one frame, and decodes.
		if w.station {
			p, n, control, err := SplitAny(got[i], 64<<10)
			if err != nil || n != len(got[i]) {
				t.Errorf("frame %d: SplitAny %d of %d bytes, %v", i, n, len(got[i]), err)
				continue
			}
			if control {
				if _, err := ParseStationControl(p); err != nil {
					t.Errorf("frame %d: %v", i, err)
				}
			}
			continue
		}
		p, n, err := Split(got[i], 300)
		if err != nil || n != len(got[i]) {
			t.Errorf("frame %d: Split %d of %d bytes, %v", i, n, len(got[i]), err)
			continue
		}
		if _, err := ParseControl(p); err != nil {
			t.Errorf("frame %d: %v", i, err)
		}
	}
	c, _ := ParseStationControl(got[0][HeaderSize:])
	if c.Hello != (Hello{Version: Version2, Epoch: exampleEpoch, First: 1, Name: "gs-eu-1"}) {
		t.Fatalf("the example's HELLO decodes to %+v", c.Hello)
	}
	w, _ := ParseControl(got[1][HeaderSize:])
	if w != (Control{Type: TypeWelcome, Version: Version2, Epoch: exampleEpoch, Next: 1}) {
		t.Fatalf("the example's WELCOME decodes to %+v", w)
	}
}

// FuzzParseStationControl: any payload decodes or fails with one of the two
// sentinels; what decodes obeys the documented rules and encodes back to a
// frame that decodes to itself.
func FuzzParseStationControl(f *testing.F) {
	f.Add(hello(2, 0x1122334455667788, 1, 7, "gs-eu-1"))
	f.Add(hello(2, 1, 1, 0, ""))
	f.Add(hello(2, 7, 1, 2, "\xff\xfe"))
	f.Add(hello(2, 7, 1, 9, "short"))
	f.Add(hello(3, 7, 1, 0, ""))
	f.Add(hello(2, 0, 0, 0, ""))
	f.Add([]byte{byte(CtlPong)})
	f.Add([]byte{0x03})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		c, err := ParseStationControl(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownControl) {
				t.Fatalf("error %v is neither ErrMalformed nor ErrUnknownControl", err)
			}
			if c != (StationControl{}) {
				t.Fatalf("error %v with a value %+v", err, c)
			}
			if len(p) > 0 && (CtlType(p[0]) == CtlHello || CtlType(p[0]) == CtlPong) == errors.Is(err, ErrUnknownControl) {
				t.Fatalf("type 0x%02x: %v", p[0], err)
			}
			return
		}
		switch c.Type {
		case CtlPong:
			if c.Hello != (Hello{}) {
				t.Fatalf("PONG with a HELLO %+v", c.Hello)
			}
			back, err := ParseStationControl(AppendPong(nil)[HeaderSize:])
			if err != nil || back != c {
				t.Fatalf("PONG round trip: %+v, %v", back, err)
			}
			return
		case CtlHello:
		default:
			t.Fatalf("decoded type %v", c.Type)
		}
		h := c.Hello
		if h.Version != Version2 || h.Epoch == 0 || h.First == 0 || len(h.Name) > MaxName || !utf8.ValidString(h.Name) {
			t.Fatalf("accepted HELLO %+v breaks the rules", h)
		}
		enc := AppendHello(nil, h)
		if !bytes.HasPrefix(p, enc[HeaderSize:]) {
			t.Fatalf("payload % x does not start with its re-encoding % x", p, enc[HeaderSize:])
		}
		q, n, control, err := SplitAny(enc, 0)
		if err != nil || !control || n != len(enc) {
			t.Fatalf("SplitAny of re-encoded HELLO: %d, %v, %v", n, control, err)
		}
		back, err := ParseStationControl(q)
		if err != nil || back != c {
			t.Fatalf("round trip %+v -> %+v, %v", c, back, err)
		}
	})
}

// frameOut is one frame out of SplitAny, copied.
type frameOut struct {
	control bool
	payload []byte
}

// streamAny is stream for SplitAny: what a v2 session does with what
// arrives.
func streamAny(chunks [][]byte, max uint32) (frames []frameOut, rest []byte, err error) {
	var buf []byte
	for _, c := range chunks {
		buf = append(buf, c...)
		for {
			p, n, control, err := SplitAny(buf, max)
			if errors.Is(err, ErrShort) {
				break
			}
			if err != nil {
				return frames, buf, err
			}
			frames = append(frames, frameOut{control, append([]byte(nil), p...)})
			buf = buf[n:]
		}
	}
	return frames, buf, nil
}

// FuzzSplitAnyStream is FuzzSplitStream for SplitAny: data and control
// frames in random bytes cut at random points decode the same however the
// stream is cut, and nothing is lost or invented.
func FuzzSplitAnyStream(f *testing.F) {
	hi := AppendHello(nil, Hello{Version: Version2, Epoch: 0x1122334455667788, First: 1, Name: "gs-eu-1"})
	ex := append(append(append(append([]byte(nil), hi...), AppendData(nil, []byte("hi"))...), AppendData(nil, []byte("sat"))...), AppendPong(nil)...)
	f.Add(ex, []byte{1, 3, 7, 30}, uint16(64))
	f.Add(append(AppendPong(nil), 0, 0, 0, 0), []byte{4}, uint16(0))
	f.Add([]byte{0x80, 0, 0x01, 0x14, 1}, []byte{2}, uint16(10)) // control over MaxControl
	f.Add([]byte{0x80, 0, 0x01, 0x13, 1}, []byte{2}, uint16(10)) // MaxControl, truncated
	f.Add([]byte{0, 0, 0, 200, 1, 2}, []byte{2}, uint16(100))    // data over max
	f.Add([]byte{0x80, 0, 0, 0}, []byte{}, uint16(10))           // empty control
	f.Fuzz(func(t *testing.T, data, cuts []byte, max16 uint16) {
		max := uint32(max16)
		whole, rest, wholeErr := streamAny([][]byte{data}, max)
		var again []byte
		for _, fr := range whole {
			if fr.control {
				if len(fr.payload) > MaxControl {
					t.Fatalf("control frame of %d bytes", len(fr.payload))
				}
				again = AppendHeader(again, len(fr.payload))
				again[len(again)-HeaderSize] |= 0x80
				again = append(again, fr.payload...)
			} else {
				if uint32(len(fr.payload)) > max {
					t.Fatalf("data frame of %d bytes exceeds max %d", len(fr.payload), max)
				}
				again = AppendData(again, fr.payload)
			}
		}
		if !bytes.Equal(append(again, rest...), data) {
			t.Fatalf("frames and rest do not add up to the input")
		}
		want := kind(wholeErr)
		if wholeErr == nil {
			want = ErrShort
		}
		if _, _, _, err := SplitAny(rest, max); !errors.Is(err, want) || err == nil {
			t.Fatalf("rest % x gives %v, stream ended with %v", rest, err, wholeErr)
		}
		if errors.Is(wholeErr, ErrControl) {
			t.Fatalf("SplitAny returned ErrControl: %v", wholeErr)
		}
		chunks := cutAt(data, cuts)
		split, _, splitErr := streamAny(chunks, max)
		if kind(wholeErr) != kind(splitErr) {
			t.Fatalf("whole err %v, split err %v", wholeErr, splitErr)
		}
		if len(whole) != len(split) {
			t.Fatalf("whole gave %d frames, split %d", len(whole), len(split))
		}
		for i := range whole {
			if whole[i].control != split[i].control || !bytes.Equal(whole[i].payload, split[i].payload) {
				t.Fatalf("frame %d differs", i)
			}
		}
	})
}
