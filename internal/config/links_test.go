package config

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/meridian-telemetry/meridian/internal/framing/ccsds"
	"github.com/meridian-telemetry/meridian/internal/framing/lengthfield"
)

const goodLinks = `listen: ":7777"
links:
  - name: xband
    listen: ":7001"
    framing: ccsds-frame
    frame-length: 1115
    fecf: true
    strip-asm: false
    crc-policy: flag
    max-sessions: 2
    max-sessions-per-ip: 1
    allow-stations: [10.1.*, 10.2.0.7]
  - name: modem
    dial: 10.0.0.5:5000
    framing: ccsds-packet
    max-length: 1500
    crc: true
    crc-policy: disconnect
  - name: cosmos
    listen: ":7002"
    framing: length-field
    sync: 1ACFFC1D
    offset: 8
    size: 2
    adjustment: 1
    strip: 4
    byte-order: little
    max: 64KiB
    crc: true
  - name: stations-eu
    listen: ":7003"
`

func TestLinksParse(t *testing.T) {
	c, err := resolve(t, goodLinks, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Links) != 4 {
		t.Fatalf("%d links, want 4", len(c.Links))
	}
	x := NewLink()
	x.Name, x.Listen, x.Framing, x.CRCPolicy = "xband", ":7001", "ccsds-frame", "flag"
	x.MaxSessions, x.MaxSessionsPerIP, x.AllowStations = 2, 1, []string{"10.1.*", "10.2.0.7"}
	x.Frame.FrameLength, x.Frame.FECF = 1115, true
	x.Line = 3
	m := NewLink()
	m.Name, m.Dial, m.Framing, m.CRCPolicy = "modem", "10.0.0.5:5000", "ccsds-packet", "disconnect"
	m.Packet = ccsds.PacketConfig{MaxLength: 1500, CRC: true}
	m.Line = 13
	l := NewLink()
	l.Name, l.Listen, l.Framing = "cosmos", ":7002", "length-field"
	l.LengthField = lengthfield.Config{Sync: ccsds.DefaultASM, Offset: 8, Size: 2, Adjustment: 1, Strip: 4, LittleEndian: true, Scale: 1, Max: 64 << 10, CRC: true}
	l.Line = 19
	s := NewLink()
	s.Name, s.Listen, s.Framing, s.Line = "stations-eu", ":7003", "meridian", 30
	for i, want := range []Link{x, m, l, s} {
		if got := c.Links[i]; !reflect.DeepEqual(got, want) {
			t.Errorf("link %d\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// TestLinksPrintRoundTrip: --print-config prints the links, and the output
// reads back to the same configuration.
func TestLinksPrintRoundTrip(t *testing.T) {
	c, err := resolve(t, goodLinks, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Print(&out, c); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "links:") || !strings.Contains(out.String(), "frame-length: 1115") {
		t.Fatalf("printed config lacks the links:\n%s", out.String())
	}
	back, err := resolve(t, out.String(), nil)
	if err != nil {
		t.Fatalf("reading the printed config back: %v\n%s", err, out.String())
	}
	for i := range back.Links {
		back.Links[i].Line, c.Links[i].Line = 0, 0
	}
	if !reflect.DeepEqual(back.Links, c.Links) {
		t.Errorf("round trip changed the links\n got %+v\nwant %+v", back.Links, c.Links)
	}
}

func TestLinksErrors(t *testing.T) {
	f := func(name, yaml, want string, is error) {
		t.Helper()
		_, err := resolve(t, yaml, nil)
		if err == nil {
			t.Errorf("%s: no error", name)
			return
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q does not say %q", name, err, want)
		}
		if is != nil && !errors.Is(err, is) {
			t.Errorf("%s: error %q is not %v", name, err, is)
		}
	}
	const head = "links:\n  - name: a\n    listen: \":7001\"\n"
	f("unknown key with its line", head+"    framing: ccsds-frame\n    frame-length: 16\n    colour: red\n",
		"line 6: links[0] (a): colour: unknown key", ErrUnknownKey)
	f("key of another framing", head+"    framing: ccsds-packet\n    fecf: true\n",
		"line 5: links[0] (a): fecf: unknown key (not a setting of framing ccsds-packet)", ErrUnknownKey)
	f("framing settings on a meridian link", head+"    frame-length: 16\n",
		"frame-length: unknown key (not a setting of framing meridian)", ErrUnknownKey)
	f("key twice", head+"    listen: \":7002\"\n", "line 4: links[0] (a): listen: already set on line 3", nil)
	f("links twice", head+"links: []\n", "links: already set on line 1", nil)
	f("duplicate names", head+"  - name: a\n    listen: \":7002\"\n", `links[1] (a): name: "a" is also the name of links[0]`, nil)
	f("the default link's name", "links:\n  - name: meridian\n    listen: \":7002\"\n", "is the default link's name", nil)
	f("no name", "links:\n  - listen: \":7002\"\n", "links[0]: name: required", nil)
	f("name not subject-safe", "links:\n  - name: x.band\n    listen: \":7002\"\n", `name: "x.band" must be letters`, nil)
	f("listen and dial", head+"    dial: 10.0.0.1:5000\n    framing: ccsds-packet\n", "listen: exactly one of listen and dial", nil)
	f("neither listen nor dial", "links:\n  - name: a\n", "listen: exactly one of listen and dial", nil)
	f("unknown framing", head+"    framing: hdlc\n", `framing: "hdlc" is not one of meridian, ccsds-packet, ccsds-frame, length-field`, ErrBadValue)
	f("frame length missing", head+"    framing: ccsds-frame\n", "ccsds-frame: ccsds: invalid configuration: frame length 0", nil)
	f("bad asm", head+"    framing: ccsds-frame\n    frame-length: 16\n    asm: zz\n", `asm: invalid hex "zz"`, ErrBadValue)
	f("asm too long", head+"    framing: ccsds-frame\n    frame-length: 16\n    asm: 001122334455667788\n", "ASM of 9 bytes", nil)
	f("bad length-field", head+"    framing: length-field\n    size: 5\n", "length-field: lengthfield: invalid configuration: length field size 5", nil)
	f("bad byte order", head+"    framing: length-field\n    byte-order: middle\n", `byte-order: "middle" is not one of big, little`, ErrBadValue)
	f("bad policy", head+"    framing: ccsds-packet\n    crc-policy: ignore\n", `crc-policy: "ignore" is not one of drop, flag, disconnect`, nil)
	f("bad integer", head+"    framing: ccsds-frame\n    frame-length: long\n", `frame-length: invalid integer "long"`, ErrBadValue)
	f("meridian dial", "links:\n  - name: a\n    dial: 10.0.0.1:5000\n", "dial: a dial-out link needs a ground framing", nil)
	f("TLS on a dial link", "links:\n  - name: a\n    dial: 10.0.0.1:5000\n    framing: ccsds-packet\n    tls-cert: c.pem\n    tls-key: k.pem\n",
		"apply to listening links only", nil)
	f("half TLS", head+"    tls-cert: c.pem\n", "tls-cert: tls-cert and tls-key go together", nil)
	f("not a list", "links: 3\n", "links: want a list of links", ErrBadValue)
	f("entry not a mapping", "links:\n  - a\n", "links[0]: want a mapping", ErrBadValue)
}

// FuzzParseLinks: any links: document is either refused with an error or
// read into links that Validate and Print handle, and Print's output reads
// back to the same links; nothing panics.
func FuzzParseLinks(f *testing.F) {
	f.Add(goodLinks)
	f.Add("links:\n  - name: a\n    listen: \":1\"\n    framing: length-field\n    sync: \"\"\n    offset: -1\n")
	f.Add("links: [{name: a, dial: \"x:1\", framing: ccsds-frame, asm: 0x1acf, frame-length: 8, fecf: true}]\n")
	f.Add("links:\n  - &a {name: b, listen: \":2\"}\n  - *a\n")
	f.Fuzz(func(t *testing.T, doc string) {
		c := Default()
		if err := applyYAML(&c, "m.yaml", []byte(doc)); err != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		var out bytes.Buffer
		if err := Print(&out, c); err != nil {
			t.Fatalf("Print: %v", err)
		}
		back := Default()
		if err := applyYAML(&back, "m.yaml", out.Bytes()); err != nil {
			t.Fatalf("reading Print's output back: %v\n%s", err, out.String())
		}
		for i := range back.Links {
			back.Links[i].Line, c.Links[i].Line = 0, 0
		}
		if !reflect.DeepEqual(back.Links, c.Links) {
			t.Fatalf("round trip changed the links\n got %+v\nwant %+v", back.Links, c.Links)
		}
	})
}

// TestFramingDocExample: the example config of docs/framing.md, section 1,
// is valid, and says what the document says.
func TestFramingDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/framing.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml example in docs/framing.md")
	}
	c, err := resolve(t, example, nil)
	if err != nil {
		t.Fatalf("the example is refused: %v\n%s", err, example)
	}
	var names []string
	for _, l := range c.Links {
		names = append(names, l.Name+"/"+l.Framing)
	}
	if got := strings.Join(names, " "); got != "xband/ccsds-frame fep/ccsds-packet cosmos/length-field stations-eu/meridian" {
		t.Errorf("example links: %s", got)
	}
	if lf := c.Links[2].LengthField; lf.Offset != 8 || lf.Size != 2 || lf.Adjustment != 1 || lf.Strip != 4 || len(lf.Sync) != 4 {
		t.Errorf("COSMOS example: %+v", lf)
	}
}
