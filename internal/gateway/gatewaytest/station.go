package gatewaytest

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
)

// V2Config configures a V2Station. Zero durations mean the defaults noted.
type V2Config struct {
	Name   string // the HELLO name: the station's identity, and its payloads' prefix
	Epoch  uint64 // the station's numbering; 0 picks a random non-zero one
	Frames uint64 // the station sends frames 1..Frames, then closes
	Size   int    // payload bytes; a payload is never shorter than its label
	Window int    // unacknowledged frames at most; default 1024
	Addr   string // where to connect first; SetAddr changes it

	TLS *tls.Config // nil: plain TCP

	// DialTimeout bounds the dial, the TLS handshake and the wait for the
	// WELCOME; default 2s. WriteTimeout bounds each write; default 5s.
	DialTimeout  time.Duration
	WriteTimeout time.Duration
	// RetryFor is how long the station keeps trying without a session that
	// got its WELCOME before Run gives up; default 10s. Backoff is the first
	// pause between attempts, doubled up to 16 times it; default 10ms.
	RetryFor time.Duration
	Backoff  time.Duration
}

// V2Station is a protocol v2 station over real TCP, for tests that prove
// exactly-once: it keeps every frame it sent until an ACK covers it, opens
// each connection with HELLO (its epoch, first = its oldest unacknowledged
// frame), waits for the WELCOME, drops what the WELCOME says is stored, sends
// the rest and then new frames, answers each HEARTBEAT with a PONG, and
// reconnects when a connection fails or the gateway sends GOAWAY. Its
// payloads are V2Payload(Name, Epoch, seq, Size), so that a checker can tell
// every stored frame's content.
//
// It is independent of the station package on purpose: the tests that use
// it check the gateway against the protocol, not against our own client.
type V2Station struct {
	cfg V2Config

	mu       sync.Mutex // guards the fields below; never held across I/O
	addr     string
	acked    uint64   // every frame up to it is stored (ACK or WELCOME)
	sent     uint64   // highest sequence number made (queued for the socket)
	pending  [][]byte // frames acked+1..sent, each a whole data frame
	conn     net.Conn // the live connection, for Cut
	sessions int      // connections that got a WELCOME
	welcomes []uint64 // the next of each WELCOME
	closes   []frame.Reason
	attempts int // connections tried
	goAways  int // GOAWAYs received
	pongs    int // PONGs sent

	progress chan struct{} // capacity 1: an ACK, a GOAWAY or a reader's end
	ended    chan struct{} // closed when Run returns
	runErr   error         // Run's result; set before ended closes
}

// Protocol errors a V2Station ends Run with: the gateway broke the v2
// contract, so retrying would hide a bug.
var (
	// ErrV1Gateway: the gateway answered HELLO with CLOSE(5).
	ErrV1Gateway = errors.New("gatewaytest: the gateway answered HELLO with CLOSE(5): it does not speak v2")
	// ErrProtocol: a WELCOME or ACK that cannot be right.
	ErrProtocol = errors.New("gatewaytest: protocol v2 violated by the gateway")
)

// NewV2Station returns a station; Run sends its frames.
func NewV2Station(cfg V2Config) *V2Station {
	if cfg.Epoch == 0 {
		var b [8]byte
		for cfg.Epoch == 0 {
			_, _ = rand.Read(b[:])
			cfg.Epoch = binary.BigEndian.Uint64(b[:])
		}
	}
	if cfg.Window <= 0 {
		cfg.Window = 1024
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 10 * time.Second
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 10 * time.Millisecond
	}
	return &V2Station{cfg: cfg, addr: cfg.Addr, progress: make(chan struct{}, 1), ended: make(chan struct{})}
}

// Name is the station's HELLO name.
func (s *V2Station) Name() string { return s.cfg.Name }

// Epoch is the station's epoch.
func (s *V2Station) Epoch() uint64 { return s.cfg.Epoch }

// Frames is how many frames the station sends.
func (s *V2Station) Frames() uint64 { return s.cfg.Frames }

