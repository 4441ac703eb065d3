package frame

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestSplit(t *testing.T) {
	f := func(in []byte, max uint32, wantPayload []byte, wantN int, wantErr error) {
		t.Helper()
		p, n, err := Split(in, max)
		if !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
			t.Fatalf("Split(% x) err = %v, want %v", in, err, wantErr)
		}
		if n != wantN || !bytes.Equal(p, wantPayload) {
			t.Fatalf("Split(% x) = % x, %d; want % x, %d", in, p, n, wantPayload, wantN)
		}
	}
	f(nil, 10, nil, 0, ErrShort)
	f([]byte{0, 0, 0}, 10, nil, 0, ErrShort)
	f([]byte{0, 0, 0, 0}, 10, []byte{}, 4, nil) // keepalive
	f([]byte{0, 0, 0, 2, 'h'}, 10, nil, 0, ErrShort)
	f([]byte{0, 0, 0, 2, 'h', 'i', 'x'}, 10, []byte("hi"), 6, nil)
	f([]byte{0, 0, 0, 11}, 10, nil, 0, ErrTooLarge)
	f([]byte{0, 0, 0, 10}, 10, nil, 0, ErrShort) // exactly max is allowed
	f(append([]byte{0, 0, 0, 10}, "0123456789"...), 10, []byte("0123456789"), 14, nil)
	f([]byte{0, 0, 0, 11, 'x'}, 10, nil, 0, ErrTooLarge) // judged on the header alone
	f([]byte{0x80, 0, 0, 1, 1}, 10, nil, 0, ErrControl)
	f([]byte{0xff, 0xff, 0xff, 0xff}, 10, nil, 0, ErrControl)
}

func TestSplitPayloadCannotGrowIntoNextFrame(t *testing.T) {
	b := append(AppendData(nil, []byte("a")), AppendData(nil, []byte("b"))...)
	p, _, _ := Split(b, 10)
	if cap(p) != 1 {
		t.Fatalf("payload cap %d: an append would overwrite the next frame", cap(p))
	}
}

func TestGatewayFrames(t *testing.T) {
	f := func(got, want []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Fatalf("got % x, want % x", got, want)
		}
	}
	f(AppendHeartbeat(nil), []byte{0, 0, 0, 1, 0x01})
	f(AppendGoAway(nil), []byte{0, 0, 0, 1, 0x04})
	f(AppendAck(nil, 258), []byte{0, 0, 0, 9, 0x02, 0, 0, 0, 0, 0, 0, 1, 2})
	f(AppendClose(nil, ReasonIdleTimeout, "idle"), []byte{0, 0, 0, 7, 0x03, 0, 2, 'i', 'd', 'l', 'e'})
	f(AppendData([]byte{9}, []byte("ab")), []byte{9, 0, 0, 0, 2, 'a', 'b'})
}

