package cli

import (
	"testing"

	"github.com/meridian-telemetry/meridian/internal/config"
	"github.com/meridian-telemetry/meridian/internal/gateway"
)

// The gateway's own defaults, used by tests and programs that embed it, are
// the defaults of `meridian serve`.
func TestGatewayDefaultsMatchServe(t *testing.T) {
	if got, want := gatewayConfig(config.Default()), gateway.DefaultConfig(); got != want {
		t.Errorf("gatewayConfig(config.Default()) = %+v\ngateway.DefaultConfig() = %+v", got, want)
	}
}
