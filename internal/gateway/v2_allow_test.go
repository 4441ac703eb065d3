package gateway_test

import (
	"testing"

	"github.com/meridian-telemetry/meridian/internal/frame"
	"github.com/meridian-telemetry/meridian/internal/gateway"
	"github.com/meridian-telemetry/meridian/internal/gateway/gatewaytest"
	"github.com/meridian-telemetry/meridian/internal/sink"
	"github.com/meridian-telemetry/meridian/internal/tlsid"
)

// An allow-list of addresses stays a filter on addresses in v2: a peer from
// an address not listed cannot pass it by naming itself after a listed
// address, nor by a name the address pattern happens to match; a listed
// name pattern admits a named station from anywhere; and no station may
// take another's address as its name.
func TestV2HelloNameCannotPassAnAddressFilter(t *testing.T) {
	allow, err := tlsid.NewAllowList([]string{"10.1.*", "gs-*"})
	if err != nil {
		t.Fatal(err)
	}
	mem := sink.NewMemory()
	g := gatewaytest.Start(t, gatewaytest.Config(), mem,
		gateway.WithAllow(allow.Allowed), gateway.WithAllowNames(allow.AllowedName))

	for _, name := range []string{"10.1.2.3", "10.1.evil", ""} {
		st := dial(t, g.Addr)
		st.hello(7, 1, name)
		_, cl := st.drainToEOF(wait)
		if cl == nil || cl.Reason != frame.ReasonUnauthorized {
			t.Fatalf("HELLO name %q from 127.0.0.1: got %+v, want CLOSE(7)", name, cl)
		}
	}
	st := dial(t, g.Addr)
	if next := st.handshake(7, 1, "gs-kiruna"); next != 1 {
		t.Fatalf("WELCOME next %d", next)
	}
	st.send([]byte("x"))
	if last, cl := st.finish(wait); last != 1 || cl != nil {
		t.Fatalf("named station: final ACK %d, CLOSE %+v", last, cl)
	}
	if f := mem.Frames(); len(f) != 1 || f[0].Station != "gs-kiruna" {
		t.Fatalf("stored %+v", f)
	}

	// Without any allow-list, a name may still not be another address.
	g2 := gatewaytest.Start(t, gatewaytest.Config(), sink.NewMemory())
	st = dial(t, g2.Addr)
	st.hello(7, 1, "192.0.2.1")
	if _, cl := st.drainToEOF(wait); cl == nil || cl.Reason != frame.ReasonUnauthorized {
		t.Fatalf("HELLO naming another address: %+v, want CLOSE(7)", cl)
	}
	st = dial(t, g2.Addr)
	if next := st.handshake(7, 1, "127.0.0.1"); next != 1 {
		t.Fatalf("HELLO naming its own address: WELCOME next %d", next)
	}
}
