// Package tail is `meridian tail`: it reads the telemetry stream with an
// ordered consumer — ephemeral, in memory, removed by the server shortly after
// tail exits — and writes frames as text, JSON, hex or the original
// length-prefixed frames.
package tail

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/stream"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrUsage marks invalid options; the CLI exits with status 2 on it.
var ErrUsage = errors.New("tail: invalid options")

// Output formats.
const (
	FormatText = "text" // one line per frame: metadata, no payload
	FormatJSON = "json" // one JSON object per line, payload in base64
	FormatHex  = "hex"  // the text line, then a hex dump of the payload
	FormatRaw  = "raw"  // the frames as stations sent them: 4-byte big-endian length, payload
)

// Defaults of the options.
const (
	DefaultURL     = "nats://127.0.0.1:4222"
	DefaultDataDir = "./meridian-data"
	// DefaultHintAfter is how long a follower waits for its first frame
	// before it explains, on a terminal, why nothing shows.
	DefaultHintAfter = time.Second
)

// Hint is the line a follower prints to a terminal's stderr when nothing
// arrives: by default tail shows only new frames, which on a quiet stream
// looks like a hang.
const Hint = "waiting for new frames; --all or --last N replays"

// Options are the flags of `meridian tail`.
type Options struct {
	// NATS is the server to read from; URL defaults to DefaultURL. Without
	// any credentials the token is read from DataDir/nats-token.
	NATS    stream.Client
	DataDir string // default DefaultDataDir
	Stream  string // default TELEMETRY

	Station string // identity (10.0.0.7, gs-eu-1.example.net) or subject token (10-0-0-7); "" = all
	// VC and APID keep only the transfer frames of one virtual channel, or
	// the space packets of one APID (subjects telemetry.<station>.vc<N>,
	// telemetry.<station>.apid<N>), of Station or of every station. Nil:
	// no such filter. They exclude each other.
	VC     *int
	APID   *int
	All    bool   // start with the first frame in the stream (of Station, if set)
	Since  string // a duration back from now (90s, 36h, 7d) or an RFC 3339 time
	Last   int    // start with the last N frames (of Station, if set)
	Count  int    // exit after N frames; 0 = follow until ctx ends
	Format string // text (default), json, hex or raw

	// Stderr receives Hint when tail follows from now (no All, Since or
	// Last) and no frame came within HintAfter, once, and only if
	// IsTerminal(Stderr): a script reading tail's output never sees it.
	// Nil Stderr prints nothing.
	Stderr io.Writer
	// HintAfter defaults to DefaultHintAfter.
	HintAfter time.Duration
	// IsTerminal reports whether w is a terminal; nil means IsTerminal.
	IsTerminal func(w io.Writer) bool
}

// IsTerminal reports whether w is a file on a character device, which is
// how a terminal shows up; pipes, files and buffers are not.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Run writes frames to w until opts.Count frames were written or ctx ends,
// which is a normal exit (nil). Without All, Since or Last it shows only
// frames that arrive after it started, like tail -f.
func Run(ctx context.Context, opts Options, w io.Writer) error {
	err := run(ctx, opts, w)
	if err != nil && ctx.Err() != nil && !errors.Is(err, ErrUsage) {
		return nil // interrupted (Ctrl-C) at whatever step: a normal end
	}
	return err
}

