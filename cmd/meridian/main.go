// Command meridian is the Meridian telemetry gateway and its tools.
// See `meridian --help` and docs/operations.md.
package main

import (
	"context"
	"os"

	"github.com/meridian-telemetry/meridian/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
