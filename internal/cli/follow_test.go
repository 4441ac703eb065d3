package cli

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/spool"
	"github.com/meridian-telemetry/meridian/internal/syncbuf"
	"github.com/meridian-telemetry/meridian/station"
)

// followRun is `meridian station --follow` running in the test.
type followRun struct {
	cancel context.CancelFunc
	done   chan error
	out    *syncbuf.Buffer
	once   sync.Once
	err    error
}

// startFollow runs `meridian station ARGS` (follow mode) until stop, or the
// end of the test.
func startFollow(t *testing.T, args ...string) *followRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &followRun{cancel: cancel, done: make(chan error, 1), out: new(syncbuf.Buffer)}
	cmd := newStationCmd()
	cmd.SetArgs(append([]string{"--progress", "0", "--spool-sync", "10ms", "--follow-poll", "20ms"}, args...))
	cmd.SetIn(strings.NewReader(""))
	cmd.SetOut(r.out)
	cmd.SetErr(r.out)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	go func() { r.done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop is what SIGTERM does (the context ends) and returns the command's
// error.
func (r *followRun) stop(t *testing.T) error {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.done:
		case <-time.After(20 * time.Second):
			r.err = errors.New("follow mode did not stop within 20s")
			t.Error(r.err)
		}
	})
	return r.err
}

// waitFor polls cond until it holds, or fails the test after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}

