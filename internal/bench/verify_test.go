package bench_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/meridian-telemetry/meridian/internal/bench"
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
}
