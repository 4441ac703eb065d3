// Package sdnotify tells systemd about the service's state through the
// NOTIFY_SOCKET datagram protocol (sd_notify(3)), so that a unit with
// Type=notify is "started" only once the gateway can take frames, and shows
// "stopping" while it drains.
//
// It is a few lines of the protocol rather than a dependency: one datagram
// of newline-separated KEY=VALUE assignments to a unix socket.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// States to send. Several may be sent at once, joined by "\n".
const (
	Ready    = "READY=1"    // start-up finished: listeners open, stream reachable
	Stopping = "STOPPING=1" // shutdown began
)

// ErrBadSocket is returned for a NOTIFY_SOCKET that is neither a path nor an
// abstract socket name.
var ErrBadSocket = errors.New("sdnotify: unsupported NOTIFY_SOCKET address")

// Status is a one-line free-text status that systemctl status shows.
func Status(text string) string {
	return "STATUS=" + strings.ReplaceAll(text, "\n", " ")
}

// Notify sends state to the service manager named by $NOTIFY_SOCKET. Outside
// systemd (the variable unset) it does nothing and reports sent false, so
// callers need not know how they were started. Errors are worth a log line,
// never a failed start: the service works without the notification.
func Notify(state string) (sent bool, err error) {
	socket := os.Getenv("NOTIFY_SOCKET")
	if socket == "" {
		return false, nil
	}
	if err := Send(socket, state); err != nil {
		return false, err
	}
	return true, nil
}

// Send writes state as one datagram to socket: a filesystem path, or an
// abstract socket name starting with '@'.
func Send(socket, state string) error {
	name := socket
	switch {
	case strings.HasPrefix(socket, "/"):
	case strings.HasPrefix(socket, "@"):
		name = "\x00" + socket[1:] // Linux abstract namespace
	default:
		return fmt.Errorf("%w: %q", ErrBadSocket, socket)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: send to %s: %w", socket, err)
	}
	return nil
}
