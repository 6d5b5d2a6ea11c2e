package config

// An audit of every number, duration and size key of docs/config.md
// against values that are not numbers a key can hold: NaN, infinities,
// values beyond int64 or time.Duration, hexadecimal and other non-decimal
// strings. Each must be refused with an error at the key's path, or mean
// what the docs say. NaN once passed every bound ("between 0 and 1000000"
// is false for no comparison) and silently meant "no limit".

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// numberKeys lists every number key of docs/config.md by kind: the path
// as errors name it. Policy keys are checked under defaults (a route
// inherits them; TestNumbersAuditRouteAndLimiterKeys covers route paths).
var numberKeys = map[string][]string{
	"float": {
		"log.success_sample", "limiters.l.rps",
		"defaults.retry.budget.ratio", "defaults.retry.budget.min_per_second",
		"defaults.breaker.failure_ratio", "defaults.rate_limit.rps",
	},
	"int": {
		"procs", "state.max_records", "notify.max_per_minute",
		"limiters.l.burst", "limiters.l.max_keys", "limiters.l.tokens_per_minute",
		"defaults.retry.attempts", "defaults.breaker.failures", "defaults.breaker.min_requests",
		"defaults.breaker.half_open_requests", "defaults.rate_limit.burst", "defaults.rate_limit.max_keys",
		"defaults.rate_limit.tokens_per_minute", "defaults.concurrency.max", "defaults.concurrency.queue",
		"defaults.cache.max_entries", "defaults.static_fallback.status", "defaults.validate.retryable_rpc_codes[0]",
	},
	"duration": {
		"shutdown_timeout", "server.idle_timeout", "server.read_timeout", "log.flush_interval", "state.sweep_every",
		"state.redis.dial_timeout", "state.redis.read_timeout", "state.redis.write_timeout", "state.redis.op_timeout",
		"notify.cooldown_threshold", "notify.dedup_window",
		"defaults.timeouts.connect", "defaults.timeouts.per_try", "defaults.timeouts.idle", "defaults.timeouts.total",
		"defaults.retry.backoff.base", "defaults.retry.backoff.max", "defaults.retry.max_retry_after", "defaults.hedge_after",
		"defaults.breaker.open_for", "defaults.rate_limit.max_wait", "defaults.concurrency.max_wait",
		"defaults.cache.ttl", "defaults.cache.stale", "defaults.idempotency.ttl", "defaults.idempotency.window",
		"defaults.async.ttl", "shutdown_delay", "defaults.retry.max_cooldown",
	},
	"size": {
		"server.max_header_bytes", "state.max_response_bytes", "defaults.max_body", "defaults.validate.max_body",
		"defaults.cache.max_bytes",
	},
}

// numberBadValues are YAML values no key of a kind may take, each with a
// word its error must contain.
var numberBadValues = map[string][]struct{ yaml, want string }{
	"float": {
		{".nan", "finite"}, {".NaN", "finite"}, {".inf", ""}, {"-.inf", ""}, {`"NaN"`, "finite"}, {`"-Inf"`, "finite"},
		{`"Infinity"`, "finite"}, {`"0x1p4"`, "decimal"}, {`"1_0"`, "decimal"}, {`"5x"`, "decimal"}, {`"1e400"`, "range"},
		{"true", "number"}, {"[1]", "number"}, {"{a: 1}", "number"},
	},
	"int": {
		{".nan", "finite"}, {".inf", "finite"}, {"-.inf", "finite"}, {`"NaN"`, "finite"}, {"1e308", "range"},
		{"9223372036854775808", "range"}, {"-9223372036854775809", ""}, {`"9223372036854775808"`, "range"},
		{`"0x10"`, "decimal"}, {`"010"`, "decimal"}, {`"1_000"`, "decimal"}, {"1.5", "whole"}, {`"1.5"`, "decimal"},
		{`"ten"`, "decimal"}, {"true", "whole number"},
	},
	"duration": {
		{".nan", "duration"}, {".inf", "duration"}, {"-.inf", "duration"}, {"1e308", "duration"},
		{`"9999999999h"`, "87600h"}, {`"2562048h"`, "87600h"}, {`"2562047h"`, "87600h"}, {`"87600h1ns"`, "87600h"},
		{`"-9999999999h"`, "negative"}, {`"-1s"`, "negative"}, {`"-0.5ms"`, "negative"},
		{"30", "duration"}, {`"0x10s"`, "duration"}, {`"1d"`, "duration"}, {"true", "duration"},
	},
	"size": {
		{".nan", "size"}, {".inf", "size"}, {"1e308", "size"}, {`"99999999999999999999"`, "1TiB"}, {`"1025GiB"`, "1TiB"}, {`"2TiB"`, "size"},
		{"-1", "negative"}, {`"0x10"`, "size"}, {`"1.5MiB"`, "size"}, {"true", "size"},
	},
}

