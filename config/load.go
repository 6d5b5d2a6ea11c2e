package config

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
)

//go:embed default.yaml
var embeddedDefault []byte

// EmbeddedDefault returns the YAML of the embedded default config.
func EmbeddedDefault() []byte { return append([]byte(nil), embeddedDefault...) }

// DefaultFile is the config file `ballast run` looks for in the working
// directory when no -c flag is given.
const DefaultFile = "ballast.yaml"

// EnvPrefix starts every environment override. A double underscore separates
// levels: BALLAST_ADMIN__LISTEN=0.0.0.0:9901 sets admin.listen.
const EnvPrefix = "BALLAST_"

// Source says where a config comes from. Later layers override earlier ones:
// built-in defaults, then the file (or the embedded default), then the
// environment, then flags.
type Source struct {
	// File is the YAML file to read. Empty means the embedded default.
	File string
	// Environ is the environment, in os.Environ form. Nil means os.Environ().
	// It provides both BALLAST_* overrides and ${NAME} references.
	Environ []string
	// Flags are overrides by dotted key ("listen", "admin.listen").
	Flags map[string]any
}

// Origin describes where the config came from, for logs.
func (s Source) Origin() string {
	if s.File == "" {
		return "embedded default"
	}
	return s.File
}

// Load reads, merges, expands and validates a config. It reports every
// problem at once, joined with errors.Join, each prefixed by its path. Every
// validation problem matches ErrInvalid.
func Load(src Source) (*Config, error) {
	data := embeddedDefault
	if src.File != "" {
		b, err := os.ReadFile(src.File)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		data = b
	}
	return parse(data, src)
}

// Parse is Load for YAML already in memory (src.File is used only in
// messages).
func Parse(data []byte, src Source) (*Config, error) { return parse(data, src) }

func parse(data []byte, src Source) (*Config, error) {
	env := src.Environ
	if env == nil {
		env = os.Environ()
	}
	k := koanf.New(".")
	if err := k.Load(confmap.Provider(builtinDefaults(), ""), nil); err != nil {
		return nil, fmt.Errorf("config: defaults: %w", err)
	}
	if err := k.Load(rawbytes.Provider(data), yaml.Parser()); err != nil {
		return nil, fmt.Errorf("config: %s: %w", src.Origin(), &FieldError{Msg: "not valid YAML: " + err.Error()})
	}
	overrides := envOverrides(env)
	if err := k.Load(confmap.Provider(overrides, "."), nil); err != nil {
		return nil, fmt.Errorf("config: environment: %w", err)
	}
	if len(src.Flags) > 0 {
		if err := k.Load(confmap.Provider(src.Flags, "."), nil); err != nil {
			return nil, fmt.Errorf("config: flags: %w", err)
		}
	}
	// ${NAME} references are expanded before the shape check, so that one
	// may stand for a duration, a size or a number as well as a string.
	raw := k.Raw()
	expanded, expandErrs := expand("", raw, envLookup(env))
	cleaned, shapeErrs := pruneShape("", expanded, reflect.TypeFor[Config]())
	unexpandMessages(shapeErrs, raw, expanded)
	explainEnv(shapeErrs, overrides, true)
	shapeErrs = append(shapeErrs, expandErrs...)
	live, _ := cleaned.(map[string]any)
	if live == nil {
		live = map[string]any{}
	}
	cfg, err := decode(live)
	if err != nil {
		return nil, err
	}
	// The display copy keeps ${NAME} references unexpanded: /config shows
	// where a secret comes from, never the secret.
	display, err := decode(displayMap(raw, live))
	if err != nil {
		return nil, err
	}
	if errs := withoutPaths(Problems(cfg.Validate()), shapeErrs); len(shapeErrs)+len(errs) > 0 {
		unexpandMessages(errs, raw, expanded)
		explainEnv(errs, overrides, false)
		return nil, errors.Join(append(shapeErrs, errs...)...)
	}
	cfg.display = display
	cfg.origin = src.Origin()
	return cfg, nil
}