func run(ctx context.Context, opts Options, w io.Writer) error {
	start, err := opts.normalize(time.Now())
	if err != nil {
		return err
	}
	nc, err := opts.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	s, err := js.Stream(ctx, opts.Stream)
	if err != nil {
		return fmt.Errorf("tail: stream %s: %w", opts.Stream, err)
	}
	ocfg := jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy,
		// Should tail die without deleting it (below), the server drops the
		// consumer this soon; nats.go's default would keep it 5 minutes.
		InactiveThreshold: 5 * time.Second,
	}
	filters := opts.filters()
	ocfg.FilterSubjects = filters
	switch {
	case opts.All:
		ocfg.DeliverPolicy = jetstream.DeliverAllPolicy
	case start != nil:
		ocfg.DeliverPolicy, ocfg.OptStartTime = jetstream.DeliverByStartTimePolicy, start
	case opts.Last > 0:
		seq, err := lastN(ctx, js, s, filters, uint64(opts.Last))
		if err != nil {
			return err
		}
		ocfg.DeliverPolicy, ocfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq
	}
	cons, err := s.OrderedConsumer(ctx, ocfg)
	if err != nil {
		return fmt.Errorf("tail: consumer: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("tail: consumer: %w", err)
	}
	defer func() {
		it.Stop()
		// The consumer goes with tail. ctx may be cancelled already (Ctrl-C),
		// so the delete gets its own short deadline.
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = js.DeleteConsumer(dctx, opts.Stream, info.Name)
			cancel()
		}
	}()

	bw := bufio.NewWriterSize(w, 64*1024)
	out := &writer{w: bw, format: opts.Format}
	hinted := opts.hint()
	defer hinted()
	for n := 0; opts.Count == 0 || n < opts.Count; {
		m, err := it.Next(jetstream.NextContext(ctx))
		hinted()
		if err != nil {
			if ctx.Err() != nil {
				_ = bw.Flush()
				return ctx.Err()
			}
			return fmt.Errorf("tail: %w", err)
		}
		limit := -1
		if opts.Count > 0 {
			limit = opts.Count - n
		}
		written, err := out.write(m, limit)
		if err != nil {
			return fmt.Errorf("tail: write: %w", err)
		}
		n += written
		// Flush when caught up, so a follower sees frames as they come
		// while a backlog streams out in large writes.
		if md, err := m.Metadata(); err != nil || md.NumPending == 0 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("tail: write: %w", err)
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("tail: write: %w", err)
	}
	return nil
}

// hint starts the wait for the first frame, after which Hint is printed,
// and returns the function that ends it: called on the first frame and
// when run returns, it waits for the timer's goroutine, so nothing is
// written to Stderr after Run returned.
func (o *Options) hint() (stop func()) {
	isTerm := o.IsTerminal
	if isTerm == nil {
		isTerm = IsTerminal
	}
	if o.All || o.Since != "" || o.Last > 0 || o.Stderr == nil || !isTerm(o.Stderr) {
		return func() {}
	}
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(o.HintAfter)
		defer t.Stop()
		select {
		case <-t.C:
			fmt.Fprintln(o.Stderr, Hint)
		case <-quit:
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); <-done }) }
}

// normalize fills defaults, checks the options and returns the start time
// Since names, if any.
func (o *Options) normalize(now time.Time) (*time.Time, error) {
	if o.NATS.URL == "" {
		o.NATS.URL = DefaultURL
	}
	if o.DataDir == "" {
		o.DataDir = DefaultDataDir
	}
	if o.Stream == "" {
		o.Stream = config.Default().Stream
	}
	if o.NATS.Name == "" {
		o.NATS.Name = "meridian-tail"
	}
	if o.HintAfter <= 0 {
		o.HintAfter = DefaultHintAfter
	}
	switch o.Format {
	case "":
		o.Format = FormatText
	case FormatText, FormatJSON, FormatHex, FormatRaw:
	default:
		return nil, fmt.Errorf("%w: --format %q is not one of text, json, hex, raw", ErrUsage, o.Format)
	}
	if o.Last < 0 {
		return nil, fmt.Errorf("%w: --last must not be negative", ErrUsage)
	}
	if o.Count < 0 {
		return nil, fmt.Errorf("%w: --count must not be negative", ErrUsage)
	}
	if o.VC != nil && o.APID != nil {
		return nil, fmt.Errorf("%w: --vc and --apid exclude each other", ErrUsage)
	}
	if o.VC != nil && (*o.VC < 0 || *o.VC > 7) {
		return nil, fmt.Errorf("%w: --vc %d is not a virtual channel id (0 to 7)", ErrUsage, *o.VC)
	}
	if o.APID != nil && (*o.APID < 0 || *o.APID > 2047) {
		return nil, fmt.Errorf("%w: --apid %d is not an APID (0 to 2047)", ErrUsage, *o.APID)
	}
	if o.All && (o.Since != "" || o.Last > 0) {
		return nil, fmt.Errorf("%w: --all, --since and --last exclude each other", ErrUsage)
	}
	if o.Since == "" {
		return nil, nil
	}
	if o.Last > 0 {
		return nil, fmt.Errorf("%w: --since and --last exclude each other", ErrUsage)
	}
	if d, err := config.ParseDuration(o.Since); err == nil {
		t := now.Add(-d)
		return &t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, o.Since)
	if err != nil {
		return nil, fmt.Errorf("%w: --since %q is neither a duration (90s, 36h, 7d) nor an RFC 3339 time", ErrUsage, o.Since)
	}
	return &t, nil
}

