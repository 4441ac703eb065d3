package stream

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
