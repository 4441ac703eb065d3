package cli

import (
	"time"

	"github.com/meridian-telemetry/meridian/internal/board"
	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/stream"
)

// newBoard wires the station board to the running gateway: its sessions,
// its state, the stream's and the queue's. The ops listener starts before
// the gateway and the stream exist (the store may take minutes to recover),
// so both come through getters that return nil until then; strm stays nil
// without a durable stream. The ops server runs the board's sampler.
func newBoard(gwOf func() *gateway.Server, strmOf func() *stream.Stream) *board.Board {
	src := board.Source{
		Sessions: func() []board.Session {
			if gw := gwOf(); gw != nil {
				return boardSessions(gw.Sessions())
			}
			return nil
		},
		Gateway: func() (string, string) {
			if gw := gwOf(); gw != nil {
				return gatewayState(gw)
			}
			return board.GatewayStarting, ""
		},
		Queue: func() board.QueueStatus {
			gw := gwOf()
			if gw == nil {
				return board.QueueStatus{}
			}
			agg := gw.Aggregator()
			st := agg.Stats()
			return board.QueueStatus{Depth: st.Depth, Capacity: int64(agg.Limit()), BlockedFor: st.BlockedFor, Waiting: st.Waiting}
		},
		Stream: func() board.StreamStatus {
			strm := strmOf()
			if strm == nil && gwOf() == nil {
				// The stream is opened before the gateway is built: until
				// then it may still be recovering its store.
				return board.StreamStatus{Starting: true}
			}
			return streamStatus(strm)
		},
	}
	return board.New(src, board.Options{})
}

// boardEnded is the gateway's session-end hook for the board: a session
// shorter than a sampling interval is listed too, with exact final figures.
func boardEnded(b *board.Board) gateway.Option {
	return gateway.WithSessionEnded(func(s gateway.Snapshot, r frame.Reason) {
		reason := r.String()
		if s.End != "" {
			reason = s.End // a ground-equipment connection's own end
		}
		b.Ended(boardSessions([]gateway.Snapshot{s})[0], reason, time.Now())
	})
}

// boardSessions converts the gateway's snapshots, with their link and
// framing. Ground-framing connections carry their link-quality counters;
// Meridian sessions have none; v2 sessions have a heartbeat RTT once their
// station answered a HEARTBEAT, v1 sessions never, and the board then omits
// the column.
func boardSessions(list []gateway.Snapshot) []board.Session {
	out := make([]board.Session, len(list))
	for i, s := range list {
		out[i] = board.Session{
			ID:           s.ID,
			Station:      s.Station,
			Link:         s.Link,
			Framing:      s.Framing,
			RemoteAddr:   s.RemoteAddr,
			TLSIdentity:  s.TLSIdentity,
			Since:        s.Since,
			Frames:       s.Frames,
			Bytes:        s.Bytes,
			Acked:        s.Acked,
			LastFrame:    s.LastFrame,
			HeartbeatRTT: s.RTT,
		}
		if q := s.Quality; q != nil {
			out[i].Quality = []board.Counter{
				{Name: "good", Value: q.Good}, {Name: "bad", Value: q.Bad},
				{Name: "crc", Value: q.CRC}, {Name: "sync losses", Value: q.SyncLoss},
				{Name: "discarded bytes", Value: q.Discarded}, {Name: "gaps", Value: q.Gaps},
				{Name: "repeats", Value: q.Repeats},
			}
		}
	}
	return out
}

// gatewayState is the gateway's own state, in the board's words.
func gatewayState(gw *gateway.Server) (state, detail string) {
	switch gw.State() {
	case gateway.StateStarting:
		return board.GatewayStarting, ""
	case gateway.StateLameDuck:
		return board.GatewayLameDuck, ""
	case gateway.StateDraining:
		return board.GatewayDraining, ""
	case gateway.StateFailed:
		if err := gw.Ready(); err != nil {
			return board.GatewayFailed, err.Error()
		}
		return board.GatewayFailed, ""
	}
	return board.GatewayReady, ""
}

// streamStatus reads the durable sink's state. Down and Outages come from
// the sink; the detail is Check's reason (the same text /readyz shows, no
// secret in it), and DownSince when the outage began.
func streamStatus(strm *stream.Stream) board.StreamStatus {
	if strm == nil {
		return board.StreamStatus{}
	}
	st := strm.Sink().Stats()
	out := board.StreamStatus{Configured: true, Down: st.Down, DownSince: st.DownSince, Outages: st.Outages}
	if err := strm.Sink().Check(); err != nil {
		out.Down = true
		out.Detail = err.Error()
	}
	return out
}
