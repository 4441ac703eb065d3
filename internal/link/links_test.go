package link_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/link"
	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/meridian-telemetry/meridian/internal/stream"
	"github.com/meridian-telemetry/meridian/internal/tlsid"
	"github.com/meridian-telemetry/meridian/internal/tlsid/tlstest"
)

// meridianSend sends payloads as Meridian frames, half-closes, and returns
// the last ACK and the last CLOSE reason read before EOF.
func meridianSend(t *testing.T, c net.Conn, payloads ...string) (ack uint64, closed frame.Reason) {
	t.Helper()
	var out []byte
	for _, p := range payloads {
		out = frame.AppendData(out, []byte(p))
	}
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	r := bufio.NewReader(c)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return ack, closed
		}
		p := make([]byte, int(hdr[3]))
		if _, err := io.ReadFull(r, p); err != nil {
			return ack, closed
		}
		if ctl, err := frame.ParseControl(p); err == nil {
			switch ctl.Type {
			case frame.TypeAck:
				ack = ctl.Ack
			case frame.TypeClose:
				closed = ctl.Reason
			}
		}
	}
}

// TestMeridianLink: a second Meridian listener has its own session limit
// and allow-list, acknowledges as --listen does, and stores its frames
// exactly as --listen does: no ground-framing header, no sub-token.
func TestMeridianLink(t *testing.T) {
	e := newEnv(t, gatewaytest.Config(), nil)
	allow, err := tlsid.NewAllowList([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := e.listen(gateway.Link{Name: "eu", MaxSessions: 1, Allowed: allow.Allowed})
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	eventually(t, "the first session listed on its link", func() bool {
		for _, s := range e.gw.Sessions() {
			if s.Link == "eu" && s.Framing == link.FramingMeridian {
				return true
			}
		}
		return false
	})
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, reason := meridianSend(t, busy, "refused"); reason != frame.ReasonBusy {
		t.Errorf("second session on a link of max-sessions 1: CLOSE %v, want server busy", reason)
	}
	if ack, _ := meridianSend(t, held, "a", "b", "c"); ack != 3 {
		t.Fatalf("final ACK %d, want 3", ack)
	}
	e.shutdown()
	msgs := e.messages()[""]
	if len(msgs) != 3 {
		t.Fatalf("%d messages, want 3", len(msgs))
	}
	want := []string{stream.HeaderMsgID, stream.HeaderReceived, stream.HeaderSeq, stream.HeaderSession, stream.HeaderStation}
	slices.Sort(want)
	for i, m := range msgs {
		if m.Subject() != "telemetry.127-0-0-1" || string(m.Data()) != []string{"a", "b", "c"}[i] {
			t.Errorf("message %d: %s %q", i, m.Subject(), m.Data())
		}
		if got := slices.Sorted(maps.Keys(m.Headers())); !slices.Equal(got, want) {
			t.Errorf("message %d: headers %v, want exactly %v", i, got, want)
		}
	}
}

// TestGroundLinkTLS: a ground link with mutual TLS takes the identity from
// the equipment's certificate, and its allow-list closes an equipment not
// on it without storing anything.
func TestGroundLinkTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "link-ca")
	srv := ca.Server(t)
	loader, err := tlsid.Load(tlsid.Files{Cert: srv.CertFile, Key: srv.KeyFile, ClientCA: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	allow, err := tlsid.NewAllowList([]string{"modem-1.gs.example"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, gatewaytest.Config(), nil)
	l := packetLink("secure", false, link.PolicyDrop)
	l.TLS, l.Identity, l.Allowed = loader.Config(), tlsid.Identity, allow.Allowed
	addr := e.listen(l)
	_, pkts := loadPackets(t, "packets")
	var in []byte
	for _, p := range pkts[:5] {
		in = append(in, p.bytes...)
	}
	dial := func(name string) *tls.Conn {
		c, err := tls.Dial("tcp", addr, ca.ClientConfig(ca.Client(t, name)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	stranger := dial("other.gs.example")
	_, _ = stranger.Write(in)
	_ = stranger.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadAll(stranger); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Logf("stranger read: %v", err) // closed either way; what matters is below
	}
	stranger.Close()
	modem := dial("modem-1.gs.example")
	writeChunks(t, modem, in, 41)
	modem.Close()
	eventually(t, "5 packets stored", func() bool { return l.Totals.Quality().Stored == 5 && l.Totals.Connected() == 0 })
	e.shutdown()
	msgs := e.messages()["secure"]
	if len(msgs) != 5 {
		t.Fatalf("%d messages, want the modem's 5 and none of the stranger's", len(msgs))
	}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Subject(), "telemetry.modem-1-gs-example.apid") {
			t.Errorf("subject %s", m.Subject())
		}
		header(t, m, stream.HeaderStation, "modem-1.gs.example")
	}
}

// heldSink takes batches and commits none until its context ends: a store
// that stopped answering.
type heldSink struct{ got chan int }

func (s *heldSink) Write(ctx context.Context, bs []*pipeline.Batch) error {
	n := 0
	for _, b := range bs {
		n += b.Len()
	}
	s.got <- n
	<-ctx.Done()
	return ctx.Err()
}
func (s *heldSink) Flush(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
func (s *heldSink) Close() error                    { return nil }

// TestForcedStopCountsEquipmentUnits: units read from equipment and never
// committed are in ForcedError.Frames, as a session's frames are.
func TestForcedStopCountsEquipmentUnits(t *testing.T) {
	snk := &heldSink{got: make(chan int, 64)}
	gw, err := gateway.New(gatewaytest.Config(), snk, gatewaytest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := packetLink("pkt", false, link.PolicyDrop)
	served := make(chan error, 1)
	go func() { served <- gw.ServeLink(ln, l) }()
	raw, _ := loadPackets(t, "packets")
	send(t, ln.Addr().String(), raw, 51)
	eventually(t, "49 packets read", func() bool { return l.Totals.Quality().Stored == 49 && l.Totals.Connected() == 0 })
	<-snk.got // the sink holds them
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var fe *gateway.ForcedError
	if err := gw.Shutdown(ctx); !errors.As(err, &fe) || fe.Frames != 49 {
		t.Fatalf("Shutdown = %v, want a forced stop abandoning 49 frames", err)
	}
	if err := <-served; !errors.Is(err, gateway.ErrServerClosed) {
		t.Errorf("ServeLink = %v", err)
	}
}
