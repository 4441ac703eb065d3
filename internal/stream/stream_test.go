package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestToken(t *testing.T) {
	f := func(identity, want string) {
		t.Helper()
		if got := Token(identity); got != want {
			t.Errorf("Token(%q) = %q, want %q", identity, got, want)
		}
		if got := Token(Token(identity)); got != want {
			t.Errorf("Token is not idempotent on %q: %q", identity, got)
		}
	}
	f("127.0.0.1", "127-0-0-1")
	f("fd00::1", "fd00--1")
	f("gs-eu-1.example.net", "gs-eu-1-example-net")
	f("GS_7", "GS_7")
	f("a*b>c d", "a-b-c-d")
	f("", "-")
	f("bücher", "b--cher") // each byte of a multi-byte rune
	if got := Subject("10.0.0.7"); got != "telemetry.10-0-0-7" {
		t.Errorf("Subject = %q", got)
	}
}

func TestTokenFile(t *testing.T) {
	cfg := testConfig(t)
	st := openStream(t, cfg)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	path := TokenFile(cfg.DataDir)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %s, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if !regexp.MustCompile(`^[0-9a-f]{64}\n$`).Match(raw) {
		t.Errorf("token file holds %q, want 64 hex digits and a newline", raw)
	}
	tok, err := ReadToken(cfg.DataDir)
	if err != nil || tok != strings.TrimSpace(string(raw)) {
		t.Fatalf("ReadToken = %q, %v", tok, err)
	}

	// A restart reuses the token, and tightens a loosened mode.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	st = openStream(t, cfg)
	_ = st.Close()
	if tok2, _ := ReadToken(cfg.DataDir); tok2 != tok {
		t.Errorf("token changed across restarts: %q → %q", tok, tok2)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %s after restart, want 0600", fi.Mode().Perm())
	}
	if _, err := ReadToken(t.TempDir()); !errors.Is(err, ErrNoToken) {
		t.Errorf("ReadToken of an empty dir: %v, want ErrNoToken", err)
	}
}

func TestEmbeddedListenerNeedsToken(t *testing.T) {
	cfg := testConfig(t)
	cfg.Listen = "127.0.0.1:0"
	st := openStream(t, cfg)
	url := st.ClientURL()
	if url == "" {
		t.Fatal("no client URL")
	}
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("connected without the token")
	}
	tok, err := ReadToken(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := Client{URL: url, Token: tok}.Connect()
	if err != nil {
		t.Fatalf("connect with the token: %v", err)
	}
	nc.Close()
}

func TestBusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cfg := testConfig(t)
	cfg.Listen = l.Addr().String()
	st, err := Open(context.Background(), cfg, testLogger(t))
	if err == nil {
		st.Close()
		t.Fatal("Open on a busy port succeeded")
	}
	if !errors.Is(err, ErrListen) || !strings.Contains(err.Error(), "--nats-listen") || !strings.Contains(err.Error(), cfg.Listen) {
		t.Errorf("error %q should wrap ErrListen and name --nats-listen and the address", err)
	}
}

func TestSinkEndToEnd(t *testing.T) {
	cfg := testConfig(t)
	st := openStream(t, cfg)
	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 256)
	ctx := context.Background()

	stations := []*feeder{newFeeder("127.0.0.1", 1, rec), newFeeder("fd00::1", 2, rec), newFeeder("gs-eu-1.example.net", 3, rec)}
	const per = 300
	for _, f := range stations {
		if err := f.feed(ctx, agg, per); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all frames committed", func() bool { return rec.count() == per*len(stations) })
	if err := st.Sink().Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Sink().Check(); err != nil {
		t.Errorf("Check: %v", err)
	}

	msgs := readAll(t, st.JetStream(), cfg.Name)
	if len(msgs) != per*len(stations) {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), per*len(stations))
	}
	byStation := map[string]*feeder{}
	for _, f := range stations {
		byStation[f.station] = f
	}
	nextSeq := map[string]uint64{}
	for _, m := range msgs {
		h := m.Headers()
		station := h.Get(HeaderStation)
		f := byStation[station]
		if f == nil {
			t.Fatalf("message with unknown station %q", station)
		}
		seq, _ := strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
		nextSeq[station]++
		if seq != nextSeq[station] {
			t.Errorf("%s: seq %d, want %d (order within a session)", station, seq, nextSeq[station])
		}
		if m.Subject() != "telemetry."+Token(station) {
			t.Errorf("subject %q for station %q", m.Subject(), station)
		}
		if h.Get(HeaderSession) != f.session {
			t.Errorf("session header %q, want %q", h.Get(HeaderSession), f.session)
		}
		wantRecv := f.base.Add(time.Duration(seq) * time.Millisecond).Format(time.RFC3339Nano)
		if h.Get(HeaderReceived) != wantRecv {
			t.Errorf("received header %q, want %q", h.Get(HeaderReceived), wantRecv)
		}
		if h.Get(HeaderMsgID) != MsgID(st.Sink().BootID(), f.session, seq) {
			t.Errorf("msg id %q", h.Get(HeaderMsgID))
		}
		if !bytes.Equal(m.Data(), payload(station, seq, f.size)) {
			t.Errorf("%s seq %d: payload differs", station, seq)
		}
	}
}