// writeCapture writes a capture file as a recorder should: under a .tmp
// name, renamed into place when complete.
func writeCapture(t *testing.T, dir, name string, content []byte) {
	t.Helper()
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func lines(prefix string, n int) []string {
	var out []string
	for i := 1; i <= n; i++ {
		out = append(out, fmt.Sprintf("%s-%d", prefix, i))
	}
	return out
}

func linesFile(l []string) []byte { return []byte(strings.Join(l, "\n") + "\n") }

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func followDirs(t *testing.T) (spoolDir, inDir string) {
	t.Helper()
	d := t.TempDir()
	spoolDir, inDir = filepath.Join(d, "spool"), filepath.Join(d, "in")
	if err := os.Mkdir(inDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return spoolDir, inDir
}

func readState(t *testing.T, spoolDir string) followState {
	t.Helper()
	st, err := readFollowState(spoolDir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestFollowSendsEachFileOnce: files renamed into the directory are sent
// in name order, each once, and removed once acknowledged; names being
// written, hidden names, directories and files sorting before the last
// one started are left alone.
func TestFollowSendsEachFileOnce(t *testing.T) {
	stationLeakCheck(t)
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	spoolDir, in := followDirs(t)
	a, b := lines("a", 2), lines("b", 1)
	writeCapture(t, in, "b.txt", linesFile(b))
	writeCapture(t, in, "a.txt", linesFile(a))
	os.WriteFile(filepath.Join(in, "c.part"), []byte("partial\n"), 0o600)
	os.WriteFile(filepath.Join(in, ".hidden"), []byte("hidden\n"), 0o600)
	os.Mkdir(filepath.Join(in, "sub"), 0o700)

	run := startFollow(t, "--addr", gw.Addr, "--spool", spoolDir, "--follow", in)
	waitFor(t, "a.txt and b.txt sent and removed", func() bool {
		return mem.Len() == 3 && !exists(filepath.Join(in, "a.txt")) && !exists(filepath.Join(in, "b.txt"))
	})
	if got := strings.Join(payloads(mem), "|"); got != "a-1|a-2|b-1" {
		t.Errorf("sink holds %q, want the files in name order", got)
	}

	d := lines("d", 3)
	writeCapture(t, in, "0-late.txt", linesFile(lines("late", 1)))
	writeCapture(t, in, "d.txt", linesFile(d))
	waitFor(t, "d.txt sent and removed", func() bool {
		return mem.Len() == 6 && !exists(filepath.Join(in, "d.txt"))
	})
	if err := run.stop(t); err != nil {
		t.Fatalf("stopped by its signal: %v, want exit 0\n%s", err, run.out)
	}
	countPayloads(t, mem, append(append(a, b...), d...))
	for _, name := range []string{"0-late.txt", "c.part", ".hidden", "sub"} {
		if !exists(filepath.Join(in, name)) {
			t.Errorf("%s was touched", name)
		}
	}
	if !strings.Contains(run.out.String(), "skipping a file that sorts at or before the last file started") {
		t.Errorf("output lacks the warning about 0-late.txt:\n%s", run.out)
	}
	if st := readState(t, spoolDir); len(st.Files) != 0 || st.LastStarted != "d.txt" {
		t.Errorf("follow state %+v: want no file pending, last started d.txt", st)
	}
}

// TestFollowKeepsFileUntilAck: while the gateway does not acknowledge (its
// store is held), a wholly spooled file stays where it is; once the ACK
// comes it is renamed NAME.sent (--follow-done rename), and each frame is
// stored once.
func TestFollowKeepsFileUntilAck(t *testing.T) {
	stationLeakCheck(t)
	mem := sink.NewMemory()
	resume := mem.Hold()
	defer resume()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	spoolDir, in := followDirs(t)
	framed := frame.AppendData(frame.AppendData(frame.AppendHeader(nil, 0), []byte("f1")), []byte("f2"))
	writeCapture(t, in, "pass-001.raw", framed)

	run := startFollow(t, "--addr", gw.Addr, "--spool", spoolDir, "--follow", in, "--in", "framed", "--follow-done", "rename")
	waitFor(t, "pass-001.raw wholly spooled", func() bool {
		st, err := readFollowState(spoolDir)
		return err == nil && len(st.Files) == 1 && st.Files[0].Complete
	})
	path := filepath.Join(in, "pass-001.raw")
	if !exists(path) || exists(path+".sent") {
		t.Fatal("the file was renamed before the gateway acknowledged its frames")
	}
	if st := readState(t, spoolDir); st.Files[0].First != 1 || st.Files[0].Last != 2 {
		t.Errorf("follow state %+v: want frames 1..2", st.Files[0])
	}
	code, out := stationMain(t, "", "--spool", spoolDir, "--status")
	for _, want := range []string{fmt.Sprintf("in use by process %d", os.Getpid()), "follow         1 files pending", "pass-001.raw  frames 1..2, waiting for their ACK"} {
		if code != ExitOK || !strings.Contains(out, want) {
			t.Errorf("--status: exit %d, %q lacks %q", code, out, want)
		}
	}
	resume()
	waitFor(t, "pass-001.raw renamed to .sent", func() bool { return exists(path+".sent") && !exists(path) })
	if err := run.stop(t); err != nil {
		t.Fatalf("%v\n%s", err, run.out)
	}
	countPayloads(t, mem, []string{"f1", "f2"})
	if st := readState(t, spoolDir); len(st.Files) != 0 {
		t.Errorf("follow state %+v: want nothing pending", st)
	}
}

// TestFollowDamagedFile: a capture that cannot be read to its end has the
// frames before the damage sent and is renamed NAME.bad, never removed;
// the files after it go on.
func TestFollowDamagedFile(t *testing.T) {
	stationLeakCheck(t)
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	spoolDir, in := followDirs(t)
	good := frame.AppendData(frame.AppendHeader(nil, 0), []byte("ok"))
	torn := append(frame.AppendData(frame.AppendHeader(nil, 0), []byte("g1")), 0, 0, 0, 9, 'x') // 9 bytes announced, 1 there
	writeCapture(t, in, "1.raw", torn)
	writeCapture(t, in, "2.raw", good)
	run := startFollow(t, "--addr", gw.Addr, "--spool", spoolDir, "--follow", in, "--in", "framed")
	waitFor(t, "1.raw renamed .bad and 2.raw removed", func() bool {
		return exists(filepath.Join(in, "1.raw.bad")) && !exists(filepath.Join(in, "2.raw"))
	})
	if err := run.stop(t); err != nil {
		t.Fatalf("%v\n%s", err, run.out)
	}
	countPayloads(t, mem, []string{"g1", "ok"})
	if !strings.Contains(run.out.String(), "could not be read to its end") {
		t.Errorf("output lacks the damage:\n%s", run.out)
	}
}

// spoolFrames puts payloads into the spool in dir through the library, as
// a follow run killed at that moment would have left them, and returns
// the spool's epoch. The gateway is unreachable, so they stay spooled.
func spoolFrames(t *testing.T, dir string, payloads []string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := station.Dial(ctx, closedPort(t), station.WithSpool(dir, station.SpoolOptions{SyncAlways: true}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		if err := c.Send(ctx, []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	closeCtx, cancelClose := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelClose()
	if err := c.Close(closeCtx); err == nil {
		t.Fatal("Close returned nil with the gateway unreachable")
	}
	if st := c.Stats(); st.Sent != uint64(len(payloads)) {
		t.Fatalf("spool holds %d frames, want %d", st.Sent, len(payloads))
	}
	return c.Epoch()
}

// TestFollowRecoveryMidFile: the state a SIGKILL leaves in the middle of a
// file (its first 3 frames spooled, follow.json saying it began at frame
// 3) is resumed: the spooled frames go out from the spool, the file's
// remaining ones from the file, none twice. A recorded file that is gone
// is forgotten.
func TestFollowRecoveryMidFile(t *testing.T) {
	stationLeakCheck(t)
	spoolDir, in := followDirs(t)
	a := lines("a", 10)
	epoch := spoolFrames(t, spoolDir, append([]string{"old-1", "old-2"}, a[:3]...))
	writeCapture(t, in, "a.txt", linesFile(a))
	writeCapture(t, in, "0-early.txt", linesFile(lines("early", 1)))
	if err := writeFollowState(spoolDir, followState{Epoch: epoch, LastStarted: "a.txt", Files: []followEntry{
		{Name: "gone.txt", First: 1, Last: 2, Complete: true},
		{Name: "a.txt", First: 3},
	}}); err != nil {
		t.Fatal(err)
	}

	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	run := startFollow(t, "--addr", gw.Addr, "--spool", spoolDir, "--follow", in)
	waitFor(t, "a.txt sent and removed", func() bool {
		return mem.Len() >= 12 && !exists(filepath.Join(in, "a.txt"))
	})
	if err := run.stop(t); err != nil {
		t.Fatalf("%v\n%s", err, run.out)
	}
	countPayloads(t, mem, append([]string{"old-1", "old-2"}, a...))
	out := run.out.String()
	// gone.txt was wholly spooled: its frames went out from the spool,
	// so its absence is no loss and no warning.
	if !strings.Contains(out, "resuming a file") || strings.Contains(out, "is gone") {
		t.Errorf("output lacks the resume, or warns of the gone file:\n%s", out)
	}
	if !exists(filepath.Join(in, "0-early.txt")) {
		t.Error("0-early.txt, sorting before the last file started, was sent")
	}
	if st := readState(t, spoolDir); len(st.Files) != 0 {
		t.Errorf("follow state %+v: want nothing pending", st)
	}
}

// TestFollowRecoveryLostTail: after a power failure with interval sync the
// spool may have lost the tail of a file follow.json records as wholly
// spooled (frames 1..5, the spool holds 1..2), and the file after it
// entirely. Both are spooled again from where the spool ends: each frame
// once.
func TestFollowRecoveryLostTail(t *testing.T) {
	stationLeakCheck(t)
	spoolDir, in := followDirs(t)
	a, b := lines("a", 5), lines("b", 2)
	epoch := spoolFrames(t, spoolDir, a[:2])
	writeCapture(t, in, "a.txt", linesFile(a))
	writeCapture(t, in, "b.txt", linesFile(b))
	if err := writeFollowState(spoolDir, followState{Epoch: epoch, LastStarted: "b.txt", Files: []followEntry{
		{Name: "a.txt", First: 1, Last: 5, Complete: true},
		{Name: "b.txt", First: 6},
	}}); err != nil {
		t.Fatal(err)
	}
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	run := startFollow(t, "--addr", gw.Addr, "--spool", spoolDir, "--follow", in)
	waitFor(t, "a.txt and b.txt sent and removed", func() bool {
		return mem.Len() >= 7 && !exists(filepath.Join(in, "a.txt")) && !exists(filepath.Join(in, "b.txt"))
	})
	if err := run.stop(t); err != nil {
		t.Fatalf("%v\n%s", err, run.out)
	}
	countPayloads(t, mem, append(a, b...))
	for i, fr := range mem.Frames() {
		if fr.Seq != uint64(i+1) {
			t.Errorf("frame %d %q stored with seq %d", i, fr.Payload, fr.Seq)
		}
	}
}

// TestFollowStateOfAnotherSpool: a follow.json whose epoch is not the
// spool's is refused, not trusted.
func TestFollowStateOfAnotherSpool(t *testing.T) {
	stationLeakCheck(t)
	spoolDir, in := followDirs(t)
	epoch := spoolFrames(t, spoolDir, []string{"x"})
	if err := writeFollowState(spoolDir, followState{Epoch: epoch + 1}); err != nil {
		t.Fatal(err)
	}
	run := startFollow(t, "--addr", closedPort(t), "--spool", spoolDir, "--follow", in, "--ack-timeout", "100ms")
	select {
	case err := <-run.done:
		if err == nil || !strings.Contains(err.Error(), "belongs to spool epoch") {
			t.Errorf("err %v, want the epoch mismatch", err)
		}
		run.once.Do(func() {}) // already stopped
		run.cancel()
	case <-time.After(15 * time.Second):
		t.Fatal("follow mode ran on another spool's state")
	}
}

// TestFollowSystemd: under systemd (NOTIFY_SOCKET) follow mode says READY=1
// once the spool is open, STATUS= lines as it goes, and STOPPING=1 when
// stopped.
func TestFollowSystemd(t *testing.T) {
	stationLeakCheck(t)
	sock := filepath.Join(t.TempDir(), "n.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	recv := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			if err := conn.SetReadDeadline(time.Now().Add(15 * time.Second)); err != nil {
				t.Fatal(err)
			}
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("waiting for %q: %v", want, err)
			}
			if msg := string(buf[:n]); strings.Contains(msg, want) {
				return msg
			}
		}
	}

	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	spoolDir, in := followDirs(t)
	run := startFollow(t, "--addr", gw.Addr, "--spool", spoolDir, "--follow", in, "--progress", "20ms")
	if msg := recv("READY=1"); !strings.HasPrefix(msg, "READY=1\nSTATUS=spooled 0 frames waiting") {
		t.Errorf("first notification %q", msg)
	}
	writeCapture(t, in, "a.txt", linesFile(lines("a", 2)))
	msg := recv("gateway connected")
	for !strings.Contains(msg, "spooled 0 frames waiting; sent 2, acknowledged 2") || !strings.Contains(msg, "0 files pending") {
		msg = recv("STATUS=")
	}
	if err := run.stop(t); err != nil {
		t.Fatalf("%v\n%s", err, run.out)
	}
	recv(sdnotifyStopping)
}

const sdnotifyStopping = "STOPPING=1"

// TestFollowHelperProcess is not a test: it is the station process that
// TestFollowSIGKILL starts and kills, running `meridian` with the
// arguments in MERIDIAN_FOLLOW_CHILD.
func TestFollowHelperProcess(t *testing.T) {
	args := os.Getenv("MERIDIAN_FOLLOW_CHILD")
	if args == "" {
		t.Skip("the helper process of TestFollowSIGKILL")
	}
	os.Exit(Main(context.Background(), strings.Split(args, "\n"), os.Stdout, os.Stderr))
}

// TestFollowSIGKILL kills the follow-mode station process with SIGKILL at
// random moments, each after it made progress, again and again, then runs
// it to the end and stops it with SIGTERM: the stream holds every line of
// every capture exactly once, in order, and every capture is removed.
func TestFollowSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	stationLeakCheck(t)
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	spoolDir, in := followDirs(t)
	var want []string
	for i := range 4 {
		l := lines(fmt.Sprintf("c%d", i), 20000)
		want = append(want, l...)
		writeCapture(t, in, fmt.Sprintf("cap%d.txt", i), linesFile(l))
	}
	empty := func() bool {
		ents, err := os.ReadDir(in)
		return err == nil && len(ents) == 0
	}
	start := func() (*exec.Cmd, *syncbuf.Buffer) {
		t.Helper()
		args := []string{"station", "--addr", gw.Addr, "--spool", spoolDir, "--follow", in,
			"--follow-poll", "20ms", "--progress", "0", "--spool-sync", "5ms"}
		cmd := exec.Command(os.Args[0], "-test.run=^TestFollowHelperProcess$")
		cmd.Env = append(os.Environ(), "MERIDIAN_FOLLOW_CHILD="+strings.Join(args, "\n"))
		out := new(syncbuf.Buffer)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, out
	}
	const kills = 20
	killed := 0
	for killed < kills && !empty() {
		target := mem.Len() + 1 + rand.IntN(4000)
		cmd, _ := start()
		waitFor(t, "the station's progress", func() bool { return mem.Len() >= target || empty() })
		cmd.Process.Kill()
		cmd.Wait()
		killed++
	}
	t.Logf("%d SIGKILLs; %d of %d frames stored before the last run", killed, mem.Len(), len(want))
	cmd, out := start()
	waitFor(t, "every capture sent and removed", empty)
	waitFor(t, "every frame stored", func() bool { return mem.Len() >= len(want) })
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v, want exit 0\n%s", err, out)
	}
	countPayloads(t, mem, want)
	frames := mem.Frames()
	for i, fr := range frames {
		if fr.Seq != uint64(i+1) || fr.Epoch != frames[0].Epoch {
			t.Fatalf("frame %d %q stored as epoch %d seq %d: want one epoch, in order", i, fr.Payload, fr.Epoch, fr.Seq)
		}
	}
	if killed < kills {
		t.Errorf("only %d SIGKILLs before the captures were all sent: make them larger", killed)
	}
}

// TestFollowTornRecordSpooledAgain: a SIGKILL cut the write(2) of a
// capture's fifth frame short after its header (a kill between two pages
// of one write). That record was never whole, so never sent: open cuts it
// and gives its number again, and follow mode spools the frame again from
// the capture file. Every line is stored once, with no gap.
func TestFollowTornRecordSpooledAgain(t *testing.T) {
	stationLeakCheck(t)
	spoolDir, in := followDirs(t)
	l := lines("a", 10)
	writeCapture(t, in, "a.txt", linesFile(l))
	sp, err := spool.Open(spoolDir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := sp.Append(context.Background(), []byte(l[i])); err != nil {
			t.Fatal(err)
		}
	}
	epoch := sp.Epoch()
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := writeFollowState(spoolDir, followState{Epoch: epoch, LastStarted: "a.txt",
		Files: []followEntry{{Name: "a.txt", First: 1}}}); err != nil {
		t.Fatal(err)
	}
	seg := filepath.Join(spoolDir, "seg-00000000000000000001.log")
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, fi.Size()-2); err != nil { // the fifth record: header kept, payload cut
		t.Fatal(err)
	}
	mem := sink.NewMemory()
	gw := gatewaytest.Start(t, gatewaytest.Config(), mem)
	r := startFollow(t, "--addr", gw.Addr, "--name", "gs-torn", "--spool", spoolDir, "--follow", in)
	waitFor(t, "a.txt removed", func() bool { return !exists(filepath.Join(in, "a.txt")) })
	if err := r.stop(t); err != nil {
		t.Fatalf("%v\n%s", err, r.out)
	}
	countPayloads(t, mem, l)
	for _, f := range mem.Frames() {
		if f.Gap != 0 {
			t.Fatalf("frame %d %q carries Meridian-Gap %d: the torn frame was reported lost", f.Seq, f.Payload, f.Gap)
		}
	}
}
