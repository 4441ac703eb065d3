package bench

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/meridian-telemetry/meridian/internal/stream"
)

// VerifyOptions say where the gateway's durable stream is.
type VerifyOptions struct {
	URL    string // NATS server URL
	Token  string // NATS auth token, may be empty
	Stream string // stream name; empty means TELEMETRY
}

// VerifyReport says, per bench station, which acknowledged frames the
// stream lacks and which it holds more than once.
//
// A v2 message is identified by its stream headers: (Meridian-Station,
// Meridian-Epoch, Meridian-Seq), the key of exactly-once; it must match the
// station's name and epoch in the Report and the frame number in its
// payload, else it counts as unexpected. A v1 message (no Meridian-Epoch)
// has no such key across sessions: it is identified by its payload's
// station index and frame number, and a frame resent on a new session after
// a crash counts as a duplicate (v1 is at least once).
type VerifyReport struct {
	Stream     string          `json:"stream"`
	Read       uint64          `json:"read"`       // messages of this run read from the stream
	V1         uint64          `json:"v1"`         // of them, v1 messages (no epoch header)
	Packed     uint64          `json:"packed"`     // messages of the packed layout, each carrying several frames
	Missing    uint64          `json:"missing"`    // acknowledged frames not in the stream
	Duplicates uint64          `json:"duplicates"` // extra copies of frames
	Unexpected uint64          `json:"unexpected"` // frames of this run the bench did not send, or with headers that contradict the payload
	PerStation []StationVerify `json:"per_station"`
}

// StationVerify is one station's share of a VerifyReport.
type StationVerify struct {
	Index      uint32 `json:"index"`
	Name       string `json:"name,omitempty"`
	Epoch      uint64 `json:"epoch,omitempty"`
	Acked      uint64 `json:"acked"`
	Unique     uint64 `json:"unique"`
	Missing    uint64 `json:"missing"`
	Duplicates uint64 `json:"duplicates"`
}

// OK reports whether every acknowledged frame is in the stream exactly once.
func (v *VerifyReport) OK() bool { return v.Missing == 0 && v.Duplicates == 0 && v.Unexpected == 0 }

// Verify reads the stream from shortly before the run began up to its last
// message now, with an ordered consumer, and matches the bench headers of
// rep's run against what each station sent and had acknowledged.
func Verify(ctx context.Context, rep *Report, vo VerifyOptions) (*VerifyReport, error) {
	if vo.Stream == "" {
		vo.Stream = "TELEMETRY"
	}
	opts := []nats.Option{nats.Name("meridian-bench-verify")}
	if vo.Token != "" {
		opts = append(opts, nats.Token(vo.Token))
	}
	nc, err := nats.Connect(vo.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("bench: verify: connect to %s: %w", vo.URL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("bench: verify: %w", err)
	}
	str, err := js.Stream(ctx, vo.Stream)
	if err != nil {
		return nil, fmt.Errorf("bench: verify: stream %s: %w", vo.Stream, err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("bench: verify: stream %s: %w", vo.Stream, err)
	}

	v := &VerifyReport{Stream: vo.Stream}
	seen := make([]bitset, len(rep.PerStation))
	for i, s := range rep.PerStation {
		seen[i] = newBitset(s.Sent)
	}
	frame := func(hd nats.Header, data []byte, seq string) {
		h, err := ParseHeader(data)
		if err != nil || h.RunID != rep.RunID {
			return // another run's frame, or not a bench frame
		}
		v.Read++
		if int(h.Station) >= len(seen) || h.Frame == 0 || h.Frame > rep.PerStation[h.Station].Sent {
			v.Unexpected++
			return
		}
		if !v.matchHeaders(hd, seq, &rep.PerStation[h.Station], h.Frame) {
			v.Unexpected++
			return
		}
		if !seen[h.Station].set(h.Frame - 1) {
			v.Duplicates++
		}
	}
	record := func(msg jetstream.Msg) {
		hd := msg.Headers()
		count := hd.Get(stream.HeaderCount)
		if count == "" {
			frame(hd, msg.Data(), hd.Get(stream.HeaderSeq))
			return
		}
		// The packed layout: Meridian-Seq names the first frame.
		frames, err := stream.Unpack(msg.Data(), count)
		first, perr := strconv.ParseUint(hd.Get(stream.HeaderSeq), 10, 64)
		if err != nil || perr != nil {
			v.Unexpected++
			return
		}
		v.Packed++
		for i, f := range frames {
			frame(hd, f, strconv.FormatUint(first+uint64(i), 10))
		}
	}

	last := info.State.LastSeq
	// Clocks of the bench and NATS may differ a little: start early, the
	// run id filters out older frames.
	startAt := rep.Start.Add(-5 * time.Second)
	if last > 0 && !info.State.LastTime.Before(startAt) {
		cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartTimePolicy,
			OptStartTime:  &startAt,
		})
		if err != nil {
			return nil, fmt.Errorf("bench: verify: consumer: %w", err)
		}
		if err := readUntil(ctx, cons, last, record); err != nil {
			return nil, err
		}
	}

	for i, s := range rep.PerStation {
		sv := StationVerify{Index: s.Index, Name: s.Name, Epoch: s.Epoch, Acked: s.Acked, Unique: seen[i].count}
		sv.Missing = s.Acked - min(seen[i].countBelow(s.Acked), s.Acked)
		sv.Duplicates = seen[i].dups
		v.Missing += sv.Missing
		v.PerStation = append(v.PerStation, sv)
	}
	return v, nil
}

