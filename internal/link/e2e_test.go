package link_test

// End to end over TCP: equipment (a test peer writing fixture bytes made by
// gr-satellites) → a real gateway link → the real aggregator → the real
// embedded JetStream stream, read back with a consumer.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/meridian-telemetry/meridian/internal/framing"
	"github.com/meridian-telemetry/meridian/internal/framing/ccsds"
	"github.com/meridian-telemetry/meridian/internal/framing/lengthfield"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/link"
	"github.com/meridian-telemetry/meridian/internal/stream"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait; tests poll conditions, never sleep.
const waitTimeout = 30 * time.Second

const fixtures = "../framing/ccsds/testdata/"

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// cadu is one CADU of cadu.bin as gr-satellites describes it.
type cadu struct {
	Offset  int  `json:"offset"`
	SCID    int  `json:"scid"`
	VCID    int  `json:"vcid"`
	MCCount int  `json:"mc_count"`
	VCCount int  `json:"vc_count"`
	CRCOK   bool `json:"crc_ok"`
	bytes   []byte
}

// packet is one space packet of packets.bin or packets_crc.bin.
type packet struct {
	APID     int    `json:"apid"`
	SeqCount int    `json:"seq_count"`
	Hex      string `json:"hex"`
	CRCOK    *bool  `json:"crc_ok"`
	bytes    []byte
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(fixtures + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadCADUs(t testing.TB) ([]byte, []cadu) {
	t.Helper()
	raw := readFile(t, "cadu.bin")
	var doc struct {
		FrameLength int    `json:"frame_length"`
		Frames      []cadu `json:"frames"`
	}
	if err := json.Unmarshal(readFile(t, "cadu.json"), &doc); err != nil {
		t.Fatal(err)
	}
	for i := range doc.Frames {
		f := &doc.Frames[i]
		f.bytes = raw[f.Offset : f.Offset+4+doc.FrameLength]
	}
	return raw, doc.Frames
}

func loadPackets(t testing.TB, name string) ([]byte, []packet) {
	t.Helper()
	raw := readFile(t, name+".bin")
	var doc struct {
		Packets []packet `json:"packets"`
	}
	if err := json.Unmarshal(readFile(t, name+".json"), &doc); err != nil {
		t.Fatal(err)
	}
	for i := range doc.Packets {
		b, err := hex.DecodeString(doc.Packets[i].Hex)
		if err != nil {
			t.Fatal(err)
		}
		doc.Packets[i].bytes = b
	}
	return raw, doc.Packets
}

// env is a gateway feeding a real embedded stream.
type env struct {
	t  *testing.T
	st *stream.Stream
	gw *gateway.Server
	wg sync.WaitGroup
}

func newEnv(t *testing.T, cfg gateway.Config, log *slog.Logger) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	st, err := stream.Open(ctx, stream.Config{DataDir: t.TempDir(), StoreMaxBytes: 256 << 20, MaxFrame: 64 << 10}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = gatewaytest.Logger()
	}
	gw, err := gateway.New(cfg, st.Sink(), log)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	e := &env{t: t, st: st, gw: gw}
	t.Cleanup(func() {
		gw.Close()
		e.wg.Wait()
		_ = st.Close()
	})
	return e
}

// listen serves l on a free loopback port and returns its address.
func (e *env) listen(l gateway.Link) string {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if err := e.gw.ServeLink(ln, l); !errors.Is(err, gateway.ErrServerClosed) {
			e.t.Errorf("ServeLink %s: %v", l.Name, err)
		}
	}()
	return ln.Addr().String()
}

// shutdown is the graceful stop; it must be clean.
func (e *env) shutdown() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := e.gw.Shutdown(ctx); err != nil {
		e.t.Fatalf("Shutdown: %v", err)
	}
}

