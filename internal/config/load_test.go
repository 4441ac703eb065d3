package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// resolve runs the whole path as `meridian serve` does: bind, parse args,
// Resolve. A non-empty yaml is written to a file passed with --config.
func resolve(t *testing.T, yaml string, env []string, args ...string) (Config, error) {
	t.Helper()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	BindFlags(fs)
	if yaml != "" {
		p := filepath.Join(t.TempDir(), "meridian.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", p}, args...)
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return Resolve(fs, env)
}

func TestPrecedence(t *testing.T) {
	const file = "heartbeat: 40s\n"
	env := []string{"MERIDIAN_HEARTBEAT=50s"}
	flag := []string{"--heartbeat", "60s"}
	f := func(name, yaml string, env, args []string, want time.Duration) {
		t.Helper()
		c, err := resolve(t, yaml, env, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.Heartbeat != want {
			t.Errorf("%s: heartbeat %s, want %s", name, c.Heartbeat, want)
		}
	}
	f("defaults", "", nil, nil, 30*time.Second)
	f("file", file, nil, nil, 40*time.Second)
	f("env over file", file, env, nil, 50*time.Second)
	f("flag over env and file", file, env, flag, 60*time.Second)
	f("flag over file", file, nil, flag, 60*time.Second)
	f("flag over env", "", env, flag, 60*time.Second)
	f("flag set to its default still wins", file, env, []string{"--heartbeat=30s"}, 30*time.Second)
	f("unrelated env leaves it", file, []string{"PATH=/bin", "MERIDIAN_QUEUE=9"}, nil, 40*time.Second)
}

// Units work the same in every source.
func TestUnitsInEverySource(t *testing.T) {
	want := func(t *testing.T, c Config) {
		t.Helper()
		if c.StoreMaxBytes != 20*GiB || c.RetentionMaxAge != Duration(14*24*time.Hour) ||
			c.MaxFrame != 128*1024 || c.IdleTimeout != 48*time.Hour || c.RetentionMaxBytes != 1000*1000*1000*1000 {
			t.Errorf("got store-max-bytes %s, retention-max-age %s, max-frame %d, idle-timeout %s, retention-max-bytes %s",
				c.StoreMaxBytes, c.RetentionMaxAge, c.MaxFrame, c.IdleTimeout, c.RetentionMaxBytes)
		}
	}
	t.Run("file", func(t *testing.T) {
		c, err := resolve(t, "store-max-bytes: 20GiB\nretention-max-age: 14d\nmax-frame: 128KiB\nidle-timeout: 2d\nretention-max-bytes: 1TB\n", nil)
		if err != nil {
			t.Fatal(err)
		}
		want(t, c)
	})
	t.Run("env", func(t *testing.T) {
		c, err := resolve(t, "", []string{
			"MERIDIAN_STORE_MAX_BYTES=20GiB", "MERIDIAN_RETENTION_MAX_AGE=14d", "MERIDIAN_MAX_FRAME=128KiB",
			"MERIDIAN_IDLE_TIMEOUT=2d", "MERIDIAN_RETENTION_MAX_BYTES=1TB",
		})
		if err != nil {
			t.Fatal(err)
		}
		want(t, c)
	})
	t.Run("flags", func(t *testing.T) {
		c, err := resolve(t, "", nil, "--store-max-bytes=20GiB", "--retention-max-age", "14d",
			"--max-frame=128KiB", "--idle-timeout=2d", "--retention-max-bytes=1TB")
		if err != nil {
			t.Fatal(err)
		}
		want(t, c)
	})
}

func TestListsAndBools(t *testing.T) {
	f := func(name, yaml string, env, args []string, wantAllow []string, wantPProf bool) {
		t.Helper()
		c, err := resolve(t, yaml, env, args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Equal(c.AllowStations, wantAllow) || c.PProf != wantPProf {
			t.Errorf("%s: allow-stations %q pprof %v, want %q %v", name, c.AllowStations, c.PProf, wantAllow, wantPProf)
		}
	}
	f("default", "", nil, nil, nil, false)
	f("file list", "allow-stations: [\"*.gs.example\", kiruna]\npprof: true\n", nil, nil, []string{"*.gs.example", "kiruna"}, true)
	f("file block list", "allow-stations:\n  - a\n  - b\n", nil, nil, []string{"a", "b"}, false)
	f("file empty list", "allow-stations: []\n", nil, nil, []string{}, false)
	f("env list", "", []string{"MERIDIAN_ALLOW_STATIONS=a, b*", "MERIDIAN_PPROF=1"}, nil, []string{"a", "b*"}, true)
	f("env replaces file", "allow-stations: [x]\n", []string{"MERIDIAN_ALLOW_STATIONS=y"}, nil, []string{"y"}, false)
	f("flags accumulate", "allow-stations: [x]\n", nil, []string{"--allow-stations=a,b", "--allow-stations", "c", "--pprof"}, []string{"a", "b", "c"}, true)
	f("flag false over env", "", []string{"MERIDIAN_PPROF=true"}, []string{"--pprof=false"}, nil, false)
}

func TestErrors(t *testing.T) {
	f := func(name, yaml string, env, args []string, wantIs error, wantText ...string) {
		t.Helper()
		_, err := resolve(t, yaml, env, args...)
		if err == nil {
			t.Errorf("%s: no error", name)
			return
		}
		if wantIs != nil && !errors.Is(err, wantIs) {
			t.Errorf("%s: %v, want errors.Is %v", name, err, wantIs)
		}
		for _, w := range wantText {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %q", name, err, w)
			}
		}
	}
	// Unknown keys.
	f("unknown file key", "listen: :1\nheartbeet: 5s\n", nil, nil, ErrUnknownKey, "heartbeet", "line 2")
	f("unknown env var", "", []string{"MERIDIAN_HEARTBEET=5s"}, nil, ErrUnknownKey, "MERIDIAN_HEARTBEET")
	f("unknown flag", "", nil, []string{"--heartbeet=5s"}, nil, "heartbeet")
	f("duplicate file key", "queue: 1\nqueue: 2\n", nil, nil, nil, "queue", "line 1")

	// Bad values name the key and where it came from.
	f("bad duration in file", "heartbeat: soon\n", nil, nil, ErrBadValue, "heartbeat", "line 1", `"soon"`)
	f("bare number for a duration", "idle-timeout: 30\n", nil, nil, ErrBadValue, "idle-timeout")
	f("bad size in file", "store-max-bytes: 10GB5\n", nil, nil, ErrBadValue, "store-max-bytes")
	f("null in file", "listen:\n", nil, nil, ErrBadValue, "listen", "no value")
	f("map for a scalar", "listen: {a: b}\n", nil, nil, ErrBadValue, "listen")
	f("bad int in env", "", []string{"MERIDIAN_QUEUE=lots"}, nil, ErrBadValue, "MERIDIAN_QUEUE", "queue")
	f("bad size in env", "", []string{"MERIDIAN_STORE_MAX_BYTES=huge"}, nil, ErrBadValue, "MERIDIAN_STORE_MAX_BYTES")
	f("bad bool in env", "", []string{"MERIDIAN_PPROF=yes please"}, nil, ErrBadValue, "MERIDIAN_PPROF")
	f("max-frame above uint32", "", []string{"MERIDIAN_MAX_FRAME=8GiB"}, nil, ErrBadValue, "MERIDIAN_MAX_FRAME")
	f("bad duration flag", "", nil, []string{"--heartbeat=soon"}, nil, "--heartbeat", "soon")
	f("bad size flag", "", nil, []string{"--store-max-bytes=-1"}, nil, "--store-max-bytes")

	// Validation runs on the merged result and names the key.
	f("invalid after merge", "queue: 0\n", nil, nil, nil, "queue: must be at least 1")
	f("publish window bytes too small", "publish-window-bytes: 4KiB\n", nil, nil, nil, "publish-window-bytes: must be at least 64KiB")
	f("invalid from env", "", []string{"MERIDIAN_SINK=kafka"}, nil, nil, "sink", "kafka")
	// The shutdown budget counts the frame a station may still be finishing
	// at the drain deadline: 5s + 10s + 10s is not shorter than 25s, though
	// drain plus lame duck alone would be.
	f("dedup window shorter than two publish timeouts", "dedup-window: 8s\npublish-timeout: 5s\n", nil, nil, nil,
		"dedup-window", "twice publish-timeout")
	f("frame timeout in the shutdown budget", "drain-timeout: 5s\nframe-timeout: 10s\nlame-duck: 10s\nshutdown-grace: 25s\n",
		nil, nil, nil, "shutdown-grace", "frame-timeout (10s)")

	// The file itself.
	f("missing file", "", []string{"MERIDIAN_CONFIG=/nonexistent/meridian.yaml"}, nil, os.ErrNotExist, "/nonexistent/meridian.yaml")
	f("not a mapping", "- a\n- b\n", nil, nil, nil, "mapping")
	f("two documents", "queue: 1\n---\nqueue: 2\n", nil, nil, nil, "single YAML document")
	f("broken yaml", "queue: [1\n", nil, nil, nil, "yaml")
}

func TestConfigFileFromEnv(t *testing.T) {
	dir := t.TempDir()
	envFile, flagFile := filepath.Join(dir, "env.yaml"), filepath.Join(dir, "flag.yaml")
	if err := os.WriteFile(envFile, []byte("queue: 11\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(flagFile, []byte("queue: 22\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := resolve(t, "", []string{"MERIDIAN_CONFIG=" + envFile})
	if err != nil || c.Queue != 11 {
		t.Errorf("MERIDIAN_CONFIG: queue %d, %v; want 11", c.Queue, err)
	}
	c, err = resolve(t, "", []string{"MERIDIAN_CONFIG=" + envFile}, "--config", flagFile)
	if err != nil || c.Queue != 22 {
		t.Errorf("--config over MERIDIAN_CONFIG: queue %d, %v; want 22", c.Queue, err)
	}
	if c, err := resolve(t, "# nothing but a comment\n", nil); err != nil || !reflect.DeepEqual(c, Default()) {
		t.Errorf("empty file: %v", err)
	}
}

func TestPrint(t *testing.T) {
	c := Default()
	c.NATSToken = "tok-3cr3t"
	c.NATSUser = "gateway"
	c.AllowStations = []string{"*.gs.example", "kiruna"}
	c.StoreMaxBytes = 20 * GiB
	c.LameDuck = 10 * time.Second
	var out bytes.Buffer
	if err := Print(&out, c); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"nats-token: REDACTED\n", `nats-password: ""` + "\n", "nats-user: gateway\n",
		"store-max-bytes: 20GiB\n", "retention-max-age: 7d\n", "queue: 8192\n", "queue-bytes: 64MiB\n", "pprof: false\n",
		"lame-duck: 10s\n", "allow-stations: ['*.gs.example', kiruna]\n", "listen: :7777\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "tok-3cr3t") {
		t.Errorf("secret printed:\n%s", s)
	}
	if n := strings.Count(s, "\n"); n != len(Keys()) {
		t.Errorf("%d lines, want one per key (%d)", n, len(Keys()))
	}

	// The output is a config file that reads back to the same settings.
	c.NATSToken = ""
	out.Reset()
	if err := Print(&out, c); err != nil {
		t.Fatal(err)
	}
	got, err := resolve(t, out.String(), nil)
	if err != nil {
		t.Fatalf("reading Print's output back: %v\n%s", err, out.String())
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip:\ngot  %+v\nwant %+v", got, c)
	}
}

// One source of truth: every field is a key with help, and nothing else is.
func TestEveryKeyHasHelp(t *testing.T) {
	// Links is the one file-only key (yaml:"-", read by applyFile itself).
	if n := reflect.TypeFor[Config]().NumField() - 1; len(settings) != n {
		t.Errorf("%d settings for %d Config fields: every field needs a yaml tag", len(settings), n)
	}
	for _, s := range settings {
		if help[s.key] == "" {
			t.Errorf("key %q has no help text in flags.go", s.key)
		}
		if s.key == ConfigFlag {
			t.Errorf("key %q collides with the --config flag", s.key)
		}
	}
	for key := range help {
		if _, ok := byKey[key]; !ok {
			t.Errorf("help for %q, which is not a key", key)
		}
	}
	// Every field type has a parser and a printer that agree.
	def := reflect.ValueOf(Default())
	for _, s := range settings {
		v := reflect.New(def.Field(s.index).Type()).Elem()
		if err := parse(v, format(def.Field(s.index))); err != nil {
			t.Errorf("%s: default %q does not parse back: %v", s.key, format(def.Field(s.index)), err)
		}
	}
}

func TestFlagsShowDefaults(t *testing.T) {
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	BindFlags(fs)
	for key, want := range map[string]string{
		"heartbeat": "30s", "store-max-bytes": "10GiB", "retention-max-age": "7d", "listen": ":7777", "queue": "8192", "queue-bytes": "64MiB",
		"publish-window-bytes": "64MiB",
	} {
		f := fs.Lookup(key)
		if f == nil {
			t.Fatalf("no flag --%s", key)
		}
		if f.DefValue != want {
			t.Errorf("--%s default %q, want %q", key, f.DefValue, want)
		}
		if !strings.Contains(f.Usage, EnvName(key)) {
			t.Errorf("--%s usage does not name %s", key, EnvName(key))
		}
	}
	if fs.Lookup(ConfigFlag) == nil {
		t.Error("no --config flag")
	}
}

func TestEnvName(t *testing.T) {
	for key, want := range map[string]string{
		"idle-timeout": "MERIDIAN_IDLE_TIMEOUT", "nats-tls-ca": "MERIDIAN_NATS_TLS_CA", "pprof": "MERIDIAN_PPROF",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
	}
}
