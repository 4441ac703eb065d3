// Package framing holds what the ground-segment decoders share: the result a
// decoder hands its caller, the rejection kinds, the metadata taken from CCSDS
// headers, and the sync-marker search. The decoders themselves live in
// framing/ccsds and framing/lengthfield; they know bytes, not sockets, start
// no goroutines and never log. docs/framing.md is the contract.
//
// # How a caller drives a decoder
//
// The caller owns one buffer per link, at least MaxUnit() bytes long. It
// appends what it reads from the socket and calls Decode on the unconsumed
// bytes until Decode returns a Result with N == 0:
//
//	for {
//		r := dec.Decode(buf[start:end])
//		account(r) // counters; store r.Unit per the link's CRC policy
//		start += r.N
//		if r.Fatal {
//			return closeLink(r.Reject)
//		}
//		if r.N == 0 {
//			break // compact buf[start:end] to the front, read more
//		}
//	}
//
// At EOF the caller drives Finish the same way on what is left, until it
// returns N == 0. A Unit aliases the buffer: it is valid until the caller
// overwrites those bytes (compacts or reuses the buffer), so it is stored
// or copied first. framingtest.Run is this loop, with the contract checked.
//
// Every byte the decoder consumes is accounted for exactly once: N ==
// Discarded + Wire. Summed over a stream (and Finish), Discarded + Wire is the
// input length, so a caller's counters can be checked exactly.
package framing

import (
	"bytes"
	"fmt"
)

// Names of the framings, as configured per link and stored in the
// Meridian-Framing header.
const (
	NameCCSDSPacket = "ccsds-packet"
	NameCCSDSFrame  = "ccsds-frame"
	NameLengthField = "length-field"
)

// Decoder is an incremental, stateful decoder of one link's byte stream.
// A Decoder is used by one goroutine at a time.
type Decoder interface {
	// Decode looks at the front of buf and returns the next outcome: a unit,
	// a rejected unit, discarded bytes, or, with N == 0, a request for more
	// input (or Fatal). It never reads more than MaxUnit bytes of buf and
	// never keeps a reference to buf after it returns, except through
	// Result.Unit. When len(buf) >= MaxUnit(), the result has N > 0 or Fatal
	// set: a full buffer always makes progress.
	Decode(buf []byte) Result
	// Finish is Decode at the end of the stream (EOF): nothing more will
	// arrive, so it never asks for more. The caller calls it on what is
	// left, like Decode, until it returns N == 0 (with rest empty, or Fatal
	// state cleared): a unit cut short is RejectShort with its bytes in
	// Unit, bytes outside any unit are Discarded. When it returns N == 0
	// the decoder is reset and may serve a new connection.
	Finish(rest []byte) Result
	// MaxUnit is the most bytes one outcome needs: the size of the caller's
	// buffer. It is fixed by the configuration, never by the input.
	MaxUnit() int
	// Name is the framing's name (NameCCSDSPacket, ...).
	Name() string
}

// Reject says why a unit is bad. The zero value means the unit is good.
type Reject uint8

// Rejection kinds. They are bounded, stable metric label values.
const (
	RejectNone Reject = iota
	// RejectCRC: the unit's CRC (FECF, packet CRC) does not match. Its
	// boundaries are known; Unit holds it so that a "flag" policy can store it.
	RejectCRC
	// RejectOversize: the length announced is above the configured maximum.
	// Nothing is read beyond the header; Unit is nil.
	RejectOversize
	// RejectUndersize: the length announced is smaller than the unit's own
	// header (or its CRC field) needs. Unit is nil.
	RejectUndersize
	// RejectShort: the unit was cut short: the stream ended inside it
	// (Finish), or, behind a sync marker, the next marker appeared inside it
	// (bytes were lost). From Finish, Unit holds the bytes that arrived.
	RejectShort
	// RejectVersion: a CCSDS version field is not the one the framing
	// carries: the stream is not what the link is configured for.
	RejectVersion
)

func (r Reject) String() string {
	switch r {
	case RejectNone:
		return "none"
	case RejectCRC:
		return "crc"
	case RejectOversize:
		return "oversize"
	case RejectUndersize:
		return "undersize"
	case RejectShort:
		return "short"
	case RejectVersion:
		return "version"
	}
	return fmt.Sprintf("reject(%d)", uint8(r))
}

// CRC is the state of a unit's check value.
type CRC uint8

// CRC states.
const (
	CRCNone CRC = iota // not checked (not configured)
	CRCGood
	CRCBad
)

func (c CRC) String() string {
	switch c {
	case CRCNone:
		return "none"
	case CRCGood:
		return "good"
	case CRCBad:
		return "bad"
	}
	return fmt.Sprintf("crc(%d)", uint8(c))
}

// Result is one outcome of Decode or Finish.
type Result struct {
	// N is how many bytes at the front of the input are consumed; the caller
	// drops them. N == Discarded + Wire.
	N int
	// Discarded counts the bytes of N that belong to no unit: skipped while
	// searching for sync, or the start of a unit that could not be framed.
	Discarded int
	// Wire is the unit's length on the wire, sync marker and stripped header
	// included; 0 when there is no unit.
	Wire int
	// Unit is what to store, aliasing the input, its capacity cut at its
	// end. Nil when there is nothing to store. With Reject != RejectNone it
	// is the bad unit (for a "flag" policy), or nil when its extent is
	// unknown.
	Unit []byte
	// Meta describes Unit (or the rejected unit, as far as it was read).
	Meta Meta
	// Reject is why the unit is bad; RejectNone for a good unit.
	Reject Reject
	// Fatal means the decoder cannot find another unit boundary in this
	// stream (no sync marker to search for): the caller must close the link.
	// N is 0 and Decode keeps returning the same result.
	Fatal bool
	// SyncLost is set on the first result of a sync-loss episode: the
	// decoder began discarding bytes. It is set once per episode.
	SyncLost bool
	// SyncRegained is set on the first good unit after a sync-loss episode;
	// it ends the episode.
	SyncRegained bool
}

