package station

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"
	"unicode/utf8"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// Defaults of the options. The dead-gateway timeout assumes the gateway's
// default 30s heartbeat; keepalives stay well under its 60s idle timeout.
const (
	DefaultMaxFrame    = 64 << 10
	DefaultWindow      = 1024
	DefaultDeadTimeout = 90 * time.Second
	DefaultKeepalive   = 20 * time.Second
	DefaultDialTimeout = 10 * time.Second
)

// ReconnectPolicy says how the client reconnects after a session ends for a
// reason that is not fatal. Delays grow exponentially from Initial to Max;
// each is spread by ±Jitter so that stations dropped together do not come
// back together.
type ReconnectPolicy struct {
	Initial    time.Duration // first delay; 0 means 100ms
	Max        time.Duration // cap on the delay; 0 means 10s
	Multiplier float64       // growth per failed attempt; 0 means 2
	Jitter     float64       // fraction of the delay, 0..1; 0 means 0.2
	// MaxAttempts bounds consecutive failed attempts (a dial error, or a
	// session refused before it made progress); 0 means unlimited, a
	// negative value disables reconnecting.
	MaxAttempts int
}

// DefaultReconnect is the policy used unless WithReconnect says otherwise.
// Max is short on purpose: after a gateway crash the frames that were in
// flight are resent on the next session and deduplicated only within the
// gateway's --dedup-window (default 10 s), so a station must be back soon
// after the gateway is.
var DefaultReconnect = ReconnectPolicy{
	Initial:    100 * time.Millisecond,
	Max:        2 * time.Second,
	Multiplier: 2,
	Jitter:     0.2,
}

func (p ReconnectPolicy) withDefaults() ReconnectPolicy {
	if p.Initial <= 0 {
		p.Initial = DefaultReconnect.Initial
	}
	if p.Max <= 0 {
		p.Max = DefaultReconnect.Max
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	if p.Multiplier < 1 {
		p.Multiplier = DefaultReconnect.Multiplier
	}
	if p.Jitter <= 0 || p.Jitter > 1 {
		p.Jitter = DefaultReconnect.Jitter
	}
	return p
}

// delay is the wait before attempt n (n ≥ 1 counts failures so far).
func (p ReconnectPolicy) delay(n int) time.Duration {
	d := float64(p.Initial)
	for i := 1; i < n && d < float64(p.Max); i++ {
		d *= p.Multiplier
	}
	d = min(d, float64(p.Max))
	d *= 1 + p.Jitter*(2*rand.Float64()-1)
	return time.Duration(d)
}

type options struct {
	maxFrame     int
	window       int
	deadTimeout  time.Duration
	keepalive    time.Duration
	dialTimeout  time.Duration
	reconnect    ReconnectPolicy
	log          *slog.Logger
	tls          *tls.Config
	onAck        func(acked uint64)
	onLatency    func(frames uint64, d time.Duration)
	onDisconnect func(err error)
	protocol     Protocol
	epoch        uint64 // 0: pick a random one in Dial
	firstSeq     uint64 // sequence number of the first frame Send accepts; ≥ 1
	name         string
	spoolDir     string // WithSpool: "" for none
	spool        SpoolOptions
	errs         []error
}

// Protocol selects the protocol version a client speaks (docs/protocol.md).
type Protocol uint8

const (
	// ProtocolV2 is the default: every connection opens with a HELLO
	// carrying the client's epoch, and resumes where the gateway's WELCOME
	// says. A gateway that answers the HELLO with CLOSE(5) speaks v1 only:
	// the client logs it once, reconnects at once speaking v1 and stays on
	// v1 for its lifetime.
	ProtocolV2 Protocol = 2
	// ProtocolV1 never sends a HELLO: ACKs count frames per connection, and
	// after an abrupt end the frames stored but not acknowledged are sent
	// again (at least once).
	ProtocolV1 Protocol = 1
	// ProtocolV2Only is ProtocolV2 without the fallback: a CLOSE(5) answer
	// to the HELLO stops the client with ErrUnsupportedControl.
	ProtocolV2Only Protocol = 3
)

func (p Protocol) String() string {
	switch p {
	case ProtocolV1:
		return "v1"
	case ProtocolV2:
		return "v2"
	case ProtocolV2Only:
		return "v2-only"
	}
	return fmt.Sprintf("protocol(%d)", uint8(p))
}

// Option configures a Client.
type Option func(*options)

// WithMaxFrame sets the largest payload Send accepts, in bytes; it should
// match the gateway's --max-frame. Default 64 KiB.
func WithMaxFrame(n int) Option {
	return func(o *options) {
		if n < 1 || n > frame.ControlBit-1 {
			o.errs = append(o.errs, fmt.Errorf("%w: max frame %d is outside 1..%d", ErrInvalidOption, n, frame.ControlBit-1))
			return
		}
		o.maxFrame = n
	}
}

// WithWindow sets how many frames may be unacknowledged at once. Send blocks
// while the window is full; the client keeps a copy of every frame in it.
// Default 1024.
func WithWindow(n int) Option {
	return func(o *options) {
		if n < 1 {
			o.errs = append(o.errs, fmt.Errorf("%w: window %d is below 1", ErrInvalidOption, n))
			return
		}
		o.window = n
	}
}

// WithDeadTimeout sets how long the client waits for the gateway: a session
// on which nothing arrived (no HEARTBEAT, no ACK) for d, or on which frames
// stayed unacknowledged without ACK progress for d, is closed with
// ErrGatewayDead and the client reconnects. It should be a few times the
// gateway's heartbeat interval. 0 disables the check. Default 90s.
func WithDeadTimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("%w: dead timeout %s is negative", ErrInvalidOption, d))
			return
		}
		o.deadTimeout = d
	}
}