// filters are the subject filters of the options; nil: the whole stream.
// A station's own filter also takes its sub-token subjects
// (telemetry.<station>.vc<N>, ...).
func (o *Options) filters() []string {
	station := o.Station
	if station == "" {
		station = "*"
	}
	switch {
	case o.VC != nil:
		return []string{stream.SubjectVC(station, *o.VC)}
	case o.APID != nil:
		return []string{stream.SubjectAPID(station, *o.APID)}
	case o.Station != "":
		return stream.StationFilters(o.Station)
	}
	return nil
}

// connect dials the server, with the data dir's token when no credentials
// were given (the embedded server's case).
func (o *Options) connect() (*nats.Conn, error) {
	c := o.NATS
	if c.Token == "" && c.Creds == "" && c.User == "" {
		tok, err := stream.ReadToken(o.DataDir)
		switch {
		case err == nil:
			c.Token = tok
		case !errors.Is(err, stream.ErrNoToken):
			return nil, fmt.Errorf("tail: %w", err)
		}
	}
	nc, err := c.Connect()
	if err != nil {
		return nil, fmt.Errorf("tail: %w", err)
	}
	return nc, nil
}

// lastN finds the stream sequence from which n frames (matching filter)
// remain. JetStream has no "n back" delivery, so it binary-searches the
// sequence with the pending count of a short-lived probe consumer: about
// log2(stream length) requests.
func lastN(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, filters []string, n uint64) (uint64, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("tail: stream info: %w", err)
	}
	pending := func(seq uint64) (uint64, error) {
		cc := jetstream.ConsumerConfig{
			DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:       seq,
			AckPolicy:         jetstream.AckNonePolicy,
			MemoryStorage:     true,
			InactiveThreshold: 10 * time.Second, // in case the delete below is lost
		}
		cc.FilterSubjects = filters
		c, err := s.CreateConsumer(ctx, cc)
		if err != nil {
			return 0, fmt.Errorf("tail: probe consumer: %w", err)
		}
		p := c.CachedInfo().NumPending
		_ = js.DeleteConsumer(ctx, info.Config.Name, c.CachedInfo().Name)
		return p, nil
	}
	lo, hi := info.State.FirstSeq, info.State.LastSeq
	if lo == 0 || hi < lo {
		return 1, nil // empty stream
	}
	if p, err := pending(lo); err != nil || p <= n {
		return lo, err
	}
	// Invariant: pending(lo) > n, pending(hi+1) = 0 ≤ n. Find the largest
	// seq with pending(seq) ≥ n.
	for lo < hi {
		mid := lo + (hi-lo+1)/2
		p, err := pending(mid)
		if err != nil {
			return 0, err
		}
		if p >= n {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}

// writer formats messages.
type writer struct {
	w      *bufio.Writer
	format string
	line   []byte
}

// record is the JSON form of a frame.
type record struct {
	StreamSeq uint64 `json:"stream_seq"`
	Subject   string `json:"subject"`
	Station   string `json:"station"`
	Session   string `json:"session"`
	Seq       uint64 `json:"seq"`
	// Protocol v2 frames: the station's epoch (Seq is then its own
	// sequence number) and the frames it lost just before this one.
	Epoch    uint64 `json:"epoch,omitempty"`
	Gap      uint64 `json:"gap,omitempty"`
	Received string `json:"received"`
	Size     int    `json:"size"`
	// Ground-framing units only (docs/framing.md, section 9).
	Link     string  `json:"link,omitempty"`
	Framing  string  `json:"framing,omitempty"`
	APID     *uint64 `json:"apid,omitempty"`
	SeqCount *uint64 `json:"seq_count,omitempty"`
	SCID     *uint64 `json:"scid,omitempty"`
	VCID     *uint64 `json:"vcid,omitempty"`
	MCCount  *uint64 `json:"mc_count,omitempty"`
	VCCount  *uint64 `json:"vc_count,omitempty"`
	CRC      string  `json:"crc,omitempty"`
	Payload  []byte  `json:"payload"`
}

// groundFields are the optional headers the text line shows, in order.
var groundFields = []struct {
	header, name string
	field        func(r *record) **uint64
}{
	{stream.HeaderAPID, "apid", func(r *record) **uint64 { return &r.APID }},
	{stream.HeaderSeqCount, "seq_count", func(r *record) **uint64 { return &r.SeqCount }},
	{stream.HeaderSCID, "scid", func(r *record) **uint64 { return &r.SCID }},
	{stream.HeaderVCID, "vcid", func(r *record) **uint64 { return &r.VCID }},
	{stream.HeaderMCCount, "mc_count", func(r *record) **uint64 { return &r.MCCount }},
	{stream.HeaderVCCount, "vc_count", func(r *record) **uint64 { return &r.VCCount }},
}

// write writes the frames of message m, at most limit of them (-1: all),
// and returns how many it wrote. A message of the packed layout (header
// Meridian-Count) carries several; each comes out as a frame of its own.
func (wr *writer) write(m jetstream.Msg, limit int) (int, error) {
	h := m.Headers()
	data := m.Data()
	count, packed := 1, h.Get(stream.HeaderCount) != ""
	var frames [][]byte
	if packed {
		var err error
		if frames, err = stream.Unpack(data, h.Get(stream.HeaderCount)); err != nil {
			return 0, fmt.Errorf("stream message %s: %w", m.Subject(), err)
		}
		count = len(frames)
	}
	if limit >= 0 && count > limit {
		count = limit
	}
	if wr.format == FormatRaw {
		if packed {
			// The packed payload is frames in Meridian's own framing
			// already: length, bytes, length, bytes.
			end := 0
			for _, f := range frames[:count] {
				end += 4 + len(f)
			}
			_, err := wr.w.Write(data[:end])
			return count, err
		}
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(len(data)))
		if _, err := wr.w.Write(hdr[:]); err != nil {
			return 0, err
		}
		_, err := wr.w.Write(data)
		return 1, err
	}
	r := record{
		Subject:  m.Subject(),
		Station:  h.Get(stream.HeaderStation),
		Session:  h.Get(stream.HeaderSession),
		Received: h.Get(stream.HeaderReceived),
		Size:     len(data),
		Payload:  data,
	}
	r.Seq, _ = strconv.ParseUint(h.Get(stream.HeaderSeq), 10, 64)
	r.Epoch, _ = strconv.ParseUint(h.Get(stream.HeaderEpoch), 10, 64)
	r.Gap, _ = strconv.ParseUint(h.Get(stream.HeaderGap), 10, 64)
	r.Link, r.Framing, r.CRC = h.Get(stream.HeaderLink), h.Get(stream.HeaderFraming), h.Get(stream.HeaderCRC)
	if r.Framing != "" {
		for _, g := range groundFields {
			if v, err := strconv.ParseUint(h.Get(g.header), 10, 64); err == nil {
				*g.field(&r) = &v
			}
		}
	}
	if md, err := m.Metadata(); err == nil {
		r.StreamSeq = md.Sequence.Stream
	}
	if !packed {
		return 1, wr.emit(&r, data)
	}
	first := r.Seq
	for i, f := range frames[:count] {
		r.Seq, r.Size, r.Payload = first+uint64(i), len(f), f
		if i == 1 {
			r.Gap = 0 // the gap is before the first frame only
		}
		if err := wr.emit(&r, f); err != nil {
			return i, err
		}
	}
	return count, nil
}

