package cli

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/sdnotify"
	"github.com/meridian-telemetry/meridian/internal/spool"
	"github.com/meridian-telemetry/meridian/station"
)

// Input formats of `meridian station`.
const (
	stationInFile   = "file"   // each FILE argument is one frame
	stationInLines  = "lines"  // one frame per line, newline stripped
	stationInFramed = "framed" // u32 big-endian length + payload, as on the wire
)

// stationFlags are the flags of `meridian station`.
type stationFlags struct {
	addr       string
	in         string
	count      uint64
	size       int
	rate       float64
	maxFrame   int
	window     int
	keepalive  time.Duration
	dead       time.Duration
	attempts   int
	ackTimeout time.Duration
	progress   time.Duration
	verbose    bool
	tls        stationTLSFlags
	protocol   int
	name       string
	spool      spoolFlags
}

// protocolFlag registers --protocol, shared by station and bench.
func protocolFlag(cmd *cobra.Command, p *int) {
	cmd.Flags().IntVar(p, "protocol", 2, "protocol version: 2 (HELLO with an epoch, exact resume after a reconnect; falls back to 1, logged, against a gateway that refuses the HELLO with CLOSE(5)) or 1 (no HELLO; at least once after a crash)")
}

// stationProtocol maps --protocol to the client's option.
func stationProtocol(v int) (station.Protocol, error) {
	switch v {
	case 1:
		return station.ProtocolV1, nil
	case 2:
		return station.ProtocolV2, nil
	}
	return 0, fmt.Errorf("--protocol %d is not 1 or 2", v)
}

// stationTLSFlags are the client TLS flags shared by station and bench.
type stationTLSFlags struct {
	ca, cert, key, serverName string
}

func (f *stationTLSFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.ca, "tls-ca", "", "CA bundle (PEM) to verify the gateway with; setting any --tls-* flag enables TLS (system roots without this flag)")
	fs.StringVar(&f.cert, "tls-cert", "", "client certificate (PEM) for mutual TLS")
	fs.StringVar(&f.key, "tls-key", "", "key of --tls-cert (PEM)")
	fs.StringVar(&f.serverName, "tls-server-name", "", "name expected in the gateway's certificate (default: the host of --addr)")
}