// Size is the station's payload size.
func (s *V2Station) Size() int { return s.cfg.Size }

// SetAddr makes the next connection go to addr.
func (s *V2Station) SetAddr(addr string) {
	s.mu.Lock()
	s.addr = addr
	s.mu.Unlock()
}

// Acked is the highest sequence number the gateway said is stored, with
// every frame before it.
func (s *V2Station) Acked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// Sent is the highest sequence number sent so far.
func (s *V2Station) Sent() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent
}

// Sessions is how many connections got a WELCOME.
func (s *V2Station) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// Welcomes lists the next of every WELCOME, in order.
func (s *V2Station) Welcomes() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.welcomes)
}

// Attempts is how many connections the station tried.
func (s *V2Station) Attempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts
}

// GoAways is how many GOAWAYs the station received.
func (s *V2Station) GoAways() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.goAways
}

// Pongs is how many PONGs the station sent.
func (s *V2Station) Pongs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pongs
}

// Closes lists the reasons of the CLOSE frames the station received.
func (s *V2Station) Closes() []frame.Reason {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.closes)
}

// Cut resets the live connection (RST, not FIN), as a failed link would,
// and reports whether there was one after its WELCOME. Run reconnects.
func (s *V2Station) Cut() bool {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return false
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
	return true
}

// WaitAcked waits until the ACKs cover n frames; it fails when ctx ends or
// Run returns first.
func (s *V2Station) WaitAcked(ctx context.Context, n uint64) error {
	t := time.NewTicker(2 * time.Millisecond) // polling interval, not synchronisation
	defer t.Stop()
	for s.Acked() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("station %s: %d of %d frames acknowledged: %w", s.cfg.Name, s.Acked(), n, ctx.Err())
		case <-s.ended:
			if s.Acked() >= n {
				return nil
			}
			return fmt.Errorf("station %s: ended with %d of %d frames acknowledged: %v", s.cfg.Name, s.Acked(), n, s.runErr)
		case <-t.C:
		}
	}
	return nil
}

func (s *V2Station) signal() {
	select {
	case s.progress <- struct{}{}:
	default:
	}
}

// errGoAway ends a connection the gateway asked to leave: not a failure.
var errGoAway = errors.New("gatewaytest: GOAWAY")

// Run sends the station's frames until every one is acknowledged, then
// half-closes and reads the gateway's end. It reconnects after a failed
// connection (RetryFor bounds the time without a WELCOME) and returns early
// on ctx's end, on a protocol violation, or on CLOSE(5) / CLOSE(7). Call it
// once.
func (s *V2Station) Run(ctx context.Context) (err error) {
	defer func() {
		s.runErr = err
		close(s.ended)
	}()
	return s.run(ctx)
}

