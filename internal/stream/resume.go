package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/meridian-telemetry/meridian/internal/pipeline"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stored is the last message the stream holds on a station's subject, as
// protocol v2 resumes from it (docs/protocol.md, "Where to resume").
type Stored struct {
	Found   bool   // the subject holds a message
	Station string // Meridian-Station: the identity that sent it
	Epoch   uint64 // Meridian-Epoch; 0 for a v1 message
	Seq     uint64 // Meridian-Seq
	Acked   uint64 // Meridian-Acked (v2): every frame of Epoch up to it was stored
	Count   uint64 // Meridian-Count: frames of a packed message, Seq to Seq+Count-1; 0 otherwise
}

// jsErrCodeNoMessageFound is JetStream's 404 "no message found"
// (JSNoMessageFoundErr, err_code 10037).
const jsErrCodeNoMessageFound jetstream.ErrorCode = 10037

// LastStored reads the last message on identity's subject. It asks the
// stream's leader with STREAM.MSG.GET, never a direct get: a direct get may
// be answered by a follower that lags (nats-server jetstream_cluster.go),
// and a resume point read from it would be older than what is stored.
func (s *Stream) LastStored(ctx context.Context, identity string) (Stored, error) {
	return lastStored(ctx, s.nc, s.name, Subject(identity))
}

func lastStored(ctx context.Context, nc *nats.Conn, stream, subject string) (Stored, error) {
	req, _ := json.Marshal(struct {
		LastBySubj string `json:"last_by_subj"`
	}{subject})
	m, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return Stored{}, fmt.Errorf("stream: last message on %s: %w", subject, err)
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Header []byte `json:"hdrs"`
		} `json:"message"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return Stored{}, fmt.Errorf("stream: last message on %s: unreadable reply: %w", subject, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jsErrCodeNoMessageFound {
			return Stored{}, nil
		}
		return Stored{}, fmt.Errorf("stream: last message on %s: %w", subject, resp.Error)
	}
	if resp.Message == nil {
		return Stored{}, fmt.Errorf("stream: last message on %s: empty reply", subject)
	}
	st := Stored{Found: true}
	if len(resp.Message.Header) == 0 {
		return st, nil // not a gateway's message: nothing to resume from
	}
	h, err := nats.DecodeHeadersMsg(resp.Message.Header)
	if err != nil {
		return st, nil // not a gateway's message either: the gateway resumes from its own record
	}
	st.Station = h.Get(HeaderStation)
	var errs []error
	num := func(key string) uint64 {
		v := h.Get(key)
		if v == "" {
			return 0
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", key, v, err))
		}
		return n
	}
	st.Epoch, st.Seq, st.Acked, st.Count = num(HeaderEpoch), num(HeaderSeq), num(HeaderAcked), num(HeaderCount)
	// A message whose numbering cannot be the gateway's (unreadable, a
	// packed count no batch can hold, a range that wraps, a floor above
	// its frame) is another writer's: reported with no station, so that
	// the gateway resumes from its own record rather than be misled, or
	// locked out, by it.
	if errors.Join(errs...) != nil || st.Count > uint64(pipeline.MaxSlab/pipeline.PackedRecord(0)) ||
		st.Seq+st.Count < st.Seq || st.Acked >= st.Seq && st.Seq != 0 {
		return Stored{Found: true}, nil
	}
	return st, nil
}

// Transient reports whether a LastStored error may pass by asking again: a
// timeout, no responders, or JetStream not ready (a leader election).
func Transient(err error) bool { return notReady(err) }
