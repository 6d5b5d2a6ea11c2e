package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
)

// userYAML is a user's config with two routes, a fallback, a file state
// store, an alert webhook, an admin token and secrets from the
// environment: everything the rewrite must move to the harness.
const userYAML = `
listen: 0.0.0.0:8080
admin: {listen: 127.0.0.1:9901, token: "${BENCH_TEST_ADMIN}"}
shutdown_delay: 5s
state: {path: "STATE_PATH", max_records: 5000}
notify: {webhook: "https://hooks.example.com/T0/${BENCH_TEST_HOOK}"}
defaults:
  retry: {unsafe_methods: true, attempts: 4}
  timeouts: {per_try: 45s}
routes:
  - name: models
    match: {path_prefix: /v1/, methods: [POST]}
    upstream: https://api.example.com/base
    headers: {set: {Authorization: "Bearer ${BENCH_TEST_KEY}", X-Api-Key: sk-literal-secret}}
    rate_limit: {rps: 100000}
    fallbacks:
      - upstream: https://mirror.example.net/
        headers: {set: {Authorization: "Bearer ${BENCH_TEST_KEY}"}}
  - name: tools
    match: {path_prefix: /tools/}
    upstream: http://10.1.2.3:9000
    cache: {mode: fallback}
    validate: {status: [2xx]}
`

// writeUserConfig writes yaml to dir/name, with STATE_PATH standing for
// dir/real/state.db, and sets the environment its references need.
func writeUserConfig(t *testing.T, dir, name, yaml string) (file, realState string) {
	t.Helper()
	t.Setenv("BENCH_TEST_ADMIN", "admin-secret")
	t.Setenv("BENCH_TEST_HOOK", "hook-secret")
	t.Setenv("BENCH_TEST_KEY", "key-secret")
	realState = filepath.Join(dir, "real", "state.db")
	file = filepath.Join(dir, name)
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(yaml, "STATE_PATH", realState)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, realState
}

// rewriteUserConfig loads file as `ballast run` does and rewrites it for a
// harness on placeholder addresses, failing the test on any error.
func rewriteUserConfig(t *testing.T, file string) (u *userConfig, y []byte, cfg *config.Config) {
	t.Helper()
	u, err := loadUserConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	s := site{Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", Upstream: "127.0.0.1:3", Dir: t.TempDir(), Token: "t"}
	y, cfg, err = u.rewrite(s, childEnv(1))
	if err != nil {
		t.Fatal(err)
	}
	return u, y, cfg
}

func TestUserConfigRewriteMovesEverythingToTheHarness(t *testing.T) {
	dir := t.TempDir()
	file, realState := writeUserConfig(t, dir, "user.yaml", userYAML)
	t.Setenv("BALLAST_LISTEN", "0.0.0.0:7777") // an override `ballast run` applies: loaded, then kept out of the child's way
	u, err := loadUserConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	s := site{Listen: "127.0.0.1:20001", Admin: "127.0.0.1:20002", Upstream: "127.0.0.1:20003", Dir: filepath.Join(dir, "harness"), Token: "harness-token"}
	env := childEnv(1)
	y, cfg, err := u.rewrite(s, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "BALLAST_") {
			t.Errorf("the child's environment keeps %s", kv)
		}
	}

	if cfg.Listen != s.Listen || cfg.Admin.Listen != s.Admin || cfg.Admin.Token != s.Token {
		t.Errorf("listen %q, admin %q, token %q", cfg.Listen, cfg.Admin.Listen, cfg.Admin.Token)
	}
	want := []string{"http://127.0.0.1:20003/base", "http://127.0.0.1:20003/", "http://127.0.0.1:20003"}
	got := []string{cfg.Routes[0].Upstream, cfg.Routes[0].Fallbacks[0].Upstream, cfg.Routes[1].Upstream}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("upstreams %q, want %q", got, want)
	}
	if cfg.State.Path != filepath.Join(s.Dir, "state.db") || cfg.State.Path == realState {
		t.Errorf("state.path %q, want in %s", cfg.State.Path, s.Dir)
	}
	if cfg.Notify.Webhook != "http://127.0.0.1:20003/ballast-bench/notify" {
		t.Errorf("notify.webhook %q", cfg.Notify.Webhook)
	}
	if cfg.ShutdownDelay != 0 || cfg.ShutdownTimeout.D() != 5*time.Second {
		t.Errorf("shutdown_delay %v, shutdown_timeout %v", cfg.ShutdownDelay.D(), cfg.ShutdownTimeout.D())
	}
	if err := checkLoopback(cfg); err != nil {
		t.Error(err)
	}
	// The file holds references, never what they stand for, and no
	// literal credential.
	for _, secret := range []string{"admin-secret", "hook-secret", "key-secret", "sk-literal-secret", "example.com", "10.1.2.3", realState} {
		if bytes.Contains(y, []byte(secret)) {
			t.Errorf("the rewritten config holds %q:\n%s", secret, y)
		}
	}
	if !bytes.Contains(y, []byte("Bearer ${BENCH_TEST_KEY}")) {
		t.Errorf("the rewritten config lost the reference:\n%s", y)
	}
	// The child resolves the reference from its environment, as run would.
	if h := cfg.Routes[0].Headers.Set["Authorization"]; h != "Bearer key-secret" {
		t.Errorf("Authorization %q", h)
	}

	// Everything but the rewritten keys is the user's config.
	before, after := shownConfig(t, u.cfg.Redacted), shownConfig(t, cfg.Redacted)
	for _, m := range []map[string]any{before, after} {
		delete(m, "listen")
		delete(m, "shutdown_delay")
		delete(m, "shutdown_timeout")
		delete(m["admin"].(map[string]any), "listen")
		delete(m["admin"].(map[string]any), "token")
		delete(m["state"].(map[string]any), "path")
		delete(m["notify"].(map[string]any), "webhook")
		for _, r := range m["routes"].([]any) {
			route := r.(map[string]any)
			delete(route, "upstream")
			fallbacks, _ := route["fallbacks"].([]any)
			for _, f := range fallbacks {
				delete(f.(map[string]any), "upstream")
			}
		}
	}
	if !reflect.DeepEqual(before, after) {
		b, _ := json.MarshalIndent(before, "", " ")
		a, _ := json.MarshalIndent(after, "", " ")
		t.Errorf("the rewrite changed more than it says:\nbefore %s\nafter %s", b, a)
	}
}

