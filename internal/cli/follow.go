package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/meridian-telemetry/meridian/internal/spool"
	"github.com/meridian-telemetry/meridian/station"
)

// Follow mode (`meridian station --spool DIR --follow DIR2`) sends every
// capture file that appears in DIR2, once, in name order, and removes (or
// renames) it once the gateway acknowledged every frame of it.
//
// Exactly once across crashes rests on two facts. The spool numbers frames
// and keeps that numbering across runs (Stats().Sent after Dial is its last
// sequence number), and the frames of a file are parsed from it the same
// way every time, so frame k of a file always has the same bytes. The
// state file follow.json, in the spool directory, maps files to sequence
// numbers: each file's first frame's, and once it is wholly spooled its
// last's. At start, a recorded file whose range reaches past the spool's
// last sequence number is spooled again from the frame after it: that is
// the file in progress at a crash, or after a power failure with interval
// sync an earlier file whose tail the spool lost. Nothing before that frame
// is spooled twice, nothing after it is skipped.

// followStateName is the state file of follow mode, in the spool directory.
const followStateName = "follow.json"

// followStateVersion is the format of follow.json.
const followStateVersion = 1

// followEntry is a file started and not yet removed or renamed.
type followEntry struct {
	Name string `json:"name"`
	// First is the sequence number of the file's first frame: Sent+1 when
	// it was started.
	First uint64 `json:"first"`
	// Last is the sequence number of its last frame, valid once Complete
	// (First-1 for a file without frames).
	Last     uint64 `json:"last"`
	Complete bool   `json:"complete"`
	// Damaged says why the file could not be read to its end: the frames
	// before the damage were spooled, and the file is renamed NAME.bad,
	// never removed.
	Damaged string `json:"damaged,omitempty"`
}

// followState is the content of follow.json.
type followState struct {
	Version int    `json:"version"`
	Epoch   uint64 `json:"epoch"` // the spool's: a state file from another spool is refused
	// LastStarted is the name of the last file ever started. Files whose
	// names sort at or below it are never started again, so that a file
	// removed and then restored by the file system (an unlink lost in a
	// power failure) is not sent twice.
	LastStarted string        `json:"last_started"`
	Files       []followEntry `json:"files"`
}

// readFollowState reads follow.json from the spool directory; a missing
// file is os.ErrNotExist.
func readFollowState(spoolDir string) (followState, error) {
	var st followState
	b, err := os.ReadFile(followStatePath(spoolDir))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: %w", followStatePath(spoolDir), err)
	}
	if st.Version != followStateVersion {
		return st, fmt.Errorf("%s: version %d, want %d", followStatePath(spoolDir), st.Version, followStateVersion)
	}
	return st, nil
}

// writeFollowState replaces follow.json durably: a temporary file, fsync,
// rename over the old one, fsync of the directory. A crash leaves either
// the old state or the new one.
func writeFollowState(spoolDir string, st followState) error {
	st.Version = followStateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := spool.WriteFile(spoolDir, followStateName, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("follow state: %w", err)
	}
	return nil
}

