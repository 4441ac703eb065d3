package stream

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout is deliberately generous: tests wait for conditions, never for
// a fixed time, so a slow CI box costs only time, not flakes.
const waitTimeout = 30 * time.Second

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is an embedded configuration with its own data dir, no client
// listener and a store small enough for tests.
func testConfig(t testing.TB) Config {
	return Config{
		Name:           DefaultName,
		DataDir:        t.TempDir(),
		StoreMaxBytes:  256 << 20,
		PublishWindow:  1024,
		PublishTimeout: 2 * time.Second,
	}
}

func openStream(t testing.TB, cfg Config) *Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	st, err := Open(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// frameKey names one frame.
type frameKey struct {
	session string
	seq     uint64
}

// recorder is a pipeline.Owner that remembers every committed frame.
type recorder struct {
	mu        sync.Mutex
	committed map[frameKey]bool
	n         int
}

func newRecorder() *recorder { return &recorder{committed: make(map[frameKey]bool)} }

func (r *recorder) Committed(b *pipeline.Batch) {
	r.mu.Lock()
	for _, f := range b.Frames {
		k := frameKey{f.Session, f.Seq}
		if r.committed[k] {
			panic(fmt.Sprintf("frame %v committed twice", k))
		}
		r.committed[k] = true
		r.n++
	}
	r.mu.Unlock()
	// Released at once, as a session does: the race detector then catches
	// a sink that touches a batch after committing it.
	b.Release()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *recorder) snapshot() map[frameKey]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[frameKey]bool, len(r.committed))
	for k := range r.committed {
		m[k] = true
	}
	return m
}

// runAggregator runs an aggregator feeding sink until the test ends.
func runAggregator(t testing.TB, sink pipeline.Sink, limit int) *pipeline.Aggregator {
	t.Helper()
	agg := pipeline.New(sink, limit)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	t.Cleanup(func() {
		agg.Close()
		// Give a graceful drain a chance; a test that left the stream down
		// gets a forced stop.
		select {
		case <-done:
		case <-time.After(waitTimeout):
			cancel()
			<-done
		}
		cancel()
	})
	return agg
}

// payload is the deterministic payload of (station, seq), size bytes long.
func payload(station string, seq uint64, size int) []byte {
	p := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(p, seq)
	for i := 8; i < len(p); i++ {
		p[i] = station[i%len(station)]
	}
	return p
}

// feeder puts frames of one session into an aggregator.
type feeder struct {
	station, session string
	next             uint64
	size             int
	per              int // frames per batch
	owner            pipeline.Owner
	base             time.Time
}

func newFeeder(station string, n int, owner pipeline.Owner) *feeder {
	return &feeder{
		station: station,
		session: fmt.Sprintf("gs-%d@%s", n, net.JoinHostPort(station, "40000")),
		next:    1, size: 64, per: 16, owner: owner,
		base: time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC),
	}
}

// feed puts n frames, in batches of f.per.
func (f *feeder) feed(ctx context.Context, agg *pipeline.Aggregator, n int) error {
	for n > 0 {
		b := pipeline.NewBatch(f.owner, f.per*max(f.size, 8))
		for k := 0; k < f.per && n > 0; k++ {
			b.Add(pipeline.Frame{
				Station:  f.station,
				Session:  f.session,
				Seq:      f.next,
				Received: f.base.Add(time.Duration(f.next) * time.Millisecond),
				Payload:  payload(f.station, f.next, f.size),
			})
			f.next++
			n--
		}
		if err := agg.Put(ctx, b); err != nil {
			b.Release()
			return err
		}
	}
	return nil
}

// jsServer starts a standalone JetStream server with a client listener.
func jsServer(t testing.TB, storeDir string, port int, mods ...func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{
		ServerName: "ext",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
		NoLog:      true,
	}
	for _, mod := range mods {
		mod(opts)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(waitTimeout) {
		srv.Shutdown()
		t.Fatalf("nats server not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv
}

// freePorts reserves n loopback ports. A port can be taken by someone else
// before the server binds it; the tests accept that small risk because a
// cluster's routes must name its peers' ports up front.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return ports
}

// cluster is three JetStream servers on loopback.
type cluster struct {
	servers []*server.Server
	urls    []string
}

func startCluster(t testing.TB) *cluster {
	t.Helper()
	ports := freePorts(t, 3)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	c := &cluster{}
	for i, p := range ports {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   filepath.Join(t.TempDir(), fmt.Sprintf("n%d", i+1)),
			NoSigs:     true,
			NoLog:      true,
			Cluster:    server.ClusterOpts{Name: "meridian-test", Host: "127.0.0.1", Port: p},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		srv, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("nats server: %v", err)
		}
		srv.Start()
		c.servers = append(c.servers, srv)
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	}
	for _, srv := range c.servers {
		if !srv.ReadyForConnections(waitTimeout) {
			t.Fatalf("%s not ready", srv.Name())
		}
		c.urls = append(c.urls, srv.ClientURL())
	}
	eventually(t, "a JetStream meta leader", func() bool {
		leaders := 0
		for _, srv := range c.servers {
			if !srv.JetStreamIsCurrent() {
				return false
			}
			if srv.JetStreamIsLeader() {
				leaders++
			}
		}
		return leaders == 1
	})
	// A meta leader is not enough: placement also needs every peer seen as
	// online. An R3 probe stream proves the cluster can place ours.
	nc, err := Client{URL: strings.Join(c.urls, ",")}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "an R3 stream can be placed", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe"}, Replicas: 3})
		return err == nil && js.DeleteStream(ctx, "PROBE") == nil
	})
	return c
}

func (c *cluster) byName(name string) *server.Server {
	for _, srv := range c.servers {
		if srv.Name() == name {
			return srv
		}
	}
	return nil
}