// shownConfig is a config as /config shows it, as a map.
func shownConfig(t *testing.T, redacted func() ([]byte, error)) map[string]any {
	t.Helper()
	b, err := redacted()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestUserConfigRewriteTakesTheExamples(t *testing.T) {
	t.Setenv("SEARCH_API_KEY", "x")
	files, _ := filepath.Glob("../examples/*/ballast.yaml")
	if len(files) == 0 {
		t.Fatal("no example configs")
	}
	for _, file := range files {
		t.Run(filepath.Base(filepath.Dir(file)), func(t *testing.T) {
			u, _, cfg := rewriteUserConfig(t, file)
			if len(cfg.Routes) != len(u.cfg.Routes) {
				t.Errorf("%d routes, want %d", len(cfg.Routes), len(u.cfg.Routes))
			}
		})
	}
}

func TestUserConfigRedis(t *testing.T) {
	const redisYAML = `
state:
  backend: redis
  redis: {address: "redis.example.com:6379", password: "${BENCH_TEST_KEY}", tls: true}
routes:
  - name: models
    match: {path_prefix: /}
    upstream: https://api.example.com
    cache: {mode: fallback, shared: true}
`
	file, _ := writeUserConfig(t, t.TempDir(), "redis.yaml", redisYAML)
	u, err := loadUserConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	s := site{Listen: "127.0.0.1:1", Admin: "127.0.0.1:2", Upstream: "127.0.0.1:3", Dir: t.TempDir()}

	t.Run("refused without a redis-server of the harness's", func(t *testing.T) {
		_, _, err := u.rewrite(s, childEnv(1))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "state.redis.address") || !strings.Contains(err.Error(), file) {
			t.Errorf("err = %v, want ErrConfig naming %s and state.redis.address", err, file)
		}
	})
	t.Run("replaced by the harness's", func(t *testing.T) {
		s := s
		s.Redis = "127.0.0.1:4"
		y, cfg, err := u.rewrite(s, childEnv(1))
		if err != nil {
			t.Fatal(err)
		}
		r := cfg.State.Redis
		if r.Address != s.Redis || r.Password != "" || r.TLS || !cfg.Routes[0].Cache.Shared {
			t.Errorf("redis %+v, shared cache %v", r, cfg.Routes[0].Cache.Shared)
		}
		if bytes.Contains(y, []byte("example.com")) {
			t.Errorf("the rewritten config still names the user's hosts:\n%s", y)
		}
	})
	t.Run("refused before anything starts when redis-server is not on PATH", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := Overhead(context.Background(), Options{Exe: "/nonexistent", Config: file, Saturation: -1})
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "state.redis.address") {
			t.Errorf("err = %v, want ErrConfig naming state.redis.address", err)
		}
	})
}