// messages reads every message of the stream, grouped by Meridian-Link.
func (e *env) messages() map[string][]jetstream.Msg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	s, err := e.st.JetStream().Stream(ctx, e.st.Name())
	if err != nil {
		e.t.Fatal(err)
	}
	n := int(s.CachedInfo().State.Msgs)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{InactiveThreshold: 5 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string][]jetstream.Msg{}
	for got := 0; got < n; {
		batch, err := cons.Fetch(min(n-got, 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			e.t.Fatal(err)
		}
		for m := range batch.Messages() {
			l := m.Headers().Get(stream.HeaderLink)
			out[l] = append(out[l], m)
			got++
		}
		if err := batch.Error(); err != nil {
			e.t.Fatal(err)
		}
	}
	return out
}

// send writes b to addr in random chunks of 1 to 700 bytes, then closes.
func send(t testing.TB, addr string, b []byte, seed uint64) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeChunks(t, c, b, seed)
}

func writeChunks(t testing.TB, c net.Conn, b []byte, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	for len(b) > 0 {
		n := min(len(b), 1+r.IntN(700))
		if _, err := c.Write(b[:n]); err != nil {
			t.Fatalf("write: %v", err)
		}
		b = b[n:]
	}
}

// header checks one header of m.
func header(t testing.TB, m jetstream.Msg, key, want string) {
	t.Helper()
	if got := m.Headers().Get(key); got != want {
		t.Errorf("message %s: %s = %q, want %q", m.Subject(), key, got, want)
	}
}

func frameLink(name string, fecf bool) gateway.Link {
	fc := ccsds.DefaultFrameConfig()
	fc.FrameLength, fc.FECF = 1115, fecf
	return gateway.Link{Name: name, Ground: &link.Config{Name: name, Framing: framing.NameCCSDSFrame, Frame: fc}, Totals: new(link.Counters)}
}

func packetLink(name string, crc bool, policy link.Policy) gateway.Link {
	pc := ccsds.DefaultPacketConfig()
	pc.CRC = crc
	return gateway.Link{Name: name, Ground: &link.Config{Name: name, Framing: framing.NameCCSDSPacket, Packet: pc, CRC: policy}, Totals: new(link.Counters)}
}