// config returns nil when no TLS flag is set.
func (f *stationTLSFlags) config() (*tls.Config, error) {
	if f.ca == "" && f.cert == "" && f.key == "" && f.serverName == "" {
		return nil, nil
	}
	cfg := &tls.Config{ServerName: f.serverName, MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca: no certificate in %s", f.ca)
		}
		cfg.RootCAs = pool
	}
	if (f.cert == "") != (f.key == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func newStationCmd() *cobra.Command {
	var f stationFlags
	cmd := &cobra.Command{
		Use:   "station --addr HOST:PORT [--spool DIR [--follow DIR2]] [FILE...]",
		Short: "Send frames to a gateway, as a ground station does",
		Long: `Send frames to a gateway and wait until every one is acknowledged.

Frames come from the FILE arguments (each file one frame, or in the --in
format), from stdin (--in lines: one frame per line; --in framed: u32
big-endian length + payload, the output of 'meridian tail --format raw'), or
are synthetic (--count, --size, --rate). Empty lines and zero-length framed
records are skipped: on the wire they would be keepalives.

ACK progress goes to stderr. The exit status is 0 only when the gateway
acknowledged every frame. The client reconnects when the gateway restarts
and resends what was not acknowledged (see docs/station.md).

The station speaks protocol v2 unless --protocol 1: its HELLO carries an
epoch (random per run, printed at the end) and --name, and after a reconnect it
resends only what the gateway's WELCOME asks for, so that the stream holds
each frame once. Without mutual TLS the name is the station's identity at
the gateway (default: the remote IP); two stations with one identity
supersede each other. Against a gateway that speaks only v1 (it answers the
HELLO with CLOSE(5)) the station says so on stderr and goes on with v1.

Store and forward (--spool DIR, protocol v2 only): every frame is written to
a spool directory before it counts as accepted, and stays there until the
gateway acknowledges it. The spool keeps the epoch and the numbering across
runs, so a crash of this process, a reboot or a backhaul outage of any
length loses and duplicates nothing. The gateway need not be reachable: the
station keeps retrying in the background (--reconnect-attempts is ignored).
At the end of the input it waits --ack-timeout for the ACKs; frames not
acknowledged by then stay in the spool, the station says how many, and
exits 1: the next run with the same --spool sends them first (a run with
empty input, e.g. < /dev/null, only drains the spool). One process per spool
directory: a second one exits 2 saying the spool is in use.

Follow mode (--spool DIR --follow DIR2) runs as a service next to a
recorder: it sends every capture file that appears in DIR2, each once, in
name order, in the --in format (default lines; file: each file one frame),
and removes it (--follow-done remove) or renames it to NAME.sent (rename)
once every frame of it is acknowledged. It ignores directories and names
starting with "." or ending in .tmp, .part, .sent or .bad: a recorder writes
a capture under such a name (or elsewhere on the same file system) and
renames it into place when complete. A file that sorts at or before the
last file started is skipped with a warning. A file that cannot be read to
its end (a malformed record) has the frames before the damage sent and is
renamed NAME.bad. Follow state is in DIR/follow.json; a crash or power
failure at any moment neither repeats nor loses a file's frames. On SIGTERM
or SIGINT it stops reading, waits up to 5s (less if --ack-timeout is
shorter) for ACKs, and exits 0: what is not acknowledged stays spooled.
Under systemd (Type=notify) it sends READY=1 once the spool is open, a
STATUS= line each --progress interval, and STOPPING=1 on the signal.

--spool DIR --status prints what the spool holds (frames and bytes
waiting, the oldest waiting frame's age, epoch, sequence numbers, segments,
the process holding it, follow mode's pending files) and exits 0 (1 when
DIR is not a spool); --addr is not needed.

Exit status: 0 when every frame is acknowledged (follow mode: stopped by its
signal); 1 on a runtime failure, or frames left unacknowledged; 2 for bad
flags, or a spool in use by another process.`,
		Example: `  meridian station --addr gw:7777 reading.bin
  tail -f telemetry.log | meridian station --addr gw:7777 --in lines
  meridian tail --format raw | meridian station --addr other:7777 --in framed
  meridian station --addr gw:7777 --count 10000 --size 512 --rate 1000
  meridian station --addr gw:7777 --spool /var/spool/meridian --in framed < pass.raw
  meridian station --addr gw:7777 --spool /var/spool/meridian < /dev/null
  meridian station --addr gw:7777 --spool /var/spool/meridian --follow /srv/captures --in framed
  meridian station --spool /var/spool/meridian --status`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.spool.dir == "" {
				for _, name := range spoolDependentFlags {
					if cmd.Flags().Changed(name) {
						return usage(fmt.Errorf("--%s needs --spool", name))
					}
				}
			}
			if cmd.Flags().Changed("json") && !f.spool.status {
				return usage(errors.New("--json goes with --status"))
			}
			ctx := cmd.Context()
			if f.spool.follow != "" {
				// A service: SIGTERM is the normal stop, not a kill.
				var stop context.CancelFunc
				ctx, stop = signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
			}
			return stationRun(ctx, &f, args, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.addr, "addr", "", "gateway address HOST:PORT (required, except with --status)")
	fs.StringVar(&f.in, "in", "", `input format: "file" (each FILE is one frame; the default with FILEs), "lines" (the default for stdin and --follow) or "framed"`)
	fs.Uint64Var(&f.count, "count", 0, "send this many synthetic frames instead of reading input")
	fs.IntVar(&f.size, "size", 256, "payload size of synthetic frames, bytes")
	fs.Float64Var(&f.rate, "rate", 0, "synthetic frames per second (0: as fast as the window allows)")
	fs.IntVar(&f.maxFrame, "max-frame", station.DefaultMaxFrame, "largest payload, bytes; match the gateway's --max-frame")
	fs.IntVar(&f.window, "window", station.DefaultWindow, "frames in flight (unacknowledged) at most")
	fs.DurationVar(&f.keepalive, "keepalive", station.DefaultKeepalive, "send a keepalive after this long without data (0: never)")
	fs.DurationVar(&f.dead, "dead-timeout", station.DefaultDeadTimeout, "reconnect when the gateway sends no heartbeat or ACK progress for this long (0: never)")
	fs.IntVar(&f.attempts, "reconnect-attempts", 10, "consecutive failed reconnects before giving up (0: unlimited; ignored with --spool, which retries forever)")
	fs.DurationVar(&f.ackTimeout, "ack-timeout", 30*time.Second, "how long to wait for the last ACKs once the input ends (with --spool, unacknowledged frames then stay spooled and the exit status is 1)")
	fs.DurationVar(&f.progress, "progress", time.Second, "interval of ACK progress lines on stderr, and of systemd STATUS= updates (0: only the final line)")
	fs.BoolVarP(&f.verbose, "verbose", "v", false, "log reconnects and session changes to stderr")
	protocolFlag(cmd, &f.protocol)
	fs.StringVar(&f.name, "name", "", "station name in the v2 HELLO: the station's identity at the gateway without mutual TLS (default: none, the gateway uses the remote IP)")
	f.tls.register(cmd)

	sp := &f.spool
	fs.StringVar(&sp.dir, "spool", "", "keep every frame in this directory until the gateway acknowledges it (store and forward; created if missing; protocol v2 only)")
	fs.StringVar(&sp.sync, "spool-sync", station.DefaultSpoolSync.String(), `spool durability: an interval, or "always". Interval: a frame is written to the spool file before it is accepted and survives a crash of the process; a power failure can lose up to the last interval of accepted frames, never one already sent to the gateway. always: an fdatasync covers a frame before it is accepted, so nothing accepted is lost in a power failure. A frame leaves for the gateway only once synced, so the interval adds to latency`)
	sp.maxBytes = config.Size(station.DefaultSpoolMaxBytes)
	fs.Var(&sp.maxBytes, "spool-max-bytes", "bound of the spool's files (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")
	fs.StringVar(&sp.full, "spool-full", "block", `when the spool holds --spool-max-bytes: "block" (reading input waits for ACKs to free space) or "drop-oldest" (the oldest spool files are discarded with their unacknowledged frames, counted and logged; the frames that can no longer be sent are reported to the gateway as a gap)`)
	fs.BoolVar(&sp.status, "status", false, "with --spool: print what the spool holds and exit 0 (works while another station runs on it)")
	fs.BoolVar(&sp.json, "json", false, "with --status: print it as JSON")
	fs.StringVar(&sp.follow, "follow", "", "with --spool: send every capture file that appears in this directory, once, in name order, until SIGTERM/SIGINT (no FILE arguments, stdin or --count)")
	fs.StringVar(&sp.followDone, "follow-done", followDoneRemove, `what --follow does with a file once every frame of it is acknowledged: "remove", or "rename" to NAME.sent`)
	fs.DurationVar(&sp.followPoll, "follow-poll", time.Second, "how often --follow lists its directory")
	return cmd
}

// stationRun is the whole command: everything but flag parsing, so that
// tests drive it directly.
func stationRun(ctx context.Context, f *stationFlags, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	sp := &f.spool
	if sp.status {
		if sp.dir == "" {
			return usage(errors.New("--status needs --spool"))
		}
		if len(args) > 0 || f.count > 0 || sp.follow != "" {
			return usage(errors.New("--status only reports: no FILE arguments, --count or --follow"))
		}
		return printSpoolStatus(stdout, sp.dir, sp.json, time.Now())
	}
	if f.addr == "" {
		return usage(errors.New(`required flag "addr" not set`))
	}
	in := f.in
	if in == "" {
		in = stationInLines
		if len(args) > 0 {
			in = stationInFile
		}
	}
	switch in {
	case stationInFile, stationInLines, stationInFramed:
	default:
		return usage(fmt.Errorf("--in %q is not one of file, lines, framed", f.in))
	}
	if sp.follow != "" {
		switch {
		case sp.dir == "":
			return usage(errors.New("--follow needs --spool"))
		case len(args) > 0 || f.count > 0:
			return usage(errors.New("--follow reads its directory: no FILE arguments and no --count"))
		case sp.followDone != followDoneRemove && sp.followDone != followDoneRename:
			return usage(fmt.Errorf("--follow-done %q is not one of remove, rename", sp.followDone))
		case sp.followPoll <= 0:
			return usage(fmt.Errorf("--follow-poll %s must be positive", sp.followPoll))
		}
		if same, err := sameDir(sp.follow, sp.dir); err != nil {
			return usage(fmt.Errorf("--follow: %w", err))
		} else if same {
			return usage(errors.New("--follow and --spool must be different directories"))
		}
	} else if in == stationInFile && len(args) == 0 && f.count == 0 {
		return usage(errors.New("--in file needs FILE arguments"))
	}
	if f.count > 0 && len(args) > 0 {
		return usage(errors.New("--count sends synthetic frames: give no FILE arguments"))
	}
	if f.count > 0 && (f.size < 1 || f.size > f.maxFrame) {
		return usage(fmt.Errorf("--size %d is outside 1..%d (--max-frame)", f.size, f.maxFrame))
	}
	tlsCfg, err := f.tls.config()
	if err != nil {
		return usage(err)
	}
	proto, err := stationProtocol(f.protocol)
	if err != nil {
		return usage(err)
	}
	if proto == station.ProtocolV1 && f.name != "" {
		return usage(errors.New("--name goes in the v2 HELLO: not with --protocol 1"))
	}
	spoolOpt, err := sp.option()
	if err != nil {
		return usage(err)
	}
	if spoolOpt != nil && proto == station.ProtocolV1 {
		return usage(errors.New("--spool needs protocol v2 (the spool resumes by epoch): not with --protocol 1"))
	}
	logLevel := slog.LevelWarn
	if f.verbose || sp.follow != "" {
		logLevel = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	var link linkState
	attempts := f.attempts
	opts := []station.Option{
		station.WithMaxFrame(f.maxFrame),
		station.WithWindow(f.window),
		station.WithKeepalive(f.keepalive),
		station.WithDeadTimeout(f.dead),
		station.WithReconnect(station.ReconnectPolicy{MaxAttempts: attempts}),
		station.WithLogger(log),
		station.WithOnDisconnect(func(err error) {
			link.onDisconnect(err)
			fmt.Fprintf(stderr, "station: %v; reconnecting\n", err)
		}),
		station.WithOnAck(link.onAck),
	}
	if spoolOpt != nil {
		opts = append(opts, spoolOpt) // implies v2 only
	} else {
		opts = append(opts, station.WithProtocol(proto))
	}
	if f.name != "" {
		opts = append(opts, station.WithName(f.name))
	}
	if tlsCfg != nil {
		opts = append(opts, station.WithTLS(tlsCfg))
	}
	var left spool.Status
	if spoolOpt != nil {
		// Read before the client can make progress: what earlier runs
		// left, as the last of them recorded it.
		left, _ = spool.Inspect(sp.dir)
	}
	dialCtx, cancel := context.WithTimeout(ctx, station.DefaultDialTimeout)
	c, err := station.Dial(dialCtx, f.addr, opts...)
	cancel()
	switch {
	case errors.Is(err, station.ErrSpoolLocked):
		return spoolLockedError(sp.dir, err)
	case errors.Is(err, station.ErrInvalidOption):
		return usage(err)
	case err != nil:
		return err
	}
	if spoolOpt == nil {
		return stationStream(ctx, c, f, in, args, stdin, stderr)
	}
	return stationSpooled(ctx, c, f, in, args, stdin, stderr, log, &link, left)
}

// sameDir says whether two paths name one directory (the second need not
// exist yet: the spool is created by Dial).
func sameDir(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

// stationStream is a run without a spool: frames live in the client's
// window until acknowledged.
func stationStream(ctx context.Context, c *station.Client, f *stationFlags, in string, args []string, stdin io.Reader, stderr io.Writer) error {
	var wg sync.WaitGroup
	stopProgress := make(chan struct{})
	if f.progress > 0 {
		wg.Go(func() { stationProgress(c, f.progress, stderr, stopProgress) })
	}
	sendErr := stationSendAll(ctx, c, f, in, args, stdin)
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.ackTimeout)
	if ctx.Err() != nil {
		// Interrupted: give the frames in flight a short chance only.
		cancel()
		closeCtx, cancel = context.WithTimeout(context.Background(), time.Second)
	}
	closeErr := c.Close(closeCtx)
	cancel()
	close(stopProgress)
	wg.Wait()

	st := c.Stats()
	switch {
	case sendErr != nil && !errors.Is(sendErr, station.ErrClosed):
		fmt.Fprintf(stderr, "sent %d frames, %d acknowledged\n", st.Sent, st.Acked)
		return sendErr
	case closeErr != nil:
		fmt.Fprintf(stderr, "sent %d frames, %d acknowledged\n", st.Sent, st.Acked)
		return closeErr
	case ctx.Err() != nil:
		return ctx.Err()
	}
	fmt.Fprintf(stderr, "sent %d frames, all acknowledged (%d reconnects; protocol v%d, epoch %d)\n", st.Sent, st.Reconnects, c.ProtocolVersion(), c.Epoch())
	return nil
}

// followStopBound bounds the wait for ACKs when a signal stops follow
// mode: a service manager's stop timeout (systemd: 90 s) must not be
// reached, and what is not acknowledged stays spooled anyway.
const followStopBound = 5 * time.Second

// stationSpooled is a run with a spool: the input (or the follow
// directory) goes into the spool, and the client sends from it, including
// what earlier runs left.
func stationSpooled(ctx context.Context, c *station.Client, f *stationFlags, in string, args []string, stdin io.Reader, stderr io.Writer, log *slog.Logger, link *linkState, earlier spool.Status) error {
	sp := &f.spool
	st0 := c.Stats()
	if earlier.Waiting > 0 {
		fmt.Fprintf(stderr, "spool %s holds %d frames from earlier runs (%d..%d) not known to be acknowledged: the gateway gets those it lacks first\n", sp.dir, earlier.Waiting, earlier.Last-earlier.Waiting+1, earlier.Last)
	}
	leftSince := earlier.OldestWaiting
	if leftSince.IsZero() {
		leftSince = time.Now()
	}
	var fw *follower
	if sp.follow != "" {
		fw = &follower{
			c: c, spoolDir: sp.dir, dir: sp.follow, in: in, maxFrame: f.maxFrame,
			rename: sp.followDone == followDoneRename, poll: sp.followPoll, log: log,
		}
		fw.pending.Store(-1)
	}
	var ages ageTracker
	ages.start(st0.Sent, leftSince)
	// status returns the status line, and the same without the age: what
	// says whether anything changed.
	status := func() (line, key string) {
		st := c.Stats()
		pending := -1
		if fw != nil {
			pending = int(fw.pending.Load())
		}
		line = spoolStatusLine(st, c.Epoch(), ages.observe(st.Sent, st.Acked, time.Now()), link, pending)
		return line, spoolStatusLine(st, c.Epoch(), 0, link, pending)
	}
	// The station works without the gateway: it is ready once the spool
	// is open and the client exists.
	first, _ := status()
	sd := newNotifier(log, sdnotify.Ready+"\n"+sdnotify.Status(first))

	var wg sync.WaitGroup
	stopProgress := make(chan struct{})
	if f.progress > 0 {
		wg.Go(func() {
			t := time.NewTicker(f.progress)
			defer t.Stop()
			var prev string
			for {
				select {
				case <-stopProgress:
					return
				case <-t.C:
				}
				line, key := status()
				sd.send(sdnotify.Status(line))
				// A service's journal gets a line only when something
				// other than the age changed.
				if fw == nil || key != prev {
					fmt.Fprintln(stderr, line)
				}
				prev = key
			}
		})
	}

	var runErr error
	if fw != nil {
		runErr = fw.run(ctx)
	} else {
		runErr = stationSendAll(ctx, c, f, in, args, stdin)
	}
	bound := f.ackTimeout
	switch {
	case fw != nil:
		if ctx.Err() != nil {
			sd.send(sdnotify.Stopping)
		}
		bound = min(bound, followStopBound)
	case ctx.Err() != nil:
		bound = time.Second // interrupted: frames stay spooled anyway
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	closeErr := c.Close(closeCtx)
	cancel()
	close(stopProgress)
	wg.Wait()
	if fw != nil {
		// Files acknowledged while Close waited are done.
		if err := fw.finishAcked(); err != nil && runErr == nil {
			runErr = err
		}
	}

	st := c.Stats()
	left := st.Sent - st.Acked
	fmt.Fprintf(stderr, "spooled %d frames this run; sent %d, acknowledged %d (%d reconnects; protocol v2, epoch %d)\n",
		st.Sent-st0.Sent, st.Sent, st.Acked, st.Reconnects, c.Epoch())
	if st.Dropped > 0 || st.Damaged > 0 {
		fmt.Fprintf(stderr, "spool: %d frames dropped (--spool-full drop-oldest), %d found damaged and skipped\n", st.Dropped, st.Damaged)
	}
	if left > 0 {
		fmt.Fprintf(stderr, "%d frames stay in the spool %s: the next run with --spool %s sends them\n", left, sp.dir, sp.dir)
	}
	switch {
	case runErr != nil && !errors.Is(runErr, station.ErrClosed):
		return runErr
	case fw != nil:
		// A service stopped by its signal: frames left are not a failure.
		if closeErr != nil && left == 0 {
			return closeErr
		}
		return nil
	case closeErr != nil && left > 0:
		return fmt.Errorf("%d frames not acknowledged within --ack-timeout %s, kept in the spool: %w", left, bound, closeErr)
	case closeErr != nil:
		return closeErr
	case ctx.Err() != nil:
		return ctx.Err()
	}
	fmt.Fprintf(stderr, "sent %d frames, all acknowledged (spool %s)\n", st.Sent, sp.dir)
	return nil
}

func stationProgress(c *station.Client, every time.Duration, w io.Writer, stop <-chan struct{}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			st := c.Stats()
			fmt.Fprintf(w, "sent %d, acknowledged %d, in flight %d\n", st.Sent, st.Acked, st.Sent-st.Acked)
		}
	}
}

// stationSendAll sends every payload of the input; it stops at the first
// error, which names the input position.
func stationSendAll(ctx context.Context, c *station.Client, f *stationFlags, in string, args []string, stdin io.Reader) error {
	send := func(src iter.Seq2[[]byte, error]) error {
		for p, err := range src {
			if err != nil {
				return err
			}
			if err := c.Send(ctx, p); err != nil {
				return err
			}
		}
		return nil
	}
	if f.count > 0 {
		return send(stationSynthetic(ctx, f.count, f.size, f.rate))
	}
	if len(args) == 0 {
		return send(stationRead(stdin, "stdin", in, f.maxFrame))
	}
	for _, name := range args {
		if err := stationSendFile(name, in, f.maxFrame, send); err != nil {
			return err
		}
	}
	return nil
}

func stationSendFile(name, in string, maxFrame int, send func(iter.Seq2[[]byte, error]) error) error {
	var r io.Reader
	if name == "-" {
		r = os.Stdin
	} else {
		fh, err := os.Open(name)
		if err != nil {
			return err
		}
		defer fh.Close()
		r = fh
	}
	if in != stationInFile {
		return send(stationRead(r, name, in, maxFrame))
	}
	b, err := io.ReadAll(io.LimitReader(r, int64(maxFrame)+1))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if len(b) > maxFrame {
		return fmt.Errorf("%s: %w: larger than --max-frame %d", name, station.ErrPayloadTooLarge, maxFrame)
	}
	if len(b) == 0 {
		return nil // an empty frame would be a keepalive
	}
	return send(func(yield func([]byte, error) bool) { yield(b, nil) })
}

// stationRead yields the frames of r in the lines or framed format. The
// slice yielded is reused: Send copies it.
func stationRead(r io.Reader, name, in string, maxFrame int) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		br := bufio.NewReaderSize(r, 64<<10)
		if in == stationInLines {
			stationReadLines(br, name, maxFrame, yield)
			return
		}
		var hdr [frame.HeaderSize]byte
		var buf []byte
		for n := 1; ; n++ {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				if errors.Is(err, io.EOF) {
					return
				}
				yield(nil, fmt.Errorf("%s: frame %d: %w", name, n, err))
				return
			}
			l := binary.BigEndian.Uint32(hdr[:])
			switch {
			case l&frame.ControlBit != 0:
				yield(nil, fmt.Errorf("%s: frame %d: length %#x has the control bit set: not framed input", name, n, l))
				return
			case l > uint32(maxFrame):
				yield(nil, fmt.Errorf("%s: frame %d: %w: %d bytes, --max-frame %d", name, n, station.ErrPayloadTooLarge, l, maxFrame))
				return
			}
			if cap(buf) < int(l) {
				buf = make([]byte, l)
			}
			buf = buf[:l]
			if _, err := io.ReadFull(br, buf); err != nil {
				yield(nil, fmt.Errorf("%s: frame %d: truncated: %w", name, n, err))
				return
			}
			if l == 0 {
				continue
			}
			if !yield(buf, nil) {
				return
			}
		}
	}
}

