package stream

// Exactly-once of protocol v2 with real parts (issue 9, section 5): real
// TCP on loopback, real gateways wired as `meridian serve` wires them, a
// real JetStream (embedded, standalone or an R3 cluster), and raw v2
// stations (gatewaytest.V2Station) that keep their unacknowledged frames.
// Each test reads the whole stream back and wants every frame of every
// station stored once per (station, epoch, seq), with its payload.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// eoTimeout bounds each scenario's load; the tests take seconds.
const eoTimeout = 25 * time.Second

// eoGatewayConfig is the gateway for these tests: heartbeats often enough
// that every station answers PONGs during the load.
func eoGatewayConfig() gateway.Config {
	c := gatewaytest.Config()
	c.Heartbeat = 50 * time.Millisecond
	return c
}

// eoGateway starts a gateway on addr feeding st, its resume point read from
// st as `meridian serve` wires it (internal/cli/serve.go).
func eoGateway(t *testing.T, st *Stream, addr string) *gatewaytest.Gateway {
	t.Helper()
	return gatewaytest.StartAt(t, addr, eoGatewayConfig(), st.Sink(),
		gateway.WithResume(func(ctx context.Context, id string) (gateway.Stored, error) {
			s, err := st.LastStored(ctx, id)
			return gateway.Stored(s), err
		}))
}

// eoStations makes n stations named prefix-i, each sending frames of size
// bytes to addr.
func eoStations(prefix string, n int, frames uint64, size int, addr string, mod func(*gatewaytest.V2Config)) []*gatewaytest.V2Station {
	var out []*gatewaytest.V2Station
	for i := range n {
		cfg := gatewaytest.V2Config{
			Name:   fmt.Sprintf("%s-%d", prefix, i+1),
			Frames: frames,
			Size:   size,
			Window: 256,
			Addr:   addr,
		}
		if mod != nil {
			mod(&cfg)
		}
		out = append(out, gatewaytest.NewV2Station(cfg))
	}
	return out
}

// eoRun runs the stations; wait returns their errors once all have ended.
// A test that fails before it waits cancels ctx (its deferred cancel), and
// the stations are waited for before the gateways stop.
func eoRun(t *testing.T, ctx context.Context, stations []*gatewaytest.V2Station) (wait func() []error) {
	errs := make([]error, len(stations))
	var wg sync.WaitGroup
	for i, s := range stations {
		wg.Go(func() { errs[i] = s.Run(ctx) })
	}
	t.Cleanup(wg.Wait)
	return func() []error {
		wg.Wait()
		var out []error
		for _, err := range errs {
			if err != nil {
				out = append(out, err)
			}
		}
		return out
	}
}