// TestAckAfterPersistence shows that a frame is committed only once the
// stream stored it: while the (external) server is down nothing commits and
// Write holds back; after it comes back every frame commits, and every
// committed frame is in the stream, none lost.
func TestAckAfterPersistence(t *testing.T) {
	storeDir := t.TempDir()
	srv := jsServer(t, storeDir, server.RANDOM_PORT)
	port := srv.Addr().(*net.TCPAddr).Port

	cfg := testConfig(t)
	cfg.Client.URL = srv.ClientURL()
	cfg.PublishTimeout = 500 * time.Millisecond
	cfg.PublishWindow = 64
	st := openStream(t, cfg)
	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 128)
	ctx := context.Background()
	f := newFeeder("10.1.2.3", 1, rec)

	if err := f.feed(ctx, agg, 200); err != nil {
		t.Fatal(err)
	}
	eventually(t, "first frames committed", func() bool { return rec.count() == 200 })

	srv.Shutdown()
	srv.WaitForShutdown()
	// No PubAck can arrive from here on, so the count must not move.
	before := rec.count()
	feedDone := make(chan error, 1)
	go func() { feedDone <- f.feed(ctx, agg, 1000) }()
	eventually(t, "sink reports the outage", func() bool { return errors.Is(st.Sink().Check(), ErrUnavailable) })
	// The queue (128) plus the window (64) are far below 1000: the feeder
	// must be held back by back-pressure.
	eventually(t, "queue full", func() bool { return agg.Stats().BlockedFor > 0 })
	select {
	case err := <-feedDone:
		t.Fatalf("feeder finished during the outage (err %v): no back-pressure", err)
	default:
	}
	if got := rec.count(); got != before {
		t.Fatalf("%d frames committed while the server was down", got-before)
	}

	srv2 := jsServer(t, storeDir, port)
	_ = srv2
	if err := <-feedDone; err != nil {
		t.Fatal(err)
	}
	eventually(t, "all frames committed after recovery", func() bool { return rec.count() == 1200 })
	eventually(t, "sink healthy", func() bool { return st.Sink().Check() == nil })
	if ss := st.Sink().Stats(); ss.Outages == 0 || ss.Down || ss.Unacked != 0 {
		t.Errorf("stats after one outage: %+v", ss)
	}
	if err := st.Sink().Flush(ctx); err != nil {
		t.Fatal(err)
	}

	msgs := readAll(t, st.JetStream(), cfg.Name)
	stored := map[uint64]int{}
	for _, m := range msgs {
		seq, _ := strconv.ParseUint(m.Headers().Get(HeaderSeq), 10, 64)
		stored[seq]++
	}
	for seq := uint64(1); seq <= 1200; seq++ {
		if stored[seq] == 0 {
			t.Errorf("committed frame %d is not in the stream", seq)
		}
		if stored[seq] > 1 {
			t.Errorf("frame %d stored %d times despite Nats-Msg-Id", seq, stored[seq])
		}
	}
}

