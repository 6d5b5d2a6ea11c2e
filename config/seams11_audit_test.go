package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Kubernetes puts BALLAST_SERVICE_HOST, BALLAST_PORT, BALLAST_PORT_8080_TCP
// and their kin in every pod of a namespace that has a Service named
// ballast (or ballast-admin). They name no key; refusing them as unknown
// keys kept ballast from starting beside its own Service. A variable that
// only looks like one is still an unknown key.
func TestConfigSeams11_KubernetesServiceLinksAreNotOverrides(t *testing.T) {
	links := []string{
		"BALLAST_SERVICE_HOST=10.96.0.12", "BALLAST_SERVICE_PORT=8080", "BALLAST_SERVICE_PORT_HTTP=8080",
		"BALLAST_PORT=tcp://10.96.0.12:8080", "BALLAST_PORT_8080_TCP=tcp://10.96.0.12:8080",
		"BALLAST_PORT_8080_TCP_PROTO=tcp", "BALLAST_PORT_8080_TCP_PORT=8080", "BALLAST_PORT_8080_TCP_ADDR=10.96.0.12",
		"BALLAST_ADMIN_SERVICE_HOST=10.96.0.13", "BALLAST_ADMIN_PORT_9901_TCP_ADDR=10.96.0.13",
		"BALLAST_SHUTDOWN_TIMEOUT=7s",
	}
	cfg, err := Parse([]byte(minimal), Source{Environ: links})
	if err != nil {
		t.Fatalf("the variables of a Kubernetes Service named ballast stop ballast from starting: %v", err)
	}
	if cfg.ShutdownTimeout.D() != 7*time.Second {
		t.Errorf("shutdown_timeout %v: the real override beside them was lost", cfg.ShutdownTimeout.D())
	}
	for _, v := range []string{"BALLAST_PORTS=1", "BALLAST_SERVICE=x", "BALLAST_ADMIN_PORT_X=1"} {
		if _, err := Parse([]byte(minimal), Source{Environ: []string{v}}); err == nil || !strings.Contains(err.Error(), "unknown key") {
			t.Errorf("%s: %v, want an unknown key error", v, err)
		}
	}
}

// An environment override whose value is well formed but breaks a rule
// (attempts 50, a max_body of 2GiB) is reported naming the variable, as a
// malformed one is: the key is in no file the operator could search.
func TestConfigSeams11_InvalidEnvOverrideNamesTheVariable(t *testing.T) {
	for _, v := range []string{"BALLAST_DEFAULTS__RETRY__ATTEMPTS=50", "BALLAST_DEFAULTS__MAX_BODY=2GiB",
		"BALLAST_LIMITERS__OPENAI__RPS=2000000", "BALLAST_DEFAULTS__RATE_LIMIT__LIMITER=nope"} {
		_, err := Parse([]byte(`
limiters: {openai: {rps: 1}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x}
`), Source{Environ: []string{v}})
		name, _, _ := strings.Cut(v, "=")
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "environment variable "+name) {
			t.Errorf("%s: %v, want an invalid-config error naming the variable", v, err)
		}
	}
	// A file value breaking the same rule names no variable.
	_, err := Parse([]byte(`
defaults: {retry: {attempts: 50}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x}
`), Source{Environ: []string{}})
	if err == nil || strings.Contains(err.Error(), "environment variable") {
		t.Errorf("a file value: %v", err)
	}
}

// "Problems in defaults are reported once, at defaults.<key>, not once per
// route": a missing limiter named in the defaults too. A route naming its
// own missing limiter is still reported at the route.
func TestConfigSeams11_DefaultsUnknownLimiterReportedOnce(t *testing.T) {
	_, err := Parse([]byte(`
limiters: {openai: {rps: 1}}
defaults: {rate_limit: {limiter: nope}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x}
  - {name: b, match: {path_prefix: /b}, upstream: http://x}
  - {name: c, match: {path_prefix: /c}, upstream: http://x, rate_limit: {limiter: gone}}
  - {name: d, match: {path_prefix: /d}, upstream: http://x, rate_limit: {limiter: openai}}
`), Source{Environ: []string{}})
	if err == nil {
		t.Fatal("a missing limiter loaded")
	}
	msg := err.Error()
	if strings.Count(msg, "is not in the limiters block") != 2 || !strings.Contains(msg, `defaults.rate_limit.limiter: "nope"`) ||
		!strings.Contains(msg, `routes[2].rate_limit.limiter: "gone"`) {
		t.Errorf("want one problem at defaults and one at routes[2]:\n%s", msg)
	}
}

