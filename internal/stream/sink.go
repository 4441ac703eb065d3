package stream

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/stream/pubwindow"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers the sink sets on every message. Consumers use Meridian-Session and
// Meridian-Seq (or Nats-Msg-Id) to drop the duplicates at-least-once delivery
// can create.
const (
	HeaderStation  = "Meridian-Station"  // station identity, verbatim
	HeaderSession  = "Meridian-Session"  // gs-N@REMOTE_ADDR
	HeaderSeq      = "Meridian-Seq"      // per-session sequence number, decimal
	HeaderReceived = "Meridian-Received" // when the gateway read the frame, RFC 3339 with nanoseconds
	HeaderMsgID    = jetstream.MsgIDHeader
)

// Errors the sink reports through Check and its outage log line.
var (
	// ErrUnavailable: the stream is not taking frames; Write is holding back.
	ErrUnavailable = pubwindow.ErrUnavailable
	// ErrAckTimeout: no PubAck arrived within --publish-timeout.
	ErrAckTimeout = pubwindow.ErrAckTimeout
	// ErrNoResponders: nothing listens on the subject; the stream has no
	// leader or does not exist.
	ErrNoResponders = errors.New("stream: no responders (stream missing or without leader)")
	// ErrPubAck: JetStream refused the message (store full, limits...).
	ErrPubAck = errors.New("stream: JetStream refused the message")
	// ErrSinkClosed: Write or Flush after Close.
	ErrSinkClosed = pubwindow.ErrClosed
)

// SinkOptions tune a Sink. Zero values mean the defaults.
type SinkOptions struct {
	Window      int           // messages published and not yet acknowledged; default 4096
	WindowBytes int64         // their payload bytes; default 64 MiB (one message always passes)
	Timeout     time.Duration // wait for a PubAck before resending; default 5s
	BootID      string        // prefix of every Nats-Msg-Id; default random
	// Stream, when set, is the stream's name: the sink then listens to its
	// leader-elected advisory and resends what is unacknowledged at once,
	// instead of after Timeout.
	Stream string

	clock func() time.Time // the window's clock; nil: time.Now (tests set it)
}

// Sink publishes frames to JetStream and commits each frame once its PubAck
// arrived. It implements pipeline.Sink and pipeline.Checker.
//
// Every message carries a reply subject naming its id in the publish window
// (package pubwindow); one subscription receives the PubAcks and maps them
// back to the window's messages with no per-frame goroutine or future. A
// message without a PubAck in time, or with an error PubAck, is resent with
// the same Nats-Msg-Id, so JetStream stores it once within the dedup window.
// While resends fail, Write publishes nothing new: the aggregator's queue
// fills and the stations are pushed back.
//
// The Sink is the NATS side: it builds the messages, publishes them and
// tells the window what each reply and connection event means. The window
// keeps the slots, deadlines and outage, calls the publishes itself and
// commits the batches, so that no frame is resent or committed while a
// publish may still read its batch. No lock is held across a publish: a
// publish can block on a full socket (up to nats.go's flusher timeout) and
// Check and Stats, which serve /readyz and /metrics, must answer meanwhile.
type Sink struct {
	pub    publisher
	log    *slog.Logger
	bootID string
	prefix string             // reply subject prefix, "<inbox>."
	sub    *nats.Subscription // nil in unit tests, which feed onAck themselves
	leader *nats.Subscription // the stream's leader-elected advisory; nil without SinkOptions.Stream
	win    *pubwindow.Window

	w        *msgBuilder           // used by Write only (the aggregator goroutine)
	writePub pubwindow.PublishFunc // publishes with w

	// connected mirrors the client's connection state, fed by the disconnect
	// and reconnect handlers. Check reads it instead of asking the client,
	// whose lock a publisher blocked on a full socket holds.
	connected atomic.Bool

	stop      chan struct{} // closed by Close
	done      chan struct{} // closed when the resend loop returned
	closeOnce sync.Once
}

// publisher is the part of *nats.Conn the sink publishes with; unit tests
// put a fake in its place.
type publisher interface {
	PublishMsg(m *nats.Msg) error
}

// SinkStats are the sink's counters, for metrics: the publish window's.
type SinkStats = pubwindow.Stats

// Stats returns a snapshot of the counters.
func (s *Sink) Stats() SinkStats { return s.win.Stats() }

