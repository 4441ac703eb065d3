package sdnotify

import (
	"crypto/rand"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a real unixgram socket, as systemd does for a Type=notify unit.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotifyPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn := listen(t, path)
	t.Setenv("NOTIFY_SOCKET", path)

	sent, err := Notify(Ready + "\n" + Status("accepting stations\non :7777"))
	if err != nil || !sent {
		t.Fatalf("Notify: sent %v, %v", sent, err)
	}
	if got, want := receive(t, conn), "READY=1\nSTATUS=accepting stations on :7777"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := Notify(Stopping); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, conn); got != "STOPPING=1" {
		t.Errorf("got %q", got)
	}
}

func TestNotifyAbstract(t *testing.T) {
	name := "@meridian-sdnotify-test-" + rand.Text()
	conn := listen(t, "\x00"+name[1:])
	if err := Send(name, Ready); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, conn); got != Ready {
		t.Errorf("got %q", got)
	}
}

func TestNotifyOutsideSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Notify(Ready); sent || err != nil {
		t.Errorf("without NOTIFY_SOCKET: sent %v, %v; want false, nil", sent, err)
	}
}

func TestNotifyErrors(t *testing.T) {
	if err := Send("vsock:2:1234", Ready); !errors.Is(err, ErrBadSocket) {
		t.Errorf("vsock address: %v, want ErrBadSocket", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens.sock"))
	if sent, err := Notify(Ready); sent || err == nil {
		t.Errorf("dead socket: sent %v, %v; want an error", sent, err)
	}
}