// A config that does not load is refused before anything starts, with
// its file and its problems named.
func TestOverheadRefusesABadConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("routes:\n  - name: x\n    match: {path_prefix: /}\n    upstream: ftp://nowhere\n    retry: {attempts: 0}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, file string
		want       []string
	}{
		{name: "invalid", file: bad, want: []string{bad, "2 problem(s)", "routes[0].upstream", "routes[0].retry.attempts"}},
		{name: "missing", file: filepath.Join(dir, "none.yaml"), want: []string{"none.yaml", "no such file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Overhead(context.Background(), Options{Exe: "/nonexistent", Config: c.file, Saturation: -1})
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v lacks %q", err, w)
				}
			}
		})
	}
}

func TestOverheadRefusesAConfigWithoutBallast(t *testing.T) {
	_, err := Overhead(context.Background(), Options{Exe: "/nonexistent", Config: "x.yaml", Targets: []string{TargetDirect, TargetBare}, Saturation: -1})
	if !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), "a config is ballast's") {
		t.Errorf("err = %v, want ErrLoad before anything starts", err)
	}
}

func TestOtherScenariosRefuseOverheadOptions(t *testing.T) {
	opts := Options{Exe: "/nonexistent", Config: "x.yaml", Path: "/x"}
	for name, run := range map[string]func() error{
		"chaos":    func() error { _, err := Chaos(context.Background(), opts); return err },
		"policies": func() error { _, err := Policies(context.Background(), opts); return err },
		"state":    func() error { _, err := State(context.Background(), opts); return err },
		"soak":     func() error { _, err := Soak(context.Background(), opts); return err },
	} {
		if err := run(); !errors.Is(err, ErrLoad) || !strings.Contains(err.Error(), "overhead only") {
			t.Errorf("%s: err = %v, want ErrLoad saying overhead only", name, err)
		}
	}
}

// TestOverheadMeasuresAUserConfig runs the overhead scenario on users'
// configs with the real ballast binary, a few hundred milliseconds each.
func TestOverheadMeasuresAUserConfig(t *testing.T) {
	exe := buildBallast(t)
	opts := func(file string) Options {
		return Options{Exe: exe, Config: file, Duration: 300 * time.Millisecond, Warmup: -1, Saturation: -1,
			Rate: 150, Connections: 4, Timeout: time.Second, Targets: []string{TargetDirect, TargetBallast}, Driver: DriverGo}
	}

	t.Run("two routes and a fallback", func(t *testing.T) {
		dir := t.TempDir()
		file, realState := writeUserConfig(t, dir, "user.yaml", userYAML)
		o, err := Overhead(context.Background(), opts(file))
		if err != nil {
			t.Fatal(err)
		}
		checkMeasured(t, o, "models")
		if o.Config != file || o.Request != "POST /v1/chat/completions" {
			t.Errorf("config %q, request %q", o.Config, o.Request)
		}
		if s := o.summary(); !strings.Contains(s, "the config "+file) || strings.Contains(s, "happy-path") {
			t.Errorf("summary does not name the config measured: %q", s)
		}
		if _, err := os.Stat(filepath.Dir(realState)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the user's state directory was touched: %v", err)
		}
	})
	t.Run("the other route, by path and method", func(t *testing.T) {
		file, _ := writeUserConfig(t, t.TempDir(), "user.yaml", userYAML)
		o := opts(file)
		o.Method, o.Path = "GET", "/tools/search"
		res, err := Overhead(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		checkMeasured(t, res, "tools")
	})
	t.Run("no route takes the request", func(t *testing.T) {
		file, _ := writeUserConfig(t, t.TempDir(), "user.yaml", userYAML)
		o := opts(file)
		o.Path = "/elsewhere"
		_, err := Overhead(context.Background(), o)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "no route of "+file+" takes POST /elsewhere") {
			t.Errorf("err = %v, want ErrConfig saying no route takes the request", err)
		}
	})
	for _, c := range []struct {
		name, file, yaml, want string
	}{
		// No --path or --method reaches a route that matches a host: the
		// harness addresses its requests to 127.0.0.1, and says so.
		{"only a route of another host", "host.yaml", `
routes:
  - name: hosted
    match: {path_prefix: /, host: api.example.com}
    upstream: https://api.example.com
`, "a route with a match.host never takes it"},
		{"the route answers with an error", "strict.yaml", `
routes:
  - name: strict
    match: {path_prefix: /}
    upstream: https://api.example.com
    retry: {attempts: 1}
    validate: {status: ["201"]}
`, "was answered 502 invalid_response"},
		// A 2xx of the route's static_fallback is no answer of its
		// upstream's: a run of it would time the failure and the fallback,
		// each counted ok.
		{"the route's static fallback answers 2xx", "fallback.yaml", `
routes:
  - name: strict
    match: {path_prefix: /}
    upstream: https://api.example.com
    retry: {attempts: 1}
    validate: {status: ["201"]}
    static_fallback: {status: 200, body: '{"choices":[]}'}
`, "static_fallback"},
	} {
		t.Run(c.name, func(t *testing.T) {
			file, _ := writeUserConfig(t, t.TempDir(), c.file, c.yaml)
			_, err := Overhead(context.Background(), opts(file))
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err = %v, want ErrConfig saying %q", err, c.want)
			}
		})
	}
	t.Run("redis replaced by the harness's", func(t *testing.T) {
		if RedisPath() == "" {
			t.Fatal("redis-server is not on PATH; scripts/test-deps.sh installs it")
		}
		file, _ := writeUserConfig(t, t.TempDir(), "redis.yaml", `
state:
  backend: redis
  redis: {address: "redis.example.com:6379", password: "${BENCH_TEST_KEY}", on_error: fail_closed}
routes:
  - name: models
    match: {path_prefix: /}
    upstream: https://api.example.com
    cache: {mode: fallback, shared: true}
    idempotency: {mode: auto}
`)
		// Every request looks its fingerprint up in Redis, and fails
		// closed without it: no error means the harness's Redis served.
		o, err := Overhead(context.Background(), opts(file))
		if err != nil {
			t.Fatal(err)
		}
		checkMeasured(t, o, "models")
		if len(o.ConfigNotes) != 1 || !strings.Contains(o.ConfigNotes[0], "idempotency mode auto") {
			t.Errorf("notes %q, want one on auto idempotency", o.ConfigNotes)
		}
	})
}