// NewSink starts a sink publishing over nc; the stream capturing
// telemetry.> must exist. Close stops it; nc stays the caller's.
func NewSink(nc *nats.Conn, opts SinkOptions, log *slog.Logger) (*Sink, error) {
	s, err := newSink(nc, nc.NewInbox()+".", opts, log)
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*Sink, error) {
		s.unsubscribe()
		return nil, fmt.Errorf("stream: %s: %w", what, err)
	}
	if s.sub, err = nc.Subscribe(s.prefix+"*", s.onAck); err != nil {
		return fail("subscribe to PubAcks", err)
	}
	// Acks are bounded by the window (plus resends); never drop one as a
	// slow consumer, which would only cause a resend.
	if err := s.sub.SetPendingLimits(-1, -1); err != nil {
		return fail("PubAck subscription", err)
	}
	if opts.Stream != "" {
		if s.leader, err = nc.Subscribe(LeaderElectedSubject(opts.Stream), s.onLeaderElected); err != nil {
			return fail("subscribe to the stream's leader advisories", err)
		}
	}
	// The server must know the subscriptions before the first PubAck.
	if err := nc.Flush(); err != nil {
		return fail("PubAck subscription", err)
	}
	s.connected.Store(nc.IsConnected())
	go s.resendLoop()
	return s, nil
}

// LeaderElectedSubject is the subject of JetStream's advisory that stream
// elected a new leader (a replicated stream only; published in the
// stream's account).
func LeaderElectedSubject(stream string) string {
	return server.JSAdvisoryStreamLeaderElectedPre + "." + stream
}

// newSink builds a sink publishing over pub with PubAcks expected on
// prefix+"<id>"; the caller subscribes onAck and starts resendLoop.
func newSink(pub publisher, prefix string, opts SinkOptions, log *slog.Logger) (*Sink, error) {
	if opts.BootID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("stream: boot id: %w", err)
		}
		opts.BootID = hex.EncodeToString(b[:])
	}
	s := &Sink{
		pub:    pub,
		log:    log,
		bootID: opts.BootID,
		prefix: prefix,
		win: pubwindow.New(pubwindow.Options{
			Size: opts.Window, Bytes: opts.WindowBytes, Timeout: opts.Timeout, Log: log, Clock: opts.clock,
		}),
		w:    newMsgBuilder(),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	s.writePub = s.publishWith(s.w)
	return s, nil
}

// publishWith is the window's PublishFunc building messages with mb.
func (s *Sink) publishWith(mb *msgBuilder) pubwindow.PublishFunc {
	return func(b *pipeline.Batch, i int, id uint64) error {
		if err := s.pub.PublishMsg(mb.build(s, b, i, id)); err != nil {
			return publishError(err)
		}
		return nil
	}
}

// BootID is the prefix of this sink's Nats-Msg-Ids.
func (s *Sink) BootID() string { return s.bootID }

// Write publishes every frame of batches. It blocks while the window is full
// (in messages or bytes) or the stream is unavailable, and fails only when
// ctx ends (or after Close).
//
// Batches are never empty (the pipeline.Sink contract; Aggregator.Put
// refuses an empty batch), so every batch gets its Commit from a PubAck.
func (s *Sink) Write(ctx context.Context, batches []*pipeline.Batch) error {
	for _, b := range batches {
		if err := s.win.Write(ctx, b, s.writePub); err != nil {
			return err
		}
	}
	return nil
}

// Flush waits until every frame written so far has its PubAck.
func (s *Sink) Flush(ctx context.Context) error { return s.win.Flush(ctx) }

// Check reports whether the stream takes frames right now (for /readyz). It
// never waits on the NATS connection: no lock is held across a publish, and
// the connection state comes from the handlers.
func (s *Sink) Check() error {
	if err := s.win.Check(); err != nil {
		return err
	}
	if !s.connected.Load() {
		return fmt.Errorf("%w: not connected to NATS", ErrUnavailable)
	}
	return nil
}

// Close stops the resend loop and the subscriptions. Frames without a
// PubAck stay uncommitted: the stations never got an ACK for them and will
// send them again. Close is idempotent.
func (s *Sink) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.win.Close()
		close(s.stop)
		<-s.done
		err = s.unsubscribe()
	})
	return err
}