// eoFinish waits for the stations and fails the test on any error.
func eoFinish(t *testing.T, wait func() []error) {
	t.Helper()
	for _, err := range wait() {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// eoSettle waits until no sink has a publish waiting for its PubAck, so
// that nothing lands in the stream after it is read back.
func eoSettle(t *testing.T, streams ...*Stream) {
	t.Helper()
	eventually(t, "every publish acknowledged", func() bool {
		for _, st := range streams {
			if st.Sink().Stats().Unacked != 0 {
				return false
			}
		}
		return true
	})
}

// eoCheck reads the whole stream back and wants every frame of every
// station once, intact, with the v2 headers its Msg-Id is made of.
func eoCheck(t *testing.T, js jetstream.JetStream, name string, stations []*gatewaytest.V2Station) gatewaytest.V2Report {
	t.Helper()
	msgs := readAll(t, js, name)
	recs := make([]gatewaytest.V2Record, 0, len(msgs))
	badID := 0
	for _, m := range msgs {
		h := m.Headers()
		epoch, err1 := strconv.ParseUint(h.Get(HeaderEpoch), 10, 64)
		seq, err2 := strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("message %q without v2 headers: %v", m.Subject(), h)
		}
		station := h.Get(HeaderStation)
		if h.Get(HeaderMsgID) != MsgIDv2(station, epoch, seq) || m.Subject() != Subject(station) {
			badID++
		}
		recs = append(recs, gatewaytest.V2Record{Station: station, Epoch: epoch, Seq: seq, Data: m.Data()})
	}
	rep := gatewaytest.CheckV2(stations, recs)
	if !rep.OK() || badID > 0 {
		eoLogDuplicates(t, msgs)
		t.Fatalf("exactly-once broken: %s; %d messages with a wrong Msg-Id or subject", rep, badID)
	}
	return rep
}

// eoLogDuplicates logs every copy of the first few frames stored more than
// once: where each sits in the stream and which session sent it.
func eoLogDuplicates(t *testing.T, msgs []jetstream.Msg) {
	t.Helper()
	byID := map[string][]jetstream.Msg{}
	var order []string
	for _, m := range msgs {
		id := m.Headers().Get(HeaderMsgID)
		if len(byID[id]) == 1 {
			order = append(order, id)
		}
		byID[id] = append(byID[id], m)
	}
	for _, id := range order[:min(len(order), 3)] {
		for _, m := range byID[id] {
			h := m.Headers()
			var seq uint64
			var stored time.Time
			if md, err := m.Metadata(); err == nil {
				seq, stored = md.Sequence.Stream, md.Timestamp
			}
			t.Logf("copy of %s: stream seq %d stored %s, %s %s, %s %s, %s %s", id, seq, stored.UTC().Format(time.RFC3339Nano),
				HeaderSession, h.Get(HeaderSession), HeaderAcked, h.Get(HeaderAcked), HeaderReceived, h.Get(HeaderReceived))
		}
	}
	if len(order) > 0 {
		t.Logf("%d message ids stored more than once", len(order))
	}
}

// eoCut resets st's connection once it has frames in flight (sent, not yet
// acknowledged), and returns the unacknowledged count it saw just before.
func eoCut(t *testing.T, st *gatewaytest.V2Station) uint64 {
	t.Helper()
	var inFlight uint64
	eventually(t, st.Name()+" with frames in flight", func() bool {
		if st.Acked() >= st.Frames() {
			t.Fatalf("%s: its load ended before the cut", st.Name())
		}
		inFlight = st.Sent() - st.Acked()
		return inFlight > 0 && st.Cut()
	})
	return inFlight
}

// TestExactlyOnceReconnect cuts every station's TCP connection twice in the
// middle of its load, with frames in flight each time: the stations
// reconnect, say HELLO from their oldest unacknowledged frame, and resend
// what the WELCOME asks for. The stream holds every frame once.
func TestExactlyOnceReconnect(t *testing.T) {
	cfg := testConfig(t)
	st := openStream(t, cfg)
	gw := eoGateway(t, st, "127.0.0.1:0")
	const frames = 3000
	stations := eoStations("gs-cut", 4, frames, 200, gw.Addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), eoTimeout)
	defer cancel()
	wait := eoRun(t, ctx, stations)

	var cutInFlight uint64
	for _, at := range []uint64{frames / 4, frames / 2} {
		for _, s := range stations {
			if err := s.WaitAcked(ctx, at); err != nil {
				t.Fatal(err)
			}
			cutInFlight += eoCut(t, s)
		}
	}
	eoFinish(t, wait)
	for _, s := range stations {
		if n := s.Sessions(); n < 3 {
			t.Errorf("%s: %d sessions, want at least 3 (two cuts)", s.Name(), n)
		}
	}
	eoSettle(t, st)
	rep := eoCheck(t, st.JetStream(), cfg.Name, stations)
	t.Logf("%s; %d frames in flight at the cuts, %d resends dropped as duplicates; welcomes of %s: %v, %d PONGs",
		rep, cutInFlight, st.Sink().Stats().Duplicates, stations[0].Name(), stations[0].Welcomes(), stations[0].Pongs())
}

