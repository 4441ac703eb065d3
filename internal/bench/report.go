package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// histogramWidth is the widest bar of the text histogram, in characters.
const histogramWidth = 40

// WriteText writes the report for people: totals, rates, latency
// percentiles, a text histogram of ACK latency and errors by reason.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "run %016x: %d stations, %d-byte frames, %s, %s\n", r.RunID, r.Stations, r.Size, r.Elapsed.Round(time.Millisecond), r.protocols())
	fmt.Fprintf(&b, "sent        %d\n", r.Sent)
	fmt.Fprintf(&b, "acknowledged %d", r.Acked)
	if r.Sent > r.Acked {
		fmt.Fprintf(&b, " (%d unacknowledged)", r.Sent-r.Acked)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "throughput  %.0f frames/s, %.2f MB/s\n", r.FramesPerSec, r.MBPerSec)
	fmt.Fprintf(&b, "reconnects  %d (%d frames resent, %d found stored on resume)\n", r.Reconnects, r.Resent, r.Skipped)
	l := r.Latency
	fmt.Fprintf(&b, "ACK latency (ms, %d frames): mean %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
		l.Count, l.Mean, l.P50, l.P90, l.P99, l.P999, l.Max)
	var peak uint64
	for _, row := range l.Rows {
		peak = max(peak, row.Count)
	}
	for _, row := range l.Rows {
		bar := 0
		if peak > 0 {
			bar = int((row.Count*histogramWidth + peak - 1) / peak)
		}
		pct := 0.0
		if l.Count > 0 {
			pct = 100 * float64(row.Count) / float64(l.Count)
		}
		fmt.Fprintf(&b, "  ≤ %10.3f ms %-*s %10d %5.1f%%\n", row.UpperMS, histogramWidth, strings.Repeat("#", bar), row.Count, pct)
	}
	if len(r.Errors) == 0 {
		b.WriteString("errors      none\n")
	} else {
		b.WriteString("errors by reason:\n")
		keys := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "  %-26s %d\n", k, r.Errors[k])
		}
	}
	if v := r.Verify; v != nil {
		verdict := "OK: every acknowledged frame is in the stream exactly once"
		if !v.OK() {
			verdict = "FAILED"
		}
		fmt.Fprintf(&b, "verify (stream %s): read %d (%d v1, %d packed messages), missing %d, duplicates %d, unexpected %d: %s\n",
			v.Stream, v.Read, v.V1, v.Packed, v.Missing, v.Duplicates, v.Unexpected, verdict)
		for _, s := range v.PerStation {
			if s.Missing > 0 || s.Duplicates > 0 {
				fmt.Fprintf(&b, "  station %d (%s epoch %d): acknowledged %d, unique %d, missing %d, duplicates %d\n",
					s.Index, s.Name, s.Epoch, s.Acked, s.Unique, s.Missing, s.Duplicates)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// protocols says which protocol the stations ended the run with: "v2",
// "v1", or a mix after some fell back.
func (r *Report) protocols() string {
	var n1, n2 int
	for _, s := range r.PerStation {
		switch s.Protocol {
		case 1:
			n1++
		case 2:
			n2++
		}
	}
	switch {
	case n1 > 0 && n2 > 0:
		return fmt.Sprintf("protocol v2 (%d stations fell back to v1)", n1)
	case n1 > 0:
		return "protocol v1"
	}
	return "protocol v2"
}