func builtinDefaults() map[string]any {
	return map[string]any{
		"listen":           "127.0.0.1:8080",
		"admin":            map[string]any{"listen": "127.0.0.1:9901", "allow_debug": false},
		"log":              map[string]any{"requests": true, "success_sample": 1.0, "flush_interval": "1s"},
		"shutdown_timeout": "30s",
		"shutdown_delay":   "0s",
		"procs":            0,
		"server":           map[string]any{"max_header_bytes": "16KiB", "idle_timeout": "90s", "read_timeout": "60s"},
		"state": map[string]any{"backend": "", "max_records": 10000, "max_response_bytes": "1MiB", "sweep_every": "1m",
			"redis": map[string]any{"key_prefix": "ballast:", "dial_timeout": "1s", "read_timeout": "500ms",
				"write_timeout": "500ms", "op_timeout": "500ms", "on_error": "fail_open"}},
		"notify": notifyDefaults(),
		"defaults": map[string]any{
			"timeouts":    map[string]any{"connect": "2s", "per_try": "30s", "idle": "30s", "total": "120s"},
			"max_body":    "10MiB",
			"hedge_after": "0",
			"retry": map[string]any{
				"attempts":        3,
				"on":              []any{"connect-failure", "reset", "timeout", "invalid", "429", "502", "503", "504", "529"},
				"backoff":         map[string]any{"base": "100ms", "max": "10s"},
				"max_retry_after": "60s",
				"max_cooldown":    "24h",
				"budget":          map[string]any{"ratio": 0.2, "min_per_second": 10},
				"unsafe_methods":  false,
			},
			"breaker": map[string]any{
				"enabled": true, "failures": 20, "failure_ratio": 0.5, "min_requests": 20,
				"open_for": "10s", "half_open_requests": 1,
			},
			"rate_limit":  map[string]any{"max_wait": "1s", "max_keys": 10000},
			"concurrency": map[string]any{"queue": 100, "max_wait": "5s"},
			"cache":       map[string]any{"mode": "off", "ttl": "0", "stale": "24h", "max_entries": 10000, "max_bytes": "64MiB", "shared": false},
			"idempotency": map[string]any{"mode": "off", "ttl": "24h", "window": "10m", "on_conflict": "attach"},
			"async":       map[string]any{"enabled": false, "ttl": "1h"},
		},
	}
}

// serviceLink matches the variables Kubernetes puts in every pod of a
// namespace for each Service (BALLAST_SERVICE_HOST, BALLAST_PORT,
// BALLAST_PORT_8080_TCP_ADDR, ... for a Service named ballast, or
// ballast-admin). They name no key, and a ballast that refused them would
// not start beside its own Service.
var serviceLink = regexp.MustCompile(`^BALLAST_([A-Z0-9]+_)*(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)$`)

// envOverrides turns BALLAST_ADMIN__LISTEN=x into {"admin.listen": "x"}.
// The variables of Kubernetes service links are not overrides.
func envOverrides(env []string) map[string]any {
	out := map[string]any{}
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) || serviceLink.MatchString(name) {
			continue
		}
		key := strings.ToLower(strings.TrimPrefix(name, EnvPrefix))
		key = strings.ReplaceAll(key, "__", ".")
		out[key] = value
	}
	return out
}

func envLookup(env []string) func(string) (string, bool) {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		if name, value, ok := strings.Cut(kv, "="); ok {
			m[name] = value
		}
	}
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

// decode merges each route over the defaults block and decodes the result.
func decode(raw map[string]any) (*Config, error) {
	merged := make(map[string]any, len(raw))
	for k, v := range raw {
		merged[k] = v
	}
	defaults, _ := raw["defaults"].(map[string]any)
	if routes, ok := raw["routes"].([]any); ok {
		out := make([]any, len(routes))
		for i, r := range routes {
			rm, _ := r.(map[string]any)
			out[i] = mergeMaps(defaults, rm)
		}
		merged["routes"] = out
	}
	var cfg Config
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		TagName:          "koanf",
		WeaklyTypedInput: true,
		DecodeHook:       mapstructure.TextUnmarshallerHookFunc(),
		Result:           &cfg,
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := dec.Decode(merged); err != nil {
		return nil, fmt.Errorf("config: %w: %w", ErrInvalid, err)
	}
	return &cfg, nil
}

// mergeMaps returns base overlaid with over: maps merge key by key, any
// other value (lists included) replaces. Neither input is modified.
func mergeMaps(base, over map[string]any) map[string]any {
	out := make(map[string]any, len(base)+len(over))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		bm, bok := out[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			out[k] = mergeMaps(bm, om)
			continue
		}
		out[k] = v
	}
	return out
}

// expand replaces ${NAME} in every string value with the environment
// variable's value; $$ is a literal $. An unset variable is an error at the
// value's path.
func expand(path string, v any, lookup func(string) (string, bool)) (any, []error) {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		var errs []error
		for k, e := range x {
			ev, es := expand(join(path, k), e, lookup)
			out[k], errs = ev, append(errs, es...)
		}
		return out, errs
	case []any:
		out := make([]any, len(x))
		var errs []error
		for i, e := range x {
			ev, es := expand(fmt.Sprintf("%s[%d]", path, i), e, lookup)
			out[i], errs = ev, append(errs, es...)
		}
		return out, errs
	case string:
		s, err := ExpandEnv(x, lookup)
		if err != nil {
			return x, []error{pathErr(path, err.Error())}
		}
		return s, nil
	}
	return v, nil
}

// ExpandEnv replaces ${NAME} references in s using lookup. $$ stands for a
// literal $; any other $ is kept as is.
func ExpandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ reference")
			}
			name := s[i+2 : i+2+end]
			if !validEnvName(name) {
				return "", fmt.Errorf("%q is not a valid environment variable name", name)
			}
			val, ok := lookup(name)
			if !ok {
				return "", fmt.Errorf("environment variable %s is not set", name)
			}
			b.WriteString(val)
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// withoutPaths drops the errors whose path already has a shape error, so a
// value that was rejected is not reported again as missing.
func withoutPaths(errs, seen []error) []error {
	if len(seen) == 0 {
		return errs
	}
	paths := map[string]bool{}
	for _, e := range seen {
		var fe *FieldError
		if errors.As(e, &fe) {
			paths[fe.Path] = true
		}
	}
	out := errs[:0]
	for _, e := range errs {
		var fe *FieldError
		if errors.As(e, &fe) && paths[fe.Path] {
			continue
		}
		out = append(out, e)
	}
	return out
}

