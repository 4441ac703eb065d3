package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/meridian-telemetry/meridian/internal/bench"
	"github.com/meridian-telemetry/meridian/internal/stream"
	"github.com/meridian-telemetry/meridian/station"
)

// benchFlags are the flags of `meridian bench`.
type benchFlags struct {
	opts     bench.Options
	json     bool
	progress time.Duration
	verify   bool
	natsURL  string
	natsTok  string
	dataDir  string
	stream   string
	tls      stationTLSFlags
	protocol int
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench --addr HOST:PORT",
		Short: "Load a gateway with many stations and report throughput and ACK latency",
		Long: `Run N stations against a gateway, each sending fixed-size frames at a rate
(or as fast as its window allows), for a duration or a frame count, and
report frames and bytes per second, ACK latency percentiles with a
histogram, reconnects and errors by reason.

The run is always bounded: sending stops after --duration or --frames, and
the whole run, waiting for the last ACKs included, stops at --max-duration.

Every payload starts with a 24-byte header: "MBF1", run id (u64), station
index (u32), frame number (u64, from 1), all big endian; the rest is zero.
With --verify the bench then reads the gateway's stream and reports, per
station, acknowledged frames that are missing or stored more than once.

The stations speak protocol v2 unless --protocol 1. Each says HELLO with
its own random epoch and the name PREFIX-INDEX (--name-prefix), so that
the gateway sees one station identity per connection; --verify then checks
each v2 message by its stream headers Meridian-Station, Meridian-Epoch and
Meridian-Seq, and through a gateway crash and restart expects 0 missing and
0 duplicates. v1 messages are checked by the payload header alone, and a
crash leaves duplicates (at least once). With a client certificate
(--tls-cert) every station is the certificate's identity: v2 then allows
one station only. Stations that meet a v1-only gateway fall back to v1,
logged.

Progress goes to stderr: a live bar on a terminal, plain lines otherwise.
The exit status is non-zero when frames stayed unacknowledged or --verify
found a difference.`,
		Example: `  meridian bench --addr gw:7777 --stations 16 --size 1024 --duration 30s
  meridian bench --addr gw:7777 --stations 4 --rate 1000 --frames 50000 --verify --data-dir /var/lib/meridian
  meridian bench --addr gw:7777 --duration 10s --json > report.json`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("duration") && f.opts.Frames > 0 {
				f.opts.Duration = 0 // bounded by --frames (and --max-duration)
			}
			return benchRun(cmd.Context(), &f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.opts.Addr, "addr", "", "gateway address HOST:PORT (required)")
	fs.IntVar(&f.opts.Stations, "stations", 1, "concurrent stations (connections)")
	fs.IntVar(&f.opts.Size, "size", 1024, fmt.Sprintf("payload bytes per frame (at least %d, the bench header)", bench.HeaderSize))
	fs.Float64Var(&f.opts.Rate, "rate", 0, "frames per second per station (0: unlimited, as fast as the window allows)")
	fs.DurationVar(&f.opts.Duration, "duration", 10*time.Second, "how long to send (default 10s unless --frames is given)")
	fs.Uint64Var(&f.opts.Frames, "frames", 0, "frames per station to send (0: no count limit)")
	fs.DurationVar(&f.opts.MaxDuration, "max-duration", 0, fmt.Sprintf("hard bound of the whole run (default: --duration + %s, or %s with --frames only)", bench.DefaultDrain, bench.DefaultMaxFramesRun))
	fs.IntVar(&f.opts.Window, "window", bench.DefaultWindow, "unacknowledged frames per station")
	fs.IntVar(&f.opts.MaxFrame, "max-frame", station.DefaultMaxFrame, "largest payload the gateway takes, bytes")
	fs.BoolVar(&f.json, "json", false, "print the report as JSON")
	fs.DurationVar(&f.progress, "progress", time.Second, "progress interval (0: no progress)")
	fs.BoolVar(&f.verify, "verify", false, "afterwards, read the stream and report missing and duplicated frames")
	fs.StringVar(&f.natsURL, "nats-url", "nats://127.0.0.1:4222", "NATS server of the stream (--verify)")
	fs.StringVar(&f.natsTok, "nats-token", "", "NATS token (--verify; default: read from --data-dir)")
	fs.StringVar(&f.dataDir, "data-dir", "./meridian-data", "the gateway's data directory, whose nats-token file --verify reads")
	fs.StringVar(&f.stream, "stream", "TELEMETRY", "stream name (--verify)")
	protocolFlag(cmd, &f.protocol)
	fs.StringVar(&f.opts.NamePrefix, "name-prefix", bench.DefaultNamePrefix, "v2 station names are PREFIX-INDEX; concurrent benches against one gateway need different prefixes")
	f.tls.register(cmd)
	cmd.MarkFlagRequired("addr")
	return cmd
}