// More reports whether the decoder needs more input before it can go on.
func (r Result) More() bool { return r.N == 0 && !r.Fatal }

// MetaKind says which header fields of Meta are set.
type MetaKind uint8

// Metadata kinds.
const (
	MetaNone   MetaKind = iota
	MetaPacket          // Meta.Packet is set
	MetaFrame           // Meta.Frame is set
)

// Meta is what the stream headers need to know about a unit. It is a small
// value with no pointers, so a Result costs no allocation.
type Meta struct {
	// Framing names the framing that produced the unit (NameCCSDSPacket,
	// ...), for the Meridian-Framing header. A constant: no allocation.
	Framing string
	Kind    MetaKind
	CRC     CRC
	Packet  PacketHeader
	Frame   FrameHeader
}

// PacketHeader is a CCSDS space packet primary header (CCSDS 133.0-B).
type PacketHeader struct {
	Version    uint8 // 3 bits; 0 for space packets
	Type       uint8 // 1 bit: 0 telemetry, 1 telecommand
	SecHeader  bool  // secondary header flag
	APID       uint16
	SeqFlags   uint8  // 2 bits: 3 unsegmented, 1 first, 0 continuation, 2 last
	SeqCount   uint16 // 14 bits, wraps at 16384
	DataLength uint16 // packet data length field: bytes after the header − 1
}

// FrameHeader is a TM transfer frame primary header (CCSDS 132.0-B).
type FrameHeader struct {
	Version         uint8  // 2 bits; 0 for TM frames
	SCID            uint16 // spacecraft id, 10 bits
	VCID            uint8  // virtual channel id, 3 bits
	OCF             bool   // operational control field present
	MCCount         uint8  // master channel frame count
	VCCount         uint8  // virtual channel frame count
	DataFieldStatus uint16 // secondary header flag, sync flag, packet order, segment length id, first header pointer
}

// Sync finds a sync marker in a byte stream and keeps the state of sync-loss
// episodes. The decoders behind a marker (CADUs, length-field with a marker)
// embed it. The zero value is not usable; use NewSync.
type Sync struct {
	marker []byte
	lost   bool // in a sync-loss episode: bytes discarded, no good unit since
}

// MaxMarker bounds the length of a sync marker.
const MaxMarker = 8

// NewSync returns a search for marker, which must be 1 to MaxMarker bytes
// (checked by the decoders' Validate). It keeps its own copy.
func NewSync(marker []byte) Sync {
	return Sync{marker: bytes.Clone(marker)}
}

// Marker returns the marker searched for.
func (s *Sync) Marker() []byte { return s.marker }

// Len is the marker's length.
func (s *Sync) Len() int { return len(s.marker) }

// At reports whether buf starts with the marker; buf must hold at least
// Len() bytes.
func (s *Sync) At(buf []byte) bool { return bytes.HasPrefix(buf, s.marker) }

// Skip returns the result of discarding bytes at the front of buf, which
// does not start with the marker (or starts with a marker found to be
// false, from=1): it skips to the next marker at or after from, or, when
// there is none, to the last Len()-1 bytes, which may be the start of one
// (at EOF, to the end). It opens a sync-loss episode if none is open.
func (s *Sync) Skip(buf []byte, from int, eof bool) Result {
	n := len(buf) - (len(s.marker) - 1)
	if eof {
		n = len(buf)
	}
	if i := bytes.Index(buf[from:], s.marker); i >= 0 {
		n = from + i
	}
	n = max(n, from)
	n = min(n, len(buf))
	r := Result{N: n, Discarded: n}
	if n > 0 {
		r.SyncLost = s.Lose()
	}
	return r
}

// Inside looks for a marker that starts inside buf[from:end], the window of
// a unit that failed its CRC: one there means bytes were lost and the next
// unit begins there. A marker may start inside the window and end after
// it; when buf ends before that can be told, more is true and the caller
// waits for up to Len()-1 bytes beyond end (at EOF it takes the answer as
// no). A marker at end or later is the next unit in place, not a loss.
func (s *Sync) Inside(buf []byte, from, end int) (pos int, more bool) {
	lim := min(len(buf), end+len(s.marker)-1)
	if i := bytes.Index(buf[from:lim], s.marker); i >= 0 {
		if from+i < end {
			return from + i, false
		}
		return -1, false
	}
	if lim == end+len(s.marker)-1 {
		return -1, false
	}
	for p := max(from, len(buf)-len(s.marker)+1); p < end; p++ {
		if bytes.HasPrefix(s.marker, buf[p:]) {
			return -1, true
		}
	}
	return -1, false
}

// Lose opens a sync-loss episode; it reports whether one was not open yet.
func (s *Sync) Lose() bool {
	if s.lost {
		return false
	}
	s.lost = true
	return true
}

// Regain ends a sync-loss episode on a good unit; it reports whether one was
// open.
func (s *Sync) Regain() bool {
	was := s.lost
	s.lost = false
	return was
}

// Lost reports whether a sync-loss episode is open.
func (s *Sync) Lost() bool { return s.lost }

// Reset forgets the episode state, for a new connection.
func (s *Sync) Reset() { s.lost = false }
