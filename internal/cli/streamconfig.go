package cli

import (
	"os"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/stream"
)

// progressIntervalEnv shortens the start-up progress interval of the stream
// (how often "recovering the JetStream store" is logged; default 10s). It is
// a hook for the binary's tests, deliberately outside the MERIDIAN_*
// settings and --help: operators have no reason to change it.
const progressIntervalEnv = "GO_TEST_MERIDIAN_PROGRESS_INTERVAL"

// streamConfig picks what the durable stream needs out of the application's
// configuration. cfg is validated, so Sync is "always" or a positive
// duration.
func streamConfig(cfg config.Config) stream.Config {
	sc := stream.Config{
		Name: cfg.Stream,
		Client: stream.Client{
			URL:      cfg.NATSURL,
			Creds:    cfg.NATSCreds,
			Token:    cfg.NATSToken,
			User:     cfg.NATSUser,
			Password: cfg.NATSPassword,
			TLSCA:    cfg.NATSTLSCA,
			TLSCert:  cfg.NATSTLSCert,
			TLSKey:   cfg.NATSTLSKey,
			Name:     "meridian",
		},
		DataDir:            cfg.DataDir,
		Listen:             cfg.NATSListen,
		StoreMaxBytes:      int64(cfg.StoreMaxBytes),
		ServerDebug:        cfg.LogLevel == "debug",
		Replicas:           cfg.StreamReplicas,
		MaxAge:             time.Duration(cfg.RetentionMaxAge),
		MaxBytes:           int64(cfg.RetentionMaxBytes),
		DedupWindow:        time.Duration(cfg.DedupWindow),
		MaxFrame:           int64(cfg.MaxFrame),
		Packed:             cfg.StreamLayout == config.LayoutPacked,
		PublishWindow:      cfg.PublishWindow,
		PublishWindowBytes: int64(cfg.PublishWindowBytes),
		PublishTimeout:     cfg.PublishTimeout,
	}
	if cfg.Sync == "always" {
		sc.SyncAlways = true
	} else if d, err := time.ParseDuration(cfg.Sync); err == nil {
		sc.SyncInterval = d
	}
	if d, err := time.ParseDuration(os.Getenv(progressIntervalEnv)); err == nil && d > 0 {
		sc.ProgressInterval = d
	}
	return sc
}
