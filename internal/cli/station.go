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
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/meridian-telemetry/meridian/internal/frame"
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
		Use:   "station --addr HOST:PORT [FILE...]",
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
HELLO with CLOSE(5)) the station says so on stderr and goes on with v1.`,
		Example: `  meridian station --addr gw:7777 reading.bin
  tail -f telemetry.log | meridian station --addr gw:7777 --in lines
  meridian tail --format raw | meridian station --addr other:7777 --in framed
  meridian station --addr gw:7777 --count 10000 --size 512 --rate 1000`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return stationRun(cmd.Context(), &f, args, cmd.InOrStdin(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.addr, "addr", "", "gateway address HOST:PORT (required)")
	fs.StringVar(&f.in, "in", "", `input format: "file" (each FILE is one frame; the default with FILEs), "lines" (the default for stdin) or "framed"`)
	fs.Uint64Var(&f.count, "count", 0, "send this many synthetic frames instead of reading input")
	fs.IntVar(&f.size, "size", 256, "payload size of synthetic frames, bytes")
	fs.Float64Var(&f.rate, "rate", 0, "synthetic frames per second (0: as fast as the window allows)")
	fs.IntVar(&f.maxFrame, "max-frame", station.DefaultMaxFrame, "largest payload, bytes; match the gateway's --max-frame")
	fs.IntVar(&f.window, "window", station.DefaultWindow, "frames in flight (unacknowledged) at most")
	fs.DurationVar(&f.keepalive, "keepalive", station.DefaultKeepalive, "send a keepalive after this long without data (0: never)")
	fs.DurationVar(&f.dead, "dead-timeout", station.DefaultDeadTimeout, "reconnect when the gateway sends no heartbeat or ACK progress for this long (0: never)")
	fs.IntVar(&f.attempts, "reconnect-attempts", 10, "consecutive failed reconnects before giving up (0: unlimited)")
	fs.DurationVar(&f.ackTimeout, "ack-timeout", 30*time.Second, "how long to wait for the last ACKs once the input ends")
	fs.DurationVar(&f.progress, "progress", time.Second, "interval of ACK progress lines on stderr (0: only the final line)")
	fs.BoolVarP(&f.verbose, "verbose", "v", false, "log reconnects and session changes to stderr")
	protocolFlag(cmd, &f.protocol)
	fs.StringVar(&f.name, "name", "", "station name in the v2 HELLO: the station's identity at the gateway without mutual TLS (default: none, the gateway uses the remote IP)")
	f.tls.register(cmd)
	cmd.MarkFlagRequired("addr")
	return cmd
}

// stationRun is the whole command: everything but flag parsing, so that
// tests drive it directly.
func stationRun(ctx context.Context, f *stationFlags, args []string, stdin io.Reader, stderr io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
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
	if in == stationInFile && len(args) == 0 && f.count == 0 {
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
	logLevel := slog.LevelWarn
	if f.verbose {
		logLevel = slog.LevelInfo
	}
	attempts := f.attempts
	opts := []station.Option{
		station.WithMaxFrame(f.maxFrame),
		station.WithWindow(f.window),
		station.WithKeepalive(f.keepalive),
		station.WithDeadTimeout(f.dead),
		station.WithReconnect(station.ReconnectPolicy{MaxAttempts: attempts}),
		station.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))),
		station.WithOnDisconnect(func(err error) {
			fmt.Fprintf(stderr, "station: %v; reconnecting\n", err)
		}),
		station.WithProtocol(proto),
	}
	if f.name != "" {
		opts = append(opts, station.WithName(f.name))
	}
	if tlsCfg != nil {
		opts = append(opts, station.WithTLS(tlsCfg))
	}
	dialCtx, cancel := context.WithTimeout(ctx, station.DefaultDialTimeout)
	c, err := station.Dial(dialCtx, f.addr, opts...)
	cancel()
	if errors.Is(err, station.ErrInvalidOption) {
		return usage(err)
	}
	if err != nil {
		return err
	}

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
