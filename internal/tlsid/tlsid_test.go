package tlsid_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/tlsid"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every handshake, echo and wait for the server's verdict, so
// that a test that goes wrong fails instead of hanging.
const wait = 5 * time.Second

// handshake is what the server saw of one connection.
type handshake struct {
	identity string
	err      error
}

// serve runs a real TLS echo server on 127.0.0.1 with cfg. It handshakes the
// way the gateway does (tls.Server, then HandshakeContext bounded by a
// timeout), and echoes where the gateway would run a session. Every
// goroutine ends by cleanup.
func serve(t *testing.T, cfg *tls.Config) (string, <-chan handshake) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan handshake, 16)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed by cleanup
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				tc := tls.Server(c, cfg)
				hctx, hcancel := context.WithTimeout(ctx, wait)
				err := tc.HandshakeContext(hctx)
				hcancel()
				results <- handshake{tlsid.Identity(tc.ConnectionState()), err}
				if err == nil {
					_, _ = io.Copy(tc, tc)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), results
}

// dial connects, and proves the session works with one echo round trip: in
// TLS 1.3 a client learns that the server refused its certificate only when
// it reads.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := echo(c); err != nil {
		c.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func echo(c *tls.Conn) error {
	if err := c.SetDeadline(time.Now().Add(wait)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return errors.New("echo mismatch")
	}
	return nil
}

// next is the server's verdict on the next connection.
func next(t *testing.T, results <-chan handshake) handshake {
	t.Helper()
	select {
	case r := <-results:
		return r
	case <-time.After(wait):
		t.Fatal("the server saw no handshake")
		return handshake{}
	}
}

func load(t *testing.T, f tlsid.Files) *tlsid.Loader {
	t.Helper()
	l, err := tlsid.Load(f)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestMutualTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "stations")
	other := tlstest.NewCA(t, "intruders")
	srv := ca.Server(t)
	l := load(t, tlsid.Files{Cert: srv.CertFile, Key: srv.KeyFile, ClientCA: ca.CertFile})
	if !l.MutualTLS() || l.Config().MinVersion != tls.VersionTLS12 {
		t.Fatalf("MutualTLS %v, MinVersion %x", l.MutualTLS(), l.Config().MinVersion)
	}
	addr, results := serve(t, l.Config())
	allow, err := tlsid.NewAllowList([]string{"*.gs.example"})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("valid", func(t *testing.T) {
		if _, err := dial(t, addr, ca.ClientConfig(ca.Client(t, "kiruna.gs.example"))); err != nil {
			t.Fatal(err)
		}
		r := next(t, results)
		if r.err != nil || r.identity != "kiruna.gs.example" || !allow.Allowed(r.identity) {
			t.Errorf("server saw %q, %v", r.identity, r.err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		old := ca.Issue(t, tlstest.Options{
			CommonName: "old.gs.example", DNSNames: []string{"old.gs.example"},
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
		})
		if _, err := dial(t, addr, ca.ClientConfig(old)); err == nil {
			t.Fatal("expired client certificate accepted")
		}
		var inv x509.CertificateInvalidError
		if r := next(t, results); !errors.As(r.err, &inv) || inv.Reason != x509.Expired {
			t.Errorf("server error %v, want an x509 Expired error", r.err)
		}
	})
	t.Run("wrong CA", func(t *testing.T) {
		// Go's client withholds a certificate the server's CA list does not
		// name; an attacker's client would not, so force it.
		evil := other.Client(t, "evil.gs.example")
		conf := ca.ClientConfig()
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &evil.TLS, nil }
		if _, err := dial(t, addr, conf); err == nil {
			t.Fatal("certificate from another CA accepted")
		}
		var ua x509.UnknownAuthorityError
		if r := next(t, results); !errors.As(r.err, &ua) {
			t.Errorf("server error %v, want x509.UnknownAuthorityError", r.err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		if _, err := dial(t, addr, ca.ClientConfig()); err == nil {
			t.Fatal("connection without a client certificate accepted")
		}
		if r := next(t, results); r.err == nil || r.identity != "" {
			t.Errorf("server saw %q, %v; want a handshake error", r.identity, r.err)
		}
	})
	t.Run("not on the allow-list", func(t *testing.T) {
		if _, err := dial(t, addr, ca.ClientConfig(ca.Client(t, "rogue.example.org"))); err != nil {
			t.Fatal(err) // TLS accepts it: admission is the gateway's call
		}
		r := next(t, results)
		if r.err != nil || r.identity != "rogue.example.org" || allow.Allowed(r.identity) {
			t.Errorf("server saw %q, %v, allowed %v", r.identity, r.err, allow.Allowed(r.identity))
		}
	})
}

func TestServerOnlyTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "server")
	srv := ca.Server(t)
	l := load(t, tlsid.Files{Cert: srv.CertFile, Key: srv.KeyFile})
	if l.MutualTLS() {
		t.Error("MutualTLS without a client CA")
	}
	addr, results := serve(t, l.Config())
	if _, err := dial(t, addr, ca.ClientConfig()); err != nil {
		t.Fatal(err)
	}
	if r := next(t, results); r.err != nil || r.identity != "" {
		t.Errorf("server saw %q, %v", r.identity, r.err)
	}
}

