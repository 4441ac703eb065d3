package station_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/station"
)

// startGateway runs an in-process gateway on loopback for the examples; a
// real station dials its gateway's address instead.
func startGateway(opts ...gateway.Option) (addr string, stop func()) {
	cfg := gatewaytest.Config()
	srv, err := gateway.New(cfg, sink.NewDiscard(), gatewaytest.Logger(), opts...)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	}
}

// A station dials its gateway, sends frames and closes, which waits until
// the gateway has acknowledged every one.
func Example() {
	addr, stop := startGateway()
	defer stop()

	ctx := context.Background()
	c, err := station.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	for _, reading := range []string{"temp=21.5", "temp=21.6", "temp=21.4"} {
		// Send returns once the client holds a copy; the frame is
		// written in the background and kept until acknowledged.
		if err := c.Send(ctx, []byte(reading)); err != nil {
			log.Fatal(err)
		}
	}
	closeCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Close(closeCtx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("sent %d, acknowledged %d\n", c.Sent(), c.Acked())
	// Output: sent 3, acknowledged 3
}

// WaitAcked waits for a checkpoint: here, until everything sent so far is
// durable, before the station deletes its local copy.
func ExampleClient_WaitAcked() {
	addr, stop := startGateway()
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := station.Dial(ctx, addr, station.WithWindow(64))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	for i := range 100 {
		if err := c.Send(ctx, fmt.Appendf(nil, "pass-42 chunk %d", i)); err != nil {
			log.Fatal(err)
		}
	}
	if err := c.WaitAcked(ctx, c.Sent()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("durable:", c.Acked())
	// Output: durable: 100
}

// A gateway's refusal arrives as a *CloseError; errors.Is tells the reasons
// apart. Refusals that retrying cannot fix stop the client.
func ExampleCloseError() {
	addr, stop := startGateway(gateway.WithAllow(func(string) bool { return false }))
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := station.Dial(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	c.Send(ctx, []byte("hello"))
	err = c.WaitAcked(ctx, 1)

	var ce *station.CloseError
	if errors.As(err, &ce) {
		fmt.Println("reason:", ce.Reason, "fatal:", ce.Reason.Fatal())
	}
	fmt.Println("not authorized:", errors.Is(err, station.ErrNotAuthorized))
	fmt.Println("Close reports it too:", errors.Is(c.Close(ctx), station.ErrNotAuthorized))
	// Output:
	// reason: not_authorized fatal: true
	// not authorized: true
	// Close reports it too: true
}

// Options tune the client to the gateway's settings and the link.
func ExampleDial_options() {
	addr, stop := startGateway()
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := station.Dial(ctx, addr,
		station.WithMaxFrame(16<<10),          // the gateway's --max-frame
		station.WithWindow(256),               // frames in flight
		station.WithKeepalive(15*time.Second), // below the gateway's --idle-timeout
		station.WithDeadTimeout(time.Minute),  // a few of the gateway's --heartbeat
		station.WithReconnect(station.ReconnectPolicy{Initial: 200 * time.Millisecond, Max: 30 * time.Second}),
		station.WithOnDisconnect(func(err error) { fmt.Println("reconnecting after:", err) }),
	)
	if err != nil {
		log.Fatal(err)
	}
	err = c.Send(ctx, make([]byte, 20<<10))
	fmt.Println(errors.Is(err, station.ErrPayloadTooLarge))
	fmt.Println(c.Close(ctx))
	// Output:
	// true
	// <nil>
}

// A spool that kept its unacknowledged frames across a restart resumes its
// numbering: the same epoch, and the sequence number of its oldest frame.
// The gateway drops what it already stored and acknowledges by sequence.
func ExampleWithEpoch() {
	addr, stop := startGateway()
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Read from the spool: epoch 7, frames 41 and 42 unacknowledged.
	c, err := station.Dial(ctx, addr, station.WithEpoch(7), station.WithFirstSeq(41), station.WithName("gs-spool"))
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range []string{"frame 41", "frame 42"} {
		if err := c.Send(ctx, []byte(f)); err != nil {
			log.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("epoch %d, protocol v%d, acknowledged through %d\n", c.Epoch(), c.ProtocolVersion(), c.Acked())
	// Output: epoch 7, protocol v2, acknowledged through 42
}