// emit writes one frame, described by r, in the text, hex or JSON format.
func (wr *writer) emit(r *record, data []byte) error {
	if wr.format == FormatJSON {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = wr.w.Write(append(b, '\n'))
		return err
	}
	wr.line = fmt.Appendf(wr.line[:0], "stream_seq=%d received=%s station=%s session=%s seq=%d size=%d",
		r.StreamSeq, r.Received, r.Station, r.Session, r.Seq, r.Size)
	if r.Epoch != 0 {
		wr.line = fmt.Appendf(wr.line, " epoch=%d", r.Epoch)
	}
	if r.Gap != 0 {
		wr.line = fmt.Appendf(wr.line, " gap=%d", r.Gap)
	}
	if r.Framing != "" {
		wr.line = fmt.Appendf(wr.line, " link=%s framing=%s", r.Link, r.Framing)
		for _, g := range groundFields {
			if v := *g.field(r); v != nil {
				wr.line = fmt.Appendf(wr.line, " %s=%d", g.name, *v)
			}
		}
		if r.CRC != "" {
			wr.line = fmt.Appendf(wr.line, " crc=%s", r.CRC)
		}
	}
	wr.line = append(wr.line, '\n')
	if _, err := wr.w.Write(wr.line); err != nil {
		return err
	}
	if wr.format == FormatHex {
		d := hex.Dumper(wr.w)
		if _, err := d.Write(data); err != nil {
			return err
		}
		return d.Close()
	}
	return nil
}
