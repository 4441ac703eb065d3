package station_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
	"github.com/meridian-telemetry/meridian/station"
)

// These tests run a client with a spool against the real gateway writing
// to a real embedded JetStream: the stream is the judge of what arrived.

// freeAddr returns a loopback address nothing listens on, for a gateway
// that starts later (a backhaul outage).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// fastSpool syncs often, so that tests need not wait for the default
// interval.
var fastSpool = station.SpoolOptions{Sync: 2 * time.Millisecond}

// spoolClient dials addr with the spool in dir; the client survives an
// unreachable gateway, which these tests start and stop.
func spoolClient(t *testing.T, addr, dir string, o station.SpoolOptions, opts ...station.Option) *station.Client {
	t.Helper()
	opts = append([]station.Option{fastReconnect, station.WithName("gs-spool"), station.WithSpool(dir, o)}, opts...)
	return dial(t, addr, opts...)
}

// crash ends a client as a crash would for what it has in flight: Close
// gives up at once, and the frames not acknowledged stay in the spool.
func crash(t *testing.T, c *station.Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := c.Close(ctx)
	if c.Acked() < c.Sent() && (err == nil || !strings.Contains(err.Error(), "stay in the spool")) {
		t.Fatalf("Close with %d unacknowledged = %v, want them said to stay in the spool", c.Sent()-c.Acked(), err)
	}
}

