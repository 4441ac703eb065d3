// Package frame is Meridian's wire protocol v1: the length-prefixed envelope,
// the gateway's control frames and the close reasons. It knows bytes, not
// sockets; docs/protocol.md is the contract it implements.
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// HeaderSize is the size of the length prefix in front of every frame.
const HeaderSize = 4

// ControlBit marks a station→gateway length as a control frame: HELLO and
// PONG in v2 (v2.go). A v1 session refuses it.
const ControlBit = 1 << 31

// Type is the first payload byte of a gateway→station frame.
type Type byte

// Gateway→station frame types. A station must skip types it does not know.
const (
	TypeHeartbeat Type = 0x01
	TypeAck       Type = 0x02
	TypeClose     Type = 0x03
	TypeGoAway    Type = 0x04
)

func (t Type) String() string {
	switch t {
	case TypeHeartbeat:
		return "HEARTBEAT"
	case TypeAck:
		return "ACK"
	case TypeClose:
		return "CLOSE"
	case TypeGoAway:
		return "GOAWAY"
	case TypeWelcome:
		return "WELCOME"
	}
	return fmt.Sprintf("type(0x%02x)", byte(t))
}

// Sizes of the fixed parts of control frames, payload only (without header).
const (
	ackPayloadSize      = 1 + 8
	closeMinPayloadSize = 1 + 2
	// MaxCloseText bounds the CLOSE text the gateway sends so that a CLOSE
	// always fits in a small write.
	MaxCloseText = 256
)

// Sentinel errors for protocol violations. Callers check them with errors.Is.
var (
	// ErrShort means the buffer does not yet hold a whole frame.
	ErrShort = errors.New("frame: incomplete frame")
	// ErrTooLarge means the length prefix exceeds the maximum frame size.
	ErrTooLarge = errors.New("frame: frame too large")
	// ErrControl means the length prefix has the control bit set: a control
	// frame, which Split (v1 framing) does not take; SplitAny does.
	ErrControl = errors.New("frame: unsupported control frame")
	// ErrMalformed means a gateway control frame's body is not well formed.
	ErrMalformed = errors.New("frame: malformed control frame")
)

// Split parses one station→gateway frame at the start of b. It returns the
// payload (aliasing b, its capacity cut at its end) and the number of bytes
// the frame takes. A zero-length payload is a keepalive.
//
// A complete header is judged at once, before any payload byte arrives: a
// length with ControlBit set is ErrControl, one above max is ErrTooLarge.
// Otherwise, when b holds less than a whole frame, Split returns nil, 0 and
// ErrShort; a caller that sizes its buffer for the rest reads the announced
// length with Length.
func Split(b []byte, max uint32) (payload []byte, n int, err error) {
	if len(b) < HeaderSize {
		return nil, 0, ErrShort
	}
	l := binary.BigEndian.Uint32(b)
	if l&ControlBit != 0 {
		return nil, 0, ErrControl
	}
	if l > max {
		return nil, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, l, max)
	}
	end := HeaderSize + int(l)
	if len(b) < end {
		return nil, 0, ErrShort
	}
	return b[HeaderSize:end:end], end, nil
}

// Length returns the length announced by the header at the start of b, or
// false when b is shorter than a header. It does not validate the length.
func Length(b []byte) (uint32, bool) {
	if len(b) < HeaderSize {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// AppendHeader appends the length prefix for a payload of n bytes.
func AppendHeader(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// AppendData appends a whole data frame carrying payload.
func AppendData(dst, payload []byte) []byte {
	return append(AppendHeader(dst, len(payload)), payload...)
}

// AppendHeartbeat appends a HEARTBEAT frame.
func AppendHeartbeat(dst []byte) []byte {
	return append(AppendHeader(dst, 1), byte(TypeHeartbeat))
}

// AppendGoAway appends a GOAWAY frame.
func AppendGoAway(dst []byte) []byte {
	return append(AppendHeader(dst, 1), byte(TypeGoAway))
}

// AppendAck appends an ACK frame for a cumulative count of accepted frames.
func AppendAck(dst []byte, count uint64) []byte {
	dst = append(AppendHeader(dst, ackPayloadSize), byte(TypeAck))
	return binary.BigEndian.AppendUint64(dst, count)
}

// AppendClose appends a CLOSE frame. Text longer than MaxCloseText bytes is
// cut at a rune boundary.
func AppendClose(dst []byte, r Reason, text string) []byte {
	text = cutUTF8(text, MaxCloseText)
	dst = append(AppendHeader(dst, closeMinPayloadSize+len(text)), byte(TypeClose))
	dst = binary.BigEndian.AppendUint16(dst, uint16(r))
	return append(dst, text...)
}

// cutUTF8 cuts s to at most n bytes, at a rune boundary.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Control is a decoded gateway→station frame.
type Control struct {
	Type   Type
	Ack    uint64 // TypeAck: cumulative count of accepted frames
	Reason Reason // TypeClose
	Text   string // TypeClose

	Version uint8  // TypeWelcome
	Epoch   uint64 // TypeWelcome
	Next    uint64 // TypeWelcome: the sequence number the gateway wants next
}

// ParseControl decodes the payload of a gateway→station frame. An unknown
// type is not an error: it comes back with only Type set, for the caller to
// skip. An empty payload or a known type with a short body is ErrMalformed.
func ParseControl(payload []byte) (Control, error) {
	if len(payload) == 0 {
		return Control{}, fmt.Errorf("%w: empty payload", ErrMalformed)
	}
	c := Control{Type: Type(payload[0])}
	body := payload[1:]
	switch c.Type {
	case TypeAck:
		if len(body) < 8 {
			return Control{}, fmt.Errorf("%w: ACK body of %d bytes", ErrMalformed, len(body))
		}
		c.Ack = binary.BigEndian.Uint64(body)
	case TypeClose:
		if len(body) < 2 {
			return Control{}, fmt.Errorf("%w: CLOSE body of %d bytes", ErrMalformed, len(body))
		}
		c.Reason = Reason(binary.BigEndian.Uint16(body))
		c.Text = string(body[2:])
	case TypeWelcome:
		if len(body) < welcomeSize-1 {
			return Control{}, fmt.Errorf("%w: WELCOME body of %d bytes", ErrMalformed, len(body))
		}
		c.Version = body[0]
		c.Epoch = binary.BigEndian.Uint64(body[1:])
		c.Next = binary.BigEndian.Uint64(body[9:])
	}
	// Extra bytes after a known body are allowed: later versions may extend
	// a frame without breaking v1 stations.
	return c, nil
}
