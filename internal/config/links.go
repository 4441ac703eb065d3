package config

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/ccsds"
	"github.com/meridian-telemetry/meridian/internal/framing/lengthfield"
)

// Link framings and CRC policies, as the config file spells them.
const (
	LinksKey            = "links" // the config-file key of the list
	FramingMeridian     = "meridian"
	DefaultLinkName     = "meridian" // the --listen link's name, reserved
	CRCPolicyDrop       = "drop"
	CRCPolicyFlag       = "flag"
	CRCPolicyDisconnect = "disconnect"
)

// Link is one entry of the config file's links: list (docs/framing.md,
// section 1): a listener or a dialer with its own framing, limits, TLS and
// allow-list. Only the config file sets links; flags and the environment
// cover the default link (--listen, framing meridian).
type Link struct {
	Name             string
	Listen           string // host:port the equipment or stations connect to
	Dial             string // host:port of equipment that serves TCP
	Framing          string // meridian, ccsds-packet, ccsds-frame, length-field
	CRCPolicy        string // drop (default), flag, disconnect
	MaxSessions      int    // 0: max-sessions
	MaxSessionsPerIP int    // 0: no limit
	TLSCert          string
	TLSKey           string
	TLSClientCA      string
	AllowStations    []string

	// The framing's settings: one-to-one onto the decoders' configs, of
	// which only Framing's is used.
	Packet      ccsds.PacketConfig
	Frame       ccsds.FrameConfig
	LengthField lengthfield.Config

	Line int // line of the entry in the config file; 0 when not from a file
}

// NewLink returns a link with every framing's defaults.
func NewLink() Link {
	return Link{
		CRCPolicy:   CRCPolicyDrop,
		Packet:      ccsds.DefaultPacketConfig(),
		Frame:       ccsds.DefaultFrameConfig(),
		LengthField: lengthfield.DefaultConfig(),
	}
}

// linkKey is one key of a link entry: which framing it belongs to ("" for
// every framing), how it is read and how it is printed.
type linkKey struct {
	framing string
	set     func(l *Link, v string) error
	get     func(l *Link) any
}

func intKey(p func(l *Link) *int) linkKey {
	return linkKey{set: func(l *Link, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return badValue{fmt.Errorf("invalid integer %q", v)}
		}
		*p(l) = n
		return nil
	}, get: func(l *Link) any {
		return *p(l)
	}}
}

func sizeKey(p func(l *Link) *int) linkKey {
	return linkKey{set: func(l *Link, v string) error {
		n, err := ParseSize(v)
		if err != nil {
			return badValue{err}
		}
		if n > 1<<31 {
			return badValue{fmt.Errorf("invalid size %q: too large", v)}
		}
		*p(l) = int(n)
		return nil
	}, get: func(l *Link) any {
		return *p(l)
	}}
}

func boolKey(p func(l *Link) *bool) linkKey {
	return linkKey{set: func(l *Link, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return badValue{fmt.Errorf("invalid boolean %q: want true or false", v)}
		}
		*p(l) = b
		return nil
	}, get: func(l *Link) any {
		return *p(l)
	}}
}

func strKey(p func(l *Link) *string) linkKey {
	return linkKey{set: func(l *Link, v string) error {
		*p(l) = v
		return nil
	}, get: func(l *Link) any {
		return *p(l)
	}}
}

func hexKey(p func(l *Link) *[]byte) linkKey {
	return linkKey{set: func(l *Link, v string) error {
		v = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(v), "0x"), "0X")
		b, err := hex.DecodeString(v)
		if err != nil {
			return badValue{fmt.Errorf("invalid hex %q", v)}
		}
		if len(b) == 0 {
			b = nil // no marker, as when the key is absent
		}
		*p(l) = b
		return nil
	}, get: func(l *Link) any {
		return strings.ToUpper(hex.EncodeToString(*p(l)))
	}}
}

func key(framing string, k linkKey) linkKey {
	k.framing = framing
	return k
}

// linkKeyOrder is the keys of a link entry, in print order.
var linkKeyOrder = []string{
	"name", "listen", "dial", "framing", "crc-policy", "max-sessions", "max-sessions-per-ip",
	"tls-cert", "tls-key", "tls-client-ca", "allow-stations",
	"max-length", "crc", "asm", "frame-length", "fecf", "strip-asm",
	"sync", "offset", "size", "byte-order", "scale", "adjustment", "strip", "max",
}

