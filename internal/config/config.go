// Package config is the gateway's one configuration struct: its documented
// defaults and its validation, shared by flags, the environment and the
// config file.
package config

import (
	"errors"
	"fmt"
	"time"
)

// Sink names accepted by --sink.
const (
	SinkJetStream = "jetstream"
	SinkStdout    = "stdout"
	SinkDiscard   = "discard"
)

// Config is the whole configuration of `meridian serve`. The yaml tags are the
// config-file keys; the environment variable of a key is MERIDIAN_ followed by
// the key in upper case with '-' as '_'; the flag is --key.
type Config struct {
	// Listener and session (gateway core).
	Listen       string        `yaml:"listen"`        // station listener address
	MaxFrame     uint32        `yaml:"max-frame"`     // bound on a data frame's payload, bytes
	IdleTimeout  time.Duration `yaml:"idle-timeout"`  // no byte for this long ends a session
	FrameTimeout time.Duration `yaml:"frame-timeout"` // a started frame must complete within this
	Heartbeat    time.Duration `yaml:"heartbeat"`     // HEARTBEAT interval; 0 disables
	WriteTimeout time.Duration `yaml:"write-timeout"` // deadline of each write to a station
	Queue        int           `yaml:"queue"`         // queue bound, frames
	QueueBytes   Size          `yaml:"queue-bytes"`   // queue bound, bytes of frame buffers
	Sink         string        `yaml:"sink"`          // jetstream, stdout or discard

	DrainTimeout  time.Duration `yaml:"drain-timeout"`  // how long sessions drain after GOAWAY
	ShutdownGrace time.Duration `yaml:"shutdown-grace"` // bound of the whole shutdown
	LameDuck      time.Duration `yaml:"lame-duck"`      // spread GOAWAYs over this on SIGTERM

	LogFormat string `yaml:"log-format"` // text or json
	LogLevel  string `yaml:"log-level"`  // debug, info, warn, error

	// Durable stream.
	DataDir            string        `yaml:"data-dir"`
	NATSListen         string        `yaml:"nats-listen"`
	NATSURL            string        `yaml:"nats-url"`
	NATSCreds          string        `yaml:"nats-creds"`
	NATSToken          string        `yaml:"nats-token" redact:"true"`
	NATSUser           string        `yaml:"nats-user"`
	NATSPassword       string        `yaml:"nats-password" redact:"true"`
	NATSTLSCA          string        `yaml:"nats-tls-ca"`
	NATSTLSCert        string        `yaml:"nats-tls-cert"`
	NATSTLSKey         string        `yaml:"nats-tls-key"`
	Stream             string        `yaml:"stream"`
	StreamReplicas     int           `yaml:"stream-replicas"`
	StoreMaxBytes      Size          `yaml:"store-max-bytes"`
	RetentionMaxAge    Duration      `yaml:"retention-max-age"`
	RetentionMaxBytes  Size          `yaml:"retention-max-bytes"` // 0: the store limit when embedded, none when external
	DedupWindow        Duration      `yaml:"dedup-window"`
	Sync               string        `yaml:"sync"` // a duration, or "always"
	PublishWindow      int           `yaml:"publish-window"`
	PublishWindowBytes Size          `yaml:"publish-window-bytes"`
	PublishTimeout     time.Duration `yaml:"publish-timeout"`
	StreamLayout       string        `yaml:"stream-layout"` // frames or packed

	// Operations and security.
	HTTPListen          string        `yaml:"http-listen"`
	PProf               bool          `yaml:"pprof"`
	MaxSessions         int           `yaml:"max-sessions"`
	MaxSessionsPerIP    int           `yaml:"max-sessions-per-ip"`
	TLSCert             string        `yaml:"tls-cert"`
	TLSKey              string        `yaml:"tls-key"`
	TLSClientCA         string        `yaml:"tls-client-ca"`
	TLSHandshakeTimeout time.Duration `yaml:"tls-handshake-timeout"`
	AllowStations       []string      `yaml:"allow-stations"`

	// Links are the listeners and dialers beyond --listen, each with its
	// own framing (links.go). Only the config file sets them: the key is
	// read by applyFile, not by the reflection over the other fields.
	Links []Link `yaml:"-"`
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Listen:        ":7777",
		MaxFrame:      64 * 1024,
		IdleTimeout:   60 * time.Second,
		FrameTimeout:  10 * time.Second,
		Heartbeat:     30 * time.Second,
		WriteTimeout:  10 * time.Second,
		Queue:         8192,
		QueueBytes:    64 * MiB,
		Sink:          SinkJetStream,
		DrainTimeout:  5 * time.Second,
		ShutdownGrace: 30 * time.Second,
		LogFormat:     "text",
		LogLevel:      "info",

		DataDir:            "./meridian-data",
		NATSListen:         "127.0.0.1:4222",
		Stream:             "TELEMETRY",
		StreamReplicas:     1,
		StoreMaxBytes:      10 * GiB,
		RetentionMaxAge:    Duration(7 * 24 * time.Hour),
		DedupWindow:        Duration(10 * time.Second),
		Sync:               "1s",
		PublishWindow:      1024,
		PublishWindowBytes: 64 * MiB,
		StreamLayout:       LayoutFrames,
		PublishTimeout:     5 * time.Second,

		HTTPListen:          "127.0.0.1:9477",
		MaxSessions:         10000,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}

// MaxFrameLimit bounds --max-frame: lengths use 31 bits, and a frame must fit
// comfortably in memory.
const MaxFrameLimit = 64 << 20