// checkMeasured checks that ballast was measured on route with every
// request answered well.
func checkMeasured(t *testing.T, o *OverheadResult, route string) {
	t.Helper()
	if o.Route != route {
		t.Errorf("route %q measured, want %q", o.Route, route)
	}
	for _, tg := range o.Targets {
		if tg.Name != TargetBallast {
			continue
		}
		a := tg.Open.All
		if a.Requests == 0 || a.OK != a.Requests || len(a.Errors) != 0 {
			t.Errorf("ballast: %d requests, %d ok, errors %v", a.Requests, a.OK, a.Errors)
		}
		return
	}
	t.Errorf("ballast did not run: %+v", o.Targets)
}

// The rewrite renders /config's JSON as the config file: that holds only
// while every field's json name is its config key (koanf), omitted empty
// fields included, which the examples and the configs above may not set.
func TestConfigJSONNamesAreConfigKeys(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] {
			return
		}
		seen[typ] = true
		for i := range typ.NumField() {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			key, _, _ := strings.Cut(f.Tag.Get("koanf"), ",")
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if key != name && !(f.Anonymous && name == "") { // squashed: promoted in JSON too
				t.Errorf("%s.%s: config key %q, json name %q", typ.Name(), f.Name, key, name)
			}
			walk(f.Type)
		}
	}
	walk(reflect.TypeFor[config.Config]())
}

