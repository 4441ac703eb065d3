package stream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/nats-io/nats-server/v2/server"
)

// TokenFileName is the file under the data directory that holds the embedded
// server's client token.
const TokenFileName = "nats-token"

// tokenBytes is the token's entropy: 256 bits, written as 64 hex digits.
const tokenBytes = 32

// ErrListen is returned by Open when the embedded server cannot listen on
// --nats-listen (a busy port, a bad address).
var ErrListen = errors.New("stream: cannot listen on --nats-listen")

// ErrNoToken is returned by ReadToken when the data directory has no token file.
var ErrNoToken = errors.New("stream: no token file")

// TokenFile is the path of the token file in dataDir.
func TokenFile(dataDir string) string { return filepath.Join(dataDir, TokenFileName) }

// ReadToken reads the token the embedded server of dataDir requires. It fails
// with ErrNoToken when the gateway never started there.
func ReadToken(dataDir string) (string, error) {
	b, err := os.ReadFile(TokenFile(dataDir))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s", ErrNoToken, TokenFile(dataDir))
	}
	if err != nil {
		return "", fmt.Errorf("stream: read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("stream: token file %s is empty", TokenFile(dataDir))
	}
	return tok, nil
}

// loadOrCreateToken returns the token kept in dataDir, creating it on first
// start. The token must survive restarts: consumers on the host read it once
// and keep it in their configuration.
func loadOrCreateToken(dataDir string, log *slog.Logger) (string, error) {
	path := TokenFile(dataDir)
	tok, err := ReadToken(dataDir)
	if err == nil {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			// Restored from a backup or edited by hand: the token guards the
			// telemetry, so readable-by-others is never what was meant.
			log.Warn("token file was readable by others; restricting it to 0600", "path", path, "mode", fi.Mode().Perm().String())
			if err := os.Chmod(path, 0o600); err != nil {
				return "", fmt.Errorf("stream: restrict token file: %w", err)
			}
		}
		return tok, nil
	}
	if !errors.Is(err, ErrNoToken) {
		return "", err
	}
	var raw [tokenBytes]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("stream: generate token: %w", err)
	}
	tok = hex.EncodeToString(raw[:])
	// O_EXCL: two gateways started on one data dir must not each write a
	// different token; the loser fails here instead of silently locking the
	// other's consumers out.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("stream: create token file: %w", err)
	}
	_, werr := f.WriteString(tok + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path)
		return "", fmt.Errorf("stream: write token file: %w", err)
	}
	log.Info("generated NATS token for the embedded server", "path", path)
	return tok, nil
}

// embeddedOptions maps the configuration onto nats-server options.
func embeddedOptions(cfg Config, token string) (*server.Options, error) {
	opts := &server.Options{
		ServerName:         "meridian",
		JetStream:          true,
		StoreDir:           storeDir(cfg),
		JetStreamMaxStore:  cfg.StoreMaxBytes,
		JetStreamMaxMemory: embeddedMaxMemory,
		// The gateway owns the process's signals: SIGTERM means "drain the
		// stations", not "stop the store under them".
		NoSigs:        true,
		Authorization: token,
		SyncInterval:  cfg.SyncInterval,
		SyncAlways:    cfg.SyncAlways,
	}
	// The server's default payload limit (1MiB) is below the largest frame
	// --max-frame allows; raise it so that no accepted frame is unpublishable.
	if need := cfg.MaxFrame + maxHeaderBytes; need > server.MAX_PAYLOAD_SIZE {
		opts.MaxPayload = int32(min(need, config.MaxFrameLimit+maxHeaderBytes))
	}
	if cfg.Listen == "" {
		opts.DontListen = true
		return opts, nil
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrListen, cfg.Listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return nil, fmt.Errorf("%w %q: bad port", ErrListen, cfg.Listen)
	}
	if p == 0 {
		p = server.RANDOM_PORT // nats-server reads 0 as "the default port"
	}
	opts.Host, opts.Port = host, p
	return opts, nil
}

// storeDir is where the embedded server keeps its JetStream store.
func storeDir(cfg Config) string { return filepath.Join(cfg.DataDir, "jetstream") }

// embeddedMaxMemory bounds the memory store; the gateway keeps nothing there
// but the state of ordered consumers (meridian tail).
const embeddedMaxMemory = 64 << 20

// maxHeaderBytes is room for the Meridian headers on top of a frame.
const maxHeaderBytes = 4096