func (s *V2Station) run(ctx context.Context) error {
	backoff := s.cfg.Backoff
	lastGood := time.Now()
	for {
		welcomed, done, err := s.connect(ctx)
		switch {
		case done:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("station %s: %w (last: %v)", s.cfg.Name, ctx.Err(), err)
		case errors.Is(err, ErrV1Gateway), errors.Is(err, ErrProtocol), errors.Is(err, errUnauthorized):
			return fmt.Errorf("station %s: %w", s.cfg.Name, err)
		}
		if welcomed {
			lastGood, backoff = time.Now(), s.cfg.Backoff
			if errors.Is(err, errGoAway) {
				continue // the gateway asked us to go; come back at once
			}
		}
		if time.Since(lastGood) > s.cfg.RetryFor {
			return fmt.Errorf("station %s: no session for %s: %w", s.cfg.Name, s.cfg.RetryFor, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("station %s: %w (last: %v)", s.cfg.Name, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 16*s.cfg.Backoff)
	}
}

var errUnauthorized = errors.New("gatewaytest: CLOSE(7) not authorized")

// closeError is a CLOSE the gateway sent.
type closeError struct {
	reason frame.Reason
	text   string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("gatewaytest: CLOSE(%d %s) %q", uint16(e.reason), e.reason, e.text)
}

// connect runs one connection. welcomed reports whether it got its WELCOME;
// done whether every frame is acknowledged and the gateway closed.
func (s *V2Station) connect(ctx context.Context) (welcomed, done bool, err error) {
	s.mu.Lock()
	addr := s.addr
	s.attempts++
	s.mu.Unlock()
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false, false, err
	}
	if s.cfg.TLS != nil {
		tc := tls.Client(conn, s.cfg.TLS)
		hctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return false, false, err
		}
		conn = tc
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	s.mu.Lock()
	first := s.acked + 1
	s.mu.Unlock()
	hello := frame.AppendHello(nil, frame.Hello{Version: frame.Version2, Epoch: s.cfg.Epoch, First: first, Name: s.cfg.Name})
	_ = conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if _, err := conn.Write(hello); err != nil {
		return false, false, err
	}
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(s.cfg.DialTimeout))
	next, err := s.awaitWelcome(br, first)
	if err != nil {
		return false, false, err
	}
	_ = conn.SetReadDeadline(time.Time{})

	c := &v2conn{s: s, conn: conn, br: br, readerDone: make(chan struct{})}
	s.mu.Lock()
	s.sessions++
	s.welcomes = append(s.welcomes, next)
	s.dropLocked(next - 1)
	s.conn = conn
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
	}()
	go c.read()
	done, err = c.write(ctx, next)
	// The reader ends at the connection's end; make sure it comes.
	_ = conn.SetReadDeadline(time.Now().Add(s.cfg.DialTimeout))
	<-c.readerDone
	if err == nil && c.err != nil && !done {
		err = c.err
	}
	return true, done, err
}

// awaitWelcome reads until the WELCOME and checks it.
func (s *V2Station) awaitWelcome(br *bufio.Reader, first uint64) (uint64, error) {
	for {
		ctl, err := readControl(br)
		if err != nil {
			return 0, err
		}
		switch ctl.Type {
		case frame.TypeWelcome:
			s.mu.Lock()
			sent := s.sent
			s.mu.Unlock()
			switch {
			case ctl.Version != frame.Version2 || ctl.Epoch != s.cfg.Epoch:
				return 0, fmt.Errorf("%w: WELCOME version %d epoch %d, the HELLO said %d and %d",
					ErrProtocol, ctl.Version, ctl.Epoch, frame.Version2, s.cfg.Epoch)
			case ctl.Next < first:
				return 0, fmt.Errorf("%w: WELCOME next %d below the HELLO's first %d", ErrProtocol, ctl.Next, first)
			case ctl.Next > sent+1:
				return 0, fmt.Errorf("%w: WELCOME next %d, but only %d frames were ever sent", ErrProtocol, ctl.Next, sent)
			}
			return ctl.Next, nil
		case frame.TypeClose:
			s.mu.Lock()
			s.closes = append(s.closes, ctl.Reason)
			s.mu.Unlock()
			switch ctl.Reason {
			case frame.ReasonControl:
				return 0, fmt.Errorf("%w (%q)", ErrV1Gateway, ctl.Text)
			case frame.ReasonUnauthorized:
				return 0, fmt.Errorf("%w (%q)", errUnauthorized, ctl.Text)
			}
			return 0, &closeError{ctl.Reason, ctl.Text}
		case frame.TypeAck:
			// A refused HELLO ends as any session: final ACK 0 (nothing
			// was taken), CLOSE, FIN (docs/protocol.md, 9.4).
			if ctl.Ack != 0 {
				return 0, fmt.Errorf("%w: ACK %d before the WELCOME", ErrProtocol, ctl.Ack)
			}
		}
		// HEARTBEAT, GOAWAY or an unknown type before the WELCOME is
		// skipped: a gateway that drains ends the session itself, with
		// its final ACK and CLOSE(1), and the station reconnects.
	}
}

// dropLocked forgets the frames up to ack, which are stored.
func (s *V2Station) dropLocked(ack uint64) {
	if ack <= s.acked {
		return
	}
	s.pending = s.pending[ack-s.acked:]
	s.acked = ack
}