// TestEachFramingIntoTheStream: each framing, on its own link, stores every
// unit of a gr-satellites fixture in order, with the subject, the headers
// and the payload exactly as docs/framing.md says, and counts them exactly.
func TestEachFramingIntoTheStream(t *testing.T) {
	e := newEnv(t, gatewaytest.Config(), nil)
	caduRaw, cadus := loadCADUs(t)
	pktRaw, pkts := loadPackets(t, "packets")
	syncRaw := readFile(t, "sync_packets.bin")

	xband := frameLink("xband", true)
	pkt := packetLink("pkt", false, link.PolicyDrop)
	lf := lengthfield.DefaultConfig()
	// COSMOS: LengthProtocol 64 16 11 1 BIG_ENDIAN 4 0x1ACFFC1D
	lf.Sync, lf.Offset, lf.Size, lf.Adjustment, lf.Strip = ccsds.DefaultASM, 8, 2, 1, 4
	cosmos := gateway.Link{Name: "cosmos", Ground: &link.Config{Name: "cosmos", Framing: framing.NameLengthField, LengthField: lf}, Totals: new(link.Counters)}

	addrs := map[string]string{}
	for _, l := range []gateway.Link{xband, pkt, cosmos} {
		addrs[l.Name] = e.listen(l)
	}
	send(t, addrs["xband"], caduRaw, 1)
	send(t, addrs["pkt"], pktRaw, 2)
	send(t, addrs["cosmos"], syncRaw, 3)
	eventually(t, "every unit counted", func() bool {
		return xband.Totals.Quality().Good == 24 && pkt.Totals.Quality().Good == 49 && cosmos.Totals.Quality().Good == 49 &&
			xband.Totals.Connected()+pkt.Totals.Connected()+cosmos.Totals.Connected() == 0
	})
	e.shutdown()

	for _, c := range []struct {
		l    gateway.Link
		want link.Quality
	}{
		{xband, link.Quality{Bytes: uint64(len(caduRaw)), Good: 24, Stored: 24, Gaps: 4}},
		{pkt, link.Quality{Bytes: uint64(len(pktRaw)), Good: 49, Stored: 49, Gaps: 3}},
		{cosmos, link.Quality{Bytes: uint64(len(syncRaw)), Good: 49, Stored: 49}},
	} {
		if got := c.l.Totals.Quality(); got != c.want {
			t.Errorf("link %s counters\n got %+v\nwant %+v", c.l.Name, got, c.want)
		}
	}

	msgs := e.messages()
	if len(msgs[""]) != 0 {
		t.Errorf("%d messages without Meridian-Link", len(msgs[""]))
	}
	if got := msgs["xband"]; len(got) != len(cadus) {
		t.Fatalf("xband: %d messages, want %d", len(got), len(cadus))
	}
	var session string
	for i, m := range msgs["xband"] {
		f := cadus[i]
		if want := fmt.Sprintf("telemetry.127-0-0-1.vc%d", f.VCID); m.Subject() != want {
			t.Errorf("cadu %d: subject %s, want %s", i, m.Subject(), want)
		}
		if !bytes.Equal(m.Data(), f.bytes) {
			t.Errorf("cadu %d: payload differs from the fixture", i)
		}
		header(t, m, stream.HeaderFraming, "ccsds-frame")
		header(t, m, stream.HeaderSCID, strconv.Itoa(f.SCID))
		header(t, m, stream.HeaderVCID, strconv.Itoa(f.VCID))
		header(t, m, stream.HeaderMCCount, strconv.Itoa(f.MCCount))
		header(t, m, stream.HeaderVCCount, strconv.Itoa(f.VCCount))
		header(t, m, stream.HeaderStation, "127.0.0.1")
		header(t, m, stream.HeaderSeq, strconv.Itoa(i+1))
		header(t, m, stream.HeaderCRC, "")
		header(t, m, stream.HeaderAPID, "")
		if i == 0 {
			session = m.Headers().Get(stream.HeaderSession)
		}
		header(t, m, stream.HeaderSession, session)
		header(t, m, stream.HeaderMsgID, m.Headers().Get(stream.HeaderMsgID)) // present
		if m.Headers().Get(stream.HeaderMsgID) == "" || m.Headers().Get(stream.HeaderReceived) == "" {
			t.Errorf("cadu %d: Nats-Msg-Id or Meridian-Received missing", i)
		}
	}
	for _, name := range []string{"pkt", "cosmos"} {
		got := msgs[name]
		if len(got) != len(pkts) {
			t.Fatalf("%s: %d messages, want %d", name, len(got), len(pkts))
		}
		for i, m := range got {
			p := pkts[i]
			if !bytes.Equal(m.Data(), p.bytes) {
				t.Errorf("%s packet %d: payload differs from the fixture", name, i)
			}
			header(t, m, stream.HeaderSeq, strconv.Itoa(i+1))
			if name == "cosmos" {
				// length-field knows no CCSDS header: no sub-token, no APID.
				if m.Subject() != "telemetry.127-0-0-1" {
					t.Errorf("cosmos %d: subject %s", i, m.Subject())
				}
				header(t, m, stream.HeaderFraming, "length-field")
				header(t, m, stream.HeaderAPID, "")
				continue
			}
			if want := fmt.Sprintf("telemetry.127-0-0-1.apid%d", p.APID); m.Subject() != want {
				t.Errorf("packet %d: subject %s, want %s", i, m.Subject(), want)
			}
			header(t, m, stream.HeaderFraming, "ccsds-packet")
			header(t, m, stream.HeaderAPID, strconv.Itoa(p.APID))
			header(t, m, stream.HeaderSeqCount, strconv.Itoa(p.SeqCount))
			header(t, m, stream.HeaderSCID, "")
		}
	}
}