// followIgnored says whether a name in the follow directory is not (yet) a
// capture file: hidden, being written (.tmp, .part), or already handled
// (.sent, .bad). A recorder writes a file under such a name, or elsewhere
// on the same file system, and renames it into place when complete.
func followIgnored(name string) bool {
	if strings.HasPrefix(name, ".") {
		return true
	}
	for _, ext := range []string{".tmp", ".part", ".sent", ".bad"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// follower runs follow mode. It is used by one goroutine; pending is read
// by the progress goroutine.
type follower struct {
	c        *station.Client
	spoolDir string
	dir      string
	in       string
	maxFrame int
	rename   bool
	poll     time.Duration
	log      *slog.Logger

	state   followState
	warned  map[string]bool // names already warned about, so each is said once
	pending atomic.Int64    // len(state.Files), for the status line
}

// run follows the directory until ctx ends (nil) or the client stops (its
// error).
func (fw *follower) run(ctx context.Context) error {
	fw.warned = make(map[string]bool)
	st, err := readFollowState(fw.spoolDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		st = followState{Version: followStateVersion, Epoch: fw.c.Epoch()}
	case err != nil:
		return err
	case st.Epoch != fw.c.Epoch():
		return fmt.Errorf("%s belongs to spool epoch %d, but the spool has epoch %d: it was not written for this spool; move it away to start over (files already sent would be sent again)", followStatePath(fw.spoolDir), st.Epoch, fw.c.Epoch())
	}
	fw.state = st
	fw.pending.Store(int64(len(st.Files)))
	if err := fw.recover(ctx); err != nil {
		return fw.stopped(ctx, err)
	}
	t := time.NewTicker(fw.poll)
	defer t.Stop()
	for {
		if err := fw.finishAcked(); err != nil {
			return err
		}
		if err := fw.scan(ctx); err != nil {
			return fw.stopped(ctx, err)
		}
		if err := fw.finishAcked(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-fw.c.Done():
			return fw.c.Err()
		case <-t.C:
		}
	}
}

// stopped turns the error of a Send cut short by the end of ctx into nil:
// stopping mid-file is normal, the next run resumes the file.
func (fw *follower) stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil
	}
	return err
}

func (fw *follower) save() error {
	fw.pending.Store(int64(len(fw.state.Files)))
	return writeFollowState(fw.spoolDir, fw.state)
}