// readControl reads one gateway→station frame.
func readControl(br *bufio.Reader) (frame.Control, error) {
	var hdr [frame.HeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return frame.Control{}, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > 64<<10 {
		return frame.Control{}, fmt.Errorf("%w: gateway frame of %d bytes", ErrProtocol, n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		return frame.Control{}, err
	}
	ctl, err := frame.ParseControl(p)
	if err != nil {
		return frame.Control{}, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return ctl, nil
}

// v2conn is one connection after its WELCOME: the reader goroutine takes
// ACKs, HEARTBEATs, GOAWAY and CLOSE; the writer (Run's goroutine) sends.
type v2conn struct {
	s    *V2Station
	conn net.Conn
	br   *bufio.Reader
	wmu  sync.Mutex // one writer of the socket at a time: frames and PONGs

	readerDone chan struct{}
	err        error // the reader's end; set before readerDone closes

	mu     sync.Mutex
	goAway bool
}

func (c *v2conn) writeAll(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
	_, err := c.conn.Write(b)
	return err
}

func (c *v2conn) read() {
	s := c.s
	defer close(c.readerDone)
	defer s.signal()
	pong := frame.AppendPong(nil)
	for {
		ctl, err := readControl(c.br)
		if err != nil {
			c.err = err
			return
		}
		switch ctl.Type {
		case frame.TypeAck:
			s.mu.Lock()
			acked, sent := s.acked, s.sent
			if ctl.Ack >= acked && ctl.Ack <= sent {
				s.dropLocked(ctl.Ack)
			}
			s.mu.Unlock()
			if ctl.Ack < acked || ctl.Ack > sent {
				// Absolute ACKs never go back, and never cover a
				// frame not sent yet.
				c.err = fmt.Errorf("%w: ACK %d after %d, with %d frames sent", ErrProtocol, ctl.Ack, acked, sent)
				_ = c.conn.Close()
				return
			}
			s.signal()
		case frame.TypeHeartbeat:
			if err := c.writeAll(pong); err != nil {
				c.err = err
				return
			}
			s.mu.Lock()
			s.pongs++
			s.mu.Unlock()
		case frame.TypeGoAway:
			c.mu.Lock()
			c.goAway = true
			c.mu.Unlock()
			s.mu.Lock()
			s.goAways++
			s.mu.Unlock()
			s.signal()
		case frame.TypeClose:
			s.mu.Lock()
			s.closes = append(s.closes, ctl.Reason)
			s.mu.Unlock()
		case frame.TypeWelcome:
			c.err = fmt.Errorf("%w: a second WELCOME", ErrProtocol)
			_ = c.conn.Close()
			return
		}
	}
}

// maxWrite bounds the bytes of one write.
const maxWrite = 64 << 10

// write sends from next on until every frame is acknowledged (done), the
// connection fails, or the gateway sends GOAWAY.
func (c *v2conn) write(ctx context.Context, next uint64) (done bool, err error) {
	s := c.s
	var buf []byte
	for {
		c.mu.Lock()
		goAway := c.goAway
		c.mu.Unlock()
		select {
		case <-c.readerDone:
			return false, c.err
		default:
		}
		buf = buf[:0]
		s.mu.Lock()
		next = max(next, s.acked+1)
		for len(buf) < maxWrite && !goAway {
			if next <= s.sent {
				buf = append(buf, s.pending[next-s.acked-1]...)
			} else if next <= s.cfg.Frames && s.sent-s.acked < uint64(s.cfg.Window) {
				f := frame.AppendData(nil, V2Payload(s.cfg.Name, s.cfg.Epoch, next, s.cfg.Size))
				s.pending = append(s.pending, f)
				s.sent = next
				buf = append(buf, f...)
			} else {
				break
			}
			next++
		}
		all := s.acked == s.cfg.Frames
		s.mu.Unlock()
		if all || goAway {
			// Half-close and read the gateway's end: its final ACK, a
			// CLOSE, then EOF.
			CloseWriteConn(c.conn)
			_ = c.conn.SetReadDeadline(time.Now().Add(s.cfg.DialTimeout))
			<-c.readerDone
			if all {
				return true, nil
			}
			return false, errGoAway
		}
		if len(buf) > 0 {
			if err := c.writeAll(buf); err != nil {
				return false, err
			}
			continue
		}
		select {
		case <-s.progress:
		case <-c.readerDone:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// CloseWriteConn half-closes c where it can (TCP, TLS).
func CloseWriteConn(c net.Conn) {
	type halfCloser interface{ CloseWrite() error }
	if hc, ok := c.(halfCloser); ok {
		_ = hc.CloseWrite()
	}
}

// V2Payload is the payload of frame seq of a station: its label
// "name/epoch/seq" padded to size with bytes that depend on all three.
func V2Payload(name string, epoch, seq uint64, size int) []byte {
	p := fmt.Appendf(make([]byte, 0, max(size, 64)), "%s/%d/%d", name, epoch, seq)
	for i := len(p); i < size; i++ {
		p = append(p, byte('a'+(uint64(i)+seq+epoch)%26))
	}
	return p
}

// V2Record is one message of the stream as a checker sees it.
type V2Record struct {
	Station string // Meridian-Station
	Epoch   uint64 // Meridian-Epoch
	Seq     uint64 // Meridian-Seq
	Data    []byte
}

// V2Report is what CheckV2 found.
type V2Report struct {
	Stored     int // records of the stations checked
	Missing    int // frames 1..Frames of a station not stored
	Duplicates int // frames stored more than once
	Corrupt    int // records whose payload is not the station's
	Foreign    int // records of another station or epoch
	Examples   []string
}

// OK reports whether every frame is stored exactly once and intact.
func (r V2Report) OK() bool {
	return r.Missing == 0 && r.Duplicates == 0 && r.Corrupt == 0 && r.Foreign == 0
}

func (r V2Report) String() string {
	return fmt.Sprintf("%d stored, %d missing, %d duplicates, %d corrupt, %d foreign; %s",
		r.Stored, r.Missing, r.Duplicates, r.Corrupt, r.Foreign, strings.Join(r.Examples, "; "))
}

// CheckV2 checks records against stations: every frame 1..Frames of each
// station stored exactly once per (station, epoch, seq), with its payload.
func CheckV2(stations []*V2Station, recs []V2Record) V2Report {
	type key struct {
		station string
		epoch   uint64
	}
	byKey := make(map[key]*V2Station, len(stations))
	seen := make(map[key][]uint8, len(stations))
	for _, st := range stations {
		k := key{st.Name(), st.Epoch()}
		byKey[k] = st
		seen[k] = make([]uint8, st.Frames()+1)
	}
	var r V2Report
	example := func(format string, args ...any) {
		if len(r.Examples) < 5 {
			r.Examples = append(r.Examples, fmt.Sprintf(format, args...))
		}
	}
	for _, rec := range recs {
		k := key{rec.Station, rec.Epoch}
		st := byKey[k]
		if st == nil || rec.Seq == 0 || rec.Seq > st.Frames() {
			r.Foreign++
			example("foreign %s/%d/%d", rec.Station, rec.Epoch, rec.Seq)
			continue
		}
		r.Stored++
		if seen[k][rec.Seq] > 0 {
			r.Duplicates++
			example("duplicate %s/%d/%d", rec.Station, rec.Epoch, rec.Seq)
		}
		if seen[k][rec.Seq] < 255 {
			seen[k][rec.Seq]++
		}
		if want := V2Payload(st.Name(), st.Epoch(), rec.Seq, st.Size()); string(rec.Data) != string(want) {
			r.Corrupt++
			example("corrupt %s/%d/%d: %.40q", rec.Station, rec.Epoch, rec.Seq, rec.Data)
		}
	}
	for k, s := range seen {
		for seq := 1; seq < len(s); seq++ {
			if s[seq] == 0 {
				r.Missing++
				example("missing %s/%d/%d", k.station, k.epoch, seq)
			}
		}
	}
	return r
}