// copyFile overwrites dst the way an operator's rotation would.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReload(t *testing.T) {
	ca1, ca2 := tlstest.NewCA(t, "ca1"), tlstest.NewCA(t, "ca2")
	srv1, srv2 := ca1.Server(t), ca2.Server(t)
	dir := t.TempDir()
	files := tlsid.Files{
		Cert:     filepath.Join(dir, "server.pem"),
		Key:      filepath.Join(dir, "server-key.pem"),
		ClientCA: filepath.Join(dir, "clients.pem"),
	}
	copyFile(t, srv1.CertFile, files.Cert)
	copyFile(t, srv1.KeyFile, files.Key)
	copyFile(t, ca1.CertFile, files.ClientCA)
	l := load(t, files)
	addr, results := serve(t, l.Config())

	// Clients trust both server CAs, so that the only thing that changes
	// what they see is the server's certificate.
	both := x509.NewCertPool()
	both.AddCert(ca1.Cert)
	both.AddCert(ca2.Cert)
	clientConf := func(c *tlstest.Cert) *tls.Config {
		return &tls.Config{RootCAs: both, Certificates: []tls.Certificate{c.TLS}, MinVersion: tls.VersionTLS12}
	}
	cli1, cli2 := ca1.Client(t, "one.gs.example"), ca2.Client(t, "two.gs.example")

	live, err := dial(t, addr, clientConf(cli1))
	if err != nil {
		t.Fatal(err)
	}
	next(t, results)
	if got := live.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(srv1.Cert.SerialNumber) != 0 {
		t.Fatal("first connection did not see the first certificate")
	}

	// Rotate the server certificate and the client CA, then reload.
	copyFile(t, srv2.CertFile, files.Cert)
	copyFile(t, srv2.KeyFile, files.Key)
	copyFile(t, ca2.CertFile, files.ClientCA)
	if err := l.Reload(); err != nil {
		t.Fatal(err)
	}
	if l.Leaf().SerialNumber.Cmp(srv2.Cert.SerialNumber) != 0 {
		t.Error("Leaf does not report the reloaded certificate")
	}

	if err := echo(live); err != nil {
		t.Fatalf("live session broken by reload: %v", err)
	}
	fresh, err := dial(t, addr, clientConf(cli2))
	if err != nil {
		t.Fatalf("client of the new CA: %v", err)
	}
	if r := next(t, results); r.err != nil || r.identity != "two.gs.example" {
		t.Errorf("server saw %q, %v", r.identity, r.err)
	}
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(srv2.Cert.SerialNumber) != 0 {
		t.Error("new connection did not see the reloaded certificate")
	}
	// Go's client withholds a certificate that the server's CA list no
	// longer names, and would be refused for sending none; force it, so
	// that what refuses it is the server's verification against the
	// reloaded CA.
	removed := clientConf(cli1)
	removed.Certificates = nil
	removed.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cli1.TLS, nil }
	if _, err := dial(t, addr, removed); err == nil {
		t.Error("client of the removed CA still accepted")
	}
	var ua x509.UnknownAuthorityError
	if r := next(t, results); !errors.As(r.err, &ua) {
		t.Errorf("server error %v, want x509.UnknownAuthorityError", r.err)
	}

	// A broken file keeps the current generation in force.
	if err := os.WriteFile(files.Cert, []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.Reload(); err == nil {
		t.Fatal("Reload accepted a corrupt certificate")
	}
	if _, err := dial(t, addr, clientConf(cli2)); err != nil {
		t.Fatalf("failed reload broke the listener: %v", err)
	}
	next(t, results)
	if err := echo(live); err != nil {
		t.Fatalf("live session broken by failed reload: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	srv, other := ca.Server(t), ca.Server(t)
	expired := ca.Issue(t, tlstest.Options{
		CommonName: "old", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
	})
	notPEM := tlstest.WriteFile(t, "empty.pem", []byte("nothing here\n"))
	f := func(name string, files tlsid.Files, wantIs error, wantText string) {
		t.Helper()
		_, err := tlsid.Load(files)
		if err == nil {
			t.Errorf("%s: no error", name)
			return
		}
		if wantIs != nil && !errors.Is(err, wantIs) {
			t.Errorf("%s: %v, want errors.Is %v", name, err, wantIs)
		}
		if !strings.Contains(err.Error(), wantText) {
			t.Errorf("%s: %q does not mention %q", name, err, wantText)
		}
	}
	f("missing cert", tlsid.Files{Cert: "/nonexistent.pem", Key: srv.KeyFile}, os.ErrNotExist, "/nonexistent.pem")
	f("key of another cert", tlsid.Files{Cert: srv.CertFile, Key: other.KeyFile}, nil, srv.CertFile)
	f("expired server cert", tlsid.Files{Cert: expired.CertFile, Key: expired.KeyFile}, tlsid.ErrExpired, expired.CertFile)
	f("CA without certificates", tlsid.Files{Cert: srv.CertFile, Key: srv.KeyFile, ClientCA: notPEM}, tlsid.ErrNoCertificates, notPEM)
	f("missing CA", tlsid.Files{Cert: srv.CertFile, Key: srv.KeyFile, ClientCA: "/nonexistent-ca.pem"}, os.ErrNotExist, "client CA")
}

func TestIdentity(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	f := func(o tlstest.Options, want string) {
		t.Helper()
		cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{ca.Issue(t, o).Cert}}
		if got := tlsid.Identity(cs); got != want {
			t.Errorf("Identity(%+v) = %q, want %q", o, got, want)
		}
	}
	f(tlstest.Options{CommonName: "cn.example", DNSNames: []string{"first.example", "second.example"}}, "first.example")
	f(tlstest.Options{CommonName: "cn-only"}, "cn-only")
	f(tlstest.Options{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, "")
	if got := tlsid.Identity(tls.ConnectionState{}); got != "" {
		t.Errorf("no certificate: %q", got)
	}
}

func TestAllowList(t *testing.T) {
	f := func(patterns []string, identity string, want bool) {
		t.Helper()
		a, err := tlsid.NewAllowList(patterns)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Allowed(identity); got != want {
			t.Errorf("%q.Allowed(%q) = %v, want %v", patterns, identity, got, want)
		}
	}
	f(nil, "anyone", true)
	f(nil, "", true)
	f([]string{"kiruna.gs.example"}, "kiruna.gs.example", true)
	f([]string{"kiruna.gs.example"}, "KIRUNA.gs.example", true)
	f([]string{"kiruna.gs.example"}, "svalbard.gs.example", false)
	f([]string{"kiruna.gs.example"}, "", false)
	f([]string{"*.gs.example"}, "svalbard.gs.example", true)
	f([]string{"*.gs.example"}, "gs.example", false)
	f([]string{"*.gs.example"}, "a.b.gs.example", true) // '*' crosses dots (path.Match stops only at '/')
	f([]string{"station-??"}, "station-07", true)
	f([]string{"station-??"}, "station-107", false)
	f([]string{"station-[0-4]*"}, "station-3x", true)
	f([]string{"a", "b*"}, "bravo", true)
	// Without a client certificate the gateway asks about the remote IP.
	f([]string{"10.1.*"}, "10.1.2.3", true)
	f([]string{"10.1.*"}, "10.10.2.3", false)
	f([]string{"127.0.0.1", "::1"}, "::1", true)

	for _, bad := range [][]string{{"["}, {"ok", "station-[0-"}, {""}, {"  "}} {
		if _, err := tlsid.NewAllowList(bad); !errors.Is(err, tlsid.ErrBadPattern) {
			t.Errorf("NewAllowList(%q): %v, want ErrBadPattern", bad, err)
		}
	}
	// A name a v2 station gives for itself passes name patterns only: an
	// address pattern stays a filter on addresses.
	name := func(patterns []string, n string, want bool) {
		t.Helper()
		a, err := tlsid.NewAllowList(patterns)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.AllowedName(n); got != want {
			t.Errorf("%q.AllowedName(%q) = %v, want %v", patterns, n, got, want)
		}
	}
	name(nil, "anyone", true)
	name([]string{"10.1.*"}, "10.1.2.3", false)
	name([]string{"10.1.*"}, "10.1.evil", false)
	name([]string{"fd00::*"}, "fd00::1", false)
	name([]string{"10.1.*", "gs-*"}, "gs-kiruna", true)
	name([]string{"*"}, "gs-kiruna", true)
	name([]string{"*.gs.example"}, "a.gs.example", true)
	name([]string{"cafe*"}, "cafe-1", true) // hex letters alone do not make an address
	name([]string{"gs-*"}, "", false)

	var zero tlsid.AllowList
	if !zero.Allowed("x") || !zero.Allowed("") {
		t.Error("the zero AllowList must allow everyone")
	}
}