// numbersYAML is a config whose key at path (dotted, with [0] for a list's
// first element) is value, plus one valid route.
func numbersYAML(path, value string) string {
	parts := strings.Split(path, ".")
	leaf := parts[len(parts)-1]
	if k, ok := strings.CutSuffix(leaf, "[0]"); ok {
		leaf, value = k, "["+value+"]"
	}
	y := leaf + ": " + value
	for i := len(parts) - 2; i >= 0; i-- {
		y = parts[i] + ": {" + y + "}"
	}
	return y + "\n" + minimal
}

// numbersProblems parses yaml and returns the messages of the problems at
// path, and every problem.
func numbersProblems(t *testing.T, yaml string, env ...string) (atPath map[string][]string, all []error) {
	t.Helper()
	if env == nil {
		env = []string{}
	}
	_, err := Parse([]byte(yaml), Source{Environ: env})
	atPath = map[string][]string{}
	for _, e := range Problems(err) {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("problem %v is not a *FieldError", e)
		}
		if !errors.Is(e, ErrInvalid) {
			t.Errorf("problem %v does not match ErrInvalid", e)
		}
		atPath[fe.Path] = append(atPath[fe.Path], fe.Msg)
	}
	return atPath, Problems(err)
}

func TestNumbersAuditEveryKeyRefusesWhatIsNoNumber(t *testing.T) {
	for kind, keys := range numberKeys {
		for _, key := range keys {
			for _, bad := range numberBadValues[kind] {
				t.Run(key+"="+bad.yaml, func(t *testing.T) {
					atPath, all := numbersProblems(t, numbersYAML(key, bad.yaml))
					msgs := atPath[key]
					if len(msgs) != 1 {
						t.Fatalf("%s: %s: want exactly one problem at %s, got %q (all: %v)", kind, bad.yaml, key, msgs, all)
					}
					if !strings.Contains(msgs[0], bad.want) {
						t.Errorf("%s: %q does not say %q", key, msgs[0], bad.want)
					}
				})
			}
		}
	}
}

// The keys numberKeys names are all the number keys there are: a new one
// must join the audit.
func TestNumbersAuditCoversEveryNumberKey(t *testing.T) {
	listed := map[string]bool{}
	for _, keys := range numberKeys {
		for _, k := range keys {
			listed[strings.TrimSuffix(k, "[0]")] = true
		}
	}
	// Values of the right shape at every key: nothing but range problems,
	// so each listed key must appear in a config built of them all.
	for kind, keys := range numberKeys {
		for _, key := range keys {
			good := map[string]string{"float": "0.5", "int": "1", "duration": "1s", "size": "2KiB"}[kind]
			if key == "defaults.static_fallback.status" {
				good = "503"
			}
			if atPath, _ := numbersProblems(t, numbersYAML(key, good)); len(atPath[key]) > 0 {
				t.Errorf("%s: a good %s %s is refused: %v", key, kind, good, atPath[key])
			}
		}
	}
	if n := len(listed); n != 58 {
		t.Errorf("%d number keys listed; update the count when docs/config.md gains one", n)
	}
}