// linkKeys are the keys of a link entry; a key with a framing is valid only
// on a link of that framing.
var linkKeys = map[string]linkKey{
	"name":                key("", strKey(func(l *Link) *string { return &l.Name })),
	"listen":              key("", strKey(func(l *Link) *string { return &l.Listen })),
	"dial":                key("", strKey(func(l *Link) *string { return &l.Dial })),
	"framing":             key("", strKey(func(l *Link) *string { return &l.Framing })),
	"crc-policy":          key("", strKey(func(l *Link) *string { return &l.CRCPolicy })),
	"max-sessions":        key("", intKey(func(l *Link) *int { return &l.MaxSessions })),
	"max-sessions-per-ip": key("", intKey(func(l *Link) *int { return &l.MaxSessionsPerIP })),
	"tls-cert":            key("", strKey(func(l *Link) *string { return &l.TLSCert })),
	"tls-key":             key("", strKey(func(l *Link) *string { return &l.TLSKey })),
	"tls-client-ca":       key("", strKey(func(l *Link) *string { return &l.TLSClientCA })),
	"allow-stations": {set: func(l *Link, v string) error {
		if l.AllowStations = splitList(v); len(l.AllowStations) == 0 {
			l.AllowStations = nil // any, as when the key is absent
		}
		return nil
	},
		get: func(l *Link) any { return append([]string{}, l.AllowStations...) }},

	"max-length": key(framing.NameCCSDSPacket, sizeKey(func(l *Link) *int { return &l.Packet.MaxLength })),

	"asm":          key(framing.NameCCSDSFrame, hexKey(func(l *Link) *[]byte { return &l.Frame.ASM })),
	"frame-length": key(framing.NameCCSDSFrame, intKey(func(l *Link) *int { return &l.Frame.FrameLength })),
	"fecf":         key(framing.NameCCSDSFrame, boolKey(func(l *Link) *bool { return &l.Frame.FECF })),
	"strip-asm":    key(framing.NameCCSDSFrame, boolKey(func(l *Link) *bool { return &l.Frame.StripASM })),

	"sync":       key(framing.NameLengthField, hexKey(func(l *Link) *[]byte { return &l.LengthField.Sync })),
	"offset":     key(framing.NameLengthField, intKey(func(l *Link) *int { return &l.LengthField.Offset })),
	"size":       key(framing.NameLengthField, intKey(func(l *Link) *int { return &l.LengthField.Size })),
	"scale":      key(framing.NameLengthField, intKey(func(l *Link) *int { return &l.LengthField.Scale })),
	"adjustment": key(framing.NameLengthField, intKey(func(l *Link) *int { return &l.LengthField.Adjustment })),
	"strip":      key(framing.NameLengthField, intKey(func(l *Link) *int { return &l.LengthField.Strip })),
	"max":        key(framing.NameLengthField, sizeKey(func(l *Link) *int { return &l.LengthField.Max })),
	"byte-order": {framing: framing.NameLengthField,
		set: func(l *Link, v string) error {
			switch v {
			case "big":
				l.LengthField.LittleEndian = false
			case "little":
				l.LengthField.LittleEndian = true
			default:
				return badValue{fmt.Errorf("%q is not one of big, little", v)}
			}
			return nil
		},
		get: func(l *Link) any {
			if l.LengthField.LittleEndian {
				return "little"
			}
			return "big"
		}},
	// crc belongs to ccsds-packet and length-field; see keyFor.
	"crc": {framing: "crc"},
}

// keyFor returns the key k of a link speaking framing f, or false when the
// framing has no such setting.
func keyFor(k, f string) (linkKey, bool) {
	if k == "crc" {
		switch f {
		case framing.NameCCSDSPacket:
			return key(f, boolKey(func(l *Link) *bool { return &l.Packet.CRC })), true
		case framing.NameLengthField:
			return key(f, boolKey(func(l *Link) *bool { return &l.LengthField.CRC })), true
		}
		return linkKey{}, false
	}
	lk, ok := linkKeys[k]
	if !ok || (lk.framing != "" && lk.framing != f) {
		return linkKey{}, false
	}
	return lk, true
}

// parseLinks reads the links: list of the config file.
func parseLinks(file string, n *yaml.Node) ([]Link, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("config file %s: line %d: links: %w", file, n.Line, badValue{errors.New("want a list of links")})
	}
	var out []Link // nil for an empty list, as when the key is absent
	for i, item := range n.Content {
		l, err := parseLink(file, i, item)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

func parseLink(file string, i int, n *yaml.Node) (Link, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	l := NewLink()
	l.Line = n.Line
	where := fmt.Sprintf("config file %s: line %d: links[%d]", file, n.Line, i)
	if n.Kind != yaml.MappingNode {
		return l, fmt.Errorf("%s: %w", where, badValue{errors.New("want a mapping of key: value")})
	}
	// The framing first: which keys are valid depends on it.
	for j := 0; j+1 < len(n.Content); j += 2 {
		switch n.Content[j].Value {
		case "framing":
			l.Framing = n.Content[j+1].Value
		case "name":
			l.Name = n.Content[j+1].Value
		}
	}
	if l.Name != "" {
		where += " (" + l.Name + ")"
	}
	if l.Framing == "" {
		l.Framing = FramingMeridian
	}
	if !knownFraming(l.Framing) {
		return l, fmt.Errorf("%s: framing: %w", where, badValue{fmt.Errorf("%q is not one of %s", l.Framing, strings.Join(linkFramings, ", "))})
	}
	seen := make(map[string]int)
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := n.Content[j], n.Content[j+1]
		at := fmt.Sprintf("config file %s: line %d: links[%d]", file, k.Line, i)
		if l.Name != "" {
			at += " (" + l.Name + ")"
		}
		at += ": " + k.Value
		lk, ok := keyFor(k.Value, l.Framing)
		if !ok {
			if _, known := linkKeys[k.Value]; known {
				return l, fmt.Errorf("%s: %w (not a setting of framing %s)", at, ErrUnknownKey, l.Framing)
			}
			return l, fmt.Errorf("%s: %w", at, ErrUnknownKey)
		}
		if line, dup := seen[k.Value]; dup {
			return l, fmt.Errorf("%s: already set on line %d", at, line)
		}
		seen[k.Value] = k.Line
		text, err := nodeText(v, k.Value == "allow-stations")
		if err != nil {
			return l, fmt.Errorf("%s: %w", at, err)
		}
		if err := lk.set(&l, text); err != nil {
			return l, fmt.Errorf("%s: %w", at, err)
		}
	}
	return l, nil
}

