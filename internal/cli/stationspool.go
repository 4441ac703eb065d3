package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/sdnotify"
	"github.com/meridian-telemetry/meridian/internal/spool"
	"github.com/meridian-telemetry/meridian/station"
)

// spoolFlags are the store-and-forward flags of `meridian station`.
type spoolFlags struct {
	dir        string
	sync       string
	maxBytes   config.Size
	full       string
	status     bool
	json       bool
	follow     string
	followDone string
	followPoll time.Duration
}

// Values of --follow-done.
const (
	followDoneRemove = "remove"
	followDoneRename = "rename"
)

// spoolDependentFlags are the flags that mean nothing without --spool.
var spoolDependentFlags = []string{"spool-sync", "spool-max-bytes", "spool-full", "status", "json", "follow", "follow-done", "follow-poll"}

// option validates the spool flags and maps them to station.WithSpool. It
// returns nil without --spool.
func (f *spoolFlags) option() (station.Option, error) {
	if f.dir == "" {
		return nil, nil
	}
	var o station.SpoolOptions
	switch s := strings.TrimSpace(f.sync); s {
	case "always":
		o.SyncAlways = true
	default:
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("--spool-sync %q: want a positive duration (100ms) or always", f.sync)
		}
		o.Sync = d
	}
	if f.maxBytes <= 0 {
		return nil, fmt.Errorf("--spool-max-bytes %s: must be positive", f.maxBytes)
	}
	o.MaxBytes = int64(f.maxBytes)
	switch f.full {
	case "block":
		o.Full = station.SpoolBlock
	case "drop-oldest":
		o.Full = station.SpoolDropOldest
	default:
		return nil, fmt.Errorf("--spool-full %q is not one of block, drop-oldest", f.full)
	}
	return station.WithSpool(f.dir, o), nil
}

// spoolLockedError explains ErrSpoolLocked: the directory belongs to a
// running station. It is a usage error (exit 2): running a second station
// on the same spool is a configuration mistake, and a systemd unit with
// RestartPreventExitStatus=2 does not loop on it.
func spoolLockedError(dir string, err error) error {
	return usage(fmt.Errorf("--spool %s is in use by another meridian station (one process per spool directory; --status shows it): %w", dir, err))
}

// statusReport is what --status prints; with --json in this shape.
type statusReport struct {
	Dir           string        `json:"dir"`
	Epoch         uint64        `json:"epoch"`
	Oldest        uint64        `json:"oldest"`
	Last          uint64        `json:"last"`
	Acked         uint64        `json:"acked"`
	Waiting       uint64        `json:"waiting"`
	OldestWaiting *time.Time    `json:"oldest_waiting,omitempty"`
	Bytes         int64         `json:"bytes"`
	Segments      int           `json:"segments"`
	InUse         bool          `json:"in_use"`
	PID           int           `json:"pid,omitempty"`
	Follow        []followEntry `json:"follow,omitempty"`
	FollowLast    string        `json:"follow_last_started,omitempty"`
}

