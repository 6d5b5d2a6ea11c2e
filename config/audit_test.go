package config

import (
	"strings"
	"testing"
	"time"
)

// ${NAME} references work in any string value, durations and sizes
// included (docs/config.md, "${NAME} references").
func TestEnvReferenceInDurationAndSize(t *testing.T) {
	cfg, err := Parse([]byte(`
defaults:
  timeouts: {total: "${TOTAL}"}
  max_body: "${MAX_BODY}"
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x}
`), Source{Environ: []string{"TOTAL=60s", "MAX_BODY=1MiB"}})
	if err != nil {
		t.Fatalf("a ${NAME} reference in a duration or size is refused: %v", err)
	}
	if r := cfg.Routes[0]; r.Timeouts.Total.D() != 60*time.Second || r.MaxBody != 1<<20 {
		t.Errorf("total %v max_body %d, want 60s and 1MiB", r.Timeouts.Total.D(), r.MaxBody)
	}
}

// Loading reports every problem at once: a route's own mistakes are not
// hidden by a problem in the defaults block.
func TestRouteErrorsReportedWithDefaultsErrors(t *testing.T) {
	_, err := Parse([]byte(`
defaults:
  max_body: 2GiB
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x, retry: {attempts: 50}, rate_limit: {rps: -1}}
`), Source{Environ: []string{}})
	if err == nil {
		t.Fatal("an invalid config loaded")
	}
	msg := err.Error()
	for _, want := range []string{"defaults.max_body", "routes[0].retry.attempts", "routes[0].rate_limit.rps"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the problems do not include %s:\n%s", want, msg)
		}
	}
}

// Two routes with the same host, path_prefix and methods (in any order)
// match exactly the same requests, which the docs forbid.
func TestDuplicateMatchWithMethodsReordered(t *testing.T) {
	_, err := Parse([]byte(`
routes:
  - {name: a, match: {path_prefix: /a, methods: [GET, HEAD]}, upstream: http://x}
  - {name: b, match: {path_prefix: /a, methods: [HEAD, GET]}, upstream: http://y}
`), Source{Environ: []string{}})
	if err == nil || !strings.Contains(err.Error(), "routes[1].match") {
		t.Errorf("routes b can never be chosen, yet the config loads: %v", err)
	}
}

// Environment overrides: levels split on __, single words become lists,
// list entries cannot be set, and a BALLAST_* that names no key is an
// unknown key error naming the variable.
func TestEnvOverrideRules(t *testing.T) {
	base := `
limiters:
  openai: {rps: 8}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x, rate_limit: {limiter: openai}}
  - {name: b, match: {path_prefix: /b}, upstream: http://x, timeouts: {total: 5s}}
`
	cfg, err := Parse([]byte(base), Source{Environ: []string{
		"BALLAST_DEFAULTS__TIMEOUTS__TOTAL=60s", "BALLAST_DEFAULTS__RETRY__ON=5xx",
		"BALLAST_LIMITERS__OPENAI__RPS=3", "BALLAST_ADMIN__ALLOW_DEBUG=true", "BALLAST_SHUTDOWN_TIMEOUT=10s",
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.Routes[0], cfg.Routes[1]
	if a.Timeouts.Total.D() != time.Minute || b.Timeouts.Total.D() != 5*time.Second {
		t.Errorf("totals %v %v: the default override reaches routes that do not set it", a.Timeouts.Total.D(), b.Timeouts.Total.D())
	}
	if len(a.Retry.On) != 1 || a.Retry.On[0] != "5xx" || cfg.Limiters["openai"].RPS != 3 || !cfg.Admin.AllowDebug ||
		cfg.ShutdownTimeout.D() != 10*time.Second {
		t.Errorf("overrides not applied: on %v rps %v debug %v shutdown %v", a.Retry.On, cfg.Limiters["openai"].RPS, cfg.Admin.AllowDebug, cfg.ShutdownTimeout)
	}
	for _, tc := range []struct{ env, want string }{
		{"BALLAST_DEFAULTS__TIMEOUTS__TOTL=1s", "BALLAST_DEFAULTS__TIMEOUTS__TOTL"},
		{"BALLAST_ROUTES__0__UPSTREAM=http://z", "routes"},
		{"BALLAST_DEFAULTS__TIMEOUTS__TOTAL=-5s", "negative"},
	} {
		_, err := Parse([]byte(base), Source{Environ: []string{tc.env}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tc.env, err, tc.want)
		}
	}
}

// An adaptive limiter backs off from rps and returns to it: without rps
// it is refused, as the docs say.
func TestAdaptiveNeedsRPS(t *testing.T) {
	_, err := Parse([]byte(`
routes:
  - {name: a, match: {path_prefix: /a}, upstream: http://x, rate_limit: {adaptive: true, tokens_per_minute: 1000}}
`), Source{Environ: []string{}})
	if err == nil || !strings.Contains(err.Error(), "routes[0].rate_limit.adaptive") {
		t.Errorf("adaptive without rps: %v", err)
	}
}
