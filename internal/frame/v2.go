package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Protocol v2 (docs/protocol.md, "Protocol v2"): the station opens the
// connection with a HELLO control frame and learns from the WELCOME where to
// resume; the gateway's ACK then carries the station's own sequence number.
// A station that sends no HELLO speaks v1, byte for byte.

// Version2 is the protocol version a v2 HELLO and WELCOME carry.
const Version2 = 2

// CtlType is the first payload byte of a station→gateway control frame, one
// whose length word has ControlBit set.
type CtlType byte

// Station→gateway control types. Any other type ends the session with
// CLOSE(5).
const (
	CtlHello CtlType = 0x01
	CtlPong  CtlType = 0x02
)

func (t CtlType) String() string {
	switch t {
	case CtlHello:
		return "HELLO"
	case CtlPong:
		return "PONG"
	}
	return fmt.Sprintf("control(0x%02x)", byte(t))
}

// TypeWelcome is the gateway's answer to a HELLO.
const TypeWelcome Type = 0x05

// Sizes and bounds of v2 frames, payload only.
const (
	helloFixedSize = 1 + 1 + 8 + 8 + 2 // type, version, epoch, first, name length
	welcomeSize    = 1 + 1 + 8 + 8     // type, version, epoch, next
	// MaxName bounds a HELLO's station name, in bytes.
	MaxName = 255
	// MaxControl bounds a station control frame's payload: a HELLO with the
	// longest name. A longer control length is refused from its header.
	MaxControl = helloFixedSize + MaxName
)

// ErrUnknownControl means a station control frame of a type this gateway
// does not know. Like any malformed control frame it ends the session with
// CLOSE(5).
var ErrUnknownControl = errors.New("frame: unknown control frame type")

// Hello is a decoded HELLO.
type Hello struct {
	Version uint8
	Epoch   uint64 // names one numbering of the station's frames; never 0
	First   uint64 // oldest frame the station still holds; ≥ 1
	Name    string // optional station name, UTF-8, ≤ MaxName bytes
}

// StationControl is a decoded station→gateway control frame.
type StationControl struct {
	Type  CtlType
	Hello Hello // CtlHello
}

// SplitAny parses one station→gateway frame at the start of b, data or
// control. It is Split, except that a length with ControlBit set is a control
// frame: its payload (at most MaxControl bytes, else ErrMalformed, judged on
// the header) comes back with control true.
func SplitAny(b []byte, max uint32) (payload []byte, n int, control bool, err error) {
	if len(b) < HeaderSize {
		return nil, 0, false, ErrShort
	}
	l := binary.BigEndian.Uint32(b)
	if l&ControlBit == 0 {
		payload, n, err = Split(b, max)
		return payload, n, false, err
	}
	l &^= ControlBit
	if l > MaxControl {
		return nil, 0, true, fmt.Errorf("%w: control frame of %d bytes, limit %d", ErrMalformed, l, MaxControl)
	}
	end := HeaderSize + int(l)
	if len(b) < end {
		return nil, 0, true, ErrShort
	}
	return b[HeaderSize:end:end], end, true, nil
}

// ParseStationControl decodes the payload of a station control frame. An
// empty payload, a short or inconsistent body, a HELLO of another version,
// epoch 0, first 0 or a name that is not UTF-8 is ErrMalformed; an unknown
// type is ErrUnknownControl. Bytes after a known body are allowed, for later
// versions to extend a frame.
func ParseStationControl(payload []byte) (StationControl, error) {
	if len(payload) == 0 {
		return StationControl{}, fmt.Errorf("%w: empty control frame", ErrMalformed)
	}
	c := StationControl{Type: CtlType(payload[0])}
	switch c.Type {
	case CtlPong:
		return c, nil
	case CtlHello:
	default:
		return StationControl{}, fmt.Errorf("%w: 0x%02x", ErrUnknownControl, payload[0])
	}
	if len(payload) < helloFixedSize {
		return StationControl{}, fmt.Errorf("%w: HELLO of %d bytes", ErrMalformed, len(payload))
	}
	h := Hello{
		Version: payload[1],
		Epoch:   binary.BigEndian.Uint64(payload[2:]),
		First:   binary.BigEndian.Uint64(payload[10:]),
	}
	nl := int(binary.BigEndian.Uint16(payload[18:]))
	name := payload[helloFixedSize:]
	switch {
	case h.Version != Version2:
		return StationControl{}, fmt.Errorf("%w: HELLO version %d, this gateway speaks %d", ErrMalformed, h.Version, Version2)
	case h.Epoch == 0:
		return StationControl{}, fmt.Errorf("%w: HELLO epoch 0", ErrMalformed)
	case h.First == 0:
		return StationControl{}, fmt.Errorf("%w: HELLO first 0 (sequence numbers start at 1)", ErrMalformed)
	case nl > MaxName:
		return StationControl{}, fmt.Errorf("%w: HELLO name of %d bytes, limit %d", ErrMalformed, nl, MaxName)
	case nl > len(name):
		return StationControl{}, fmt.Errorf("%w: HELLO name of %d bytes in %d", ErrMalformed, nl, len(name))
	case !utf8.Valid(name[:nl]):
		return StationControl{}, fmt.Errorf("%w: HELLO name is not UTF-8", ErrMalformed)
	}
	h.Name = string(name[:nl])
	c.Hello = h
	return c, nil
}

// AppendHello appends a whole HELLO frame, length word included. A name
// longer than MaxName is cut at a rune boundary.
func AppendHello(dst []byte, h Hello) []byte {
	name := cutUTF8(h.Name, MaxName)
	dst = binary.BigEndian.AppendUint32(dst, ControlBit|uint32(helloFixedSize+len(name)))
	dst = append(dst, byte(CtlHello), h.Version)
	dst = binary.BigEndian.AppendUint64(dst, h.Epoch)
	dst = binary.BigEndian.AppendUint64(dst, h.First)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(name)))
	return append(dst, name...)
}

// AppendPong appends a whole PONG frame, the station's answer to a
// HEARTBEAT.
func AppendPong(dst []byte) []byte {
	return append(binary.BigEndian.AppendUint32(dst, ControlBit|1), byte(CtlPong))
}

// AppendWelcome appends a WELCOME frame: the version and epoch the session
// speaks, and the sequence number the gateway wants next.
func AppendWelcome(dst []byte, version uint8, epoch, next uint64) []byte {
	dst = append(AppendHeader(dst, welcomeSize), byte(TypeWelcome), version)
	dst = binary.BigEndian.AppendUint64(dst, epoch)
	return binary.BigEndian.AppendUint64(dst, next)
}