// TestExactlyOnceSecondGateway moves stations between two gateways, each
// with its own connection to the same JetStream and so the same stream: to
// the second gateway at a third of the load, back to the first at two
// thirds, each time cutting the old connection with frames in flight. The
// new gateway knows nothing of the station but what the stream holds.
func TestExactlyOnceSecondGateway(t *testing.T) {
	srv := jsServer(t, t.TempDir(), server.RANDOM_PORT)
	open := func() *Stream {
		cfg := testConfig(t)
		cfg.Client.URL = srv.ClientURL()
		return openStream(t, cfg)
	}
	stA, stB := open(), open()
	gwA, gwB := eoGateway(t, stA, "127.0.0.1:0"), eoGateway(t, stB, "127.0.0.1:0")
	const frames = 3000
	stations := eoStations("gs-move", 4, frames, 200, gwA.Addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), eoTimeout)
	defer cancel()
	wait := eoRun(t, ctx, stations)

	var cutInFlight uint64
	for _, step := range []struct {
		at uint64
		to string
	}{{frames / 3, gwB.Addr}, {2 * frames / 3, gwA.Addr}} {
		for _, s := range stations {
			if err := s.WaitAcked(ctx, step.at); err != nil {
				t.Fatal(err)
			}
			s.SetAddr(step.to)
			cutInFlight += eoCut(t, s)
		}
	}
	eoFinish(t, wait)
	// Both gateways really served the stations.
	for _, g := range []*gatewaytest.Gateway{gwA, gwB} {
		if g.Server.Aggregator().Stats().Committed == 0 {
			t.Errorf("gateway %s received no frame", g.Addr)
		}
	}
	eoSettle(t, stA, stB)
	rep := eoCheck(t, stA.JetStream(), DefaultName, stations)
	t.Logf("%s; %d frames in flight at the moves, %d resends dropped as duplicates; welcomes of %s: %v",
		rep, cutInFlight, stA.Sink().Stats().Duplicates+stB.Sink().Stats().Duplicates, stations[0].Name(), stations[0].Welcomes())
}

// TestExactlyOnceMoveFromStalledGateway moves stations away from a gateway
// whose link to JetStream has stalled with their frames in flight: the
// second gateway resumes them from what the stream holds, below what the
// first one has published, and the stations resend the overlap. When the
// first gateway's link comes back, its old publishes land after the resends
// were stored, and JetStream drops them by Nats-Msg-Id.
func TestExactlyOnceMoveFromStalledGateway(t *testing.T) {
	srv := jsServer(t, t.TempDir(), server.RANDOM_PORT)
	proxy := eoStartProxy(t, srv.Addr().String())
	open := func(url string) *Stream {
		cfg := testConfig(t)
		cfg.Client.URL = url
		return openStream(t, cfg)
	}
	stA, stB := open(proxy.url()), open(srv.ClientURL())
	gwA, gwB := eoGateway(t, stA, "127.0.0.1:0"), eoGateway(t, stB, "127.0.0.1:0")
	const frames = 2000
	stations := eoStations("gs-stall", 4, frames, 200, gwA.Addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), eoTimeout)
	defer cancel()
	wait := eoRun(t, ctx, stations)
	for _, s := range stations {
		if err := s.WaitAcked(ctx, frames/4); err != nil {
			t.Fatal(err)
		}
	}
	proxy.pause()
	// The first gateway goes on reading and publishing into the stalled
	// link until the stations' windows are full.
	eventually(t, "frames stuck in the first gateway's publish window", func() bool {
		return stA.Sink().Stats().Unacked >= 256
	})
	stuck := stA.Sink().Stats().Unacked
	for _, s := range stations {
		s.SetAddr(gwB.Addr)
		eoCut(t, s)
	}
	for _, s := range stations {
		if err := s.WaitAcked(ctx, frames/2); err != nil {
			t.Fatal(err)
		}
	}
	proxy.resume()
	eoFinish(t, wait)
	eoSettle(t, stA, stB)
	rep := eoCheck(t, stB.JetStream(), DefaultName, stations)
	// Each frame of the overlap was committed by both gateways and stored
	// once: one of its two publishes was a duplicate JetStream dropped.
	total := int64(len(stations)) * frames
	overlap := int64(gwA.Server.Aggregator().Stats().Committed+gwB.Server.Aggregator().Stats().Committed) - total
	if overlap <= 0 {
		t.Fatalf("no frame committed by both gateways (overlap %d): the overlap was not exercised (%d were stuck in the first)", overlap, stuck)
	}
	dA, dB := stA.Sink().Stats(), stB.Sink().Stats()
	if dups := int64(dA.Duplicates + dB.Duplicates); dups < overlap {
		t.Errorf("the sinks counted %d publishes dropped as duplicates, but %d frames were stored by one gateway and committed by both", dups, overlap)
	}
	t.Logf("%s; %d frames stuck in the first gateway, %d committed by both; duplicates counted %d + %d; welcomes of %s: %v",
		rep, stuck, overlap, dA.Duplicates, dB.Duplicates, stations[0].Name(), stations[0].Welcomes())
}