// A ${NAME} reference in an upstream's path may stand for a secret (a
// bot token, a gateway's account): the rewritten file keeps it as
// written, for the child to expand, and never holds its value.
func TestUserConfigRewriteKeepsReferencesInUpstreamPaths(t *testing.T) {
	t.Setenv("BENCH_TEST_BOT", "123:bot-secret")
	t.Setenv("BENCH_TEST_HOST", "api.example.com")
	t.Setenv("BENCH_TEST_ACCOUNT", "account-secret")
	t.Setenv("BENCH_TEST_GATEWAY", "https://gw.example.com/gateway-secret")
	file, _ := writeUserConfig(t, t.TempDir(), "refs.yaml", `
routes:
  - name: bot
    match: {path_prefix: /bot/}
    upstream: "https://api.telegram.org/bot${BENCH_TEST_BOT}"
    fallbacks:
      - upstream: "https://${BENCH_TEST_HOST}/v1/${BENCH_TEST_ACCOUNT}/x$$y"
  - name: gateway
    match: {path_prefix: /}
    upstream: "${BENCH_TEST_GATEWAY}/openai"
`)
	_, y, cfg := rewriteUserConfig(t, file)
	for _, secret := range []string{"bot-secret", "account-secret", "gateway-secret", "example.com"} {
		if bytes.Contains(y, []byte(secret)) {
			t.Errorf("the rewritten config holds %q:\n%s", secret, y)
		}
	}
	// What the child loads: the base paths as `ballast run` expands them,
	// except where the scheme and host came from the same reference.
	want := []string{"http://127.0.0.1:3/bot123:bot-secret", "http://127.0.0.1:3/v1/account-secret/x$y", "http://127.0.0.1:3"}
	got := []string{cfg.Routes[0].Upstream, cfg.Routes[0].Fallbacks[0].Upstream, cfg.Routes[1].Upstream}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("upstreams %q, want %q", got, want)
	}
}

// Regression: the rewrite wrote the loaded value of a string without a
// ${NAME} reference, where `ballast run` had already turned each $$ into
// $, and the child's load halved its dollars once more ("a$$$$b", the
// text a$$b, reached the child as a$b). Every key the rewrite does not
// move must load in the child as `ballast run -c` loads it from the
// original file.
func TestUserConfigRewriteKeepsDollarsAsRunReadsThem(t *testing.T) {
	t.Setenv("BENCH_TEST_KEY", "key-secret")
	file, _ := writeUserConfig(t, t.TempDir(), "dollars.yaml", `
routes:
  - name: dollars
    match: {path_prefix: /v1/}
    upstream: "https://api.example.com/a$$$$b$$c"
    headers:
      set:
        X-Two: "a$$$$b"
        X-Escape-Then-Lone: "a$$$b"
        X-Lone: "cost $5"
        X-End: "tail$$"
        X-Brace: "x$${NOT_A_REF}"
        X-Mixed: "${BENCH_TEST_KEY}$$$$"
        Authorization: "Bearer ${BENCH_TEST_KEY}$$"
    static_fallback: {status: 503, body: '{"price":"$$$$9","note":"$$$"}', headers: {X-Fallback-Price: "$$$$"}}
`)
	u, _, cfg := rewriteUserConfig(t, file)
	if got, want := cfg.Routes[0].Upstream, "http://127.0.0.1:3/a$$b$c"; got != want {
		t.Errorf("upstream %q, want %q", got, want)
	}
	run, child := loadedConfig(t, u.cfg), loadedConfig(t, cfg)
	for _, m := range []map[string]any{run, child} {
		delete(m, "listen")
		delete(m, "shutdown_delay")
		delete(m, "shutdown_timeout")
		delete(m["admin"].(map[string]any), "listen")
		delete(m["routes"].([]any)[0].(map[string]any), "upstream")
	}
	for _, d := range leafDiffs("", run, child) {
		t.Errorf("the child loads other values than ballast run: %s", d)
	}
}

// leafDiffs lists the paths where a and b, decoded JSON, differ, with
// both values.
func leafDiffs(path string, a, b any) []string {
	am, aok := a.(map[string]any)
	bm, bok := b.(map[string]any)
	if aok && bok {
		var out []string
		for _, k := range sortedKeys(am) {
			out = append(out, leafDiffs(path+"."+k, am[k], bm[k])...)
		}
		for _, k := range sortedKeys(bm) {
			if _, ok := am[k]; !ok {
				out = append(out, fmt.Sprintf("%s: missing in the first, %v in the second", path+"."+k, bm[k]))
			}
		}
		return out
	}
	as, aok := a.([]any)
	bs, bok := b.([]any)
	if aok && bok && len(as) == len(bs) {
		var out []string
		for i := range as {
			out = append(out, leafDiffs(fmt.Sprintf("%s[%d]", path, i), as[i], bs[i])...)
		}
		return out
	}
	if !reflect.DeepEqual(a, b) {
		return []string{fmt.Sprintf("%s: %#v, then %#v", path, a, b)}
	}
	return nil
}

// loadedConfig is cfg's values as ballast runs with them (references
// expanded, nothing redacted), as a map.
func loadedConfig(t *testing.T, cfg *config.Config) map[string]any {
	t.Helper()
	return shownConfig(t, func() ([]byte, error) { return json.Marshal(cfg) })
}
