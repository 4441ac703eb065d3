package station

import (
	"errors"
	"fmt"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/spool"
)

// Errors of the client itself. Check them with errors.Is.
var (
	// ErrPayloadTooLarge is returned by Send for a payload above the client's
	// maximum frame size. Nothing was queued or written.
	ErrPayloadTooLarge = errors.New("station: payload too large")
	// ErrEmptyPayload is returned by Send for an empty payload: on the wire a
	// zero-length frame is a keepalive, which the gateway neither forwards
	// nor acknowledges.
	ErrEmptyPayload = errors.New("station: empty payload")
	// ErrClosed is returned by Send and WaitAcked once Close has been called.
	ErrClosed = errors.New("station: client closed")
	// ErrGatewayDead means the gateway sent neither a heartbeat nor ACK
	// progress within the dead-gateway timeout; the client reconnects.
	ErrGatewayDead = errors.New("station: gateway unresponsive")
	// ErrProtocol means the gateway broke the protocol (a malformed control
	// frame, an ACK going backwards or covering frames never sent).
	ErrProtocol = errors.New("station: protocol violation")
	// ErrReconnectGaveUp means the reconnect policy ran out of attempts (or
	// reconnecting is disabled); it wraps the last session or dial error.
	ErrReconnectGaveUp = errors.New("station: gave up reconnecting")
	// ErrInvalidOption is returned by Dial for an option out of range.
	ErrInvalidOption = errors.New("station: invalid option")
	// ErrEpochConflict means the gateway's WELCOME asked for a frame past
	// the last one this client numbered: the stream already holds frames of
	// this identity and epoch that this client did not send (the epoch was
	// reused, see WithEpoch). The client stops: resuming would hide its own
	// frames behind the other writer's.
	ErrEpochConflict = errors.New("station: epoch already used by another writer")
	// ErrSpoolLocked means another client (in this process or another)
	// has the spool directory open (WithSpool); its text names the
	// holder's PID when known.
	ErrSpoolLocked = spool.ErrLocked
)

// Errors for the gateway's CLOSE reasons. A *CloseError matches the one for
// its reason: errors.Is(err, station.ErrServerBusy).
var (
	ErrShutdown           = errors.New("station: gateway shutting down")
	ErrIdleTimeout        = errors.New("station: idle timeout")
	ErrFrameTimeout       = errors.New("station: frame timeout")
	ErrFrameTooLarge      = errors.New("station: frame too large for the gateway")
	ErrUnsupportedControl = errors.New("station: unsupported control frame")
	ErrServerBusy         = errors.New("station: server busy")
	ErrNotAuthorized      = errors.New("station: not authorized")
	ErrInternal           = errors.New("station: gateway internal error")
	// ErrSuperseded: another session of the same station identity took
	// over at the gateway (v2). Not fatal; the client reconnects with its
	// back-off, which grows while it keeps being superseded.
	ErrSuperseded = errors.New("station: superseded by a newer session of this station")
)

// Reason is the code of a CLOSE frame (docs/protocol.md, "Close reasons").
type Reason uint16

// Close reasons a gateway sends (9 in protocol v2 only). The codes are part of the protocol and
// never change meaning.
const (
	ReasonShutdown      Reason = 1 // server shutting down (after GOAWAY)
	ReasonIdleTimeout   Reason = 2 // no byte from the station for the idle timeout
	ReasonFrameTimeout  Reason = 3 // a started frame did not complete in time
	ReasonTooLarge      Reason = 4 // a frame above the gateway's max frame
	ReasonControl       Reason = 5 // a length with the control bit set
	ReasonBusy          Reason = 6 // session limits reached
	ReasonUnauthorized  Reason = 7 // the station's identity is not allowed
	ReasonInternalError Reason = 8 // the gateway failed
	ReasonSuperseded    Reason = 9 // v2: a newer session of this station took over
)

// String is the snake_case name of the reason ("server_busy"), the same label
// the gateway uses in its logs and metrics.
func (r Reason) String() string { return frame.Reason(r).String() }

// Fatal reports whether the client gives up on this reason instead of
// reconnecting: resending the same frames, or the same credentials, would be
// refused again.
func (r Reason) Fatal() bool {
	switch r {
	case ReasonTooLarge, ReasonControl, ReasonUnauthorized:
		return true
	}
	return false
}

func (r Reason) sentinel() error {
	switch r {
	case ReasonShutdown:
		return ErrShutdown
	case ReasonIdleTimeout:
		return ErrIdleTimeout
	case ReasonFrameTimeout:
		return ErrFrameTimeout
	case ReasonTooLarge:
		return ErrFrameTooLarge
	case ReasonControl:
		return ErrUnsupportedControl
	case ReasonBusy:
		return ErrServerBusy
	case ReasonUnauthorized:
		return ErrNotAuthorized
	case ReasonInternalError:
		return ErrInternal
	case ReasonSuperseded:
		return ErrSuperseded
	}
	return nil
}

// CloseError is a CLOSE frame received from the gateway.
type CloseError struct {
	Reason Reason
	Text   string // the gateway's human text, may be empty
}

func (e *CloseError) Error() string {
	text := e.Text
	if text == "" {
		text = frame.Reason(e.Reason).Text()
	}
	return fmt.Sprintf("gateway closed the session: %s (%s)", text, e.Reason)
}

// Unwrap returns the sentinel of the reason (nil for a reason this version
// does not know), so that errors.Is(err, ErrServerBusy) works.
func (e *CloseError) Unwrap() error { return e.Reason.sentinel() }
