// Package tlsid is TLS for the station listener: the server configuration
// built from the operator's PEM files and reloaded in place on SIGHUP, the
// identity a client certificate proves, and the allow-list of identities
// that may open sessions.
package tlsid

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"time"
)

// Sentinel errors, wrapped with the file or pattern concerned.
var (
	ErrNoCertificates = errors.New("no PEM certificates found")
	ErrExpired        = errors.New("certificate has expired")
	ErrBadPattern     = errors.New("bad allow-list pattern")
)

// Files are the operator's PEM files: --tls-cert, --tls-key and, for mutual
// TLS, --tls-client-ca.
type Files struct {
	Cert     string // server certificate chain, leaf first
	Key      string // private key of the leaf
	ClientCA string // CA bundle that client certificates must chain to; empty: no client certificates
}

// Loader holds the station listener's TLS configuration and swaps it on
// Reload. Connections already established keep the configuration they were
// handshaken with; only new handshakes see a reload.
type Loader struct {
	files Files
	outer *tls.Config
	// cur is the configuration of the current generation of files; every
	// handshake reads it once, in GetConfigForClient. Never nil after Load.
	cur atomic.Pointer[tls.Config]
}

// Load reads files and builds the configuration. It fails if a file cannot
// be read or parsed, the key does not match the certificate, the server
// certificate has expired, or the client CA file holds no certificate.
func Load(files Files) (*Loader, error) {
	l := &Loader{files: files}
	if err := l.Reload(); err != nil {
		return nil, err
	}
	l.outer = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Every handshake gets the current generation, so Reload needs no
		// new listener and never touches live connections.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return l.cur.Load(), nil
		},
		// Unused while GetConfigForClient answers; set so that code which
		// checks for a certificate source (tls.Listen, http.Server) is happy.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &l.cur.Load().Certificates[0], nil
		},
	}
	if files.ClientCA != "" {
		l.outer.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return l, nil
}

// Config is the listener's configuration, for tls.NewListener or
// tls.Server. It is shared: do not modify it.
func (l *Loader) Config() *tls.Config { return l.outer }

// MutualTLS reports whether client certificates are required.
func (l *Loader) MutualTLS() bool { return l.files.ClientCA != "" }

// Leaf is the server certificate now in use, e.g. to log its subject and
// expiry after a reload.
func (l *Loader) Leaf() *x509.Certificate { return l.cur.Load().Certificates[0].Leaf }

// Reload reads the files again and, if they are all valid, makes new
// handshakes use them. On error the previous configuration stays in force,
// so a half-written file during a certificate rotation cannot take the
// listener down. Safe for concurrent use with handshakes.
func (l *Loader) Reload() error {
	cert, err := tls.LoadX509KeyPair(l.files.Cert, l.files.Key)
	if err != nil {
		return fmt.Errorf("tlsid: load certificate %s and key %s: %w", l.files.Cert, l.files.Key, err)
	}
	if cert.Leaf == nil { // filled by Go ≥ 1.23 unless GODEBUG x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("tlsid: parse certificate %s: %w", l.files.Cert, err)
		}
	}
	if now := time.Now(); now.After(cert.Leaf.NotAfter) {
		return fmt.Errorf("tlsid: %s: %w (not after %s)", l.files.Cert, ErrExpired, cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	c := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if l.files.ClientCA != "" {
		pool, err := loadPool(l.files.ClientCA)
		if err != nil {
			return err
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
		// A resumed session reuses the chain verified when its ticket was
		// issued, and not every Go release re-checks it against a CA pool
		// swapped in by GetConfigForClient; without tickets every session
		// is verified against the CA of the moment. Sessions are long-lived
		// TCP streams, so full handshakes cost nothing that matters.
		c.SessionTicketsDisabled = true
	}
	l.cur.Store(c)
	return nil
}

func loadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tlsid: read client CA: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tlsid: client CA %s: certificate %d: %w", file, n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("tlsid: client CA %s: %w", file, ErrNoCertificates)
	}
	return pool, nil
}

// Identity is the name a verified client certificate proves: the leaf's
// first DNS subject alternative name, else its subject common name. It is
// empty when the peer sent no certificate.
func Identity(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	leaf := cs.PeerCertificates[0]
	if len(leaf.DNSNames) > 0 {
		return leaf.DNSNames[0]
	}
	return leaf.Subject.CommonName
}

// AllowList is the set of station identities that may open sessions, as
// exact names or path.Match globs ("*.gs.example", "station-??", "10.1.*").
// The gateway asks it about a station's identity: the name its client
// certificate proves, else its remote IP, so a list works with mutual TLS,
// plain TLS and plain TCP alike. Matching ignores case, as DNS names do.
// The zero value, like an empty list, allows everyone.
type AllowList struct {
	patterns []string // lower-cased, validated
}

// NewAllowList validates patterns, so that a typo fails at start-up rather
// than silently refusing every station.
func NewAllowList(patterns []string) (AllowList, error) {
	a := AllowList{patterns: make([]string, 0, len(patterns))}
	for _, p := range patterns {
		p = strings.ToLower(strings.TrimSpace(p))
		if p == "" {
			return AllowList{}, fmt.Errorf("%w: empty pattern", ErrBadPattern)
		}
		if _, err := path.Match(p, ""); err != nil {
			return AllowList{}, fmt.Errorf("%w %q: %w", ErrBadPattern, p, err)
		}
		a.patterns = append(a.patterns, p)
	}
	return a, nil
}

// Allowed reports whether identity may open a session. With a non-empty
// list the empty identity is never allowed.
func (a AllowList) Allowed(identity string) bool {
	if len(a.patterns) == 0 {
		return true
	}
	if identity == "" {
		return false
	}
	return a.match(identity, false)
}

// AllowedName reports whether a name a station gives for itself (a protocol
// v2 HELLO without mutual TLS) is allowed. Only name patterns count: an
// address pattern ("10.1.*", "fd00::*") keeps filtering addresses, so that
// a peer cannot pass an address filter by naming itself "10.1.x".
func (a AllowList) AllowedName(name string) bool {
	if len(a.patterns) == 0 {
		return true
	}
	return name != "" && a.match(name, true)
}

func (a AllowList) match(identity string, namesOnly bool) bool {
	identity = strings.ToLower(identity)
	for _, p := range a.patterns {
		if namesOnly && addressPattern(p) {
			continue
		}
		// Patterns were validated, so Match cannot fail here.
		if ok, _ := path.Match(p, identity); ok {
			return true
		}
	}
	return false
}

// addressPattern reports whether p is written as an IP address or address
// glob: only hex digits, '.', ':' and glob characters, with a digit and a
// '.' or ':'.
func addressPattern(p string) bool {
	digit, sep := false, false
	for _, c := range p {
		switch {
		case c >= '0' && c <= '9':
			digit = true
		case c == '.' || c == ':':
			sep = true
		case c >= 'a' && c <= 'f', strings.ContainsRune("*?[]^-\\", c):
		default:
			return false
		}
	}
	return digit && sep
}