// TestGarbageStaysOnItsLink: garbage, a flipped bit and bytes cut out on one
// link are counted exactly there, every undamaged frame after them is
// stored, and a link streaming at the same time loses nothing.
func TestGarbageStaysOnItsLink(t *testing.T) {
	e := newEnv(t, gatewaytest.Config(), nil)
	_, cadus := loadCADUs(t)
	pktRaw, pkts := loadPackets(t, "packets")
	bad := frameLink("bad", true)
	good := packetLink("good", false, link.PolicyDrop)
	badAddr, goodAddr := e.listen(bad), e.listen(good)

	var in []byte
	garbage := bytes.Repeat([]byte{0x55}, 39)
	in = append(in, garbage...)
	in = append(in, cadus[0].bytes...)
	flipped := bytes.Clone(cadus[1].bytes)
	flipped[500] ^= 0x10
	in = append(in, flipped...)
	cut := append(bytes.Clone(cadus[2].bytes[:600]), cadus[2].bytes[603:]...)
	in = append(in, cut...)
	for _, f := range cadus[3:] {
		in = append(in, f.bytes...)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		send(t, goodAddr, pktRaw, 7)
	}()
	send(t, badAddr, in, 8)
	<-done
	eventually(t, "both connections ended", func() bool {
		return bad.Totals.Quality().Bytes == uint64(len(in)) && good.Totals.Quality().Good == 49 &&
			bad.Totals.Connected()+good.Totals.Connected() == 0
	})
	e.shutdown()

	// The cut frame's window holds the next ASM 3 bytes early: its 1116
	// bytes are discarded as a short unit, a second sync-loss episode.
	want := link.Quality{
		Bytes: uint64(len(in)), Good: 22, Bad: 2, CRC: 1, Short: 1, Stored: 22,
		Discarded: 39 + 1116, SyncLoss: 2, SyncBack: 2, Gaps: 4,
	}
	if got := bad.Totals.Quality(); got != want {
		t.Errorf("damaged link\n got %+v\nwant %+v", got, want)
	}
	if got, want := good.Totals.Quality(), (link.Quality{Bytes: uint64(len(pktRaw)), Good: 49, Stored: 49, Gaps: 3}); got != want {
		t.Errorf("clean link\n got %+v\nwant %+v", got, want)
	}
	msgs := e.messages()
	if len(msgs["bad"]) != 22 || len(msgs["good"]) != len(pkts) {
		t.Fatalf("stored %d and %d, want 22 and %d", len(msgs["bad"]), len(msgs["good"]), len(pkts))
	}
	stored := append([]cadu{cadus[0]}, cadus[3:]...)
	for i, m := range msgs["bad"] {
		if !bytes.Equal(m.Data(), stored[i].bytes) {
			t.Errorf("damaged link, message %d: not frame %d of the fixture", i, stored[i].Offset/1119)
		}
	}
	for i, m := range msgs["good"] {
		if !bytes.Equal(m.Data(), pkts[i].bytes) {
			t.Errorf("clean link, message %d differs", i)
		}
	}
}

