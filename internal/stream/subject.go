package stream

import "strconv"

// SubjectPrefix is the first subject level of every telemetry message; the
// stream captures SubjectPrefix + ".>".
const SubjectPrefix = "telemetry"

// Token maps a station identity to a subject-safe token: every byte outside
// [A-Za-z0-9_-] becomes '-'. An IPv4 address keeps its shape (127.0.0.1 →
// 127-0-0-1), an IPv6 address too (fd00::1 → fd00--1), and a TLS name cannot
// add subject levels (gs-eu-1.example.net → gs-eu-1-example-net) nor carry
// wildcards. Token is idempotent, so a token given where an identity is
// expected (meridian tail --station) maps to itself.
//
// Distinct identities can share a token (a.b and a-b); consumers that must
// tell them apart read the Meridian-Station header, which keeps the identity
// verbatim.
func Token(identity string) string {
	if identity == "" {
		return "-"
	}
	safe := true
	for i := 0; i < len(identity); i++ {
		if !tokenByte(identity[i]) {
			safe = false
			break
		}
	}
	if safe {
		return identity // the common case allocates nothing
	}
	b := []byte(identity)
	for i, c := range b {
		if !tokenByte(c) {
			b[i] = '-'
		}
	}
	return string(b)
}

// Subject is the subject a station's frames are published on:
// telemetry.<Token(identity)>. It is the one mapping from identity to subject.
func Subject(identity string) string {
	return SubjectPrefix + "." + Token(identity)
}

// streamSubjects is what the stream captures.
var streamSubjects = []string{SubjectPrefix + ".>"}

func tokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// Headers of units read on ground-framing links (docs/framing.md, section
// 9), set where the framing provides them. Meridian-protocol frames carry
// none of them.
const (
	HeaderFraming  = "Meridian-Framing"   // ccsds-packet, ccsds-frame, length-field
	HeaderLink     = "Meridian-Link"      // the configured link name
	HeaderAPID     = "Meridian-APID"      // space packet APID, decimal
	HeaderSeqCount = "Meridian-Seq-Count" // space packet sequence count, decimal
	HeaderSCID     = "Meridian-SCID"      // transfer frame spacecraft id, decimal
	HeaderVCID     = "Meridian-VCID"      // transfer frame virtual channel id, decimal
	HeaderMCCount  = "Meridian-MC-Count"  // master channel frame count, decimal
	HeaderVCCount  = "Meridian-VC-Count"  // virtual channel frame count, decimal
	HeaderCRC      = "Meridian-Crc"       // "bad": stored under the flag CRC policy
)

// Sub-token prefixes: a transfer frame is published on
// telemetry.<station>.vc<VCID>, a space packet on
// telemetry.<station>.apid<APID>.
const (
	TokenVC   = "vc"
	TokenAPID = "apid"
)

// SubjectVC is the subject of identity's transfer frames of virtual channel
// vcid: telemetry.<Token(identity)>.vc<vcid>. With identity "*" it is the
// wildcard over every station.
func SubjectVC(identity string, vcid int) string {
	return subjectWith(identity, TokenVC, vcid)
}

// SubjectAPID is the subject of identity's space packets of apid:
// telemetry.<Token(identity)>.apid<apid>. With identity "*" it is the
// wildcard over every station.
func SubjectAPID(identity string, apid int) string {
	return subjectWith(identity, TokenAPID, apid)
}

func subjectWith(identity, kind string, n int) string {
	tok := "*"
	if identity != "*" {
		tok = Token(identity)
	}
	return SubjectPrefix + "." + tok + "." + kind + strconv.Itoa(n)
}

// StationFilters are the subject filters that match everything a station
// published: its own subject and the sub-tokens below it.
func StationFilters(identity string) []string {
	s := Subject(identity)
	return []string{s, s + ".>"}
}