var linkFramings = []string{FramingMeridian, framing.NameCCSDSPacket, framing.NameCCSDSFrame, framing.NameLengthField}

func knownFraming(f string) bool {
	for _, k := range linkFramings {
		if k == f {
			return true
		}
	}
	return false
}

// validateLinks names the link and the key of every invalid setting.
func validateLinks(links []Link) []error {
	var errs []error
	names := map[string]int{DefaultLinkName: -1}
	for i, l := range links {
		id := fmt.Sprintf("links[%d]", i)
		if l.Name != "" {
			id += " (" + l.Name + ")"
		}
		if l.Line > 0 {
			id = fmt.Sprintf("line %d: %s", l.Line, id)
		}
		bad := func(key, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s: %s: %s", id, key, fmt.Sprintf(format, args...)))
		}
		switch j, dup := names[l.Name]; {
		case l.Name == "":
			bad("name", "required")
		case !subjectSafe(l.Name):
			bad("name", "%q must be letters, digits, '-' and '_' only (it is a subject token)", l.Name)
		case dup && j < 0:
			bad("name", "%q is the default link's name (--listen)", l.Name)
		case dup:
			bad("name", "%q is also the name of links[%d]", l.Name, j)
		}
		names[l.Name] = i
		if (l.Listen == "") == (l.Dial == "") {
			bad("listen", "exactly one of listen and dial")
		}
		if !knownFraming(l.Framing) {
			bad("framing", "%q is not one of %s", l.Framing, strings.Join(linkFramings, ", "))
		}
		switch l.CRCPolicy {
		case CRCPolicyDrop, CRCPolicyFlag, CRCPolicyDisconnect:
		default:
			bad("crc-policy", "%q is not one of drop, flag, disconnect", l.CRCPolicy)
		}
		if l.MaxSessions < 0 {
			bad("max-sessions", "must not be negative (0 = max-sessions), got %d", l.MaxSessions)
		}
		if l.MaxSessionsPerIP < 0 {
			bad("max-sessions-per-ip", "must not be negative (0 = no limit), got %d", l.MaxSessionsPerIP)
		}
		if (l.TLSCert == "") != (l.TLSKey == "") {
			bad("tls-cert", "tls-cert and tls-key go together")
		}
		if l.TLSClientCA != "" && l.TLSCert == "" {
			bad("tls-client-ca", "needs tls-cert and tls-key")
		}
		if l.Dial != "" {
			if l.Framing == FramingMeridian {
				bad("dial", "a dial-out link needs a ground framing (Meridian stations connect to the gateway)")
			}
			if l.TLSCert != "" || len(l.AllowStations) > 0 || l.MaxSessions != 0 || l.MaxSessionsPerIP != 0 {
				bad("dial", "tls-*, allow-stations and max-sessions* apply to listening links only")
			}
		}
		var ferr error
		switch l.Framing {
		case framing.NameCCSDSPacket:
			ferr = l.Packet.Validate()
		case framing.NameCCSDSFrame:
			ferr = l.Frame.Validate()
		case framing.NameLengthField:
			ferr = l.LengthField.Validate()
		}
		if ferr != nil {
			bad(l.Framing, "%v", ferr)
		}
	}
	return errs
}

func subjectSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return s != ""
}

// linksNode is the links: list as Print writes it: every link's common keys
// and its framing's settings, in linkKeyOrder.
func linksNode(links []Link) (*yaml.Node, error) {
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, l := range links {
		m := &yaml.Node{Kind: yaml.MappingNode}
		for _, k := range linkKeyOrder {
			lk, ok := keyFor(k, l.Framing)
			if !ok {
				continue
			}
			v := lk.get(&l)
			if s, isStr := v.(string); isStr && s == "" && k != "name" {
				continue
			}
			if k == "allow-stations" && len(l.AllowStations) == 0 {
				continue
			}
			var vn yaml.Node
			if err := vn.Encode(v); err != nil {
				return nil, fmt.Errorf("print config: links: %s: %w", k, err)
			}
			if vn.Kind == yaml.SequenceNode {
				vn.Style = yaml.FlowStyle
			}
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, &vn)
		}
		seq.Content = append(seq.Content, m)
	}
	return seq, nil
}