// startEmbedded starts the in-process server and waits until it accepts
// clients or fails. The wait has no deadline: the server recovers its
// JetStream store inside Start, which after a crash with a large store (or
// many messages within the dedup window) can take minutes. It logs progress
// every cfg.ProgressInterval meanwhile.
//
// When ctx ends during the recovery, startEmbedded still waits for Start to
// return, because nats-server cannot be shut down in the middle of
// recovering its store; it then shuts the server down and returns ctx's
// error. Once Start returned it stops at once.
func startEmbedded(ctx context.Context, cfg Config, log *slog.Logger) (*server.Server, string, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("stream: data dir: %w", err)
	}
	token, err := loadOrCreateToken(cfg.DataDir, log)
	if err != nil {
		return nil, "", err
	}
	opts, err := embeddedOptions(cfg, token)
	if err != nil {
		return nil, "", err
	}
	if !opts.DontListen && opts.Port != server.RANDOM_PORT {
		// nats-server reports a busy port only as a log line and then never
		// becomes ready; probing first turns it into an error naming the flag.
		// (A race with another process in between still ends in the fatal
		// log line caught below.)
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, "", fmt.Errorf("%w %s: %w", ErrListen, cfg.Listen, err)
		}
		_ = l.Close()
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, "", fmt.Errorf("stream: embedded NATS server: %w", err)
	}
	nl := newNATSLogger(log.With("component", "nats"))
	// Trace stays off even at debug: it logs every message, which at stream
	// rates drowns the gateway's own log.
	srv.SetLoggerV2(nl, cfg.ServerDebug, false, false)
	stop := func(err error) (*server.Server, string, error) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, "", err
	}

	// Start runs the store recovery; this goroutine is owned by
	// startEmbedded, which waits for it on every path below.
	began := time.Now()
	started := make(chan struct{})
	go func() {
		defer close(started)
		srv.Start()
	}()
	progress := time.NewTicker(cfg.ProgressInterval)
	defer progress.Stop()
	cancel := ctx.Done() // nil once seen: keep waiting for Start, quietly
	for recovering := true; recovering; {
		select {
		case <-started:
			recovering = false
		case <-progress.C:
			log.Info("recovering the JetStream store", "elapsed", time.Since(began).Round(time.Millisecond), "store", opts.StoreDir)
		case <-cancel:
			cancel = nil
			log.Warn("start-up cancelled; stopping once the JetStream store recovery reaches a consistent point",
				"elapsed", time.Since(began).Round(time.Millisecond), "store", opts.StoreDir)
		}
	}
	if err := ctx.Err(); err != nil {
		return stop(fmt.Errorf("stream: embedded NATS server not ready: %w", err))
	}
	if d := time.Since(began); d >= cfg.ProgressInterval {
		log.Info("JetStream store recovered", "took", d.Round(time.Millisecond), "store", opts.StoreDir)
	}
	for !srv.ReadyForConnections(100 * time.Millisecond) {
		if ferr := nl.fatalErr(); ferr != nil {
			if strings.Contains(ferr.Error(), "listening on port") {
				return stop(fmt.Errorf("%w %s: %w", ErrListen, cfg.Listen, ferr))
			}
			return stop(fmt.Errorf("stream: embedded NATS server: %w", ferr))
		}
		if err := ctx.Err(); err != nil {
			return stop(fmt.Errorf("stream: embedded NATS server not ready: %w", err))
		}
	}
	if !srv.JetStreamEnabled() {
		if ferr := nl.fatalErr(); ferr != nil {
			return stop(fmt.Errorf("stream: embedded NATS server: %w", ferr))
		}
		return stop(errors.New("stream: embedded NATS server started without JetStream"))
	}
	return srv, token, nil
}

// natsLogger adapts nats-server's logger to slog. Notices (the start-up
// banner, per-connection chatter) go to debug: the gateway logs the few facts
// an operator needs itself. Warnings and errors keep their level.
type natsLogger struct {
	log *slog.Logger

	mu    sync.Mutex
	fatal error // first Fatalf, which nats-server logs instead of returning
}

func newNATSLogger(log *slog.Logger) *natsLogger { return &natsLogger{log: log} }

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Tracef(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }

// Fatalf records the error for startEmbedded; it must not exit the process.
func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	l.mu.Lock()
	if l.fatal == nil {
		l.fatal = errors.New(msg)
	}
	l.mu.Unlock()
}

func (l *natsLogger) fatalErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}