// What each kind of key does accept, with the meaning the docs give it.
func TestNumbersAuditAcceptedForms(t *testing.T) {
	tests := []struct {
		name, yaml string
		env        []string
		check      func(*Config) error
	}{
		{name: "negative zero is zero", yaml: `defaults: {retry: {budget: {min_per_second: -0.0}}, concurrency: {max: -0}, hedge_after: "-0s"}`,
			check: func(c *Config) error {
				if r := c.Routes[0]; r.Retry.Budget.MinPerSecond != 0 || r.Concurrency.Max != 0 || r.HedgeAfter != 0 {
					return fmt.Errorf("min_per_second %v max %d hedge_after %v", r.Retry.Budget.MinPerSecond, r.Concurrency.Max, r.HedgeAfter)
				}
				return nil
			}},
		{name: "YAML's own integer forms", yaml: "defaults: {concurrency: {queue: 0x10, max: 1_000}, cache: {max_entries: 1e3}}",
			check: func(c *Config) error {
				if r := c.Routes[0]; r.Concurrency.Queue != 16 || r.Concurrency.Max != 1000 || r.Cache.MaxEntries != 1000 {
					return fmt.Errorf("queue %d max %d max_entries %d", r.Concurrency.Queue, r.Concurrency.Max, r.Cache.MaxEntries)
				}
				return nil
			}},
		{name: "decimal strings", yaml: `defaults: {concurrency: {queue: "+7"}, retry: {budget: {ratio: ".25"}}}`,
			check: func(c *Config) error {
				if r := c.Routes[0]; r.Concurrency.Queue != 7 || r.Retry.Budget.Ratio != 0.25 {
					return fmt.Errorf("queue %d ratio %v", r.Concurrency.Queue, r.Retry.Budget.Ratio)
				}
				return nil
			}},
		{name: "the longest duration", yaml: `defaults: {cache: {mode: fallback, ttl: 87600h, stale: 87600h}}`,
			check: func(c *Config) error {
				if d := c.Routes[0].Cache.TTL.D(); d != 87600*time.Hour {
					return fmt.Errorf("ttl %v", d)
				}
				return nil
			}},
		{name: "a huge finite min_per_second: no budget", yaml: `defaults: {retry: {budget: {min_per_second: 1e308}}}`,
			check: func(c *Config) error {
				if v := c.Routes[0].Retry.Budget.MinPerSecond; v != 1e308 {
					return fmt.Errorf("min_per_second %v", v)
				}
				return nil
			}},
		{name: "an environment override", yaml: "", env: []string{"BALLAST_DEFAULTS__CONCURRENCY__QUEUE=12"},
			check: func(c *Config) error {
				if q := c.Routes[0].Concurrency.Queue; q != 12 {
					return fmt.Errorf("queue %d", q)
				}
				return nil
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = []string{}
			}
			cfg, err := Parse([]byte(tt.yaml+"\n"+minimal), Source{Environ: env})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.check(cfg); err != nil {
				t.Error(err)
			}
		})
	}
}

// Numbers that arrive as strings (environment overrides, ${NAME}
// references) or typed values (flags) meet the same rule, and an
// environment override that would have been read as octal is refused
// rather than silently becoming another number.
func TestNumbersAuditStringsFromEnvironmentAndFlags(t *testing.T) {
	tests := []struct {
		name, yaml, path, want string
		env                    []string
		flags                  map[string]any
	}{
		{name: "NaN from the environment", path: "defaults.retry.budget.ratio", want: "finite",
			env: []string{"BALLAST_DEFAULTS__RETRY__BUDGET__RATIO=NaN"}},
		{name: "a leading zero from the environment", path: "defaults.concurrency.queue", want: "decimal",
			env: []string{"BALLAST_DEFAULTS__CONCURRENCY__QUEUE=010"}},
		{name: "NaN through a reference", yaml: "limiters: {l: {rps: '${RPS}'}}", path: "limiters.l.rps", want: "finite",
			env: []string{"RPS=nan"}},
		{name: "infinity through a reference", yaml: "log: {success_sample: '${S}'}", path: "log.success_sample", want: "finite",
			env: []string{"S=+Inf"}},
		{name: "a NaN flag", path: "log.success_sample", want: "finite", flags: map[string]any{"log.success_sample": math.NaN()}},
		{name: "an infinite flag", path: "defaults.retry.budget.min_per_second", want: "finite",
			flags: map[string]any{"defaults.retry.budget.min_per_second": math.Inf(1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = []string{}
			}
			_, err := Parse([]byte(tt.yaml+"\n"+minimal), Source{Environ: env, Flags: tt.flags})
			var found bool
			for _, e := range Problems(err) {
				var fe *FieldError
				if errors.As(e, &fe) && fe.Path == tt.path && strings.Contains(fe.Msg, tt.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("want a problem at %s saying %q, got %v", tt.path, tt.want, err)
			}
		})
	}
}

// Route-level and limiter keys are named by their own paths, and a NaN
// rate no longer loads as "no limit".
func TestNumbersAuditRouteAndLimiterKeys(t *testing.T) {
	_, err := Parse([]byte(`
limiters: {shared: {rps: .nan}}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: "http://x", rate_limit: {rps: .nan}, retry: {budget: {ratio: .nan}}}
  - {name: b, match: {path_prefix: /b}, upstream: "http://x", breaker: {failure_ratio: .nan}, validate: {retryable_rpc_codes: [.inf], jsonrpc: true}}
`), Source{Environ: []string{}})
	want := []string{"limiters.shared.rps", "routes[0].rate_limit.rps", "routes[0].retry.budget.ratio",
		"routes[1].breaker.failure_ratio", "routes[1].validate.retryable_rpc_codes[0]"}
	got := map[string]bool{}
	for _, e := range Problems(err) {
		var fe *FieldError
		if errors.As(e, &fe) && strings.Contains(fe.Msg, "finite") {
			got[fe.Path] = true
		}
	}
	for _, p := range want {
		if !got[p] {
			t.Errorf("no \"finite\" problem at %s: %v", p, err)
		}
	}
}