// printSpoolStatus is `meridian station --spool DIR --status`: it reads the
// spool without taking its lock, so it works beside the running station.
func printSpoolStatus(w io.Writer, dir string, asJSON bool, now time.Time) error {
	st, err := spool.Inspect(dir)
	if err != nil {
		return fmt.Errorf("--status: %w", err)
	}
	r := statusReport{
		Dir: st.Dir, Epoch: st.Epoch, Oldest: st.Oldest, Last: st.Last, Acked: st.Acked,
		Waiting: st.Waiting, Bytes: st.Bytes, Segments: st.Segments, InUse: st.Locked, PID: st.LockPID,
	}
	if r.Dir == "" {
		r.Dir = dir
	}
	if !st.OldestWaiting.IsZero() {
		t := st.OldestWaiting
		r.OldestWaiting = &t
	}
	fs, err := readFollowState(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("--status: %w", err)
	default:
		r.Follow, r.FollowLast = fs.Files, fs.LastStarted
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Fprintf(w, "spool %s\n", r.Dir)
	fmt.Fprintf(w, "  epoch          %d\n", r.Epoch)
	if r.Waiting == 0 {
		fmt.Fprintf(w, "  waiting        0 frames (all acknowledged up to %d)\n", r.Acked)
	} else {
		fmt.Fprintf(w, "  waiting        %d frames, %d..%d\n", r.Waiting, r.Acked+1, r.Last)
	}
	if r.OldestWaiting != nil {
		fmt.Fprintf(w, "  oldest waiting %s (%s ago)\n", r.OldestWaiting.UTC().Format(time.RFC3339), now.Sub(*r.OldestWaiting).Round(100*time.Millisecond))
	}
	fmt.Fprintf(w, "  sequence       oldest held %d, last %d, acknowledged %d\n", r.Oldest, r.Last, r.Acked)
	fmt.Fprintf(w, "  files          %.1f MiB in %d segment file(s)\n", float64(r.Bytes)/(1<<20), r.Segments)
	switch {
	case r.InUse && r.PID > 0:
		fmt.Fprintf(w, "  in use by process %d\n", r.PID)
	case r.InUse:
		fmt.Fprintf(w, "  in use by a process (PID unknown)\n")
	default:
		fmt.Fprintf(w, "  not in use\n")
	}
	if fs.Version != 0 {
		fmt.Fprintf(w, "  follow         %d files pending; last started %q\n", len(r.Follow), r.FollowLast)
		for _, e := range r.Follow {
			if e.Complete {
				fmt.Fprintf(w, "    %s  frames %d..%d, waiting for their ACK\n", e.Name, e.First, e.Last)
			} else {
				fmt.Fprintf(w, "    %s  from frame %d, being spooled\n", e.Name, e.First)
			}
		}
	}
	return nil
}

// notifier reports to systemd, when the process runs under it (a
// Type=notify unit), and does nothing otherwise.
type notifier struct {
	log     *slog.Logger
	enabled bool
}

// newNotifier sends the first state (READY=1 with a status); the
// notifier sends more only when that reached systemd.
func newNotifier(log *slog.Logger, state string) *notifier {
	sent, err := sdnotify.Notify(state)
	if err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
	return &notifier{log: log, enabled: sent}
}

// send sends state when running under systemd.
func (n *notifier) send(state string) {
	if !n.enabled {
		return
	}
	if _, err := sdnotify.Notify(state); err != nil {
		n.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// linkState follows the gateway connection from the client's callbacks:
// a reported disconnect, and ACK progress since. The client has no
// "connected" flag; an ACK after the last disconnect is the evidence that
// the gateway takes frames.
type linkState struct {
	mu         sync.Mutex
	disconnect time.Time
	lastAck    time.Time
	cause      string
}

func (l *linkState) onAck(uint64) {
	l.mu.Lock()
	l.lastAck = time.Now()
	l.mu.Unlock()
}

func (l *linkState) onDisconnect(err error) {
	l.mu.Lock()
	l.disconnect, l.cause = time.Now(), err.Error()
	l.mu.Unlock()
}

func (l *linkState) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case !l.disconnect.IsZero() && !l.lastAck.After(l.disconnect):
		return "gateway reconnecting (" + l.cause + ")"
	case !l.lastAck.IsZero():
		return "gateway connected"
	}
	return "no ACK from the gateway yet"
}

// ageTracker estimates how long the oldest frame not yet acknowledged has
// waited, from (sequence number, time) samples taken at each progress tick:
// the client does not expose the spool's append times. Samples at or below
// the acknowledged count are dropped; at most maxAgeSamples are kept (the
// oldest one always), so memory stays bounded through an outage of any
// length at the price of coarser ages.
type ageTracker struct {
	samples []ageSample
}

type ageSample struct {
	seq uint64 // Sent at t
	t   time.Time
}

const maxAgeSamples = 1024

// start records that frames up to seq were already spooled at t (from an
// earlier run: the spool's oldest waiting frame's time).
func (a *ageTracker) start(seq uint64, t time.Time) {
	a.samples = append(a.samples[:0], ageSample{seq, t})
}

// observe adds a sample and returns the age of the oldest frame waiting
// (above acked): the time of the first sample that had it spooled. It is a
// lower bound, coarse by one tick.
func (a *ageTracker) observe(sent, acked uint64, now time.Time) time.Duration {
	if n := len(a.samples); n == 0 || a.samples[n-1].seq < sent {
		a.samples = append(a.samples, ageSample{sent, now})
	}
	i := 0
	for i < len(a.samples) && a.samples[i].seq <= acked {
		i++
	}
	a.samples = a.samples[i:]
	if len(a.samples) > maxAgeSamples {
		// Thin out every second sample after the first.
		kept := a.samples[:1]
		for j := 2; j < len(a.samples); j += 2 {
			kept = append(kept, a.samples[j])
		}
		a.samples = kept
	}
	if sent <= acked || len(a.samples) == 0 {
		return 0
	}
	return now.Sub(a.samples[0].t)
}

// spoolStatusLine is the STATUS= text for systemd and the progress line of
// a spooled run.
func spoolStatusLine(st station.Stats, epoch uint64, age time.Duration, link fmt.Stringer, pending int) string {
	var b strings.Builder
	waiting := st.Sent - st.Acked
	fmt.Fprintf(&b, "spooled %d frames waiting", waiting)
	if waiting > 0 {
		fmt.Fprintf(&b, ", oldest %s", age.Round(100*time.Millisecond))
	}
	fmt.Fprintf(&b, "; sent %d, acknowledged %d", st.Sent, st.Acked)
	if st.Dropped > 0 {
		fmt.Fprintf(&b, ", dropped %d", st.Dropped)
	}
	if st.Damaged > 0 {
		fmt.Fprintf(&b, ", damaged %d", st.Damaged)
	}
	fmt.Fprintf(&b, "; spool %s; epoch %d; %s", config.Size(st.SpoolBytes), epoch, link)
	if pending >= 0 {
		fmt.Fprintf(&b, "; %d files pending", pending)
	}
	return b.String()
}

// followStatePath is where follow mode keeps its state: in the spool
// directory, so that the two are one unit (moved, backed up, wiped
// together).
func followStatePath(spoolDir string) string { return filepath.Join(spoolDir, followStateName) }
