package config

import (
	"fmt"
	"reflect"

	"github.com/spf13/pflag"
)

// ConfigFlag is the flag naming the YAML config file; MERIDIAN_CONFIG is its
// environment form.
const ConfigFlag = "config"

// help is each key's flag usage. pflag appends the default, and the value
// type (duration, size, int...) is shown after the flag name, so the text
// says what the setting does, its unit when the type does not, and what the
// zero value means. TestEveryKeyHasHelp keeps it complete.
var help = map[string]string{
	"listen":        "station listener address, host:port",
	"max-frame":     "largest data-frame payload accepted, bytes (units allowed: 64KiB); at most 64MiB",
	"idle-timeout":  "a station that sends no byte for this long is disconnected",
	"frame-timeout": "a frame that has started must be complete within this long",
	"heartbeat":     "interval of HEARTBEAT frames to idle stations; 0 disables them",
	"write-timeout": "deadline of each write to a station (ACK, HEARTBEAT, CLOSE)",
	"queue":         "bound of the queue between sessions and the sink, in frames; a full queue slows every station down",
	"queue-bytes":   "bound of the same queue in bytes of frame buffers (size: 64MiB); whichever bound is reached first pushes back",
	"sink":          "where committed frames go: jetstream, stdout or discard",

	"drain-timeout":  "how long sessions may drain after GOAWAY before they are closed",
	"shutdown-grace": "bound of the whole shutdown; must exceed drain-timeout plus frame-timeout plus lame-duck",
	"lame-duck":      "on SIGTERM, spread GOAWAYs over this long so stations do not reconnect at once; 0 sends them all at once",

	"log-format": "log format: text or json",
	"log-level":  "log level: debug, info, warn or error",

	"data-dir":             "directory of the embedded NATS server's JetStream store",
	"nats-listen":          "client address of the embedded NATS server, host:port",
	"nats-url":             "URL of an external NATS server; empty runs the embedded server",
	"nats-creds":           "NATS credentials file for nats-url; empty: none",
	"nats-token":           "NATS token for nats-url; empty: none (secret: prefer MERIDIAN_NATS_TOKEN)",
	"nats-user":            "NATS user name for nats-url; empty: none",
	"nats-password":        "NATS password for nats-user (secret: prefer MERIDIAN_NATS_PASSWORD)",
	"nats-tls-ca":          "CA bundle (PEM) that nats-url's server certificate must chain to; empty: system roots",
	"nats-tls-cert":        "client certificate (PEM) presented to nats-url; empty: none",
	"nats-tls-key":         "private key (PEM) of nats-tls-cert",
	"stream":               "JetStream stream name",
	"stream-replicas":      "replicas of the stream, 1 to 5 (more than 1 needs a NATS cluster)",
	"store-max-bytes":      "size limit of the embedded server's JetStream file store (size: 512MiB, 10GiB, 1TB)",
	"retention-max-age":    "frames older than this are removed from the stream (duration; days allowed: 7d)",
	"retention-max-bytes":  "size limit of the stream (size: 10GiB); 0: store-max-bytes when embedded, no limit when external",
	"dedup-window":         "window in which a resent frame is recognised as a duplicate (duration; days allowed); at most retention-max-age",
	"sync":                 "how often the embedded store fsyncs: a duration, or always for every write",
	"publish-window":       "publishes in flight to JetStream before the sink waits for acknowledgements",
	"publish-window-bytes": "bound of the same publishes in payload bytes (size: 64MiB), at least 64KiB; whichever bound is reached first makes the sink wait (a single larger frame still passes)",
	"publish-timeout":      "how long the sink waits for a JetStream acknowledgement",
	"stream-layout":        "frames: one stream message per frame; packed: the frames of each batch of a protocol v2 session in one message (faster; consumers must unpack it: meridian tail does, see docs/protocol.md)",

	"http-listen":           "ops HTTP listener (the station board at /, /api/board, /metrics, /healthz, /readyz, /stations), host:port; empty disables it",
	"pprof":                 "serve /debug/pprof/ on the ops listener",
	"max-sessions":          "most station sessions open at once; beyond it connections are refused with server_busy",
	"max-sessions-per-ip":   "most sessions from one IP address; 0: no limit",
	"tls-cert":              "server certificate chain (PEM) for the station listener; empty: plain TCP",
	"tls-key":               "private key (PEM) of tls-cert",
	"tls-client-ca":         "CA bundle (PEM) that station client certificates must chain to; set: mutual TLS required",
	"tls-handshake-timeout": "bound of the TLS handshake of a station, and of the v2 handshake (HELLO to WELCOME; the HELLO of a station whose IP is not on allow-stations)",
	"allow-stations":        "station identities allowed to connect (the client-certificate name with mutual TLS, else a protocol v2 HELLO's name, else the remote IP), comma-separated names or globs (*.gs.example, 10.1.*); empty: any",
}

// BindFlags registers a flag for every configuration key, named as the key,
// with the built-in default, plus --config. Resolve reads them back; only
// flags given on the command line override the file and the environment.
func BindFlags(fs *pflag.FlagSet) {
	fs.String(ConfigFlag, "", "YAML configuration file; empty: none [env "+EnvPrefix+"CONFIG]")
	def := reflect.ValueOf(Default())
	for _, s := range settings {
		fv := &flagValue{v: reflect.New(def.Field(s.index).Type()).Elem()}
		fv.v.Set(def.Field(s.index))
		usage, ok := help[s.key]
		if !ok {
			usage = "(undocumented)"
		}
		fs.Var(fv, s.key, fmt.Sprintf("%s [env %s]", usage, s.env))
		if fv.v.Kind() == reflect.Bool {
			fs.Lookup(s.key).NoOptDefVal = "true" // --pprof alone means true
		}
	}
}

// flagValue is a pflag.Value over one Config field's type, holding the
// parsed value so that Resolve copies it instead of parsing text again.
type flagValue struct {
	v   reflect.Value // addressable, owned by the flag
	set bool          // Set has run: a list then appends instead of replacing the default
}

func (f *flagValue) String() string {
	if !f.v.IsValid() { // pflag may call String on a zero Value
		return ""
	}
	return format(f.v)
}

func (f *flagValue) Set(s string) error {
	if f.v.Kind() == reflect.Slice && f.set {
		// Repeated list flags accumulate: --allow-stations a --allow-stations b.
		f.v.Set(reflect.AppendSlice(f.v, reflect.ValueOf(splitList(s))))
		return nil
	}
	f.set = true
	return parse(f.v, s)
}

func (f *flagValue) Type() string {
	switch {
	case f.v.Type() == durationType || f.v.Type() == reflect.TypeFor[Duration]():
		return "duration"
	case f.v.Type() == reflect.TypeFor[Size]():
		return "size"
	case f.v.Kind() == reflect.Uint32 || f.v.Kind() == reflect.Uint64 || f.v.Kind() == reflect.Uint:
		return "size"
	case f.v.Kind() == reflect.Slice:
		return "strings"
	default:
		return f.v.Kind().String()
	}
}

// Compile-time checks that the units types stay usable as flag values too.
var (
	_ pflag.Value = (*Size)(nil)
	_ pflag.Value = (*Duration)(nil)
)