// recover finishes what a previous run left: recorded files that are gone
// are forgotten, and files whose frames the spool does not all hold are
// spooled again from the first frame it lacks.
func (fw *follower) recover(ctx context.Context) error {
	for i := 0; i < len(fw.state.Files); i++ {
		e := &fw.state.Files[i]
		fh, err := os.Open(filepath.Join(fw.dir, e.Name))
		if errors.Is(err, os.ErrNotExist) {
			// Frames in the spool are delivered from there; only those
			// it never took (or lost in a power failure) went with the file.
			if spooled := fw.c.Stats().Sent; !e.Complete || e.Last > spooled {
				fw.log.Warn("follow: a file not wholly spooled is gone: its frames that the spool does not hold are lost",
					"file", e.Name, "first", e.First, "complete", e.Complete, "last", e.Last, "spooled_through", spooled)
			}
			fw.state.Files = slices.Delete(fw.state.Files, i, i+1)
			i--
			if err := fw.save(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("follow: %w", err)
		}
		sent := fw.c.Stats().Sent
		if e.Complete && e.Last <= sent {
			fh.Close()
			continue
		}
		skip := uint64(0)
		if e.First <= sent+1 {
			skip = sent + 1 - e.First
		} else {
			// The spool ends before this file began (what covered the
			// numbers in between is gone): it starts again at the next
			// number, from its first frame.
			e.First, e.Complete = sent+1, false
			if err := fw.save(); err != nil {
				fh.Close()
				return err
			}
		}
		fw.log.Info("follow: resuming a file", "file", e.Name, "first", e.First, "frames already spooled", skip)
		err = fw.spoolFile(ctx, i, fh, skip)
		fh.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// scan starts the files of the directory that sort after the last one
// started, in name order.
func (fw *follower) scan(ctx context.Context) error {
	ents, err := os.ReadDir(fw.dir)
	if err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	for _, de := range ents { // ReadDir sorts by name
		name := de.Name()
		if followIgnored(name) || de.IsDir() {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if name <= fw.state.LastStarted {
			if !fw.warned[name] && !fw.tracked(name) {
				fw.warned[name] = true
				fw.log.Warn("follow: skipping a file that sorts at or before the last file started: files are sent in name order, once",
					"file", name, "last started", fw.state.LastStarted)
			}
			continue
		}
		path := filepath.Join(fw.dir, name)
		fh, err := os.Open(path)
		if err == nil {
			var fi os.FileInfo
			if fi, err = fh.Stat(); err == nil && !fi.Mode().IsRegular() {
				fh.Close()
				continue // a directory behind a symlink, a FIFO: not a capture
			}
		}
		if err != nil {
			if !fw.warned[name] {
				fw.warned[name] = true
				fw.log.Warn("follow: cannot open a file; retrying at each poll, later files wait", "file", name, "err", err)
			}
			if fh != nil {
				fh.Close()
			}
			return nil
		}
		// Recorded durably before its first frame is spooled.
		fw.state.Files = append(fw.state.Files, followEntry{Name: name, First: fw.c.Stats().Sent + 1})
		fw.state.LastStarted = name
		if err := fw.save(); err != nil {
			fh.Close()
			return err
		}
		fw.log.Info("follow: sending a file", "file", name, "first", fw.state.Files[len(fw.state.Files)-1].First)
		err = fw.spoolFile(ctx, len(fw.state.Files)-1, fh, 0)
		fh.Close()
		if err != nil {
			return err
		}
		if err := fw.finishAcked(); err != nil {
			return err
		}
	}
	return nil
}

func (fw *follower) tracked(name string) bool {
	for _, e := range fw.state.Files {
		if e.Name == name {
			return true
		}
	}
	return false
}

// spoolFile hands the frames of entry i's file to Send, skipping the first
// skip of them (already spooled), then records its last sequence number.
// An error from Send (ctx ended, the client stopped) leaves the entry
// incomplete for the next run to resume. A file that cannot be read to its
// end keeps the frames before the damage and is marked damaged.
func (fw *follower) spoolFile(ctx context.Context, i int, r io.Reader, skip uint64) error {
	name := fw.state.Files[i].Name
	var k uint64
	var damaged error
	for p, err := range followFrames(r, name, fw.in, fw.maxFrame) {
		if err != nil {
			damaged = err
			break
		}
		if k++; k <= skip {
			continue
		}
		if err := fw.c.Send(ctx, p); err != nil {
			return err
		}
	}
	e := &fw.state.Files[i]
	e.Last, e.Complete = fw.c.Stats().Sent, true
	if damaged != nil {
		e.Damaged = damaged.Error()
		fw.log.Error("follow: a file could not be read to its end: the frames before the damage are sent, the file will be renamed .bad", "file", name, "err", damaged)
	}
	return fw.save()
}

// followFrames yields the frames of a capture file in the --in format.
func followFrames(r io.Reader, name, in string, maxFrame int) iter.Seq2[[]byte, error] {
	if in != stationInFile {
		return stationRead(r, name, in, maxFrame)
	}
	return func(yield func([]byte, error) bool) {
		b, err := io.ReadAll(io.LimitReader(r, int64(maxFrame)+1))
		switch {
		case err != nil:
			yield(nil, fmt.Errorf("%s: %w", name, err))
		case len(b) > maxFrame:
			yield(nil, fmt.Errorf("%s: %w: larger than --max-frame %d", name, station.ErrPayloadTooLarge, maxFrame))
		case len(b) > 0: // an empty file has no frame
			yield(b, nil)
		}
	}
}

// finishAcked removes (or renames) every wholly acknowledged file, then
// forgets it durably: a crash in between finds the file gone at the next
// start, and forgets it then.
func (fw *follower) finishAcked() error {
	acked := fw.c.Stats().Acked
	var done []int
	for i, e := range fw.state.Files {
		if !e.Complete || e.Last > acked {
			continue
		}
		path := filepath.Join(fw.dir, e.Name)
		var err error
		switch {
		case e.Damaged != "":
			err = os.Rename(path, path+".bad")
		case fw.rename:
			err = os.Rename(path, path+".sent")
		default:
			err = os.Remove(path)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			if !fw.warned[e.Name] {
				fw.warned[e.Name] = true
				fw.log.Error("follow: cannot remove or rename an acknowledged file; retrying at each poll", "file", e.Name, "err", err)
			}
			continue
		}
		done = append(done, i)
	}
	if len(done) == 0 {
		return nil
	}
	if err := spool.SyncDir(fw.dir); err != nil {
		fw.log.Warn("follow: fsync of the follow directory failed", "err", err)
	}
	for j := len(done) - 1; j >= 0; j-- {
		fw.state.Files = slices.Delete(fw.state.Files, done[j], done[j]+1)
	}
	return fw.save()
}
