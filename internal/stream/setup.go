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

// ClientFromConfig picks the client settings out of the gateway configuration.
func ClientFromConfig(cfg config.Config) Client {
	return Client{
		URL:      cfg.NATSURL,
		Creds:    cfg.NATSCreds,
		Token:    cfg.NATSToken,
		User:     cfg.NATSUser,
		Password: cfg.NATSPassword,
		TLSCA:    cfg.NATSTLSCA,
		TLSCert:  cfg.NATSTLSCert,
		TLSKey:   cfg.NATSTLSKey,
		Name:     "meridian",
	}
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

// streamConfig is the stream the configuration asks for.
func streamConfig(cfg config.Config, embedded bool) jetstream.StreamConfig {
	maxBytes := int64(cfg.RetentionMaxBytes)
	if maxBytes == 0 {
		if embedded {
			maxBytes = int64(cfg.StoreMaxBytes)
		} else {
			maxBytes = -1
		}
	}
	return jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "Meridian ground-station telemetry",
		Subjects:    streamSubjects,
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.StreamReplicas,
		Discard:     jetstream.DiscardOld,
		MaxAge:      time.Duration(cfg.RetentionMaxAge),
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		Duplicates:  time.Duration(cfg.DedupWindow),
	}
}

// ensureStream creates the stream, or checks that the existing one matches.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, log *slog.Logger) error {
	s, err := js.Stream(ctx, want.Name)
	switch {
	case err == nil:
		return compareStream(s.CachedInfo().Config, want)
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("stream: look up stream %s: %w", want.Name, err)
	}
	_, err = js.CreateStream(ctx, want)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		// Another gateway created it in between with other settings.
		if s, err := js.Stream(ctx, want.Name); err == nil {
			return compareStream(s.CachedInfo().Config, want)
		}
	}
	if err != nil {
		return fmt.Errorf("stream: create stream %s: %w", want.Name, err)
	}
	log.Info("created stream", "stream", want.Name, "subjects", want.Subjects, "replicas", want.Replicas,
		"max_age", config.Duration(want.MaxAge), "max_bytes", fmtLimit(want.MaxBytes), "dedup_window", config.Duration(want.Duplicates))
	return nil
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