// TestCRCPolicies: drop stores only good packets, flag stores every packet
// and marks the bad ones, disconnect closes the connection at the first bad
// one and stores what came before it.
func TestCRCPolicies(t *testing.T) {
	raw, pkts := loadPackets(t, "packets_crc")
	firstBad, nBad := -1, 0
	for i, p := range pkts {
		if !*p.CRCOK {
			nBad++
			if firstBad < 0 {
				firstBad = i
			}
		}
	}
	if nBad == 0 || firstBad <= 0 {
		t.Fatalf("fixture has %d bad CRCs, the first at %d", nBad, firstBad)
	}
	e := newEnv(t, gatewaytest.Config(), nil)
	drop := packetLink("drop", true, link.PolicyDrop)
	flag := packetLink("flag", true, link.PolicyFlag)
	disc := packetLink("disc", true, link.PolicyDisconnect)
	send(t, e.listen(drop), raw, 11)
	send(t, e.listen(flag), raw, 12)

	// The disconnect link closes on the equipment: its read sees the end.
	c, err := net.Dial("tcp", e.listen(disc))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeChunks(t, c, raw[:len(raw)/2], 13) // the first bad packet is early
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("disconnect link: read %d, %v; want the connection closed", n, err)
	}

	eventually(t, "every connection ended", func() bool {
		return drop.Totals.Quality().Bytes == uint64(len(raw)) && flag.Totals.Quality().Bytes == uint64(len(raw)) &&
			drop.Totals.Connected()+flag.Totals.Connected()+disc.Totals.Connected() == 0
	})
	e.shutdown()
	n := uint64(len(pkts))
	bad := uint64(nBad)
	if got, want := drop.Totals.Quality(), (link.Quality{Bytes: uint64(len(raw)), Good: n - bad, Bad: bad, CRC: bad, Stored: n - bad, Gaps: drop.Totals.Quality().Gaps}); got != want {
		t.Errorf("drop\n got %+v\nwant %+v", got, want)
	}
	if got, want := flag.Totals.Quality(), (link.Quality{Bytes: uint64(len(raw)), Good: n - bad, Bad: bad, CRC: bad, Flagged: bad, Stored: n, Gaps: flag.Totals.Quality().Gaps}); got != want {
		t.Errorf("flag\n got %+v\nwant %+v", got, want)
	}
	dq := disc.Totals.Quality()
	if dq.Good != uint64(firstBad) || dq.CRC != 1 || dq.Stored != uint64(firstBad) {
		t.Errorf("disconnect: %+v, want %d good and stored, 1 CRC error", dq, firstBad)
	}
	var wire uint64
	for _, p := range pkts[:firstBad+1] {
		wire += uint64(len(p.bytes))
	}
	if dq.Bytes != wire+dq.Discarded {
		t.Errorf("disconnect: %d bytes read, want the %d of the units plus %d discarded", dq.Bytes, wire, dq.Discarded)
	}

	msgs := e.messages()
	var goodOnly []packet
	for _, p := range pkts {
		if *p.CRCOK {
			goodOnly = append(goodOnly, p)
		}
	}
	check := func(name string, want []packet) {
		t.Helper()
		got := msgs[name]
		if len(got) != len(want) {
			t.Fatalf("%s: %d messages, want %d", name, len(got), len(want))
		}
		for i, m := range got {
			if !bytes.Equal(m.Data(), want[i].bytes) {
				t.Errorf("%s %d: payload differs", name, i)
			}
			mark := ""
			if !*want[i].CRCOK {
				mark = "bad"
			}
			header(t, m, stream.HeaderCRC, mark)
		}
	}
	check("drop", goodOnly)
	check("flag", pkts)
	check("disc", pkts[:firstBad])
}

// equipment is a test TCP server standing in for a modem that serves its
// stream: each accepted connection is handed to the test.
type equipment struct {
	ln    net.Listener
	conns chan net.Conn
	done  chan struct{}
}

func startEquipment(t *testing.T, addr string) *equipment {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	q := &equipment{ln: ln, conns: make(chan net.Conn, 4), done: make(chan struct{})}
	go func() {
		defer close(q.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			q.conns <- c
		}
	}()
	return q
}

// stop closes the listener; the equipment is gone.
func (q *equipment) stop() {
	q.ln.Close()
	<-q.done
}

