package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/meridian-telemetry/meridian/internal/link"
)

// Config is what the station-facing server needs: the session limits, the
// queue bound and the shutdown timing. The application's configuration
// (package config) is mapped onto it by the command line; the gateway never
// sees stream credentials or listener addresses.
type Config struct {
	MaxFrame     uint32        // bound on a data frame's payload, bytes
	IdleTimeout  time.Duration // no byte for this long ends a session
	FrameTimeout time.Duration // a started frame must complete within this
	Heartbeat    time.Duration // HEARTBEAT interval; 0 disables
	WriteTimeout time.Duration // deadline of each write to a station

	Queue      int   // queue bound between sessions and the sink, frames
	QueueBytes int64 // the same queue's bound in bytes of frame buffers

	MaxSessions         int           // sessions open at once, including TLS handshakes
	MaxSessionsPerIP    int           // sessions from one remote IP; 0: no limit
	TLSHandshakeTimeout time.Duration // bound of a station's TLS handshake

	DrainTimeout time.Duration // how long sessions drain after GOAWAY
	LameDuck     time.Duration // Shutdown spreads the GOAWAYs over this long

	// PackFrames stores each batch of a protocol v2 session as one message
	// (the "packed" stream layout), with one batch of a session in flight.
	PackFrames bool
}

// DefaultConfig returns the defaults of `meridian serve`.
func DefaultConfig() Config {
	return Config{
		MaxFrame:            64 * 1024,
		IdleTimeout:         60 * time.Second,
		FrameTimeout:        10 * time.Second,
		Heartbeat:           30 * time.Second,
		WriteTimeout:        10 * time.Second,
		Queue:               8192,
		QueueBytes:          64 << 20,
		MaxSessions:         10000,
		TLSHandshakeTimeout: 10 * time.Second,
		DrainTimeout:        5 * time.Second,
	}
}

// Validate reports every invalid setting, each named by its configuration
// key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.MaxFrame < 1 {
		bad("max-frame", "must be at least 1")
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"idle-timeout", c.IdleTimeout}, {"frame-timeout", c.FrameTimeout},
		{"write-timeout", c.WriteTimeout}, {"tls-handshake-timeout", c.TLSHandshakeTimeout},
		{"drain-timeout", c.DrainTimeout},
	} {
		if d.v <= 0 {
			bad(d.key, "must be positive, got %s", d.v)
		}
	}
	if c.Heartbeat < 0 {
		bad("heartbeat", "must not be negative (0 disables), got %s", c.Heartbeat)
	}
	if c.LameDuck < 0 {
		bad("lame-duck", "must not be negative, got %s", c.LameDuck)
	}
	if c.Queue < 1 {
		bad("queue", "must be at least 1, got %d", c.Queue)
	}
	if c.QueueBytes < 64<<10 {
		bad("queue-bytes", "must be at least 64KiB, got %d", c.QueueBytes)
	}
	if c.MaxSessions < 1 {
		bad("max-sessions", "must be at least 1, got %d", c.MaxSessions)
	}
	if c.MaxSessionsPerIP < 0 {
		bad("max-sessions-per-ip", "must not be negative (0 = no limit), got %d", c.MaxSessionsPerIP)
	}
	return errors.Join(errs...)
}

// DefaultLink names the --listen listener in /stations and on the board.
const DefaultLink = "meridian"

// Link is the settings of one listener or dialer beyond the default
// (ServeLink, DialLink): its own limits, TLS and allow-list, and, for
// ground equipment, its framing. The timeouts, queue and drain are the
// gateway's.
type Link struct {
	Name             string // unique; the identity of a dial-out link's peer
	MaxSessions      int    // connections open at once on this link; 0: Config.MaxSessions
	MaxSessionsPerIP int    // connections from one IP on this link; 0: no limit
	// TLS, when set, serves TLS on a listening link; Identity extracts the
	// peer's identity from its verified connection ("" keeps the remote IP).
	TLS      *tls.Config
	Identity func(tls.ConnectionState) string
	// Allowed limits which peer identities may connect; nil: any.
	Allowed func(identity string) bool
	// AllowedName limits the names v2 stations give in their HELLO
	// without mutual TLS; nil: Allowed decides.
	AllowedName func(name string) bool
	// Ground is the framing a ground-equipment link reads; nil serves
	// Meridian sessions. The gateway never writes to such a peer.
	Ground *link.Config
	// Totals receives the link's counters; nil: the link keeps its own.
	Totals *link.Counters
	// Backoff is a dial-out link's reconnect schedule; zero: the default.
	Backoff link.Backoff
}
