package bench_test

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/meridian-telemetry/meridian/internal/bench"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/stream"
)

// TestVerifyEndToEnd runs a bench through a gateway into the embedded
// JetStream, then checks that Verify finds every frame once, and that it
// notices a duplicate and a missing frame planted afterwards.
func TestVerifyEndToEnd(t *testing.T) {
	cfg := stream.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", StoreMaxBytes: 64 << 20}
	ctx := testCtx(t)
	st, err := stream.Open(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	gw := gatewaytest.Start(t, gatewaytest.Config(), st.Sink())

	rep, err := bench.Run(ctx, bench.Options{Addr: gw.Addr, Stations: 2, Size: 64, Frames: 200, MaxDuration: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Acked != 400 {
		t.Fatalf("acked %d of %d", rep.Acked, rep.Sent)
	}
	token, err := stream.ReadToken(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	vo := bench.VerifyOptions{URL: st.ClientURL(), Token: token, Stream: stream.DefaultName}
	v, err := bench.Verify(ctx, rep, vo)
	if err != nil {
		t.Fatal(err)
	}
	if !v.OK() || v.Read != 400 || len(v.PerStation) != 2 || v.PerStation[1].Unique != 200 {
		t.Fatalf("verify %+v", v)
	}

	// Plant a duplicate of station 1's frame 7, and pretend station 0 had
	// one more frame acknowledged than the stream holds.
	dup := make([]byte, 64)
	bench.PutHeader(dup, bench.Header{RunID: rep.RunID, Station: 1, Frame: 7})
	if _, err := st.JetStream().Publish(ctx, stream.Subject("planted"), dup); err != nil {
		t.Fatal(err)
	}
	rep.PerStation[0].Sent++
	rep.PerStation[0].Acked++
	v, err = bench.Verify(ctx, rep, vo)
	if err != nil {
		t.Fatal(err)
	}
	if v.OK() || v.Duplicates != 1 || v.Missing != 1 || v.PerStation[0].Missing != 1 || v.PerStation[1].Duplicates != 1 {
		t.Fatalf("verify after planting %+v", v)
	}

	// A v2 message whose headers contradict its payload (frame 9 stored as
	// seq 8 of the station's epoch) is unexpected, not a frame of it.
	m := nats.NewMsg(stream.Subject("planted"))
	m.Data = make([]byte, 64)
	bench.PutHeader(m.Data, bench.Header{RunID: rep.RunID, Station: 1, Frame: 9})
	m.Header.Set(stream.HeaderStation, rep.PerStation[1].Name)
	m.Header.Set(stream.HeaderEpoch, strconv.FormatUint(rep.PerStation[1].Epoch, 10))
	m.Header.Set(stream.HeaderSeq, "8")
	if _, err := st.JetStream().PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	v, err = bench.Verify(ctx, rep, vo)
	if err != nil {
		t.Fatal(err)
	}
	if v.Unexpected != 1 || v.Duplicates != 1 || v.V1 != 1 {
		t.Fatalf("verify after planting a contradicting v2 message %+v", v)
	}
}

// TestVerifyCrashRestart is `meridian bench --verify` through a gateway
// crash: the gateway is closed without a drain while 4 stations send, with
// frames in flight, and a new one starts on the same address and stream,
// resuming v2 stations from the stream as `meridian serve` does. The
// stations keep their unacknowledged frames and resume by epoch: Verify
// must find 0 missing and 0 duplicates.
func TestVerifyCrashRestart(t *testing.T) {
	cfg := stream.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", StoreMaxBytes: 256 << 20}
	ctx := testCtx(t)
	st, err := stream.Open(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	resume := gateway.WithResume(func(ctx context.Context, id string) (gateway.Stored, error) {
		s, err := st.LastStored(ctx, id)
		return gateway.Stored(s), err
	})
	gw := gatewaytest.Start(t, gatewaytest.Config(), st.Sink(), resume)

	const stations, frames = 4, 20000
	crash := make(chan uint64, 1) // frames in flight when the run passed a quarter
	type result struct {
		rep *bench.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := bench.Run(ctx, bench.Options{
			Addr: gw.Addr, Stations: stations, Size: 64, Frames: frames, Window: 512,
			MaxDuration: 18 * time.Second, ProgressInterval: time.Millisecond,
			Progress: func(p bench.Progress) {
				if p.Acked > stations*frames/4 && p.InFlight > 0 {
					select {
					case crash <- p.InFlight:
					default:
					}
				}
			},
		})
		done <- result{rep, err}
	}()
	var inFlight uint64
	select {
	case inFlight = <-crash:
	case r := <-done:
		t.Fatalf("the run ended before the crash: %+v, %v", r.rep, r.err)
	}
	gw.Server.Close()
	gatewaytest.StartAt(t, gw.Addr, gatewaytest.Config(), st.Sink(), resume)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	rep := r.rep
	if rep.Acked != stations*frames || rep.Reconnects < stations || rep.Resent+rep.Skipped == 0 {
		t.Fatalf("acked %d of %d, %d reconnects: %+v", rep.Acked, rep.Sent, rep.Reconnects, rep.PerStation)
	}
	token, err := stream.ReadToken(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := bench.Verify(ctx, rep, bench.VerifyOptions{URL: st.ClientURL(), Token: token, Stream: stream.DefaultName})
	if err != nil {
		t.Fatal(err)
	}
	if !v.OK() || v.Read != stations*frames || v.V1 != 0 {
		t.Fatalf("verify after a crash %+v", v)
	}
	t.Logf("%d frames in flight at the crash; %d resent, %d found stored on resume", inFlight, rep.Resent, rep.Skipped)
}
