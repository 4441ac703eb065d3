package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStreamConflict is returned by Open when the stream exists with settings
// that differ from the configuration. The gateway never changes an existing
// stream: it may be shared with other gateways and mission software.
var ErrStreamConflict = errors.New("stream: existing stream conflicts with the configuration")

// Client says how to reach a NATS server: the options of --nats-url and the
// credentials that go with it. The zero value connects to nothing.
type Client struct {
	URL      string // comma-separated server URLs
	Creds    string // credentials file (JWT + nkey seed)
	Token    string
	User     string
	Password string
	TLSCA    string // CA bundle verifying the servers
	TLSCert  string // client certificate, with TLSKey
	TLSKey   string
	Name     string // connection name shown by the servers
}

// Options turns c into nats.go options.
func (c Client) Options() []nats.Option {
	var o []nats.Option
	if c.Name != "" {
		o = append(o, nats.Name(c.Name))
	}
	if c.Creds != "" {
		o = append(o, nats.UserCredentials(c.Creds))
	}
	if c.Token != "" {
		o = append(o, nats.Token(c.Token))
	}
	if c.User != "" || c.Password != "" {
		o = append(o, nats.UserInfo(c.User, c.Password))
	}
	if c.TLSCA != "" {
		o = append(o, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" || c.TLSKey != "" {
		o = append(o, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return o
}

// Connect dials c.URL.
func (c Client) Connect(extra ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(c.URL, append(c.Options(), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("stream: connect to %s: %w", c.URL, err)
	}
	return nc, nil
}

// gatewayConnOptions keep a gateway's connection alive for good: the sink
// retries until the cluster is back, so the client must never give up. Open
// adds the disconnect and reconnect handlers, which need the sink.
func gatewayConnOptions(log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		// No reconnect buffer: a publish while disconnected fails at once,
		// which the sink turns into back-pressure, instead of piling frames
		// into a buffer whose fate on reconnect is unknown.
		nats.ReconnectBufSize(-1),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Error("NATS subscription error", "subject", sub.Subject, "err", err)
				return
			}
			log.Error("NATS error", "err", err)
		}),
	}
}

// jsConfig is the stream cfg asks for.
func jsConfig(cfg Config) jetstream.StreamConfig {
	maxBytes := cfg.MaxBytes
	if maxBytes <= 0 {
		if cfg.embedded() {
			maxBytes = cfg.StoreMaxBytes
		} else {
			maxBytes = -1
		}
	}
	return jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "Meridian ground-station telemetry",
		Subjects:    streamSubjects,
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		Duplicates:  cfg.DedupWindow,
	}
}

// ensureStream creates the stream, or checks that the existing one matches.
// Each JetStream API call gets its own timeout, and a call that fails because
// JetStream is not ready yet (no answer in time, no responders, "temporarily
// unavailable" while a cluster elects its leaders) is retried with a short
// back-off until ctx ends: start-up has no deadline of its own.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, timeout time.Duration, log *slog.Logger) error {
	var (
		s       jetstream.Stream
		created bool
	)
	err := retryAPI(ctx, timeout, log, "look up the stream", func(ctx context.Context) error {
		var err error
		s, err = js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			s, err = js.CreateStream(ctx, want)
			created = err == nil
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				// Another gateway created it in between, perhaps with other
				// settings: look again and compare.
				s, err = js.Stream(ctx, want.Name)
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("stream: look up or create stream %s: %w", want.Name, err)
	}
	if !created {
		return compareStream(s.CachedInfo().Config, want)
	}
	log.Info("created stream", "stream", want.Name, "subjects", want.Subjects, "replicas", want.Replicas,
		"max_age", config.Duration(want.MaxAge), "max_bytes", fmtLimit(want.MaxBytes), "dedup_window", config.Duration(want.Duplicates))
	return nil
}

// Back-off between JetStream API retries at start-up.
const (
	minAPIRetry = 100 * time.Millisecond
	maxAPIRetry = 2 * time.Second
)

// retryAPI runs call with a fresh timeout until it succeeds, fails for a
// reason other than JetStream not being ready, or ctx ends.
func retryAPI(ctx context.Context, timeout time.Duration, log *slog.Logger, what string, call func(context.Context) error) error {
	wait := minAPIRetry
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := call(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		}
		if !notReady(err) {
			return err
		}
		log.Warn("JetStream is not ready yet; retrying", "what", what, "attempt", attempt, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(wait*2, maxAPIRetry)
	}
}

// jsClusterNotAvail is JetStream's "temporarily unavailable" error code.
const jsClusterNotAvail = 10008

// notReady reports whether err means that JetStream cannot answer yet, as
// opposed to an answer that will not change by asking again.
func notReady(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) {
		return true
	}
	var jsErr jetstream.JetStreamError
	if errors.As(err, &jsErr) && jsErr.APIError() != nil {
		a := jsErr.APIError()
		return a.Code == 503 || a.ErrorCode == jsClusterNotAvail
	}
	return false
}

// compareStream names every setting of have that differs from want, as
// "setting: stream has X, configuration wants Y (--flag)".
func compareStream(have, want jetstream.StreamConfig) error {
	var diffs []string
	diff := func(what, flag string, h, w any) {
		d := fmt.Sprintf("%s: stream has %v, configuration wants %v", what, h, w)
		if flag != "" {
			d += " (" + flag + ")"
		}
		diffs = append(diffs, d)
	}
	hs, ws := slices.Sorted(slices.Values(have.Subjects)), slices.Sorted(slices.Values(want.Subjects))
	if !slices.Equal(hs, ws) {
		diff("subjects", "", hs, ws)
	}
	if have.Retention != want.Retention {
		diff("retention policy", "", have.Retention, want.Retention)
	}
	if have.Storage != want.Storage {
		diff("storage", "", have.Storage, want.Storage)
	}
	if have.Replicas != want.Replicas {
		diff("replicas", "--stream-replicas", have.Replicas, want.Replicas)
	}
	if have.Discard != want.Discard {
		diff("discard policy", "", have.Discard, want.Discard)
	}
	if have.MaxAge != want.MaxAge {
		diff("max age", "--retention-max-age", config.Duration(have.MaxAge), config.Duration(want.MaxAge))
	}
	if normLimit(have.MaxBytes) != normLimit(want.MaxBytes) {
		diff("max bytes", "--retention-max-bytes", fmtLimit(have.MaxBytes), fmtLimit(want.MaxBytes))
	}
	if normLimit(have.MaxMsgs) != normLimit(want.MaxMsgs) {
		diff("max messages", "", fmtCount(have.MaxMsgs), fmtCount(want.MaxMsgs))
	}
	if have.Duplicates != want.Duplicates {
		diff("duplicate window", "--dedup-window", config.Duration(have.Duplicates), config.Duration(want.Duplicates))
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: stream %s: %s", ErrStreamConflict, want.Name, strings.Join(diffs, "; "))
}

// normLimit folds the server's two spellings of "no limit" (0 and -1).
func normLimit(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

func fmtLimit(n int64) string {
	if n <= 0 {
		return "no limit"
	}
	return config.Size(n).String()
}

func fmtCount(n int64) string {
	if n <= 0 {
		return "no limit"
	}
	return fmt.Sprint(n)
}