// spoolOffline spools frames 0..n-1 into dir with a client of addr, where
// no gateway listens yet, and ends the client as a crash would.
func spoolOffline(t *testing.T, addr, dir string, n int) {
	t.Helper()
	ctx := testCtx(t)
	a := spoolClient(t, addr, dir, fastSpool)
	for i := range n {
		if err := a.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	crash(t, a)
}

// resumeAndSendOne opens the spool in dir again with a client of addr:
// its numbering must go on after frame n, everything up to n is done
// (stored, or reported lost); it sends frame n+1 (payloadN(n)) and closes.
func resumeAndSendOne(t *testing.T, addr, dir string, n uint64) *station.Client {
	t.Helper()
	ctx := testCtx(t)
	c := spoolClient(t, addr, dir, fastSpool)
	if c.Sent() != n {
		t.Fatalf("reopened: sent %d, want %d", c.Sent(), n)
	}
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, payloadN(int(n))); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkStream asserts that the stream holds frames 1..n of the epoch
// exactly once and in order, except those in missing, and returns the
// messages.
func checkStream(t *testing.T, msgs []storedMsg, epoch uint64, n int, missing map[uint64]bool) {
	t.Helper()
	want := uint64(1)
	for _, m := range msgs {
		for missing[want] {
			want++
		}
		if m.epoch != epoch || m.seq != want || m.station != "gs-spool" {
			t.Fatalf("message station %q epoch %d seq %d, want gs-spool epoch %d seq %d", m.station, m.epoch, m.seq, epoch, want)
		}
		if !bytes.Equal(m.payload, payloadN(int(m.seq-1))) {
			t.Fatalf("seq %d holds %q", m.seq, m.payload)
		}
		want++
	}
	for missing[want] {
		want++
	}
	if want != uint64(n+1) {
		t.Fatalf("the stream ends before frame %d of %d", want, n)
	}
}

// TestSpoolOutageExactlyOnce: the gateway is unreachable when the station
// starts and stays away while the station produces fifty times its window;
// Send does not block. When the gateway comes, everything arrives, once.
func TestSpoolOutageExactlyOnce(t *testing.T) {
	st := openStream(t)
	addr := freeAddr(t)
	const window, n = 16, 800
	c := spoolClient(t, addr, t.TempDir(), fastSpool, station.WithWindow(window))
	ctx := testCtx(t)
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if c.Acked() != 0 || c.Sent() != n {
		t.Fatalf("sent %d acked %d before the gateway exists", c.Sent(), c.Acked())
	}
	streamGateway(t, st, addr)
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	checkStream(t, readStream(t, st), c.Epoch(), n, nil)
}

// TestSpoolRestartResumes: a client stops with frames in flight and
// unacknowledged (some stored, some not); a second client on the spool has
// the first one's epoch and numbering, sends what the stream lacks, and
// goes on numbering its own frames after them.
func TestSpoolRestartResumes(t *testing.T) {
	st := openStream(t)
	gw := streamGateway(t, st, "127.0.0.1:0")
	dir := t.TempDir()
	ctx := testCtx(t)
	a := spoolClient(t, gw.Addr, dir, fastSpool, station.WithWindow(64))
	const first, n = 3000, 6000
	for i := range first {
		if err := a.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.WaitAcked(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	epoch := a.Epoch()
	crash(t, a)
	if a.Acked() == first {
		t.Fatal("everything was acknowledged before the crash: the test proves nothing")
	}

	b := spoolClient(t, gw.Addr, dir, fastSpool, station.WithWindow(64))
	if b.Epoch() != epoch || b.Sent() != first {
		t.Fatalf("reopened spool: epoch %d sent %d, want epoch %d sent %d", b.Epoch(), b.Sent(), epoch, first)
	}
	for i := first; i < n; i++ {
		if err := b.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	checkStream(t, readStream(t, st), epoch, n, nil)
	// Reopened once more, the spool has nothing the stream lacks (the
	// WELCOME says so), and the numbering goes on after it.
	resumeAndSendOne(t, gw.Addr, dir, n)
	checkStream(t, readStream(t, st), epoch, n+1, nil)
}

// TestSpoolDamagedRecordNeverSent: a byte of a frame in the middle of the
// spool flips on disk. The frame is reported and never sent; every other
// frame arrives; the stream marks the gap on the frame after it.
func TestSpoolDamagedRecordNeverSent(t *testing.T) {
	st := openStream(t)
	addr := freeAddr(t)
	dir := t.TempDir()
	ctx := testCtx(t)
	const n = 300
	spoolOffline(t, addr, dir, n)
	flipIn(t, dir, payloadN(149)) // frame 150

	var logs syncbuf.Buffer
	b := spoolClient(t, addr, dir, fastSpool, station.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	streamGateway(t, st, addr)
	if err := b.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := readStream(t, st)
	checkStream(t, msgs, b.Epoch(), n, map[uint64]bool{150: true})
	if msgs[149].seq != 151 || msgs[149].gap != 1 {
		t.Fatalf("frame after the damaged one: seq %d gap %d, want 151 with Meridian-Gap 1", msgs[149].seq, msgs[149].gap)
	}
	if st := b.Stats(); st.Damaged != 1 {
		t.Fatalf("Damaged = %d, want 1", st.Damaged)
	}
	if !strings.Contains(logs.String(), "damaged") {
		t.Fatalf("the damage is not logged:\n%s", logs.String())
	}
}

// flipIn flips a byte in the middle of the one spool record holding
// payload.
func flipIn(t *testing.T, dir string, payload []byte) {
	t.Helper()
	name, b, at := segmentHolding(t, dir, payload)
	b[at+len(payload)/2] ^= 0x40
	if err := os.WriteFile(name, b, 0o640); err != nil {
		t.Fatal(err)
	}
}

// tearLast cuts the spool segment holding payload in the middle of it, as
// a power failure during its writeback would.
func tearLast(t *testing.T, dir string, payload []byte) {
	t.Helper()
	name, _, at := segmentHolding(t, dir, payload)
	if err := os.Truncate(name, int64(at+len(payload)/2)); err != nil {
		t.Fatal(err)
	}
}

// segmentHolding finds the spool segment holding payload: its name, its
// bytes and where payload is in them.
func segmentHolding(t *testing.T, dir string, payload []byte) (name string, b []byte, at int) {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range segs {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if i := bytes.Index(b, payload); i >= 0 {
			return name, b, i
		}
	}
	t.Fatalf("no spool segment holds %q", payload)
	return "", nil, 0
}

// TestSpoolDropOldest: the backhaul goes down, the spool is tiny and its
// policy drop-oldest. Send never blocks; the oldest spool files go, with
// the unacknowledged frames in them, counted. When the gateway is back, the
// stream holds the rest in order, and every frame missing lies in a gap
// marked on the frame after it (frames in flight when the link went were
// kept in memory and may have been sent after all).
func TestSpoolDropOldest(t *testing.T) {
	st := openStream(t)
	addr := freeAddr(t)
	ctx := testCtx(t)
	gw := streamGateway(t, st, addr)
	o := station.SpoolOptions{Sync: 2 * time.Millisecond, MaxBytes: 64 << 10, SegmentBytes: 8 << 10, Full: station.SpoolDropOldest}
	c := spoolClient(t, addr, t.TempDir(), o)
	const before, n = 100, 3000
	for i := range before {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitAcked(ctx, before); err != nil {
		t.Fatal(err)
	}
	gw.Server.Close() // the backhaul goes down
	for i := before; i < n; i++ {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	dropped := c.Stats().Dropped
	if dropped == 0 {
		t.Fatalf("nothing dropped: stats %+v", c.Stats())
	}
	streamGateway(t, st, addr)
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var recs []gapRec
	for _, m := range readStream(t, st) {
		if m.station != "gs-spool" || m.epoch != c.Epoch() {
			t.Fatalf("message of station %q epoch %d", m.station, m.epoch)
		}
		recs = append(recs, gapRec{m.seq, m.gap, m.payload})
	}
	checkGaps(t, recs, n, dropped)
}

// gapRec is a stored frame as checkGaps sees it.
type gapRec struct {
	seq, gap uint64
	payload  []byte
}

// checkGaps asserts that recs hold frames of 1..n in order, each once and
// with its payload, the last one n, and that every run of missing frames
// is told by the Meridian-Gap of the frame after it, the runs adding up to
// something and to at most dropped.
func checkGaps(t *testing.T, recs []gapRec, n, dropped uint64) {
	t.Helper()
	prev, gaps := uint64(0), uint64(0)
	for _, r := range recs {
		if r.seq <= prev {
			t.Fatalf("seq %d after %d: stored twice or out of order", r.seq, prev)
		}
		if missing := r.seq - prev - 1; missing != r.gap {
			t.Fatalf("seq %d after %d: %d frames missing, Meridian-Gap says %d", r.seq, prev, missing, r.gap)
		}
		if !bytes.Equal(r.payload, payloadN(int(r.seq-1))) {
			t.Fatalf("seq %d holds %q", r.seq, r.payload)
		}
		gaps += r.gap
		prev = r.seq
	}
	if prev != n || gaps == 0 || gaps > dropped {
		t.Fatalf("last stored %d of %d; gaps %d, dropped %d: want gaps, within what was dropped", prev, n, gaps, dropped)
	}
	t.Logf("dropped %d, gaps %d (the difference was in flight and stored)", dropped, gaps)
}

// TestSpoolFullDisk: the spool's file system fills up. Send fails with
// ENOSPC and nothing spooled before is lost: once there is room again the
// client goes on, and the stream holds every frame Send accepted.
func TestSpoolFullDisk(t *testing.T) {
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) })
	st := openStream(t)
	addr := freeAddr(t)
	ctx := testCtx(t)
	// The spool may grow past the file system: the disk fills first.
	c := spoolClient(t, addr, filepath.Join(dir, "spool"), station.SpoolOptions{Sync: 2 * time.Millisecond, MaxBytes: 64 << 20, SegmentBytes: 32 << 10})
	accepted := 0
	var sendErr error
	for i := 0; i < 100000; i++ {
		if sendErr = c.Send(ctx, payloadN(i)); sendErr != nil {
			break
		}
		accepted++
	}
	if !errors.Is(sendErr, syscall.ENOSPC) {
		t.Fatalf("Send on a full disk = %v, want ENOSPC", sendErr)
	}
	streamGateway(t, st, addr)
	if err := c.WaitAcked(ctx, uint64(accepted)); err != nil {
		t.Fatal(err)
	}
	// Acknowledged segments are deleted: the frame refused goes in now,
	// with the number it did not get then.
	var err error
	for deadline := time.Now().Add(testTimeout); time.Now().Before(deadline); {
		if err = c.Send(ctx, payloadN(accepted)); err == nil || !errors.Is(err, syscall.ENOSPC) {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling for the deletion in the background
	}
	if err != nil {
		t.Fatalf("Send after the space came back: %v", err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	checkStream(t, readStream(t, st), c.Epoch(), accepted+1, nil)
}

// TestSpoolLocked: one spool directory, one client.
func TestSpoolLocked(t *testing.T) {
	addr := freeAddr(t)
	dir := t.TempDir()
	spoolClient(t, addr, dir, fastSpool)
	_, err := station.Dial(testCtx(t), addr, station.WithSpool(dir, fastSpool))
	if !errors.Is(err, station.ErrSpoolLocked) || !strings.Contains(err.Error(), "process") {
		t.Fatalf("second client on the spool: %v, want ErrSpoolLocked naming the process", err)
	}
}

// TestSpoolOptions: a spool keeps its own epoch and numbering and speaks v2.
func TestSpoolOptions(t *testing.T) {
	dir := t.TempDir()
	for _, opts := range [][]station.Option{
		{station.WithSpool(dir, fastSpool), station.WithEpoch(7)},
		{station.WithSpool(dir, fastSpool), station.WithFirstSeq(9)},
		{station.WithSpool(dir, fastSpool), station.WithProtocol(station.ProtocolV1)},
		{station.WithSpool("", fastSpool)},
		{station.WithSpool(dir, station.SpoolOptions{MaxBytes: -1})},
		{station.WithSpool(dir, station.SpoolOptions{Full: 9})},
	} {
		if _, err := station.Dial(testCtx(t), "127.0.0.1:1", opts...); !errors.Is(err, station.ErrInvalidOption) {
			t.Errorf("Dial = %v, want ErrInvalidOption", err)
		}
	}
}

// TestSpoolSendAllocs: Send into a spool allocates nothing in the steady
// state (the gateway is away, so only Send runs).
func TestSpoolSendAllocs(t *testing.T) {
	c := spoolClient(t, freeAddr(t), t.TempDir(), station.SpoolOptions{Sync: time.Hour})
	ctx := testCtx(t)
	payload := make([]byte, 1024)
	for range 100 {
		if err := c.Send(ctx, payload); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(2000, func() {
		if err := c.Send(ctx, payload); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Send allocates %.1f times per frame, want 0", n)
	}
}

// TestSpoolDamagedTailIsAGap: the last record a station spooled, and had
// not sent yet, is damaged on disk (whole, its checksum wrong). The
// reopened spool cannot tell that it was never sent, so it gives that
// number to no other frame; the client reports it as a gap at the end of
// what it holds, Close does not wait for it, and the next frame carries
// the gap into the stream.
func TestSpoolDamagedTailIsAGap(t *testing.T) {
	st := openStream(t)
	addr := freeAddr(t)
	dir := t.TempDir()
	const n = 50
	spoolOffline(t, addr, dir, n)
	flipIn(t, dir, payloadN(n-1))

	streamGateway(t, st, addr)
	// The damaged frame's number is not given again.
	b := resumeAndSendOne(t, addr, dir, n)
	msgs := readStream(t, st)
	checkStream(t, msgs, b.Epoch(), n+1, map[uint64]bool{n: true})
	if m := msgs[n-1]; m.seq != n+1 || m.gap != 1 {
		t.Fatalf("frame after the damaged one: seq %d gap %d, want %d with Meridian-Gap 1", m.seq, m.gap, n+1)
	}
	if b.Stats().Damaged != 1 {
		t.Fatalf("Damaged = %d, want 1", b.Stats().Damaged)
	}
}

// TestSpoolDeliveredTailRots: the last frame was delivered and
// acknowledged, then its record rotted on disk. The reopened spool does not
// number a new frame with its number (the stream has it): the client goes
// on after it instead of stopping on an epoch conflict.
func TestSpoolDeliveredTailRots(t *testing.T) {
	st := openStream(t)
	gw := streamGateway(t, st, "127.0.0.1:0")
	dir := t.TempDir()
	ctx := testCtx(t)
	const n = 50
	a := spoolClient(t, gw.Addr, dir, fastSpool)
	for i := range n {
		if err := a.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}
	flipIn(t, dir, payloadN(n-1))

	b := spoolClient(t, gw.Addr, dir, fastSpool)
	for i := n; i < n+10; i++ {
		if err := b.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checkStream(t, readStream(t, st), b.Epoch(), n+10, nil)
}

// TestSpoolDropOldestLive: the gateway's store stalls while a session is
// live and the tiny spool drops its oldest files, frames in flight among
// them. When the store comes back, nothing is lost that was not counted:
// every frame missing in the store lies in a gap the store was told of
// (Meridian-Gap on the frame after it), the gaps add up to at most
// Dropped, and nothing is stored twice.
func TestSpoolDropOldestLive(t *testing.T) {
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	resume := mem.Hold()
	defer resume()
	o := station.SpoolOptions{Sync: 2 * time.Millisecond, MaxBytes: 64 << 10, SegmentBytes: 8 << 10, Full: station.SpoolDropOldest}
	c := spoolClient(t, gw.Addr, t.TempDir(), o, station.WithWindow(64))
	ctx := testCtx(t)
	const n = 3000
	for i := range n {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	dropped := c.Stats().Dropped
	if dropped == 0 {
		t.Fatalf("nothing dropped: %+v", c.Stats())
	}
	resume()
	if err := c.WaitAcked(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var recs []gapRec
	for _, f := range mem.Frames() {
		recs = append(recs, gapRec{f.Seq, f.Gap, f.Payload})
	}
	checkGaps(t, recs, n, dropped)
}

// TestSpoolUnreadableStops: the spool's newest file is deleted by hand
// under a running client. Reading it fails for good, so the client stops
// with the error (Err, Send and Close say it) instead of reconnecting for
// ever; the frames before it were delivered.
func TestSpoolUnreadableStops(t *testing.T) {
	mem := sink.NewMemory()
	addr := freeAddr(t)
	dir := t.TempDir()
	ctx := testCtx(t)
	c := spoolClient(t, addr, dir, station.SpoolOptions{Sync: 2 * time.Millisecond, SegmentBytes: 4 << 10})
	for i := range 300 {
		if err := c.Send(ctx, payloadN(i)); err != nil {
			t.Fatal(err)
		}
	}
	segs, err := filepath.Glob(filepath.Join(dir, "seg-*.log"))
	if err != nil || len(segs) < 3 {
		t.Fatalf("segments %v (%v): want at least 3", segs, err)
	}
	if err := os.Remove(segs[len(segs)-1]); err != nil {
		t.Fatal(err)
	}
	gatewaytest.StartAt(t, addr, gatewaytest.Config(), mem)
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatalf("the client did not stop; stats %+v", c.Stats())
	}
	if err := c.Err(); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Err = %v, want the missing file", err)
	}
	if err := c.Send(ctx, payloadN(300)); err == nil {
		t.Fatal("Send after the stop succeeded")
	}
	if mem.Len() == 0 || mem.Len() >= 300 {
		t.Fatalf("stored %d frames: want those before the missing file", mem.Len())
	}
}

// TestSpoolTornTailReused: the last record's write was cut short (a kill
// between two pages of one write(2)): it runs past the end of the file, so
// it was never whole and never sent. Open cuts it and gives its number to
// the next frame, so that a producer that hands the frame over again
// leaves no gap.
func TestSpoolTornTailReused(t *testing.T) {
	st := openStream(t)
	addr := freeAddr(t)
	dir := t.TempDir()
	ctx := testCtx(t)
	const n = 50
	spoolOffline(t, addr, dir, n)
	tearLast(t, dir, payloadN(n-1))

	streamGateway(t, st, addr)
	b := spoolClient(t, addr, dir, fastSpool)
	if b.Sent() != n-1 {
		t.Fatalf("reopened: sent %d, want %d (the torn frame is not in the spool)", b.Sent(), n-1)
	}
	if err := b.Send(ctx, payloadN(n-1)); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := readStream(t, st)
	checkStream(t, msgs, b.Epoch(), n, nil)
	for _, m := range msgs {
		if m.gap != 0 {
			t.Fatalf("seq %d carries Meridian-Gap %d", m.seq, m.gap)
		}
	}
}