// unsubscribe ends the subscriptions that exist.
func (s *Sink) unsubscribe() error {
	var errs []error
	for _, sub := range []*nats.Subscription{s.sub, s.leader} {
		if sub == nil {
			continue
		}
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, fmt.Errorf("stream: close sink: %w", err))
		}
	}
	return errors.Join(errs...)
}

// onAck runs on the subscription's goroutine, owned by the connection.
func (s *Sink) onAck(m *nats.Msg) {
	id, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, s.prefix), 10, 64)
	if err != nil {
		return
	}
	switch ackErr := pubAckError(m); {
	case errors.Is(ackErr, errMsgIDInProcess):
		// The original of this resend is still being stored (a replicated
		// stream, after a reconnect): its PubAck comes to this same reply
		// subject. Not an outage.
		s.win.InProcess(id)
	case ackErr != nil:
		s.win.Refused(id, ackErr)
	default:
		// "duplicate": JetStream recognised the Nats-Msg-Id and dropped
		// this copy: a resend whose original was stored after all.
		s.win.Acked(id, duplicateAck(m.Data))
	}
}

// onLeaderElected runs on the advisory subscription's goroutine: a new
// leader of the stream takes messages now, and what the old one did not
// acknowledge never will be, so it is resent without waiting for the
// publish timeout.
func (s *Sink) onLeaderElected(m *nats.Msg) {
	var adv struct {
		Leader string `json:"leader"`
	}
	_ = json.Unmarshal(m.Data, &adv) // only for the log line
	s.log.Info("stream elected a new leader; resending what is unacknowledged", "leader", adv.Leader)
	s.win.LeaderElected()
}

// publishError names the common cause of a refused publish plainly.
func publishError(err error) error {
	if errors.Is(err, nats.ErrReconnectBufExceeded) {
		return fmt.Errorf("publish: not connected to NATS, reconnecting: %w", err)
	}
	return fmt.Errorf("publish: %w", err)
}

// connectionLost starts an outage when the client lost its server: nothing
// can be published until it reconnected, and PubAcks on the way are lost.
func (s *Sink) connectionLost(err error) {
	if err == nil {
		err = nats.ErrConnectionClosed
	}
	s.connected.Store(false)
	s.win.Disconnected(fmt.Errorf("disconnected from NATS: %w", err))
}

// resendFromReconnect is called when the connection came back: PubAcks sent
// while it was down are lost, so everything unacknowledged is resent now.
func (s *Sink) resendFromReconnect() {
	s.connected.Store(true)
	s.win.Reconnected()
}

// resendLoop runs the window's timeouts and resends, publishing with a
// builder of its own. It exits when Close closes stop.
func (s *Sink) resendLoop() {
	defer close(s.done)
	s.win.Run(s.stop, s.publishWith(newMsgBuilder()))
}

// pubAckError tells a PubAck from an error reply.
func pubAckError(m *nats.Msg) error {
	if len(m.Data) == 0 {
		if st := m.Header.Get("Status"); st == "503" {
			return ErrNoResponders
		} else {
			return fmt.Errorf("%w: empty reply (status %q)", ErrPubAck, st)
		}
	}
	if !bytes.Contains(m.Data, []byte(`"error":`)) {
		return nil
	}
	var r struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Error == nil {
		return fmt.Errorf("%w: unreadable reply %q", ErrPubAck, m.Data)
	}
	if r.Error.ErrorCode == jsErrCodeMsgIDInProcess {
		return fmt.Errorf("%w: %w", errMsgIDInProcess, r.Error)
	}
	return fmt.Errorf("%w: %w", ErrPubAck, r.Error)
}

// jsErrCodeMsgIDInProcess is JetStream's 409 "duplicate message id is in
// process" (nats-server's JSStreamDuplicateMessageConflict, err_code
// 10158): a message with this Nats-Msg-Id is being stored right now.
const jsErrCodeMsgIDInProcess jetstream.ErrorCode = 10158

// errMsgIDInProcess marks a PubAck error that is no refusal: the original
// of a resent message is still in process.
var errMsgIDInProcess = errors.New("stream: the original of this resend is still being stored")

// duplicateAck reports whether a PubAck says JetStream dropped the message
// as a duplicate of a stored one. nats-server writes `"duplicate": true`
// (with a space, server/stream.go); both spellings are accepted.
func duplicateAck(data []byte) bool {
	return bytes.Contains(data, []byte(`"duplicate": true`)) || bytes.Contains(data, []byte(`"duplicate":true`))
}
