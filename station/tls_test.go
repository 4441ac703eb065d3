package station_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/station"
)

// selfSigned returns a certificate for 127.0.0.1 and a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "gateway.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"gateway.test"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// TestGatewayTLS runs send, ACK and the half-close of Close over TLS, and a
// graceful restart, which half-closes a TLS connection on GOAWAY.
func TestGatewayTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	srvTLS := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	withTLS := gateway.WithTLS(srvTLS, func(tls.ConnectionState) string { return "" })
	mem := sink.NewMemory()
	cfg := gatewaytest.Config()
	first := gatewaytest.Start(t, cfg, mem, withTLS)
	c := dial(t, first.Addr, fastReconnect,
		station.WithTLS(&tls.Config{RootCAs: pool, ServerName: "gateway.test", MinVersion: tls.VersionTLS12}))
	ctx := testCtx(t)
	const n = 3000
	sent := sendAll(ctx, c, n)
	if err := c.WaitAcked(ctx, 500); err != nil {
		t.Fatal(err)
	}
	if err := first.Shutdown(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	gatewaytest.StartAt(t, first.Addr, cfg, mem, withTLS)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	frames := mem.Frames()
	if len(frames) != n || c.Stats().Reconnects < 1 {
		t.Fatalf("sink holds %d frames, want %d (stats %+v, want a reconnect)", len(frames), n, c.Stats())
	}
	for i, f := range frames {
		if !bytes.Equal(f.Payload, payloadN(i)) {
			t.Fatalf("frame %d = %q", i, f.Payload)
		}
	}
}

func TestTLSUntrusted(t *testing.T) {
	cert, _ := selfSigned(t)
	gw := gatewaytest.Start(t, gatewaytest.Config(), sink.NewMemory(),
		gateway.WithTLS(&tls.Config{Certificates: []tls.Certificate{cert}}, nil))
	_, err := station.Dial(testCtx(t), gw.Addr, station.WithTLS(&tls.Config{MinVersion: tls.VersionTLS12}))
	var uae x509.UnknownAuthorityError
	var cve *tls.CertificateVerificationError
	if err == nil || !(errors.As(err, &uae) || errors.As(err, &cve)) {
		t.Fatalf("Dial with an untrusted certificate = %v", err)
	}
}
