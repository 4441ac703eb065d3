package frame

import "fmt"

// Reason says why a session ended. Codes 1–99 are wire codes carried by the
// CLOSE frame; they are part of the contract and never change meaning. Codes
// from 100 name endings the gateway cannot announce (the peer left first);
// they appear in logs and metrics only, never on the wire.
type Reason uint16

// Wire close reasons (docs/protocol.md, "Close reasons").
const (
	ReasonShutdown      Reason = 1 // server shutting down
	ReasonIdleTimeout   Reason = 2 // no byte for --idle-timeout
	ReasonFrameTimeout  Reason = 3 // a frame did not complete within --frame-timeout
	ReasonTooLarge      Reason = 4 // length above --max-frame
	ReasonControl       Reason = 5 // unsupported or malformed control frame (length top bit set)
	ReasonBusy          Reason = 6 // server busy (session limits)
	ReasonUnauthorized  Reason = 7 // not authorized
	ReasonInternalError Reason = 8 // internal error
	ReasonSuperseded    Reason = 9 // v2: a newer session of the same station took over
)

// Endings that are never sent.
const (
	ReasonStationClosed Reason = 100 // EOF at a frame boundary
	ReasonTruncated     Reason = 101 // EOF inside a frame
	ReasonReadError     Reason = 102 // any other read error (reset, TLS failure)
)

var reasonNames = map[Reason]string{
	ReasonShutdown:      "shutdown",
	ReasonIdleTimeout:   "idle_timeout",
	ReasonFrameTimeout:  "frame_timeout",
	ReasonTooLarge:      "frame_too_large",
	ReasonControl:       "unsupported_control_frame",
	ReasonBusy:          "server_busy",
	ReasonUnauthorized:  "not_authorized",
	ReasonInternalError: "internal_error",
	ReasonSuperseded:    "superseded",
	ReasonStationClosed: "station_closed",
	ReasonTruncated:     "truncated",
	ReasonReadError:     "read_error",
}

var reasonTexts = map[Reason]string{
	ReasonShutdown:      "server shutting down",
	ReasonIdleTimeout:   "idle timeout",
	ReasonFrameTimeout:  "frame timeout",
	ReasonTooLarge:      "frame too large",
	ReasonControl:       "unsupported control frame",
	ReasonBusy:          "server busy",
	ReasonUnauthorized:  "not authorized",
	ReasonInternalError: "internal error",
	ReasonSuperseded:    "superseded",
	ReasonStationClosed: "station closed",
	ReasonTruncated:     "truncated frame",
	ReasonReadError:     "read error",
}

// Reasons lists every known reason, for metrics that pre-create their labels.
func Reasons() []Reason {
	return []Reason{
		ReasonShutdown, ReasonIdleTimeout, ReasonFrameTimeout, ReasonTooLarge,
		ReasonControl, ReasonBusy, ReasonUnauthorized, ReasonInternalError,
		ReasonSuperseded, ReasonStationClosed, ReasonTruncated, ReasonReadError,
	}
}

// String is the snake_case name used as a log attribute and metric label.
func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason_%d", uint16(r))
}

// Text is the human text sent in the CLOSE frame.
func (r Reason) Text() string {
	if s, ok := reasonTexts[r]; ok {
		return s
	}
	return fmt.Sprintf("reason %d", uint16(r))
}

// Wire reports whether the reason is announced with a CLOSE frame.
func (r Reason) Wire() bool { return r >= 1 && r < 100 }