// Validate reports every invalid setting, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Listen == "" {
		bad("listen", "must not be empty")
	}
	if c.MaxFrame < 1 || c.MaxFrame > MaxFrameLimit {
		bad("max-frame", "%d is outside 1..%d", c.MaxFrame, MaxFrameLimit)
	}
	if c.IdleTimeout <= 0 {
		bad("idle-timeout", "must be positive, got %s", c.IdleTimeout)
	}
	if c.FrameTimeout <= 0 {
		bad("frame-timeout", "must be positive, got %s", c.FrameTimeout)
	}
	if c.Heartbeat < 0 {
		bad("heartbeat", "must not be negative (0 disables), got %s", c.Heartbeat)
	}
	if c.WriteTimeout <= 0 {
		bad("write-timeout", "must be positive, got %s", c.WriteTimeout)
	}
	if c.Queue < 1 {
		bad("queue", "must be at least 1, got %d", c.Queue)
	}
	if c.QueueBytes < 64*KiB {
		bad("queue-bytes", "must be at least 64KiB, got %s", c.QueueBytes)
	}
	switch c.Sink {
	case SinkJetStream, SinkStdout, SinkDiscard:
	default:
		bad("sink", "%q is not one of jetstream, stdout, discard", c.Sink)
	}
	if c.DrainTimeout <= 0 {
		bad("drain-timeout", "must be positive, got %s", c.DrainTimeout)
	}
	if c.ShutdownGrace <= 0 {
		bad("shutdown-grace", "must be positive, got %s", c.ShutdownGrace)
	} else if c.DrainTimeout+c.FrameTimeout+c.LameDuck >= c.ShutdownGrace {
		// The whole budget of a compliant station: its GOAWAY may come at
		// the end of the lame-duck period, it may drain for drain-timeout,
		// and the frame in progress at the drain deadline is still
		// finished, for up to frame-timeout. What is left of the grace is
		// for the final commits and the sink's flush.
		bad("shutdown-grace", "drain-timeout (%s) plus frame-timeout (%s) plus lame-duck (%s) must be shorter than shutdown-grace (%s)",
			c.DrainTimeout, c.FrameTimeout, c.LameDuck, c.ShutdownGrace)
	}
	if c.LameDuck < 0 {
		bad("lame-duck", "must not be negative, got %s", c.LameDuck)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log-format", "%q is not one of text, json", c.LogFormat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	if c.Stream == "" {
		bad("stream", "must not be empty")
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		bad("stream-replicas", "%d is outside 1..5", c.StreamReplicas)
	}
	if c.StoreMaxBytes <= 0 {
		bad("store-max-bytes", "must be positive")
	}
	if c.RetentionMaxAge <= 0 {
		bad("retention-max-age", "must be positive")
	}
	if c.RetentionMaxBytes < 0 {
		bad("retention-max-bytes", "must not be negative")
	}
	if c.DedupWindow <= 0 {
		bad("dedup-window", "must be positive")
	} else if c.DedupWindow > c.RetentionMaxAge {
		bad("dedup-window", "dedup-window (%s) must not exceed retention-max-age (%s)", c.DedupWindow, c.RetentionMaxAge)
	} else if c.PublishTimeout > 0 && time.Duration(c.DedupWindow) < 2*c.PublishTimeout {
		// A frame without a PubAck is resent after publish-timeout, and a
		// resend after a reconnect or a second timeout comes later still:
		// past the window JetStream would store it twice.
		bad("dedup-window", "dedup-window (%s) must be at least twice publish-timeout (%s), or resent frames can be stored twice", c.DedupWindow, c.PublishTimeout)
	}
	if c.Sync != "always" {
		if d, err := time.ParseDuration(c.Sync); err != nil || d <= 0 {
			bad("sync", "%q is neither a positive duration nor \"always\"", c.Sync)
		}
	}
	if c.PublishWindow < 1 {
		bad("publish-window", "must be at least 1, got %d", c.PublishWindow)
	}
	if c.PublishWindowBytes < 64*KiB {
		bad("publish-window-bytes", "must be at least 64KiB, got %s", c.PublishWindowBytes)
	}
	if c.PublishTimeout <= 0 {
		bad("publish-timeout", "must be positive, got %s", c.PublishTimeout)
	}
	if c.StreamLayout != LayoutFrames && c.StreamLayout != LayoutPacked {
		bad("stream-layout", "%q is neither %q nor %q", c.StreamLayout, LayoutFrames, LayoutPacked)
	}
	if c.MaxSessions < 1 {
		bad("max-sessions", "must be at least 1, got %d", c.MaxSessions)
	}
	if c.MaxSessionsPerIP < 0 {
		bad("max-sessions-per-ip", "must not be negative (0 = no limit), got %d", c.MaxSessionsPerIP)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls-cert", "tls-cert and tls-key go together")
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		bad("tls-client-ca", "needs tls-cert and tls-key")
	}
	if c.TLSHandshakeTimeout <= 0 {
		bad("tls-handshake-timeout", "must be positive, got %s", c.TLSHandshakeTimeout)
	}
	errs = append(errs, validateLinks(c.Links)...)
	return errors.Join(errs...)
}

// Stream layouts (stream-layout; docs/protocol.md, "The packed layout").
const (
	LayoutFrames = "frames" // one message per frame: what every consumer reads
	LayoutPacked = "packed" // protocol v2 sessions: one message per batch of frames; consumers must unpack
)