// The defaults block merges key by key into each route, every policy
// block alike; lists replace; an environment override of a defaults key
// reaches only the routes that do not set that key.
func TestConfigSeams11_PartialOverridesMergeKeyByKey(t *testing.T) {
	cfg, err := Parse([]byte(`
defaults:
  retry: {attempts: 3, on: [503, timeout], backoff: {base: 1s, max: 4s}, unsafe_methods: true}
  timeouts: {idle: 45s, total: 90s}
  validate: {status: [2xx], json: true}
  cache: {mode: fallback, stale: 2h, vary: [Accept-Language]}
  idempotency: {mode: header, ttl: 1h, on_conflict: reject}
  static_fallback: {status: 502, body: down, headers: {X-Down: "1"}}
  breaker: {failures: 7, open_for: 3s}
  hedge_after: 250ms
routes:
  - name: a
    match: {path_prefix: /a}
    upstream: http://x
    retry: {attempts: 5, backoff: {max: 8s}}
    validate: {non_empty: true}
    cache: {ttl: 1m, mode: fresh}
    idempotency: {ttl: 2h}
    static_fallback: {body: "a is down"}
    breaker: {open_for: 1s}
  - name: b
    match: {path_prefix: /b}
    upstream: http://x
    retry: {on: [500]}
    timeouts: {idle: 5s}
`), Source{Environ: []string{"BALLAST_DEFAULTS__TIMEOUTS__IDLE=0", "BALLAST_DEFAULTS__RETRY__BACKOFF__BASE=2s"}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Routes[0], cfg.Routes[1]
	if a.Retry.Attempts != 5 || a.Retry.Backoff.Base.D() != 2*time.Second || a.Retry.Backoff.Max.D() != 8*time.Second ||
		!a.Retry.UnsafeMethods || strings.Join(a.Retry.On, ",") != "503,timeout" {
		t.Errorf("a.retry %+v: want attempts 5, base 2s (env over defaults), max 8s, unsafe, on [503 timeout]", a.Retry)
	}
	if b.Retry.Attempts != 3 || strings.Join(b.Retry.On, ",") != "500" || b.Retry.Backoff.Max.D() != 4*time.Second {
		t.Errorf("b.retry %+v: on replaces the whole list, the rest inherited", b.Retry)
	}
	if a.Timeouts.Idle != 0 || b.Timeouts.Idle.D() != 5*time.Second || a.Timeouts.Total.D() != 90*time.Second {
		t.Errorf("idle a %v b %v total %v: env idle 0 (off) reaches a only", a.Timeouts.Idle.D(), b.Timeouts.Idle.D(), a.Timeouts.Total.D())
	}
	if !a.Validate.JSON || !a.Validate.NonEmpty || strings.Join(a.Validate.Status, ",") != "2xx" {
		t.Errorf("a.validate %+v", a.Validate)
	}
	if a.Cache.Mode != "fresh" || a.Cache.TTL.D() != time.Minute || a.Cache.Stale.D() != 2*time.Hour ||
		strings.Join(a.Cache.Vary, ",") != "Accept-Language" || a.Cache.MaxEntries != 10000 {
		t.Errorf("a.cache %+v", a.Cache)
	}
	if a.Idempotency.Mode != "header" || a.Idempotency.TTL.D() != 2*time.Hour || a.Idempotency.OnConflict != "reject" {
		t.Errorf("a.idempotency %+v", a.Idempotency)
	}
	if sf := a.StaticFallback; sf == nil || sf.Status != 502 || sf.Body != "a is down" || sf.Headers["X-Down"] != "1" {
		t.Errorf("a.static_fallback %+v", sf)
	}
	if a.Breaker.Failures != 7 || a.Breaker.OpenFor.D() != time.Second || !a.Breaker.Enabled || a.Breaker.MinRequests != 20 {
		t.Errorf("a.breaker %+v", a.Breaker)
	}
	if a.HedgeAfter.D() != 250*time.Millisecond || b.HedgeAfter.D() != 250*time.Millisecond {
		t.Errorf("hedge_after a %v b %v: inherited from defaults", a.HedgeAfter.D(), b.HedgeAfter.D())
	}
	// fallbacks are a route key, not a policy key: the defaults cannot hold them.
	_, err = Parse([]byte(`
defaults: {fallbacks: [{upstream: http://y}]}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x}
`), Source{Environ: []string{}})
	if err == nil || !strings.Contains(err.Error(), "defaults.fallbacks: unknown key") {
		t.Errorf("fallbacks under defaults: %v", err)
	}
}

// ${NAME} references are expanded after YAML is parsed, so a value full
// of YAML's special characters arrives byte for byte, in a header rule, an
// upstream URL and a value set from the environment; an empty value
// expands to nothing; an unset one is an error at its path.
func TestConfigSeams11_EnvReferenceValues(t *testing.T) {
	const special = `a: b # c {d} [e] "f" 'g' *h &i !j | > % @ ${`
	y := `
admin: {token: "${TOK}"}
routes:
  - name: a
    match: {path_prefix: /a}
    upstream: "${UP}"
    headers: {set: {X-Special: "${SPECIAL}", X-Empty: "pre${EMPTY}post", Authorization: "Bearer ${KEY}"}}
`
	env := []string{"SPECIAL=" + special, "EMPTY=", "KEY=sk-123", "UP=http://127.0.0.1:9/base/", "BALLAST_ADMIN__TOKEN=${TOK2}", "TOK2=t0k:#"}
	cfg, err := Parse([]byte(y), Source{Environ: env})
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Routes[0]
	if r.Headers.Set["X-Special"] != special || r.Headers.Set["X-Empty"] != "prepost" || r.Upstream != "http://127.0.0.1:9/base/" ||
		cfg.Admin.Token != "t0k:#" {
		t.Errorf("got %q %q %q token %q", r.Headers.Set["X-Special"], r.Headers.Set["X-Empty"], r.Upstream, cfg.Admin.Token)
	}
	red, err := cfg.Redacted()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"sk-123", "t0k:#", "127.0.0.1:9/base"} {
		if strings.Contains(string(red), secret) {
			t.Errorf("/config shows %q:\n%s", secret, red)
		}
	}
	_, err = Parse([]byte(y), Source{Environ: []string{"SPECIAL=x", "EMPTY=", "UP=http://x", "TOK=t"}})
	if err == nil || !strings.Contains(err.Error(), "routes[0].headers.set.Authorization: environment variable KEY is not set") {
		t.Errorf("an unset reference: %v", err)
	}
}

// Durations and sizes at their bounds, from the file and from the
// environment alike: 87600h is the longest duration, one nanosecond more
// is refused; units are case-sensitive; 0 and 0s are zero.
func TestConfigSeams11_DurationAndSizeBoundsAcrossLayers(t *testing.T) {
	y := `
defaults: {idempotency: {ttl: 87600h}, max_body: 1GiB}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x, hedge_after: 0s}
`
	cfg, err := Parse([]byte(y), Source{Environ: []string{"BALLAST_DEFAULTS__ASYNC__TTL=87600h", "BALLAST_DEFAULTS__TIMEOUTS__IDLE=0"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Routes[0]; r.Idempotency.TTL.D() != MaxDuration || r.Async.TTL.D() != MaxDuration || r.MaxBody != 1<<30 || r.HedgeAfter != 0 || r.Timeouts.Idle != 0 {
		t.Errorf("route %+v", r.Policy)
	}
	for _, v := range []string{"BALLAST_DEFAULTS__ASYNC__TTL=87600h0m0.000000001s", "BALLAST_DEFAULTS__MAX_BODY=1073741825",
		"BALLAST_DEFAULTS__MAX_BODY=10mib", "BALLAST_DEFAULTS__TIMEOUTS__TOTAL=1d", "BALLAST_DEFAULTS__TIMEOUTS__TOTAL=30"} {
		name, _, _ := strings.Cut(v, "=")
		if _, err := Parse([]byte(y), Source{Environ: []string{v}}); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v, want an error naming the variable", v, err)
		}
	}
}

// An empty value is YAML's null: it sets the key to its zero (0, off,
// none), not to the inherited value, as docs/config.md says. That is how a
// route drops the static_fallback its defaults give it.
func TestConfigSeams11_NullIsZeroNotInherited(t *testing.T) {
	cfg, err := Parse([]byte(`
defaults:
  static_fallback: {status: 502}
  timeouts: {idle: 45s}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x, static_fallback: ~, timeouts: {idle: }}
  - {name: b, match: {path_prefix: /b}, upstream: http://x}
`), Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Routes[0], cfg.Routes[1]
	if a.StaticFallback != nil || a.Timeouts.Idle != 0 || b.StaticFallback == nil || b.Timeouts.Idle.D() != 45*time.Second {
		t.Errorf("a: %+v %v; b: %+v %v", a.StaticFallback, a.Timeouts.Idle.D(), b.StaticFallback, b.Timeouts.Idle.D())
	}
}
