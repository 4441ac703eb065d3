// Package link is the runtime of ground-framing links: the read-only loop
// that drives a framing decoder over one equipment connection and hands the
// units to the queue, the per-connection and per-link quality counters, and
// the reconnect back-off of dial-out links. The gateway owns the listeners,
// the dialing goroutines and the ordered shutdown (package gateway); the
// decoders know bytes, not sockets (package framing). docs/framing.md is the
// contract.
package link

import (
	"errors"
	"fmt"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/ccsds"
	"github.com/meridian-telemetry/meridian/internal/framing/lengthfield"
)

// FramingMeridian is the Meridian protocol (docs/protocol.md): a link with
// it serves ordinary sessions, with ACKs.
const FramingMeridian = "meridian"

// Framings lists the framings a link can speak.
var Framings = []string{FramingMeridian, framing.NameCCSDSPacket, framing.NameCCSDSFrame, framing.NameLengthField}

// Policy is what a link does with a unit whose CRC is bad.
type Policy uint8

// CRC policies (docs/framing.md, section 6).
const (
	PolicyDrop       Policy = iota // count it, do not store it
	PolicyFlag                     // store it with Meridian-Crc: bad
	PolicyDisconnect               // count it, close the connection
)

func (p Policy) String() string {
	switch p {
	case PolicyDrop:
		return "drop"
	case PolicyFlag:
		return "flag"
	case PolicyDisconnect:
		return "disconnect"
	}
	return fmt.Sprintf("policy(%d)", uint8(p))
}

// ErrPolicy is returned by ParsePolicy for an unknown name.
var ErrPolicy = errors.New("link: unknown CRC policy")

// ParsePolicy reads drop, flag or disconnect.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "drop", "":
		return PolicyDrop, nil
	case "flag":
		return PolicyFlag, nil
	case "disconnect":
		return PolicyDisconnect, nil
	}
	return 0, fmt.Errorf("%w %q: want drop, flag or disconnect", ErrPolicy, s)
}

// Config is what a ground-framing link reads with: its name, its framing and
// that framing's settings, and its CRC policy.
type Config struct {
	Name    string // the link's configured name: Meridian-Link, metric label
	Framing string // framing.NameCCSDSPacket, NameCCSDSFrame or NameLengthField
	// The framing's settings; only the one Framing names is used.
	Packet      ccsds.PacketConfig
	Frame       ccsds.FrameConfig
	LengthField lengthfield.Config
	CRC         Policy
}

// ErrFraming is returned for a framing this package does not read.
var ErrFraming = errors.New("link: unknown framing")

// NewDecoder returns a fresh decoder for one connection, or the settings'
// validation error.
func (c Config) NewDecoder() (framing.Decoder, error) {
	switch c.Framing {
	case framing.NameCCSDSPacket:
		return ccsds.NewPacketDecoder(c.Packet)
	case framing.NameCCSDSFrame:
		return ccsds.NewFrameDecoder(c.Frame)
	case framing.NameLengthField:
		return lengthfield.New(c.LengthField)
	}
	return nil, fmt.Errorf("%w %q", ErrFraming, c.Framing)
}

// Validate checks the settings as NewDecoder would use them.
func (c Config) Validate() error {
	_, err := c.NewDecoder()
	return err
}

// MaxUnit is the largest unit the link can store, for the stream's message
// size bound; 0 when the settings are invalid.
func (c Config) MaxUnit() int {
	d, err := c.NewDecoder()
	if err != nil {
		return 0
	}
	return d.MaxUnit()
}
