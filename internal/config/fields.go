package config

import (
	"encoding"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// EnvPrefix starts the environment variable of every key.
const EnvPrefix = "MERIDIAN_"

// setting is one Config field as the three sources see it. The list is built
// once by reflection over Config's yaml tags, so that a new field is a flag,
// an environment variable, a file key and a --print-config line with no code
// beyond its help text.
type setting struct {
	key    string // yaml tag: file key and flag name
	env    string // MERIDIAN_ + key upper-cased, '-' as '_'
	index  int    // field index in Config
	redact bool   // tagged redact:"true": printed as REDACTED
}

var (
	settings = describe()
	byKey    = indexBy(func(s setting) string { return s.key })
	byEnv    = indexBy(func(s setting) string { return s.env })
)

var (
	durationType  = reflect.TypeFor[time.Duration]()
	unmarshalType = reflect.TypeFor[encoding.TextUnmarshaler]()
	marshalType   = reflect.TypeFor[encoding.TextMarshaler]()
)

func describe() []setting {
	t := reflect.TypeFor[Config]()
	var out []setting
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if key == "" || key == "-" || !f.IsExported() {
			continue
		}
		out = append(out, setting{
			key:    key,
			env:    EnvName(key),
			index:  i,
			redact: f.Tag.Get("redact") == "true",
		})
	}
	return out
}

func indexBy(k func(setting) string) map[string]setting {
	m := make(map[string]setting, len(settings))
	for _, s := range settings {
		m[k(s)] = s
	}
	return m
}

// EnvName is the environment variable of a key: "idle-timeout" is
// MERIDIAN_IDLE_TIMEOUT.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
}

// Keys lists every configuration key in declaration order.
func Keys() []string {
	keys := make([]string, len(settings))
	for i, s := range settings {
		keys[i] = s.key
	}
	return keys
}

// badValue marks a value that does not parse, for errors.Is(err, ErrBadValue),
// without repeating "invalid value" in front of the parser's own message.
type badValue struct{ err error }

func (b badValue) Error() string        { return b.err.Error() }
func (b badValue) Unwrap() error        { return b.err }
func (b badValue) Is(target error) bool { return target == ErrBadValue }

// parse sets the addressable field v from its text form, the same for the
// file, the environment and flags. Durations accept days ("7d") and unsigned
// byte counts accept sizes ("64KiB") everywhere.
func parse(v reflect.Value, s string) error {
	if v.Addr().Type().Implements(unmarshalType) {
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			return badValue{err}
		}
		return nil
	}
	if v.Type() == durationType {
		d, err := ParseDuration(s)
		if err != nil {
			return badValue{err}
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return badValue{fmt.Errorf("invalid boolean %q: want true or false", s)}
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, v.Type().Bits())
		if err != nil {
			return badValue{fmt.Errorf("invalid integer %q", s)}
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := ParseSize(s)
		if err != nil {
			return badValue{err}
		}
		if v.OverflowUint(uint64(n)) {
			return badValue{fmt.Errorf("invalid size %q: above %d", s, uint64(1)<<v.Type().Bits()-1)}
		}
		v.SetUint(uint64(n))
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("config: no parser for %s", v.Type())
		}
		v.Set(reflect.ValueOf(splitList(s)))
	default:
		return fmt.Errorf("config: no parser for %s", v.Type())
	}
	return nil
}

// splitList reads a comma-separated list; "" is the empty list.
func splitList(s string) []string {
	out := []string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// format is the text form of a field, which parse reads back.
func format(v reflect.Value) string {
	if v.Type().Implements(marshalType) {
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err != nil {
			return fmt.Sprint(v.Interface())
		}
		return string(b)
	}
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	if v.Kind() == reflect.Slice {
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v.Interface())
}
