package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

const minimal = `
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: http://127.0.0.1:9000/
`

func TestEmbeddedDefaultIsValid(t *testing.T) {
	cfg, err := Load(Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Origin() != "embedded default" || len(cfg.Routes) != 2 {
		t.Fatalf("origin %q, %d routes", cfg.Origin(), len(cfg.Routes))
	}
	if cfg.Admin.Listen != "127.0.0.1:9901" || cfg.Listen != "127.0.0.1:8080" {
		t.Errorf("listeners %q %q: the admin listener must default to localhost", cfg.Listen, cfg.Admin.Listen)
	}
	if cfg.Routes[0].Upstream != "https://api.openai.com/" || cfg.Routes[1].Upstream != "https://api.anthropic.com/" {
		t.Errorf("routes: %+v", cfg.Routes)
	}
}

func TestDefaultsInheritance(t *testing.T) {
	cfg, err := Parse([]byte(`
defaults:
  timeouts: {per_try: 7s}
  max_body: 1MiB
routes:
  - name: a
    match: {path_prefix: /a}
    upstream: http://x
  - name: b
    match: {path_prefix: /b}
    upstream: http://x
    timeouts: {total: 9s}
    max_body: 2KiB
`), Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Routes[0], cfg.Routes[1]
	if a.Timeouts.PerTry.D() != 7*time.Second || a.Timeouts.Total.D() != 120*time.Second || a.Timeouts.Connect.D() != 2*time.Second {
		t.Errorf("route a timeouts %+v: want per_try from defaults, the rest built in", a.Timeouts)
	}
	if a.MaxBody != 1<<20 {
		t.Errorf("a.max_body %d", a.MaxBody)
	}
	if b.Timeouts.PerTry.D() != 7*time.Second || b.Timeouts.Total.D() != 9*time.Second || b.MaxBody != 2048 {
		t.Errorf("route b: %+v max_body %d: overrides must merge key by key", b.Timeouts, b.MaxBody)
	}
}

func TestEnvAndFlagOverrides(t *testing.T) {
	env := []string{"BALLAST_LISTEN=127.0.0.1:7000", "BALLAST_ADMIN__LISTEN=127.0.0.1:7001", "BALLAST_SHUTDOWN_TIMEOUT=3s"}
	cfg, err := Parse([]byte(minimal), Source{Environ: env, Flags: map[string]any{"listen": "127.0.0.1:7100"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7100" || cfg.Admin.Listen != "127.0.0.1:7001" || cfg.ShutdownTimeout.D() != 3*time.Second {
		t.Errorf("got listen %q admin %q shutdown %v: flags beat env beats file", cfg.Listen, cfg.Admin.Listen, cfg.ShutdownTimeout.D())
	}
}

func TestUnknownEnvOverrideNamesTheVariable(t *testing.T) {
	_, err := Parse([]byte(minimal), Source{Environ: []string{"BALLAST_ADMIN_TOKEN=x"}})
	if err == nil || !strings.Contains(err.Error(), "BALLAST_ADMIN_TOKEN") || !strings.Contains(err.Error(), "__") {
		t.Errorf("error %v: it must name the variable and explain __", err)
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  []string
		want []string // every one must be reported, at once
	}{
		{"unknown key with a suggestion", `
routes:
  - {name: a, match: {path_prefix: /}, upstream: "http://x", strip_prefx: true}`,
			nil, []string{`routes[0].strip_prefx: unknown key (did you mean "strip_prefix"?)`}},
		{"unknown top-level key", "listn: 1\n" + minimal, nil, []string{`listn: unknown key (did you mean "listen"?)`}},
		{"bad duration and size", `
defaults: {timeouts: {total: 5}, max_body: lots}
` + minimal, nil, []string{`defaults.timeouts.total: "5" is not a duration`, `defaults.max_body: "lots" is not a size`}},
		{"negative duration", `
routes:
  - {name: a, match: {path_prefix: /}, upstream: "http://x", timeouts: {per_try: -1s}}`,
			nil, []string{`routes[0].timeouts.per_try: "-1s" is negative`}},
		{"wrong shapes", `
routes:
  - name: [a]
    match: /x
    upstream: http://x
    strip_prefix: perhaps`, nil, []string{"routes[0].name: must be a string", "routes[0].match: must be a mapping", "routes[0].strip_prefix: must be true or false"}},
		{"bad urls", `
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "ftp://x"}
  - {name: b, match: {path_prefix: /b}, upstream: "http://"}
  - {name: c, match: {path_prefix: /c}, upstream: "http://u:p@x"}
  - {name: d, match: {path_prefix: /d}}`, nil, []string{
			`routes[0].upstream: "ftp://x" must use http or https`, `routes[1].upstream: "http://" has no host`,
			"routes[2].upstream: must not carry credentials", "routes[3].upstream: is required"}},
		{"names and matches", `
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "http://x"}
  - {name: a, match: {path_prefix: /a}, upstream: "http://x"}
  - {name: "bad name", match: {path_prefix: "a/"}, upstream: "http://x"}
  - {name: m, match: {path_prefix: /m, methods: [get], host: "bad host"}, upstream: "http://x"}`, nil, []string{
			`routes[1].name: "a" is already used by routes[0]`, "routes[1].match: matches exactly what routes[0] (a) matches",
			"routes[2].name: must be", "routes[2].match.path_prefix: must start with /",
			`routes[3].match.methods[0]: "get" is not an upper-case method name`, `routes[3].match.host: "bad host"`}},
		{"no routes", "listen: 127.0.0.1:1\n", nil, []string{"routes: at least one route is required"}},
		{"admin beyond localhost needs a token", "admin: {listen: 0.0.0.0:9901}\n" + minimal, nil,
			[]string{"admin.listen: binding the admin listener beyond localhost requires admin.token"}},
		{"missing env reference", `
routes:
  - {name: a, match: {path_prefix: /}, upstream: "http://x", headers: {set: {Authorization: "Bearer ${MISSING_KEY}"}}}`,
			nil, []string{"routes[0].headers.set.Authorization: environment variable MISSING_KEY is not set"}},
		{"hop-by-hop header rule", `
routes:
  - {name: a, match: {path_prefix: /}, upstream: "http://x", headers: {set: {Connection: close, "Bad Name": x}}}`,
			nil, []string{"routes[0].headers.set.Connection: is a hop-by-hop header", "routes[0].headers.set.Bad Name: is not a valid header name"}},
		{"ca file", `
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "https://x", ca_file: /nonexistent/ca.pem}
  - {name: b, match: {path_prefix: /b}, upstream: "http://x", ca_file: /etc/hostname}`,
			nil, []string{"routes[0].ca_file: open /nonexistent/ca.pem", "routes[1].ca_file: applies only to https upstreams"}},
		{"shared cache without redis", `
defaults: {cache: {mode: fresh, ttl: 1m}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "http://x", cache: {shared: true}}
  - {name: b, match: {path_prefix: /b}, upstream: "http://x"}`,
			nil, []string{"routes[0].cache.shared: requires state.backend: redis"}},
		{"a shared limiter with inline settings", `
limiters: {provider: {rps: 5}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "http://x", rate_limit: {limiter: provider, key: "header:X-Agent", burst: 3}}
  - {name: b, match: {path_prefix: /b}, upstream: "http://x", rate_limit: {limiter: nope, rps: 2}}`,
			nil, []string{"routes[0].rate_limit: names a shared limiter and sets its own burst, key, which the shared one would silently override; set them in limiters.provider instead",
				`routes[1].rate_limit.limiter: "nope" is not in the limiters block`, "routes[1].rate_limit: names a shared limiter and sets its own rps"}},
		{"bad listen", "listen: nowhere\n" + minimal, nil, []string{`listen: "nowhere" is not host:port`}},
		{"not yaml", "routes: [\n", nil, []string{"not valid YAML"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = []string{}
			}
			_, err := Parse([]byte(tt.yaml), Source{Environ: env})
			if err == nil {
				t.Fatal("accepted an invalid config")
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("errors lack %q:\n%s", w, msg)
				}
			}
			if !errors.Is(err, ErrInvalid) && !strings.Contains(msg, "YAML") {
				t.Errorf("error does not match ErrInvalid: %v", err)
			}
		})
	}
}

func TestExpandEnv(t *testing.T) {
	lookup := func(k string) (string, bool) {
		v, ok := map[string]string{"A": "1", "EMPTY": ""}[k]
		return v, ok
	}
	tests := []struct{ in, want, err string }{
		{"plain", "plain", ""},
		{"${A}-${A}", "1-1", ""},
		{"$$ and $x and ${EMPTY}", "$ and $x and ", ""},
		{"${NOPE}", "", "NOPE is not set"},
		{"${A", "", "unterminated"},
		{"${1BAD}", "", "not a valid environment variable name"},
	}
	for _, tt := range tests {
		got, err := ExpandEnv(tt.in, lookup)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: err %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestRedactedNeverShowsSecrets(t *testing.T) {
	cfg, err := Parse([]byte(`
admin: {token: literal-admin-token}
routes:
  - name: a
    match: {path_prefix: /}
    upstream: http://x
    headers: {set: {Authorization: "Bearer ${KEY}", X-Api-Key: raw-key-value, Cookie: "s=1", X-Trace: keep}}
    fallbacks:
      - upstream: http://y
        headers: {set: {Authorization: "Bearer fallback-literal-key", X-Api-Key: "${KEY}"}}
`), Source{Environ: []string{"KEY=sk-abc"}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Routes[0].Headers.Set["Authorization"] != "Bearer sk-abc" {
		t.Fatal("the live config must hold the expanded secret")
	}
	b, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Routes[0].Fallbacks[0].Headers.Set["Authorization"] != "Bearer fallback-literal-key" {
		t.Fatal("redacting must not change the live config")
	}
	out := string(b)
	for _, secret := range []string{"sk-abc", "literal-admin-token", "raw-key-value", "s=1", "fallback-literal-key"} {
		if strings.Contains(out, secret) {
			t.Errorf("redacted config shows %q", secret)
		}
	}
	if !strings.Contains(out, "${KEY}") || !strings.Contains(out, `"X-Trace": "keep"`) {
		t.Errorf("redacted config hides too much:\n%s", out)
	}
}

func TestLoadFileErrors(t *testing.T) {
	if _, err := Load(Source{File: "/nonexistent/ballast.yaml", Environ: []string{}}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	f := t.TempDir() + "/b.yaml"
	if err := os.WriteFile(f, []byte(minimal), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(Source{File: f, Environ: []string{}})
	if err != nil || cfg.Origin() != f {
		t.Fatalf("%v %q", err, cfg.Origin())
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512", 512, true}, {"64KiB", 64 << 10, true}, {"10MiB", 10 << 20, true}, {"1GiB", 1 << 30, true},
		{"10KB", 10000, true}, {"2 MiB", 2 << 20, true}, {"-1", 0, false}, {"lots", 0, false},
		{"2TiB", 0, false}, {"99999999999GiB", 0, false}, {"", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v", tt.in, got, err)
		}
	}
}

// FuzzParse feeds arbitrary YAML through the whole loader: it must return
// a config or an error, never panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("routes: [{name: a, match: {path_prefix: /}, upstream: 'http://x', timeouts: {total: 1s}}]"))
	f.Add([]byte("defaults: {timeouts: {total: [1]}}\nroutes: 3"))
	f.Add([]byte("routes: [{headers: {set: {a: '${X'}}}]"))
	f.Add([]byte("admin: {listen: ':99999'}\nserver: {max_header_bytes: 1TiB}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, Source{Environ: []string{"X=1"}})
		if err == nil {
			if len(cfg.Routes) == 0 {
				t.Fatal("a config without routes was accepted")
			}
			if _, err := cfg.Redacted(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzDurationAndSize checks the value parsers never panic and never
// accept a negative.
func FuzzDurationAndSize(f *testing.F) {
	for _, s := range []string{"1s", "-1s", "0", "10MiB", "9223372036854775807GiB", "1e3", "  5m  "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := ParseDuration(s); err == nil && d < 0 {
			t.Fatalf("ParseDuration(%q) = %v", s, d)
		}
		if n, err := ParseSize(s); err == nil && (n < 0 || n > 1<<40) {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}

func TestSharedCacheWithRedis(t *testing.T) {
	cfg, err := Parse([]byte(`
state: {backend: redis, redis: {address: "127.0.0.1:6379"}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "http://x", cache: {mode: fresh, ttl: 1m, shared: true}}
  - {name: b, match: {path_prefix: /b}, upstream: "http://x", cache: {mode: fallback}}`), Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Routes[0].Cache.Shared || cfg.Routes[1].Cache.Shared {
		t.Errorf("cache.shared: routes[0] %v routes[1] %v, want true and the default false",
			cfg.Routes[0].Cache.Shared, cfg.Routes[1].Cache.Shared)
	}
}

// A reference may stand for a duration or size; /config shows its value
// there (no secret), and a reference in the wrong field is quoted as
// written in the error, never expanded (it may name a secret).
func TestReferencesInTypedFields(t *testing.T) {
	cfg, err := Parse([]byte(`
defaults: {timeouts: {total: "${TOTAL}"}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x, headers: {set: {Authorization: "Bearer ${KEY}"}}}
`), Source{Environ: []string{"TOTAL=60s", "KEY=sk-live"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	if out := string(b); !strings.Contains(out, "${KEY}") || strings.Contains(out, "sk-live") || !strings.Contains(out, `"total": "1m0s"`) {
		t.Errorf("display:\n%s", out)
	}
	_, err = Parse([]byte(`
defaults: {timeouts: {total: "${KEY}"}}
routes: [{name: a, match: {path_prefix: /a}, upstream: http://x}]
`), Source{Environ: []string{"KEY=sk-live"}})
	if err == nil || strings.Contains(err.Error(), "sk-live") || !strings.Contains(err.Error(), "${KEY}") {
		t.Errorf("a secret reference in a duration: %v", err)
	}
}