// benchRun is the whole command but flag parsing.
func benchRun(ctx context.Context, f *benchFlags, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	tlsCfg, err := f.tls.config()
	if err != nil {
		return usage(err)
	}
	o := f.opts
	o.TLS = tlsCfg
	if o.Protocol, err = stationProtocol(f.protocol); err != nil {
		return usage(err)
	}
	if err := o.Validate(); err != nil {
		return usage(err)
	}
	var token string
	if f.verify {
		// Fail before the run, not after it, when --verify cannot work.
		token = f.natsTok
		if token == "" {
			if token, err = stream.ReadToken(f.dataDir); err != nil {
				return usage(fmt.Errorf("--verify needs --nats-token or the gateway's --data-dir: %w", err))
			}
		}
	}
	var display *benchDisplay
	if f.progress > 0 {
		display = newBenchDisplay(stderr, &o)
		o.ProgressInterval = f.progress
		o.Progress = display.update
	}
	rep, err := bench.Run(ctx, o)
	display.finish()
	if err != nil {
		return err
	}
	if o.Protocol != station.ProtocolV1 {
		fellBack := 0
		for _, s := range rep.PerStation {
			if s.Protocol == 1 {
				fellBack++
			}
		}
		if fellBack > 0 {
			fmt.Fprintf(stderr, "bench: %d of %d stations fell back to protocol v1: the gateway answered their HELLO with CLOSE(5) (a v1-only gateway)\n", fellBack, len(rep.PerStation))
		}
	}
	if f.verify {
		vctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		rep.Verify, err = bench.Verify(vctx, rep, bench.VerifyOptions{URL: f.natsURL, Token: token, Stream: f.stream})
		cancel()
		if err != nil {
			return err
		}
	}
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(stdout)
	}
	if err != nil {
		return err
	}
	switch {
	case rep.Acked < rep.Sent:
		return fmt.Errorf("bench: %d of %d frames unacknowledged", rep.Sent-rep.Acked, rep.Sent)
	case rep.Verify != nil && !rep.Verify.OK():
		return errors.New("bench: verify found missing or duplicated frames")
	}
	return nil
}

// benchDisplay shows progress: a progress bar when w is a terminal, plain
// lines otherwise (a log file, CI).
type benchDisplay struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	total int64 // frames across stations, or 0 for a run bounded by time
	o     *bench.Options
}

func newBenchDisplay(w io.Writer, o *bench.Options) *benchDisplay {
	d := &benchDisplay{w: w, o: o}
	if o.Frames > 0 {
		d.total = int64(o.Frames) * int64(o.Stations)
	}
	if fh, ok := w.(*os.File); ok && term.IsTerminal(int(fh.Fd())) {
		max := d.total
		if max == 0 {
			max = o.Duration.Milliseconds() // time-bound: the bar shows time
		}
		d.bar = progressbar.NewOptions64(max,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionShowDescriptionAtLineEnd(),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return d
}

func (d *benchDisplay) update(p bench.Progress) {
	line := fmt.Sprintf("%.0f frames/s  %.1f MB/s  in flight %d  acked %d  reconnects %d",
		p.FramesPerSec, p.MBPerSec, p.InFlight, p.Acked, p.Reconnects)
	if d.bar == nil {
		fmt.Fprintf(d.w, "%6.1fs  %s\n", p.Elapsed.Seconds(), line)
		return
	}
	d.bar.Describe(line)
	if d.total > 0 {
		d.bar.Set64(int64(p.Acked))
	} else {
		d.bar.Set64(min(p.Elapsed.Milliseconds(), d.o.Duration.Milliseconds()))
	}
}

func (d *benchDisplay) finish() {
	if d == nil || d.bar == nil {
		return
	}
	d.bar.Finish()
}