// matchHeaders checks a message's stream headers against the station that
// sent it and the frame number in its payload. A v2 message (with
// Meridian-Epoch) must carry the station's name and epoch and, as
// Meridian-Seq, the frame number: the bench numbers frames as its client
// does. A v1 message carries no station numbering to check.
func (v *VerifyReport) matchHeaders(h nats.Header, seqHdr string, s *StationReport, frameNo uint64) bool {
	e := h.Get(stream.HeaderEpoch)
	if e == "" {
		v.V1++
		return true
	}
	epoch, err1 := strconv.ParseUint(e, 10, 64)
	seq, err2 := strconv.ParseUint(seqHdr, 10, 64)
	return err1 == nil && err2 == nil && epoch == s.Epoch && seq == frameNo &&
		(s.Name == "" || h.Get(stream.HeaderStation) == s.Name)
}

// readUntil feeds every message up to stream sequence last to record.
func readUntil(ctx context.Context, cons jetstream.Consumer, last uint64, record func(jetstream.Msg)) error {
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("bench: verify: reading the stream: %w", err)
		}
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return fmt.Errorf("bench: verify: fetch: %w", err)
		}
		for msg := range batch.Messages() {
			record(msg)
			md, err := msg.Metadata()
			if err == nil && md.Sequence.Stream >= last {
				for range batch.Messages() { // drain the rest of the batch
				}
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("bench: verify: fetch: %w", err)
		}
	}
}

// bitset records which frames of a station were seen.
type bitset struct {
	words []uint64
	count uint64 // bits set
	dups  uint64 // set() on a bit already set
}

func newBitset(n uint64) bitset { return bitset{words: make([]uint64, (n+63)/64)} }

// set marks bit i and reports whether it was new.
func (b *bitset) set(i uint64) bool {
	w, m := i/64, uint64(1)<<(i%64)
	if b.words[w]&m != 0 {
		b.dups++
		return false
	}
	b.words[w] |= m
	b.count++
	return true
}

// countBelow counts the set bits among the first n.
func (b *bitset) countBelow(n uint64) uint64 {
	var c uint64
	full := n / 64
	for _, w := range b.words[:full] {
		c += uint64(bits.OnesCount64(w))
	}
	if r := n % 64; r > 0 {
		c += uint64(bits.OnesCount64(b.words[full] & (uint64(1)<<r - 1)))
	}
	return c
}
