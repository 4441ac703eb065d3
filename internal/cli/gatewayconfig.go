package cli

import (
	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/gateway"
)

// gatewayConfig picks what the station-facing server needs out of the
// application's configuration.
func gatewayConfig(c config.Config) gateway.Config {
	return gateway.Config{
		MaxFrame:            c.MaxFrame,
		IdleTimeout:         c.IdleTimeout,
		FrameTimeout:        c.FrameTimeout,
		Heartbeat:           c.Heartbeat,
		WriteTimeout:        c.WriteTimeout,
		Queue:               c.Queue,
		QueueBytes:          int64(c.QueueBytes),
		MaxSessions:         c.MaxSessions,
		MaxSessionsPerIP:    c.MaxSessionsPerIP,
		TLSHandshakeTimeout: c.TLSHandshakeTimeout,
		DrainTimeout:        c.DrainTimeout,
		LameDuck:            c.LameDuck,
		PackFrames:          c.StreamLayout == config.LayoutPacked,
	}
}
