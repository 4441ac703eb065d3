package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestStartupWaitsForStoreRecovery: a gateway SIGKILLed after storing many
// frames within the dedup window leaves a store whose recovery takes a
// while (the server rebuilds its index and dedup map). The restarted gateway
// waits for it however long it takes: it logs progress, its /readyz answers
// 503 "starting" meanwhile, and then it becomes ready and takes frames.
func TestStartupWaitsForStoreRecovery(t *testing.T) {
	const stations, frames = 8, 25000
	dir := t.TempDir()
	first := start(t, serveArgs(dir, "--dedup-window", "10m", "--retention-max-age", "1d")...)
	station, _, _ := first.addrs()
	var wg sync.WaitGroup
	acks := make([]uint64, stations)
	for i := range stations {
		payloads := make([][]byte, frames)
		for j := range payloads {
			payloads[j] = fmt.Appendf(nil, "recovery %d %d", i, j)
		}
		wg.Go(func() { acks[i], _ = sendFrames(station, payloads, nil) })
	}
	wg.Wait()
	for i, a := range acks {
		if a != frames {
			t.Fatalf("station %d: %d of %d frames acknowledged before the kill", i, a, frames)
		}
	}
	first.cmd.Process.Signal(syscall.SIGKILL)
	first.exit()
	// Make sure the restart rebuilds the index from the message blocks,
	// as after a crash that came before the server wrote any index.
	idx, _ := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", "TELEMETRY", "msgs", "index.db"))
	for _, p := range idx {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}

	t.Setenv("GO_TEST_MERIDIAN_PROGRESS_INTERVAL", "50ms")
	again := start(t, serveArgs(dir, "--dedup-window", "10m", "--retention-max-age", "1d")...)
	httpAddr := again.waitLog(`msg="ops: listening" addr=(\S+)`)[1]
	client := &http.Client{Timeout: time.Second}
	readyz := func() (int, string) {
		resp, err := client.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Scrape /readyz until the start-up is over; a scrape that answered
	// before "meridian serving" was logged answered during the recovery.
	var starting, progress bool
	for deadline := time.Now().Add(2 * wait); ; {
		code, body := readyz()
		log := again.stderr.String()
		serving := strings.Contains(log, `msg="meridian serving"`)
		if !serving {
			if code == http.StatusOK {
				t.Fatalf("/readyz = 200 before the gateway serves:\n%s", log)
			}
			if code == http.StatusServiceUnavailable && strings.Contains(body, "starting") {
				starting = true
			}
		}
		progress = strings.Contains(log, `msg="recovering the JetStream store"`)
		if serving {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway did not become ready:\n%s", log)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
	if !progress {
		t.Fatalf("no progress logged during the recovery:\n%s", again.stderr)
	}
	if !starting {
		t.Fatalf("/readyz never answered 503 starting during the recovery:\n%s", again.stderr)
	}
	took := again.waitLog(`msg="JetStream store recovered" took=(\S+)`)[1]
	t.Logf("recovery took %s, %d progress lines", took, strings.Count(again.stderr.String(), `msg="recovering the JetStream store"`))
	if code, body := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s once serving", code, body)
	}
	station, _, natsURL := again.addrs()
	if acked, err := sendFrames(station, [][]byte{[]byte("after the recovery")}, nil); err != nil || acked != 1 {
		t.Fatalf("after the recovery: acked %d, %v", acked, err)
	}
	// Every frame acknowledged before the kill is still there (the stream
	// had no reason to drop any), and the new one is last.
	str, ctx := telemetryStream(t, natsURL, readToken(t, dir))
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(stations*frames + 1); info.State.Msgs < want {
		t.Fatalf("the stream holds %d messages after the recovery, want at least %d", info.State.Msgs, want)
	}
	last, err := str.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	if string(last.Data) != "after the recovery" {
		t.Fatalf("last message %q, want the frame sent after the recovery", last.Data)
	}
}