// explainEnv says which environment variable set a key that failed, since
// the user never wrote that key in a file; with hint, for a key of the
// wrong shape or none at all, it also says how variables name keys.
func explainEnv(errs []error, overrides map[string]any, hint bool) {
	for _, e := range errs {
		var fe *FieldError
		if !errors.As(e, &fe) {
			continue
		}
		if _, ok := overrides[fe.Path]; !ok {
			continue
		}
		name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(fe.Path, ".", "__"))
		if !hint {
			fe.Msg += " (set by the environment variable " + name + ")"
			continue
		}
		fe.Msg += " (set by the environment variable " + name + "; separate levels with __, as in " +
			EnvPrefix + "ADMIN__LISTEN, and name secrets used as ${...} without the " + EnvPrefix + " prefix)"
	}
}

// displayMap is the live config map with each string that was written as
// a ${NAME} reference put back as written, where the field is a string;
// a reference standing for a duration, size or number shows its value,
// which is no secret.
func displayMap(raw, live map[string]any) map[string]any {
	withRefs, _ := restoreRefs(raw, live).(map[string]any)
	shaped, errs := pruneShape("", withRefs, reflect.TypeFor[Config]())
	out, _ := shaped.(map[string]any)
	if len(errs) == 0 {
		return out
	}
	filled, _ := fillMissing(out, live).(map[string]any)
	return filled
}

// restoreRefs returns live with the string leaves that hold a reference
// in raw replaced by raw's.
func restoreRefs(raw, live any) any {
	switch l := live.(type) {
	case map[string]any:
		r, _ := raw.(map[string]any)
		out := make(map[string]any, len(l))
		for k, v := range l {
			out[k] = restoreRefs(r[k], v)
		}
		return out
	case []any:
		r, _ := raw.([]any)
		out := make([]any, len(l))
		for i, v := range l {
			var rv any
			if i < len(r) {
				rv = r[i]
			}
			out[i] = restoreRefs(rv, v)
		}
		return out
	case string:
		if r, ok := raw.(string); ok && strings.Contains(r, "${") {
			return r
		}
	}
	return live
}

// fillMissing returns dst with what the shape check dropped from it taken
// from src, which has the same structure.
func fillMissing(dst, src any) any {
	switch s := src.(type) {
	case map[string]any:
		d, _ := dst.(map[string]any)
		out := make(map[string]any, len(s))
		for k, v := range s {
			out[k] = fillMissing(d[k], v)
		}
		return out
	case []any:
		d, _ := dst.([]any)
		out := make([]any, len(s))
		for i, v := range s {
			var dv any
			if i < len(d) {
				dv = d[i]
			}
			out[i] = fillMissing(dv, v)
		}
		return out
	}
	if dst == nil {
		return src
	}
	return dst
}

// unexpandMessages rewrites problems at leaves written as ${NAME}
// references to quote the reference, not its value: a reference may stand
// for a secret (a key, or a URL with a token in its path), and a problem
// is shown in `ballast validate`, the log and POST /reload's answer.
func unexpandMessages(errs []error, raw, expanded any) {
	for _, e := range errs {
		var fe *FieldError
		if !errors.As(e, &fe) {
			continue
		}
		r, ok := leafAt(raw, fe.Path).(string)
		if !ok || !strings.Contains(r, "${") {
			continue
		}
		if v, ok := leafAt(expanded, fe.Path).(string); ok && v != "" {
			quoted := strconv.Quote(v) // how %q shows it
			inner := quoted[1 : len(quoted)-1]
			fe.Msg = strings.ReplaceAll(fe.Msg, inner, r)
			if inner != v {
				fe.Msg = strings.ReplaceAll(fe.Msg, v, r)
			}
		}
	}
}

// leafAt is the value at path ("a.b[2].c") in v, or nil.
func leafAt(v any, path string) any {
	for path != "" && v != nil {
		key := path
		if i := strings.IndexAny(path, ".["); i >= 0 {
			key, path = path[:i], path[i:]
		} else {
			path = ""
		}
		if key != "" {
			m, _ := v.(map[string]any)
			v = m[key]
		}
		switch {
		case strings.HasPrefix(path, "."):
			path = path[1:]
		case strings.HasPrefix(path, "["):
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return nil
			}
			n, err := strconv.Atoi(path[1:end])
			l, _ := v.([]any)
			if err != nil || n < 0 || n >= len(l) {
				return nil
			}
			v, path = l[n], strings.TrimPrefix(path[end+1:], ".")
		}
	}
	return v
}
