package stream

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func BenchmarkRawAsync(b *testing.B) {
	cfg := testConfig(b)
	cfg.NATSListen = "127.0.0.1:0"
	st := openStream(b, cfg)
	var nc *nats.Conn = st.Conn()
	if os.Getenv("TCP") != "" {
		tok, _ := ReadToken(cfg.DataDir)
		var err error
		nc, err = Client{URL: st.ClientURL(), Token: tok}.Connect()
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
	}
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	data := make([]byte, 1024)
	hdrs := os.Getenv("HDR") != ""
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		m := &nats.Msg{Subject: "telemetry.x", Data: data}
		if os.Getenv("IDONLY") != "" {
			m.Header = nats.Header{HeaderMsgID: {fmt.Sprintf("abcdef/gs-1/%d", i)}}
		} else if os.Getenv("NOID") != "" {
			m.Header = nats.Header{HeaderStation: {"10.0.0.1"}, HeaderSession: {"gs-1@10.0.0.1:4000"}, HeaderSeq: {fmt.Sprint(i)},
				HeaderReceived: {time.Now().Format(time.RFC3339Nano)}}
		} else if hdrs {
			m.Header = nats.Header{HeaderStation: {"10.0.0.1"}, HeaderSession: {"gs-1@10.0.0.1:4000"}, HeaderSeq: {fmt.Sprint(i)},
				HeaderReceived: {time.Now().Format(time.RFC3339Nano)}, HeaderMsgID: {fmt.Sprintf("abcdef/gs-1/%d", i)}}
		}
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "frames/s")
	_ = context.Background()
}
