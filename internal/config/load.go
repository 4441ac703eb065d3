package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Errors of Resolve, wrapped with where the setting came from and its key.
var (
	ErrUnknownKey = errors.New("unknown key")
	ErrBadValue   = errors.New("invalid value")
)

// Resolve builds the effective configuration: the defaults, then the YAML
// file named by --config (or MERIDIAN_CONFIG), then MERIDIAN_* variables
// from environ, then the flags set on the command line, and validates the
// result. Later sources win. fs must have been bound with BindFlags and
// parsed; a nil fs skips flags. environ is os.Environ() in production.
func Resolve(fs *pflag.FlagSet, environ []string) (Config, error) {
	c := Default()
	env, err := environment(environ)
	if err != nil {
		return Config{}, err
	}

	file := env[EnvPrefix+"CONFIG"]
	if fs != nil {
		if f := fs.Lookup(ConfigFlag); f != nil && f.Changed {
			file = f.Value.String()
		}
	}
	if file != "" {
		if err := applyFile(&c, file); err != nil {
			return Config{}, err
		}
	}
	if err := applyEnv(&c, env); err != nil {
		return Config{}, err
	}
	if fs != nil {
		applyFlags(&c, fs)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("invalid configuration: %w", err)
	}
	return c, nil
}

// environment picks the MERIDIAN_* variables out of environ, refusing any
// that names no key: a misspelt variable silently ignored is a setting the
// operator believes is in force.
func environment(environ []string) (map[string]string, error) {
	env := make(map[string]string)
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		if _, seen := env[name]; seen {
			continue // the first wins, as with os.Getenv
		}
		if _, known := byEnv[name]; !known && name != EnvPrefix+"CONFIG" {
			return nil, fmt.Errorf("environment variable %s: %w (no setting %q; see meridian serve --help)",
				name, ErrUnknownKey, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, EnvPrefix), "_", "-")))
		}
		env[name] = value
	}
	return env, nil
}

func applyEnv(c *Config, env map[string]string) error {
	v := reflect.ValueOf(c).Elem()
	for _, s := range settings {
		value, ok := env[s.env]
		if !ok {
			continue
		}
		if err := parse(v.Field(s.index), value); err != nil {
			return fmt.Errorf("environment variable %s (%s): %w", s.env, s.key, err)
		}
	}
	return nil
}

func applyFlags(c *Config, fs *pflag.FlagSet) {
	v := reflect.ValueOf(c).Elem()
	for _, s := range settings {
		f := fs.Lookup(s.key)
		if f == nil || !f.Changed {
			continue
		}
		if fv, ok := f.Value.(*flagValue); ok {
			v.Field(s.index).Set(fv.v)
		}
	}
}

// applyFile reads a YAML mapping of key: value. It walks the node tree
// rather than decoding into Config with KnownFields, for three reasons: the
// same parser then serves all three sources ("7d" and "10GiB" work in the
// file as on the command line), an unknown key is reported by its own name
// and line, and a bare number is refused for a duration instead of being
// read as nanoseconds.
func applyFile(c *Config, file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	return applyYAML(c, file, data)
}

// applyYAML is applyFile on data read from file.
func applyYAML(c *Config, file string, data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return nil // an empty file sets nothing
	case err != nil:
		return fmt.Errorf("config file %s: %w", file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: want a single YAML document", file)
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("config file %s: line %d: want a mapping of key: value", file, root.Line)
	}

	v := reflect.ValueOf(c).Elem()
	seen := make(map[string]int)
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, n := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("config file %s: line %d: %s", file, k.Line, k.Value)
		if k.Value == LinksKey {
			if line, dup := seen[k.Value]; dup {
				return fmt.Errorf("%s: already set on line %d", where, line)
			}
			seen[k.Value] = k.Line
			links, err := parseLinks(file, n)
			if err != nil {
				return err
			}
			c.Links = links
			continue
		}
		s, ok := byKey[k.Value]
		if !ok {
			return fmt.Errorf("%s: %w", where, ErrUnknownKey)
		}
		if line, dup := seen[k.Value]; dup {
			return fmt.Errorf("%s: already set on line %d", where, line)
		}
		seen[k.Value] = k.Line
		text, err := nodeText(n, v.Field(s.index).Kind() == reflect.Slice)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := parse(v.Field(s.index), text); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	return nil
}

// nodeText is the text form parse reads: a scalar's value, or a list's items
// joined with commas.
func nodeText(n *yaml.Node, list bool) (string, error) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!null":
		return "", badValue{errors.New("no value (remove the key to use the default)")}
	case list && n.Kind == yaml.SequenceNode:
		items := make([]string, 0, len(n.Content))
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return "", badValue{fmt.Errorf("line %d: list items must be plain values", item.Line)}
			}
			if strings.Contains(item.Value, ",") {
				return "", badValue{fmt.Errorf("line %d: %q: a list item cannot contain a comma", item.Line, item.Value)}
			}
			items = append(items, item.Value)
		}
		return strings.Join(items, ","), nil
	case list && n.Kind == yaml.ScalarNode:
		return n.Value, nil // "a, b" is accepted as in the environment
	case n.Kind == yaml.ScalarNode:
		return n.Value, nil
	default:
		return "", badValue{errors.New("want a single value")}
	}
}

// Redacted replaces a secret's value in Print's output.
const Redacted = "REDACTED"

// Print writes c as a YAML config file, every key in declaration order, with
// secrets (fields tagged redact:"true") shown as REDACTED when set. Resolve
// reads the output back to the same configuration, secrets aside.
func Print(w io.Writer, c Config) error {
	root := &yaml.Node{Kind: yaml.MappingNode}
	v := reflect.ValueOf(c)
	for _, s := range settings {
		f := v.Field(s.index)
		var value any
		switch {
		case s.redact && !f.IsZero():
			value = Redacted
		case f.Type().Implements(marshalType) || f.Type() == durationType:
			value = format(f) // "10GiB", "7d", "30s"
		case f.Kind() == reflect.Slice:
			value = append([]string{}, f.Interface().([]string)...)
		case f.Kind() == reflect.Bool:
			value = f.Bool()
		case f.CanInt():
			value = f.Int()
		case f.CanUint():
			value = f.Uint()
		default:
			value = format(f)
		}
		var n yaml.Node
		if err := n.Encode(value); err != nil {
			return fmt.Errorf("print config: %s: %w", s.key, err)
		}
		if n.Kind == yaml.SequenceNode {
			n.Style = yaml.FlowStyle
		}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: s.key}, &n)
	}
	if len(c.Links) > 0 {
		n, err := linksNode(c.Links)
		if err != nil {
			return err
		}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: LinksKey}, n)
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	return nil
}
