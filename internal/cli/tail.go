package cli

import (
	"errors"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meridian-telemetry/meridian/internal/tail"
)

func newTailCmd() *cobra.Command {
	var o tail.Options
	vc, apid := new(int), new(int) // --vc, --apid: set on o only when given
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Follow or replay the telemetry stream",
		Long: `Follow or replay the telemetry stream without altering it: tail reads with
an ordered consumer that is gone when it exits.

Without --all, --since or --last only frames that arrive from now on are
shown, like tail -f; on a terminal, a follower that has seen nothing for a
second says so on stderr ("waiting for new frames; --all or --last N
replays"). --all starts with the first frame the stream holds, --since at a
time, --last N with the last N frames; the three exclude each other, and
each keeps following afterwards unless --count N is given, which exits
after N frames. The consumer is deleted when tail exits (and expires 5 s
after a tail that was killed).
It connects to --nats-url, authenticating with --nats-token or, when that is
not given, with the token the embedded server keeps in --data-dir/nats-token.

Formats:
  text  one line per frame: stream sequence, station, session, seq, time, size;
        for ground-framing units also link, framing, the CCSDS header fields
        (apid, seq_count; scid, vcid, mc_count, vc_count) and crc=bad when flagged
  json  {"stream_seq":N,"subject":"…","station":"…","session":"…","seq":N,
         "received":"…","size":N,"payload":"<base64>"} per line, with
         "link", "framing", "apid", "seq_count", "scid", "vcid", "mc_count",
         "vc_count" and "crc" when the unit has them
  hex   the text line, then a hex dump of the payload
  raw   the original length-prefixed frames, to pipe into
        'meridian station --in framed'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			o.Stderr = cmd.ErrOrStderr()
			if cmd.Flags().Changed("vc") {
				o.VC = vc
			}
			if cmd.Flags().Changed("apid") {
				o.APID = apid
			}
			err := tail.Run(ctx, o, cmd.OutOrStdout())
			if errors.Is(err, tail.ErrUsage) {
				return usage(err)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.NATS.URL, "nats-url", tail.DefaultURL, "NATS server(s) to read from, comma-separated")
	f.StringVar(&o.NATS.Token, "nats-token", "", "NATS token; default: the token in --data-dir/nats-token")
	f.StringVar(&o.NATS.Creds, "nats-creds", "", "NATS credentials file")
	f.StringVar(&o.NATS.User, "nats-user", "", "NATS user name")
	f.StringVar(&o.NATS.Password, "nats-password", "", "NATS password")
	f.StringVar(&o.NATS.TLSCA, "nats-tls-ca", "", "CA bundle (PEM) for the NATS server's certificate")
	f.StringVar(&o.NATS.TLSCert, "nats-tls-cert", "", "client certificate (PEM) for NATS")
	f.StringVar(&o.NATS.TLSKey, "nats-tls-key", "", "private key (PEM) of --nats-tls-cert")
	f.StringVar(&o.DataDir, "data-dir", tail.DefaultDataDir, "data directory of the embedded server, where its token is kept")
	f.StringVar(&o.Stream, "stream", "TELEMETRY", "stream name")
	f.StringVar(&o.Station, "station", "", "only this station: its identity (10.0.0.7, gs-1.example.net) or subject token (10-0-0-7), with its ground-framing sub-subjects")
	f.IntVar(vc, "vc", -1, "only transfer frames of this virtual channel, 0 to 7 (subject telemetry.<station>.vc<N>; every station without --station); -1: no filter")
	f.IntVar(apid, "apid", -1, "only space packets of this APID, 0 to 2047 (subject telemetry.<station>.apid<N>; every station without --station); -1: no filter")
	f.BoolVar(&o.All, "all", false, "start with the first frame in the stream")
	f.StringVar(&o.Since, "since", "", "start this far back (90s, 36h, 7d) or at this RFC 3339 time")
	f.IntVar(&o.Last, "last", 0, "start with the last N frames")
	f.IntVar(&o.Count, "count", 0, "exit after N frames (with --all, --since, --last or new ones); 0 follows until interrupted")
	f.StringVar(&o.Format, "format", tail.FormatText, "output format: text, json, hex or raw")
	return cmd
}