func stationReadLines(br *bufio.Reader, name string, maxFrame int, yield func([]byte, error) bool) {
	var long []byte
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it.
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= maxFrame+2 {
				line, err = br.ReadSlice('\n')
				long = append(long, line...)
			}
			line = long
		}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
			yield(nil, fmt.Errorf("%s: line %d: %w", name, n, err))
			return
		}
		payload := line
		if l := len(payload); l > 0 && payload[l-1] == '\n' {
			payload = payload[:l-1]
			if l := len(payload); l > 0 && payload[l-1] == '\r' {
				payload = payload[:l-1]
			}
		}
		if len(payload) > maxFrame {
			yield(nil, fmt.Errorf("%s: line %d: %w: more than --max-frame %d bytes", name, n, station.ErrPayloadTooLarge, maxFrame))
			return
		}
		if len(payload) > 0 && !yield(payload, nil) {
			return
		}
		if errors.Is(err, io.EOF) {
			return
		}
	}
}

// stationSynthetic yields count payloads of size bytes, each starting with
// its number, at rate per second (0: unpaced).
func stationSynthetic(ctx context.Context, count uint64, size int, rate float64) iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = '.'
		}
		var tick *time.Ticker
		start := time.Now()
		if rate > 0 {
			tick = time.NewTicker(max(10*time.Millisecond, time.Duration(float64(time.Second)/rate)))
			defer tick.Stop()
		}
		for n := uint64(1); n <= count; n++ {
			if tick != nil {
				for float64(n-1) >= rate*time.Since(start).Seconds() {
					select {
					case <-tick.C:
					case <-ctx.Done():
						yield(nil, ctx.Err())
						return
					}
				}
			}
			var num [20]byte
			copy(buf, strconv.AppendUint(num[:0], n, 10)) // the number, then the dots
			if !yield(buf[:size], nil) {
				return
			}
		}
	}
}