// eoProxy forwards TCP connections to upstream, and can stall them: while
// paused it forwards nothing either way, as a link that stopped moving.
type eoProxy struct {
	ln       net.Listener
	upstream string
	wg       sync.WaitGroup

	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	closed bool
	conns  []net.Conn
}

func eoStartProxy(t *testing.T, upstream string) *eoProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &eoProxy{ln: ln, upstream: upstream}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *eoProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *eoProxy) pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

func (p *eoProxy) resume() {
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *eoProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed, p.paused = true, false
	p.cond.Broadcast()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *eoProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = u.Close()
			return
		}
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(u, c) })
		p.wg.Go(func() { p.pipe(c, u) })
	}
}

// pipe copies src to dst, holding each chunk while the proxy is paused.
func (p *eoProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.paused {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestExactlyOnceClusterNodeLoss runs a gateway on an R3 stream of a 3-node
// cluster and shuts down the node its NATS connection is on, a follower of
// the stream, in the middle of the load.
func TestExactlyOnceClusterNodeLoss(t *testing.T) { eoClusterLoss(t, false) }

// TestExactlyOnceClusterLeaderLoss is TestExactlyOnceClusterNodeLoss with
// the gateway's node leading the stream: the connection and the leader go
// at once, and the stations' resumes wait for the election.
func TestExactlyOnceClusterLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("the stream's leader election takes JetStream 4-9 s")
	}
	eoClusterLoss(t, true)
}