// TestDialOutReconnects: a dial-out link connects to equipment, stores what
// it serves, retries while the equipment is gone (logging the outage once
// and its end once), reconnects when it comes back, and stops dialing on
// shutdown.
func TestDialOutReconnects(t *testing.T) {
	logs := &syncbuf.Buffer{}
	e := newEnv(t, gatewaytest.Config(), slog.New(slog.NewTextHandler(logs, nil)))
	_, cadus := loadCADUs(t)
	first := startEquipment(t, "127.0.0.1:0")
	addr := first.ln.Addr().String()

	l := frameLink("modem", true)
	l.Backoff = link.Backoff{Min: time.Millisecond, Max: 20 * time.Millisecond, Jitter: 0.2}
	if err := e.gw.DialLink(addr, l); err != nil {
		t.Fatal(err)
	}
	var half []byte
	for _, f := range cadus[:12] {
		half = append(half, f.bytes...)
	}
	c := <-first.conns
	first.stop() // gone: the next dials are refused
	writeChunks(t, c, half, 21)
	c.Close()
	eventually(t, "the first half stored and the link down", func() bool {
		return l.Totals.Quality().Stored == 12 && l.Totals.Connected() == 0
	})
	eventually(t, "the outage logged", func() bool {
		return strings.Contains(logs.String(), "link modem: equipment unreachable; retrying")
	})

	second := startEquipment(t, addr) // back, on the same address
	defer second.stop()
	c = <-second.conns
	var rest []byte
	for _, f := range cadus[12:] {
		rest = append(rest, f.bytes...)
	}
	writeChunks(t, c, rest, 22)
	eventually(t, "the second half stored", func() bool { return l.Totals.Quality().Stored == 24 })
	if l.Totals.Connected() != 1 {
		t.Errorf("connected = %d while the equipment holds the connection", l.Totals.Connected())
	}
	// Shutdown drains the open connection and stops the dialer, although
	// the equipment never closes its side.
	e.shutdown()
	c.Close()
	out := logs.String()
	if n := strings.Count(out, "equipment unreachable; retrying"); n != 1 {
		t.Errorf("outage logged %d times, want once", n)
	}
	if n := strings.Count(out, "link modem: connected again after "); n != 1 {
		t.Errorf("reconnection logged %d times, want once:\n%s", n, out)
	}

	msgs := e.messages()["modem"]
	if len(msgs) != 24 {
		t.Fatalf("%d messages, want 24", len(msgs))
	}
	for i, m := range msgs {
		if !bytes.Equal(m.Data(), cadus[i].bytes) {
			t.Errorf("message %d differs from frame %d", i, i)
		}
		header(t, m, stream.HeaderStation, "modem") // a dial link's identity is its name
		header(t, m, stream.HeaderSeq, strconv.Itoa(i%12+1))
		if want := fmt.Sprintf("telemetry.modem.vc%d", cadus[i].VCID); m.Subject() != want {
			t.Errorf("message %d: subject %s, want %s", i, m.Subject(), want)
		}
	}
	if msgs[0].Headers().Get(stream.HeaderSession) == msgs[12].Headers().Get(stream.HeaderSession) {
		t.Error("the reconnection kept the session id")
	}
}

// TestShutdownDrainsEquipment: on shutdown a link keeps reading until the
// drain deadline, stores what arrived meanwhile, then closes the
// connection; the gateway reports a clean stop only once all of it is in
// the stream.
func TestShutdownDrainsEquipment(t *testing.T) {
	cfg := gatewaytest.Config()
	cfg.DrainTimeout = 500 * time.Millisecond
	e := newEnv(t, cfg, nil)
	_, cadus := loadCADUs(t)
	l := frameLink("xband", false)
	c, err := net.Dial("tcp", e.listen(l))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, f := range cadus[:10] {
		writeChunks(t, c, f.bytes, 31)
	}
	eventually(t, "10 frames read", func() bool { return l.Totals.Quality().Stored == 10 })

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		shut <- e.gw.Shutdown(ctx)
	}()
	eventually(t, "shutdown begun", func() bool { return e.gw.State() != gateway.StateReady })
	for _, f := range cadus[10:] { // during the drain
		writeChunks(t, c, f.bytes, 32)
	}
	eventually(t, "the drain read them", func() bool { return l.Totals.Quality().Stored == 24 })
	// The gateway closes the connection at the drain deadline: the
	// equipment's read ends.
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("equipment read: %v, want EOF", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := len(e.messages()["xband"]); got != 24 {
		t.Errorf("%d frames in the stream after a clean stop, want 24", got)
	}
}
