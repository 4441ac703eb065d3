// Package cli is the meridian command line: serve, tail, station and bench.
// Only cmd/meridian calls it, and only main exits the process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

// Exit statuses.
const (
	ExitOK     = 0
	ExitFail   = 1 // a runtime failure, or a shutdown that had to be forced
	ExitConfig = 2 // bad flags, environment, config file, or a conflicting stream
)

// usageError marks errors that are the user's to fix: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usage wraps err as a configuration error.
func usage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// exitError carries a specific exit status without another message.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// Main runs the command line and returns the process's exit status.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "meridian: %v\n", err)
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || isFlagError(err) {
		return ExitConfig
	}
	return ExitFail
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "meridian",
		Short: "Meridian: a telemetry gateway for satellite ground stations",
		Long: `Meridian accepts ground-station TCP sessions carrying length-prefixed
telemetry frames, makes every frame durable in a NATS JetStream stream, and
acknowledges to each station what is safe.

  meridian serve            run the gateway (embedded NATS JetStream by default)
  meridian tail             follow or replay the telemetry stream
  meridian station          send frames to a gateway (first contact, replays)
  meridian bench            load-generate against a gateway and report

Documentation: docs/protocol.md (wire contract), docs/operations.md.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return flagError{err} })
	root.AddCommand(newServeCmd(), newTailCmd(), newStationCmd(), newBenchCmd())
	return root
}

type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }
func (e flagError) Unwrap() error { return e.err }

func isFlagError(err error) bool {
	var fe flagError
	return errors.As(err, &fe)
}

// newLogger builds the slog logger on stderr that every subcommand uses.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, usage(fmt.Errorf("log-level: %w", err))
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, usage(fmt.Errorf("log-format: %q is not one of text, json", format))
}

// stderrOf returns the command's error stream (os.Stderr by default).
func stderrOf(cmd *cobra.Command) io.Writer {
	if w := cmd.ErrOrStderr(); w != nil {
		return w
	}
	return os.Stderr
}