// eoClusterLoss shuts down the node the gateway's NATS connection is on, the
// stream's leader or a follower as leader says, in the middle of the load:
// frames are waiting for their PubAck at that moment, every station is
// still sending, and two stations are cut right after the loss so that they
// resume while the cluster recovers. All stations finish; the stream holds
// every frame once.
func eoClusterLoss(t *testing.T, leader bool) {
	c := startCluster(t)
	cfg := testConfig(t)
	cfg.Client.URL = strings.Join(c.urls, ",")
	cfg.Replicas = 3
	cfg.PublishTimeout = time.Second
	st := openStream(t, cfg)
	gw := eoGateway(t, st, "127.0.0.1:0")

	node := c.byName(st.nc.ConnectedServerName())
	if node == nil {
		t.Fatalf("the gateway's connection is on %q, not a cluster node", st.nc.ConnectedServerName())
	}
	// Placed before the load: the API may be slow to answer under it.
	want := node.Name()
	if !leader {
		want = ""
	}
	streamLeader := eoPlaceLeader(t, st, want, node.Name())

	const frames = 6000
	stations := eoStations("gs-r3", 4, frames, 256, gw.Addr, func(c *gatewaytest.V2Config) {
		// A resume during the election waits for a stream leader.
		c.RetryFor = 20 * time.Second
		c.DialTimeout = 5 * time.Second
	})
	// The bound is loose: a leader election takes JetStream 4-9 s, more on
	// a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 2*eoTimeout)
	defer cancel()
	wait := eoRun(t, ctx, stations)

	const before = 1000 // frames each station has acknowledged before the loss
	for _, s := range stations {
		if err := s.WaitAcked(ctx, before); err != nil {
			t.Fatal(err)
		}
	}
	var unacked int
	eventually(t, "frames waiting for their PubAck", func() bool {
		unacked = st.Sink().Stats().Unacked
		return unacked > 0
	})
	node.Shutdown()
	var ackedAtLoss, sentAtLoss uint64
	for _, s := range stations {
		a, n := s.Acked(), s.Sent()
		if a >= frames || n >= frames {
			t.Fatalf("%s had sent %d and had %d acknowledged at the loss: its load was over", s.Name(), n, a)
		}
		ackedAtLoss += a
		sentAtLoss += n
	}
	if sentAtLoss <= ackedAtLoss {
		t.Fatalf("no station frame in flight at the loss: %d sent, %d acknowledged", sentAtLoss, ackedAtLoss)
	}
	node.WaitForShutdown()
	for _, s := range stations[:2] {
		eoCut(t, s) // they resume from the stream while it recovers
	}
	eoFinish(t, wait)
	for _, s := range stations[:2] {
		if s.Sessions() < 2 {
			t.Errorf("%s: %d sessions after its cut", s.Name(), s.Sessions())
		}
	}
	total := uint64(len(stations)) * frames
	if total-ackedAtLoss < uint64(len(stations))*before {
		t.Fatalf("only %d of %d frames were acknowledged after the loss", total-ackedAtLoss, total)
	}
	if got := st.nc.ConnectedServerName(); got == node.Name() {
		t.Fatalf("the gateway is still connected to %s", got)
	}
	eoSettle(t, st)
	for _, s := range stations {
		t.Logf("%s: %d connections, WELCOMEs %v, CLOSEs %v", s.Name(), s.Attempts(), s.Welcomes(), s.Closes())
	}
	rep := eoCheck(t, st.JetStream(), cfg.Name, stations)
	sk := st.Sink().Stats()
	t.Logf("%s; lost node %s (stream leader before the load %s); at the loss: %d awaiting PubAck at the sink, %d sent and %d acknowledged by the stations; sink: %d resent, %d duplicates dropped, %d outages; stations' CLOSEs %v; welcomes of %s: %v, %d PONGs",
		rep, node.Name(), streamLeader, unacked, sentAtLoss, ackedAtLoss, sk.Resent, sk.Duplicates, sk.Outages,
		eoCloses(stations), stations[0].Name(), stations[0].Welcomes(), stations[0].Pongs())
}

// eoCloses counts the CLOSE reasons the stations received.
func eoCloses(stations []*gatewaytest.V2Station) map[string]int {
	m := map[string]int{}
	for _, s := range stations {
		for _, r := range s.Closes() {
			m[r.String()]++
		}
	}
	return m
}

// eoPlaceLeader makes want the stream's leader, or, with want empty, any
// node but avoid; it returns the leader's name.
func eoPlaceLeader(t *testing.T, st *Stream, want, avoid string) string {
	t.Helper()
	var leader string
	eventually(t, "the stream leader placed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		info, err := st.JetStream().Stream(ctx, st.Name())
		if err != nil || info.CachedInfo().Cluster == nil || info.CachedInfo().Cluster.Leader == "" {
			return false
		}
		leader = info.CachedInfo().Cluster.Leader
		if (want != "" && leader == want) || (want == "" && leader != avoid) {
			return true
		}
		body := []byte(`{}`)
		if want != "" {
			body = fmt.Appendf(nil, `{"placement":{"preferred":%q}}`, want)
		}
		// A step-down already under way answers with an error; the next
		// round looks again.
		_, _ = st.nc.RequestWithContext(ctx, "$JS.API.STREAM.LEADER.STEPDOWN."+st.Name(), body)
		return false
	})
	return leader
}