// WithKeepalive sets after how long without writing the client sends a
// zero-length keepalive frame, which keeps the gateway's idle timer from
// closing a quiet session. It must be below the gateway's idle timeout.
// 0 disables keepalives. Default 20s.
func WithKeepalive(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("%w: keepalive %s is negative", ErrInvalidOption, d))
			return
		}
		o.keepalive = d
	}
}

// WithDialTimeout bounds each reconnect attempt (TCP and TLS handshake).
// The first dial is bounded by the context given to Dial. Default 10s.
func WithDialTimeout(d time.Duration) Option {
	return func(o *options) {
		if d <= 0 {
			o.errs = append(o.errs, fmt.Errorf("%w: dial timeout %s is not positive", ErrInvalidOption, d))
			return
		}
		o.dialTimeout = d
	}
}

// WithReconnect sets the reconnect policy; zero fields take their defaults.
func WithReconnect(p ReconnectPolicy) Option {
	return func(o *options) { o.reconnect = p }
}

// WithLogger sets where the client logs session changes. Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithTLS makes the client speak TLS. A config without ServerName gets the
// host of the address. nil means plain TCP.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls = cfg }
}

// WithOnAck registers f to be called with the new acknowledged count each
// time it grows. f runs on the client's reading goroutine, which no ACK
// passes while f runs: it must be quick and must not call Send, WaitAcked or
// Close, which may wait for that goroutine.
func WithOnAck(f func(acked uint64)) Option {
	return func(o *options) { o.onAck = f }
}

// WithLatencyObserver registers f to be called, for each ACK, once per run of
// frames that were written to the socket together: frames is the number of
// frames in the run the ACK covers, d the time from the write to the ACK.
// It costs one timestamp per socket write, not per frame. f runs on the
// client's reading goroutine, with the same limits as WithOnAck.
func WithLatencyObserver(f func(frames uint64, d time.Duration)) Option {
	return func(o *options) { o.onLatency = f }
}

// WithOnDisconnect registers f to be called with the reason each time a
// session ends and the client is about to reconnect (a *CloseError, io.EOF,
// ErrGatewayDead, a network error). It is not called for the end of the
// session that Close ends. f runs on the client's own goroutine and must be
// quick.
func WithOnDisconnect(f func(err error)) Option {
	return func(o *options) { o.onDisconnect = f }
}

// WithProtocol chooses the protocol: ProtocolV2 (the default, falling back
// to v1 against a v1 gateway), ProtocolV2Only or ProtocolV1.
func WithProtocol(p Protocol) Option {
	return func(o *options) {
		switch p {
		case ProtocolV1, ProtocolV2, ProtocolV2Only:
			o.protocol = p
		default:
			o.errs = append(o.errs, fmt.Errorf("%w: protocol %s is not v1, v2 or v2-only", ErrInvalidOption, p))
		}
	}
}

// WithEpoch sets the epoch the client's HELLO carries: the name of its
// numbering of frames, which the gateway resumes by. It must not be 0.
// Default: a random non-zero epoch per client. A caller that keeps its
// unacknowledged frames across a process restart (a spool) passes the same
// epoch again, with WithFirstSeq, so that the gateway resumes exactly; any
// other caller leaves the default. Two numberings under one epoch and
// identity collide: the gateway takes the second one's frames up to what
// the stream holds of the first for stored, and they are lost. With an
// epoch given here, a WELCOME past the last frame numbered so far means the
// stream holds frames the caller is about to hand over again (a restarted
// spool): Send completes each of them at once, counted as skipped. Only a
// client with a random epoch takes that for a collision (ErrEpochConflict).
func WithEpoch(epoch uint64) Option {
	return func(o *options) {
		if epoch == 0 {
			o.errs = append(o.errs, fmt.Errorf("%w: epoch 0 (epochs are non-zero)", ErrInvalidOption))
			return
		}
		o.epoch = epoch
	}
}

// WithFirstSeq sets the sequence number of the first frame Send accepts
// (default 1): a spool that restarts with the same epoch (WithEpoch) gives
// the number of the oldest frame it still holds, and then sends its frames
// again in order. Acked and Sent then count from seq-1.
func WithFirstSeq(seq uint64) Option {
	return func(o *options) {
		if seq == 0 || seq == ^uint64(0) {
			o.errs = append(o.errs, fmt.Errorf("%w: first sequence %d (from 1)", ErrInvalidOption, seq))
			return
		}
		o.firstSeq = seq
	}
}

// WithName sets the station name the HELLO carries (v2). Without mutual TLS
// a non-empty name is the station's identity at the gateway (subject to its
// --allow-stations); otherwise the identity is the remote IP, so that
// several clients on one host need distinct names or they supersede each
// other. With mutual TLS the name must be empty or equal to the
// certificate's identity (else CLOSE(7)). At most 255 bytes of UTF-8.
func WithName(name string) Option {
	return func(o *options) {
		if len(name) > frame.MaxName || !utf8.ValidString(name) {
			o.errs = append(o.errs, fmt.Errorf("%w: station name must be UTF-8 of at most %d bytes", ErrInvalidOption, frame.MaxName))
			return
		}
		o.name = name
	}
}
