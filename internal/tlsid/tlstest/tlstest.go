// Package tlstest makes throw-away certificate authorities and certificates
// for tests: real X.509 chains written as PEM files into t.TempDir(), so that
// code under test loads them exactly as it loads an operator's files.
//
//	ca := tlstest.NewCA(t, "test-ca")
//	srv := ca.Server(t)                       // 127.0.0.1, ::1, localhost
//	cli := ca.Client(t, "kiruna.gs.example")  // identity kiruna.gs.example
//	conf := ca.ClientConfig(cli)              // dial config trusting ca
package tlstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPEM  []byte
	CertFile string         // PEM file of Cert, e.g. for --tls-client-ca
	Pool     *x509.CertPool // holds Cert alone
}

// Cert is a certificate issued by a CA, with its key.
type Cert struct {
	Cert     *x509.Certificate
	TLS      tls.Certificate // chain and key, ready for tls.Config.Certificates
	CertPEM  []byte
	KeyPEM   []byte
	CertFile string // PEM file of the certificate
	KeyFile  string // PEM file of the private key (PKCS #8)
}

// Options describe a certificate for Issue. Zero fields take defaults.
type Options struct {
	CommonName  string
	DNSNames    []string
	IPAddresses []net.IP
	// NotBefore and NotAfter default to one hour ago and one day from now.
	// Set both in the past for an expired certificate.
	NotBefore, NotAfter time.Time
	// ExtKeyUsage defaults to both server and client authentication.
	ExtKeyUsage []x509.ExtKeyUsage
}

// NewCA makes a CA named name whose certificate is written into t.TempDir().
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Meridian tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("tlstest: create CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: parse CA: %v", err)
	}
	ca := &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der), Pool: x509.NewCertPool()}
	ca.Pool.AddCert(cert)
	ca.CertFile = writeFile(t, name+"-ca.pem", ca.CertPEM)
	return ca
}

// Issue signs a certificate described by o and writes it and its key into
// t.TempDir().
func (ca *CA) Issue(t testing.TB, o Options) *Cert {
	t.Helper()
	now := time.Now()
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	if o.ExtKeyUsage == nil {
		o.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: o.CommonName},
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPAddresses,
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.ExtKeyUsage,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("tlstest: issue %q: %v", o.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: parse %q: %v", o.CommonName, err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("tlstest: marshal key: %v", err)
	}
	c := &Cert{
		Cert:    cert,
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert},
		CertPEM: pemBlock("CERTIFICATE", der),
		KeyPEM:  pemBlock("PRIVATE KEY", pkcs8),
	}
	base := "cert-" + cert.SerialNumber.Text(16)
	c.CertFile = writeFile(t, base+".pem", c.CertPEM)
	c.KeyFile = writeFile(t, base+"-key.pem", c.KeyPEM)
	return c
}

// Server issues a server certificate valid for 127.0.0.1, ::1 and localhost.
func (ca *CA) Server(t testing.TB) *Cert {
	t.Helper()
	return ca.Issue(t, Options{
		CommonName:  "meridian test server",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// Client issues a client certificate whose identity is name (its only DNS
// SAN and its CN).
func (ca *CA) Client(t testing.TB, name string) *Cert {
	t.Helper()
	return ca.Issue(t, Options{
		CommonName:  name,
		DNSNames:    []string{name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// ClientConfig is a dial configuration that trusts ca and presents certs
// (none for a station without a client certificate). ServerName is left
// empty so that tls.Dial takes it from the address, e.g. "127.0.0.1".
func (ca *CA) ClientConfig(certs ...*Cert) *tls.Config {
	c := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	for _, cert := range certs {
		c.Certificates = append(c.Certificates, cert.TLS)
	}
	return c
}

// WriteFile writes data into t.TempDir() as name and returns the path: for
// bundles, corrupt files and other cases the helpers above do not cover.
func WriteFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	return writeFile(t, name, data)
}

func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	// P-256 rather than RSA: key generation is instant, which keeps tests
	// that issue many certificates fast.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("tlstest: generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("tlstest: serial: %v", err)
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