func TestCloseTextIsCutAtARuneBoundary(t *testing.T) {
	text := strings.Repeat("é", MaxCloseText) // 2 bytes each
	b := AppendClose(nil, ReasonInternalError, text)
	p, _, err := Split(b, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseControl(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Text) > MaxCloseText || !utf8.ValidString(c.Text) {
		t.Fatalf("text of %d bytes, valid UTF-8 %v", len(c.Text), utf8.ValidString(c.Text))
	}
}

func TestParseControl(t *testing.T) {
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
	f(nil, Control{}, ErrMalformed)
	f([]byte{0x01}, Control{Type: TypeHeartbeat}, nil)
	f([]byte{0x02, 0, 0, 0, 0, 0, 0, 0, 7}, Control{Type: TypeAck, Ack: 7}, nil)
	f([]byte{0x02, 0, 0}, Control{}, ErrMalformed)
	f([]byte{0x03, 0, 1, 'b', 'y', 'e'}, Control{Type: TypeClose, Reason: ReasonShutdown, Text: "bye"}, nil)
	f([]byte{0x03, 0}, Control{}, ErrMalformed)
	f([]byte{0x04}, Control{Type: TypeGoAway}, nil)
	f([]byte{0x7f, 1, 2, 3}, Control{Type: 0x7f}, nil) // unknown: skippable
	f([]byte{0x02, 0, 0, 0, 0, 0, 0, 0, 7, 0xaa}, Control{Type: TypeAck, Ack: 7}, nil)
}

func TestReasons(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Reasons() {
		if seen[r.String()] {
			t.Fatalf("duplicate name %q", r)
		}
		seen[r.String()] = true
		if r.Wire() != (r < 100) {
			t.Fatalf("%v: Wire() = %v", r, r.Wire())
		}
	}
	// The wire codes are the contract: they never change meaning.
	for code, name := range map[Reason]string{1: "shutdown", 2: "idle_timeout", 3: "frame_timeout",
		4: "frame_too_large", 5: "unsupported_control_frame", 6: "server_busy", 7: "not_authorized", 8: "internal_error"} {
		if code.String() != name {
			t.Fatalf("reason %d = %q, want %q", code, code, name)
		}
	}
	if Reason(42).String() != "reason_42" || Reason(42).Text() != "reason 42" {
		t.Fatal(Reason(42).String(), Reason(42).Text())
	}
	// Reasons is complete, and every reason has its own name and text.
	if len(Reasons()) != len(reasonNames) || len(reasonTexts) != len(reasonNames) {
		t.Fatalf("%d reasons, %d names, %d texts", len(Reasons()), len(reasonNames), len(reasonTexts))
	}
	for _, r := range Reasons() {
		if _, ok := reasonTexts[r]; !ok {
			t.Errorf("%v has no text", r)
		}
	}
}

// stream parses a byte stream delivered in chunks the way a session does:
// append what arrives, take every whole frame, keep the rest, which it
// returns (from the frame that failed, on error).
func stream(chunks [][]byte, max uint32) (frames [][]byte, rest []byte, err error) {
	var buf []byte
	for _, c := range chunks {
		buf = append(buf, c...)
		for {
			p, n, err := Split(buf, max)
			if errors.Is(err, ErrShort) {
				break
			}
			if err != nil {
				return frames, buf, err
			}
			frames = append(frames, append([]byte(nil), p...))
			buf = buf[n:]
		}
	}
	return frames, buf, nil
}

// FuzzSplitStream feeds random bytes split at random points: a TCP stream can
// cut a frame anywhere, and where it is cut must not change what is decoded.
func FuzzSplitStream(f *testing.F) {
	f.Add(AppendData(AppendData(nil, []byte("hello")), nil), []byte{1, 3, 7}, uint16(64))
	f.Add([]byte{0, 0, 0, 200, 1, 2}, []byte{2}, uint16(100))    // oversize
	f.Add([]byte{0x80, 0, 0, 0}, []byte{}, uint16(10))           // control
	f.Add([]byte{0, 0, 0, 3, 'a', 'b'}, []byte{1, 1}, uint16(8)) // truncated
	f.Fuzz(func(t *testing.T, data, cuts []byte, max16 uint16) {
		max := uint32(max16)
		whole, rest, wholeErr := stream([][]byte{data}, max)
		// Nothing is lost or invented: the frames, encoded again, and what
		// is left are the input. What is left is an incomplete frame, or
		// the frame that failed.
		var again []byte
		for _, p := range whole {
			again = AppendData(again, p)
		}
		if !bytes.Equal(append(again, rest...), data) {
			t.Fatalf("frames and rest do not add up to the input")
		}
		want := kind(wholeErr)
		if wholeErr == nil {
			want = ErrShort
		}
		if _, _, err := Split(rest, max); !errors.Is(err, want) || err == nil {
			t.Fatalf("rest % x gives %v, stream ended with %v", rest, err, wholeErr)
		}
		chunks := cutAt(data, cuts)
		split, _, splitErr := stream(chunks, max)
		if kind(wholeErr) != kind(splitErr) {
			t.Fatalf("whole err %v, split err %v", wholeErr, splitErr)
		}
		if len(whole) != len(split) {
			t.Fatalf("whole gave %d frames, split %d", len(whole), len(split))
		}
		for i := range whole {
			if !bytes.Equal(whole[i], split[i]) {
				t.Fatalf("frame %d differs", i)
			}
			if uint32(len(whole[i])) > max {
				t.Fatalf("frame %d of %d bytes exceeds max %d", i, len(whole[i]), max)
			}
		}
	})
}

// FuzzParseControl: any payload decodes or fails cleanly, and what encodes
// decodes back to itself.
func FuzzParseControl(f *testing.F) {
	f.Add([]byte{0x02, 0, 0, 0, 0, 0, 0, 0, 7})
	f.Add([]byte{0x03, 0, 4, 'b', 'u', 's', 'y'})
	f.Add([]byte{0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		c, err := ParseControl(p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		var enc []byte
		switch c.Type {
		case TypeAck:
			enc = AppendAck(nil, c.Ack)
		case TypeClose:
			if len(c.Text) > MaxCloseText {
				return
			}
			enc = AppendClose(nil, c.Reason, c.Text)
		default:
			return
		}
		back, err := ParseControl(enc[HeaderSize:])
		if err != nil || back != c {
			t.Fatalf("round trip %+v -> %+v, %v", c, back, err)
		}
	})
}

func BenchmarkSplit(b *testing.B) {
	for _, size := range []int{64, 1024, 64 * 1024} {
		b.Run(byteSize(size), func(b *testing.B) {
			const frames = 64
			var buf []byte
			p := make([]byte, size)
			for range frames {
				buf = AppendData(buf, p)
			}
			b.SetBytes(int64(len(buf)) / frames)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; {
				rest := buf
				for len(rest) > 0 && i < b.N {
					_, n, err := Split(rest, 64<<10) // the gateway's default --max-frame
					if err != nil {
						b.Fatal(err)
					}
					rest = rest[n:]
					i++
				}
			}
		})
	}
}

func byteSize(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%dKiB", n/1024)
	}
	return fmt.Sprintf("%dB", n)
}

// kind names which sentinel an error carries.
func kind(err error) error {
	for _, k := range []error{ErrTooLarge, ErrControl, ErrShort, ErrMalformed} {
		if errors.Is(err, k) {
			return k
		}
	}
	return err
}

// cutAt splits data into chunks at the points cuts give, for the stream
// fuzzers: each cut byte takes that many bytes (modulo what is left).
func cutAt(data, cuts []byte) [][]byte {
	var chunks [][]byte
	for _, c := range cuts {
		if len(data) == 0 {
			break
		}
		n := int(c) % (len(data) + 1)
		chunks = append(chunks, data[:n])
		data = data[n:]
	}
	return append(chunks, data)
}