func TestExternalCredentials(t *testing.T) {
	srv := jsServer(t, t.TempDir(), server.RANDOM_PORT, func(o *server.Options) {
		o.Username, o.Password = "meridian", "s3cret"
	})
	cfg := testConfig(t)
	cfg.Client.URL = srv.ClientURL()
	cfg.Client.User, cfg.Client.Password = "meridian", "wrong"
	if st, err := Open(context.Background(), cfg, testLogger(t)); err == nil {
		st.Close()
		t.Fatal("Open with a wrong password succeeded")
	}
	cfg.Client.Password = "s3cret"
	st := openStream(t, cfg)
	info, err := st.JetStream().Stream(context.Background(), cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	// External: no byte limit unless asked for.
	if mb := info.CachedInfo().Config.MaxBytes; mb != -1 {
		t.Errorf("external stream MaxBytes %d, want -1", mb)
	}
}

// TestStreamDeleted covers the "no responders" outage: with the stream gone,
// frames wait; once it is back they are stored and committed.
func TestStreamDeleted(t *testing.T) {
	cfg := testConfig(t)
	cfg.PublishWindow = 32
	st := openStream(t, cfg)
	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 64)
	ctx := context.Background()
	if err := st.JetStream().DeleteStream(ctx, cfg.Name); err != nil {
		t.Fatal(err)
	}
	f := newFeeder("192.0.2.1", 1, rec)
	feedDone := make(chan error, 1)
	go func() { feedDone <- f.feed(ctx, agg, 500) }()
	eventually(t, "sink reports no responders", func() bool {
		err := st.Sink().Check()
		return errors.Is(err, ErrUnavailable) && errors.Is(err, ErrNoResponders)
	})
	if n := rec.count(); n != 0 {
		t.Fatalf("%d frames committed without a stream", n)
	}
	if err := ensureStream(ctx, st.JetStream(), jsConfig(cfg.withDefaults()), time.Second, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-feedDone; err != nil {
		t.Fatal(err)
	}
	eventually(t, "all frames committed", func() bool { return rec.count() == 500 })
	if n := len(readAll(t, st.JetStream(), cfg.Name)); n != 500 {
		t.Errorf("stream holds %d messages, want 500", n)
	}
}

// TestClusterNodeLoss publishes into an R3 stream on a 3-node cluster and
// shuts down the stream leader under load: the stations keep sending from
// before the loss until well after it, frames are in flight at the moment
// of the loss, and every committed frame is in the stream afterwards.
func TestClusterNodeLoss(t *testing.T) {
	c := startCluster(t)
	cfg := testConfig(t)
	cfg.Client.URL = strings.Join(c.urls, ",")
	cfg.Replicas = 3
	cfg.PublishTimeout = time.Second
	st := openStream(t, cfg)
	rec := newRecorder()
	agg := runAggregator(t, st.Sink(), 512)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The leader is looked up before the load: the API may be slow to
	// answer under it.
	var leader *server.Server
	eventually(t, "the stream leader's name", func() bool {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		info, err := st.JetStream().Stream(actx, cfg.Name)
		if err == nil && info.CachedInfo().Cluster != nil {
			leader = c.byName(info.CachedInfo().Cluster.Leader)
		}
		return leader != nil
	})

	// Each station sends until stop is closed.
	const stations, chunk = 4, 64
	var fed atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, stations)
	for i := range stations {
		f := newFeeder(fmt.Sprintf("10.0.0.%d", i+1), i+1, rec)
		f.size = 512
		go func() {
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				if err := f.feed(ctx, agg, chunk); err != nil {
					errs <- err
					return
				}
				fed.Add(chunk)
			}
		}()
	}
	const share = 2000 // frames committed before the loss, and after it
	eventually(t, "load under way", func() bool { return rec.count() >= share })
	var inFlight int
	eventually(t, "frames waiting for their PubAck", func() bool {
		inFlight = st.Sink().Stats().Unacked
		return inFlight > 0
	})
	leader.Shutdown()
	atShutdown, fedAtShutdown := rec.count(), fed.Load()
	if int64(atShutdown) >= fedAtShutdown {
		t.Fatalf("nothing outstanding at the leader loss: %d committed of %d queued", atShutdown, fedAtShutdown)
	}
	leader.WaitForShutdown()
	// The load goes on through the election, until the new leader has
	// stored a good share more.
	eventually(t, "frames committed after the leader loss", func() bool { return rec.count() >= atShutdown+share })
	close(stop)
	for range stations {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	total := int(fed.Load())
	eventually(t, "all frames committed", func() bool { return rec.count() == total })

	msgs := readAll(t, st.JetStream(), cfg.Name)
	stored := map[frameKey]bool{}
	for _, m := range msgs {
		seq, _ := strconv.ParseUint(m.Headers().Get(HeaderSeq), 10, 64)
		stored[frameKey{m.Headers().Get(HeaderSession), seq}] = true
	}
	lost := 0
	for k := range rec.snapshot() {
		if !stored[k] {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d committed frames are missing from the stream", lost)
	}
	t.Logf("%d frames committed; at the leader loss %d committed, %d queued, %d awaiting PubAck; %d messages stored (duplicates %d)",
		total, atShutdown, fedAtShutdown, inFlight, len(msgs), len(msgs)-len(stored))
}

func TestStreamConflict(t *testing.T) {
	cfg := testConfig(t)
	st := openStream(t, cfg)
	_ = st.Close()

	cfg2 := cfg
	cfg2.MaxAge = 24 * time.Hour
	cfg2.DedupWindow = time.Minute
	_, err := Open(context.Background(), cfg2, testLogger(t))
	if !errors.Is(err, ErrStreamConflict) {
		t.Fatalf("Open with other retention: %v, want ErrStreamConflict", err)
	}
	for _, want := range []string{"--retention-max-age", "7d", "1d", "--dedup-window", "10s", "1m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "max bytes") {
		t.Errorf("error %q names a setting that did not change", err)
	}

	// The stream was not changed: the first configuration still fits.
	st = openStream(t, cfg)
	_ = st.Close()
}

func TestCompareStream(t *testing.T) {
	base := jsConfig(Config{Client: Client{URL: "nats://example:4222"}}.withDefaults())
	f := func(mod func(*jetstream.StreamConfig), wantFlag string) {
		t.Helper()
		have := base
		mod(&have)
		err := compareStream(have, base)
		if wantFlag == "" {
			if err != nil {
				t.Errorf("unexpected conflict: %v", err)
			}
			return
		}
		if !errors.Is(err, ErrStreamConflict) || !strings.Contains(err.Error(), wantFlag) {
			t.Errorf("error %v, want a conflict naming %q", err, wantFlag)
		}
	}
	f(func(c *jetstream.StreamConfig) {}, "")
	f(func(c *jetstream.StreamConfig) { c.MaxBytes = 0 }, "") // 0 and -1 both mean no limit
	f(func(c *jetstream.StreamConfig) { c.Description = "edited" }, "")
	f(func(c *jetstream.StreamConfig) { c.Replicas = 3 }, "--stream-replicas")
	f(func(c *jetstream.StreamConfig) { c.MaxBytes = 1 << 30 }, "--retention-max-bytes")
	f(func(c *jetstream.StreamConfig) { c.Subjects = []string{"other.>"} }, "subjects")
	f(func(c *jetstream.StreamConfig) { c.Discard = jetstream.DiscardNew }, "discard policy")
	f(func(c *jetstream.StreamConfig) { c.Storage = jetstream.MemoryStorage }, "storage")
	f(func(c *jetstream.StreamConfig) { c.Retention = jetstream.WorkQueuePolicy }, "retention policy")
	f(func(c *jetstream.StreamConfig) { c.MaxMsgs = 10 }, "max messages")
}

func TestStreamConfigMaxBytes(t *testing.T) {
	embedded := Config{}.withDefaults()
	if got := jsConfig(embedded).MaxBytes; got != embedded.StoreMaxBytes {
		t.Errorf("embedded default max bytes %d, want the store limit", got)
	}
	external := Config{Client: Client{URL: "nats://example:4222"}}.withDefaults()
	if got := jsConfig(external).MaxBytes; got != -1 {
		t.Errorf("external default max bytes %d, want -1", got)
	}
	external.MaxBytes = 1 << 30
	if got := jsConfig(external).MaxBytes; got != 1<<30 {
		t.Errorf("explicit max bytes %d", got)
	}
}

// readAll returns every message of the stream, in order. It retries while
// the JetStream API is unavailable, as it is briefly after a node was lost.
func readAll(t testing.TB, js jetstream.JetStream, name string) []jetstream.Msg {
	t.Helper()
	var out []jetstream.Msg
	var last error
	deadline := time.Now().Add(waitTimeout)
	retry := time.NewTicker(50 * time.Millisecond)
	defer retry.Stop()
	for time.Now().Before(deadline) {
		if out, last = tryReadAll(js, name); last == nil {
			return out
		}
		<-retry.C
	}
	t.Fatalf("reading stream %s: %v", name, last)
	return nil
}

func tryReadAll(js jetstream.JetStream, name string) ([]jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil, err
	}
	n := int(s.CachedInfo().State.Msgs)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{InactiveThreshold: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := cons.Fetch(min(n-len(out), 1000), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if err := batch.Error(); err != nil {
			return nil, err
		}
		if got == 0 {
			return nil, fmt.Errorf("fetch returned nothing after %d of %d messages", len(out), n)
		}
	}
	return out, nil
}
