package main

// Store and forward at the station (issue 12): `meridian station --spool
// --follow` as a child process, SIGKILLed again and again while it sends
// capture files from a directory into the real gateway binary; the stream
// is read back whole at the end.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/spool"
)

// writeCapture puts a capture file into dir as a recorder does: written
// under a name the station ignores, then renamed into place.
func writeCapture(t *testing.T, dir, name string, lines []string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(strings.Join(lines, "\n")+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// TestStationSpoolSurvivesSIGKILL: the station process is killed with
// SIGKILL at random moments, 24 times, while capture files keep arriving
// and it streams them from its spool; it is started again each time on the
// same spool and directory. After a last run that ends when every file is
// acknowledged and removed, the stream holds every line of every file,
// exactly once, in order, numbered 1..N in one epoch.
func TestStationSpoolSurvivesSIGKILL(t *testing.T) {
	const kills, files, perFile = 24, 64, 400
	data := t.TempDir()
	gw := start(t, eoServeArgs(data, "127.0.0.1:0")...)
	addr, _, natsURL := gw.addrs()
	spoolDir, captures := t.TempDir(), t.TempDir()
	args := []string{"station", "--addr", addr, "--name", "gs-kill", "--spool", spoolDir,
		"--spool-sync", "10ms", "--follow", captures, "--follow-poll", "20ms", "--progress", "0"}

	var want []string
	nextFile := 0
	drop := func(n int) {
		for ; n > 0 && nextFile < files; n-- {
			lines := make([]string, perFile)
			for i := range lines {
				lines[i] = fmt.Sprintf("cap-%03d line-%04d", nextFile, i)
			}
			writeCapture(t, captures, fmt.Sprintf("cap-%03d.txt", nextFile), lines)
			want = append(want, lines...)
			nextFile++
		}
	}
	rng := rand.New(rand.NewPCG(1, 12))
	drop(2)
	progressed, unacked := 0, 0
	for k := range kills {
		st := start(t, args...)
		// Kill it at a random point of the new files: once it has
		// spooled a random number of their lines (inside a file, between
		// two, before or after an ACK).
		before, _ := spool.Inspect(spoolDir)
		target := before.Last + 1 + uint64(rng.IntN(2*perFile))
		deadline := time.Now().Add(wait)
		for {
			s, err := spool.Inspect(spoolDir)
			if err == nil && s.Last >= target {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("kill %d: the station did not spool up to %d in %s (last %d):\n%s", k, target, wait, s.Last, st.stderr)
			}
			time.Sleep(time.Millisecond) // polling the spool
		}
		if err := st.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		st.exit()
		if s, _ := spool.Inspect(spoolDir); s.Last > before.Last {
			progressed++
			if s.Waiting > 0 {
				unacked++
			}
		}
		drop(2)
	}
	drop(files)
	// Each kill left frames the gateway had not acknowledged (as the
	// owner last recorded it), or the test proved little.
	if progressed < kills || unacked < kills/2 {
		t.Fatalf("of %d runs, %d spooled anything before the kill and %d left frames unacknowledged", kills, progressed, unacked)
	}

	// The last run: until every file is acknowledged and removed.
	last := start(t, args...)
	deadline := time.Now().Add(2 * wait)
	for {
		left, _ := filepath.Glob(filepath.Join(captures, "cap-*"))
		s, err := spool.Inspect(spoolDir)
		if len(left) == 0 && err == nil && s.Waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("files left %v, spool %+v:\n%s", left, s, last.stderr)
		}
		time.Sleep(10 * time.Millisecond) // polling the directory
	}
	if err := last.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := last.exit(); code != 0 {
		t.Fatalf("last run exit %d:\n%s", code, last.stderr)
	}

	recs := eoReadStream(t, natsURL, readToken(t, data))
	if len(recs) == 0 {
		t.Fatal("the stream is empty")
	}
	epoch := recs[0].Epoch
	missing, dups, disorder := 0, 0, 0
	seen := make(map[string]int, len(want))
	for i, r := range recs {
		seen[string(r.Data)]++
		if r.Station != "gs-kill" || r.Epoch != epoch || r.Seq != uint64(i+1) {
			disorder++
		}
		if i < len(want) && string(r.Data) != want[i] {
			disorder++
		}
	}
	for _, l := range want {
		switch n := seen[l]; {
		case n == 0:
			missing++
		case n > 1:
			dups += n - 1
		}
	}
	if missing != 0 || dups != 0 || disorder != 0 || len(recs) != len(want) {
		t.Fatalf("%d frames in the stream for %d lines: %d missing, %d duplicates, %d out of order or mislabelled",
			len(recs), len(want), missing, dups, disorder)
	}
	t.Logf("%d kills (%d with frames unacknowledged), %d frames, exactly once and in order", kills, unacked, len(want))
}
