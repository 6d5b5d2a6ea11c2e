package proxy_test

// An audit of response validation (docs/config.md "validate", errors.md
// "invalid_response", retries.md class invalid) against real loopback
// upstreams. Earlier audits (docs_audit_test.go, validation_test.go) pin
// the basic checks, the retry-then-good path and the content-type rules;
// these probe hostile bodies, what an invalid answer may never become
// (a cache entry, a replay), schema loading, streams and cost bounds.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// vaUpstream answers every request with the body that body returns (a
// function so that a test can change it), as ct, and counts requests.
type vaUpstream struct {
	url  string
	hits atomic.Int64
	body atomic.Pointer[string]
	ct   atomic.Pointer[string]
}

func vaServe(t *testing.T, ct, body string) *vaUpstream {
	t.Helper()
	u := &vaUpstream{}
	u.set(ct, body)
	u.url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		if ct := *u.ct.Load(); ct != "" {
			w.Header().Set("Content-Type", ct)
		} else {
			w.Header()["Content-Type"] = nil
		}
		_, _ = io.WriteString(w, *u.body.Load())
	})
	return u
}

func (u *vaUpstream) set(ct, body string) { u.ct.Store(&ct); u.body.Store(&body) }

// vaRoute is a one-route config whose route r has the given extra keys
// (indented by four spaces).
func vaRoute(up, extra string) string {
	return fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    breaker: {enabled: false}
%s
`, up, extra)
}

// vaInvalid asserts a 502 invalid_response problem naming check.
func vaInvalid(t *testing.T, resp *http.Response, body, check string, attempts int) {
	t.Helper()
	if resp.StatusCode != 502 {
		t.Fatalf("status %d, want 502 invalid_response: %.300s", resp.StatusCode, body)
	}
	p := decodeProblem(t, resp, body)
	if p.Reason != "invalid_response" || p.Attempts != attempts || !strings.Contains(p.Detail, ": "+check+": ") {
		t.Errorf("problem %+v: want invalid_response after %d attempts naming the %s check", p, attempts, check)
	}
}

// Bodies a route with validate.json (and provider_error) must refuse, and
// some it must accept; each is judged on one attempt.
func TestValidationAuditHostileBodies(t *testing.T) {
	tests := []struct {
		name     string
		validate string
		body     string
		check    string // "" means the answer passes
	}{
		{name: "OpenAI error object in a 200", validate: "{json: true, provider_error: true}",
			body: `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`, check: "provider_error"},
		{name: "Anthropic error object in a 200", validate: "{json: true, provider_error: true}",
			body: `{"type":"error","error":{"type":"api_error","message":"Internal server error"}}`, check: "provider_error"},
		{name: "error member written with an escape", validate: "{provider_error: true}",
			body: `{"\u0065rror":{"message":"boom"}}`, check: "provider_error"},
		{name: "a later duplicate error member wins, as in JSON.parse", validate: "{provider_error: true}",
			body: `{"error":null,"error":{"message":"boom"}}`, check: "provider_error"},
		{name: "null error member passes", validate: "{json: true, provider_error: true}", body: `{"error":null,"id":"x"}`},
		{name: "JSON-RPC error member, retryable code", validate: "{jsonrpc: true, retryable_rpc_codes: [-32000]}",
			body: `{"jsonrpc":"2.0","id":7,"error":{"code":-32000,"message":"busy"}}`, check: "jsonrpc"},
		{name: "JSON-RPC: JSON but not an object", validate: "{jsonrpc: true}", body: `null`, check: "jsonrpc"},
		{name: "JSON-RPC: batch of a non-object", validate: "{jsonrpc: true}", body: `[1]`, check: "jsonrpc"},
		{name: "a JSON scalar is one JSON value", validate: "{json: true}", body: `42`},
		{name: "an empty body has nothing to parse", validate: "{json: true, provider_error: true}", body: ``},
		{name: "an empty body with non_empty", validate: "{json: true, non_empty: true}", body: ``, check: "non_empty"},
		{name: "byte order mark", validate: "{json: true}", body: "\xef\xbb\xbf{}", check: "json"},
		{name: "trailing garbage after a valid value", validate: "{json: true}", body: `{"a":1}garbage`, check: "json"},
		{name: "two values", validate: "{json: true}", body: `{"a":1}{"a":2}`, check: "json"},
		{name: "trailing NUL", validate: "{json: true}", body: "{\"a\":1}\x00", check: "json"},
		{name: "surrounding whitespace is fine", validate: "{json: true}", body: " \r\n{\"a\":1}\n"},
		{name: "NaN literal", validate: "{json: true}", body: `{"a":NaN}`, check: "json"},
		{name: "invalid UTF-8 in a string", validate: "{json: true}", body: "{\"a\":\"caf\xe9\"}", check: "json"},
		{name: "invalid UTF-8 in a key", validate: "{json: true}", body: "{\"\xff\":1}", check: "json"},
		{name: "overlong UTF-8 encoding", validate: "{json: true}", body: "{\"a\":\"\xc0\xaf\"}", check: "json"},
		{name: "valid multi-byte UTF-8", validate: "{json: true}", body: `{"a":"café ✓ 𝄞"}`},
		{name: "nesting at encoding/json's limit", validate: "{json: true}",
			body: strings.Repeat("[", 10000) + strings.Repeat("]", 10000)},
		{name: "nesting beyond it", validate: "{json: true}",
			body: strings.Repeat("[", 10001) + strings.Repeat("]", 10001), check: "json"},
		{name: "brackets inside strings are not nesting", validate: "{json: true}",
			body: `["` + strings.Repeat("[{", 20000) + `"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := vaServe(t, "application/json", tt.body)
			b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 1}\n    validate: "+tt.validate))
			resp, body := do(t, "GET", b.base+"/x", "")
			if tt.check == "" {
				if resp.StatusCode != 200 || body != tt.body {
					t.Fatalf("status %d, body %.200q: want the upstream's answer as it is", resp.StatusCode, body)
				}
				return
			}
			vaInvalid(t, resp, body, tt.check, 1)
			if got := b.metric("ballast_validation_failures_total", map[string]string{"route": "r", "check": tt.check}); got != 1 {
				t.Errorf("validation failures{%s} = %v, want 1", tt.check, got)
			}
		})
	}
}

// A hostile upstream answers 10MiB of '[' (well within the 32MiB read to
// validate). The JSON check must refuse it as invalid: a recursive parser
// run on it exceeds the goroutine stack limit, which is a fatal error that
// takes the whole process, every agent's requests with it, down.
func TestValidationAuditDeepNestingCannotCrashBallast(t *testing.T) {
	for _, validate := range []string{"{json: true}", "{jsonrpc: true}", "{schema: '{\"type\":\"object\"}'}", "{provider_error: true}"} {
		t.Run(validate, func(t *testing.T) {
			up := vaServe(t, "application/json", strings.Repeat("[", 10<<20))
			b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 1}\n    validate: "+validate))
			resp, body := do(t, "GET", b.base+"/x", "")
			if validate == "{provider_error: true}" {
				// Not JSON, so no provider error envelope: it passes whole.
				if resp.StatusCode != 200 || len(body) != 10<<20 {
					t.Fatalf("status %d, %d bytes", resp.StatusCode, len(body))
				}
				return
			}
			vaInvalid(t, resp, body, "json", 1)
			if !strings.Contains(body, "deeper than 10000") {
				t.Errorf("detail does not say why: %.300s", body)
			}
		})
	}
}

// A body check reads at most 32MiB of a body when validate.max_body is not
// set (config.md "validate"). A longer answer must never reach the agent
// cut at that point under a 200 that looks whole.
func TestValidationAuditBodyBeyondTheValidationLimitIsNeverTruncated(t *testing.T) {
	const size = 33 << 20
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		_, _ = io.WriteString(w, "[")
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
		_, _ = io.WriteString(w, "]")
	})
	b := startBallast(t, vaRoute(up, "    retry: {attempts: 1}\n    validate: {non_empty: true, provider_error: true}"))
	resp, body := do(t, "GET", b.base+"/x", "")
	switch {
	case resp.StatusCode == 200 && len(body) == size+2:
		t.Errorf("relayed whole though not checked: the docs say the body checks read at most 32MiB")
	case resp.StatusCode == 200:
		t.Fatalf("200 with %d of %d bytes: the answer was cut at the validation limit", len(body), size+2)
	default:
		vaInvalid(t, resp, body, "max_body", 1)
		if !strings.Contains(body, "32MiB") {
			t.Errorf("detail does not name the limit: %.300s", body)
		}
	}
}

// Content-Type rules beyond those docs_audit_test.go pins: whole-type
// patterns, case and whitespace in both the pattern and the header.
func TestValidationAuditContentTypes(t *testing.T) {
	tests := []struct {
		name, pattern, ct string
		ok                bool
	}{
		{"type wildcard, +json subtype", "application/*", "application/problem+json", true},
		{"type wildcard, other type", "application/*", "text/plain", false},
		{"type wildcard, missing header", "application/*", "", false},
		{"upper-case pattern", "Application/JSON", "application/json", true},
		{"spaces around the header's parameters", "application/json", "application/json ; charset=utf-8", true},
		{"tab before the parameters", "application/json", "application/json\t;charset=UTF-8", true},
		{"subtype prefix is not a match", "application/json", "application/jsonx", false},
		{"a space inside the media type", "application/json", "application /json", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := vaServe(t, tt.ct, `{}`)
			b := startBallast(t, vaRoute(up.url, fmt.Sprintf("    retry: {attempts: 1}\n    validate: {content_type: [%q]}", tt.pattern)))
			resp, body := do(t, "GET", b.base+"/x", "")
			if tt.ok {
				if resp.StatusCode != 200 {
					t.Errorf("%q against %q: %d %.200s, want 200", tt.ct, tt.pattern, resp.StatusCode, body)
				}
				return
			}
			vaInvalid(t, resp, body, "content_type", 1)
		})
	}
}

// retries.md: an invalid answer is retried only when retry.on lists
// invalid and the request is safe to repeat; either way the final answer is
// 502 invalid_response, never the invalid body itself.
func TestValidationAuditRetrySafety(t *testing.T) {
	tests := []struct {
		name, method, retry string
		attempts            int
	}{
		{"GET, invalid listed (the default)", "GET", "{backoff: {base: 1ms, max: 2ms}}", 3},
		{"GET, invalid not listed", "GET", "{on: [503], backoff: {base: 1ms, max: 2ms}}", 1},
		{"POST, not unsafe_methods", "POST", "{backoff: {base: 1ms, max: 2ms}}", 1},
		{"POST, unsafe_methods", "POST", "{unsafe_methods: true, backoff: {base: 1ms, max: 2ms}}", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := vaServe(t, "text/html", "<html>oops</html>")
			b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, breaker: {enabled: false}, retry: %s, validate: {content_type: [application/json]}}
`, up.url, tt.retry))
			resp, body := do(t, tt.method, b.base+"/x", `{"q":1}`)
			vaInvalid(t, resp, body, "content_type", tt.attempts)
			if up.hits.Load() != int64(tt.attempts) {
				t.Errorf("upstream hits %d, want %d", up.hits.Load(), tt.attempts)
			}
		})
	}
}

// An invalid answer is never stored: not as a fresh cache entry, not over
// the good entry a fallback cache keeps (which it serves stale instead),
// and a JSON-RPC tool error the route relays is not cached either.
func TestValidationAuditInvalidIsNeverCached(t *testing.T) {
	t.Run("fresh mode", func(t *testing.T) {
		up := vaServe(t, "application/json", `{"items":`)
		b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 1}\n    validate: {json: true}\n    cache: {mode: fresh, ttl: 1h}"))
		resp, body := do(t, "GET", b.base+"/x", "")
		vaInvalid(t, resp, body, "json", 1)
		up.set("application/json", `{"items":[]}`)
		resp, body = do(t, "GET", b.base+"/x", "")
		if resp.StatusCode != 200 || body != `{"items":[]}` || up.hits.Load() != 2 {
			t.Fatalf("%d %q after %d upstream hits: want the upstream asked again", resp.StatusCode, body, up.hits.Load())
		}
		resp, _ = do(t, "GET", b.base+"/x", "")
		if up.hits.Load() != 2 || !strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
			t.Errorf("the good answer was not cached: hits %d, Cache-Status %q", up.hits.Load(), resp.Header.Get("Cache-Status"))
		}
	})
	t.Run("fallback mode keeps the good entry", func(t *testing.T) {
		up := vaServe(t, "application/json", `{"v":1}`)
		b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}\n    validate: {json: true, provider_error: true}\n    cache: {mode: fallback, stale: 1h}"))
		if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != `{"v":1}` {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		up.set("application/json", `{"error":{"type":"overloaded_error","message":"Overloaded"}}`)
		for i := range 2 {
			resp, body := do(t, "GET", b.base+"/x", "")
			cs := resp.Header.Get("Cache-Status")
			if resp.StatusCode != 200 || body != `{"v":1}` || !strings.Contains(cs, "fwd=stale") || !strings.Contains(cs, "detail=stale-if-error") {
				t.Fatalf("request %d: %d %q Cache-Status %q: want the stored good answer, stale", i, resp.StatusCode, body, cs)
			}
		}
		if got := up.hits.Load(); got != 5 {
			t.Errorf("upstream hits %d, want 1 + 2×2", got)
		}
	})
	t.Run("a relayed JSON-RPC tool error", func(t *testing.T) {
		rpcErr := `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params"}}`
		up := vaServe(t, "application/json", rpcErr)
		b := startBallast(t, vaRoute(up.url, "    validate: {jsonrpc: true}\n    cache: {mode: fresh, ttl: 1h}"))
		for i := range 2 {
			if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != rpcErr {
				t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
			}
		}
		if up.hits.Load() != 2 {
			t.Errorf("upstream hits %d, want 2: the tool's error was served from the cache", up.hits.Load())
		}
	})
}

// An invalid answer is not stored for idempotent replay: ballast's own
// 502 frees the key, so the agent's retry with the same key runs again.
func TestValidationAuditInvalidIsNeverReplayed(t *testing.T) {
	up := vaServe(t, "application/json", `{"error":{"message":"The server had an error","type":"server_error"}}`)
	b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 1, unsafe_methods: true}\n    validate: {provider_error: true}\n    idempotency: {mode: header}"))
	resp, body := do(t, "POST", b.base+"/x", `{"q":1}`, "Idempotency-Key", "k-1")
	vaInvalid(t, resp, body, "provider_error", 1)
	up.set("application/json", `{"ok":true}`)
	resp, body = do(t, "POST", b.base+"/x", `{"q":1}`, "Idempotency-Key", "k-1")
	if resp.StatusCode != 200 || body != `{"ok":true}` || resp.Header.Get("Idempotent-Replayed") != "" || up.hits.Load() != 2 {
		t.Fatalf("%d %q replayed %q hits %d: want the call run again", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), up.hits.Load())
	}
	resp, body = do(t, "POST", b.base+"/x", `{"q":1}`, "Idempotency-Key", "k-1")
	if resp.StatusCode != 200 || body != `{"ok":true}` || resp.Header.Get("Idempotent-Replayed") != "true" || up.hits.Load() != 2 {
		t.Errorf("%d %q replayed %q hits %d: want the good answer replayed", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), up.hits.Load())
	}
}

// retries.md "the order of degradation": validation failures end in the
// static fallback when there is no stale entry.
func TestValidationAuditInvalidDegradesToStaticFallback(t *testing.T) {
	up := vaServe(t, "application/json", `[`)
	b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}\n    validate: {json: true}\n    static_fallback: {status: 503, body: '{\"error\":\"unavailable\"}'}"))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 || body != `{"error":"unavailable"}` || resp.Header.Get("X-Ballast-Fallback") != "static" || up.hits.Load() != 2 {
		t.Errorf("%d %q fallback %q hits %d", resp.StatusCode, body, resp.Header.Get("X-Ballast-Fallback"), up.hits.Load())
	}
}

// vaBuild builds a ballast from yaml without starting it, returning the
// error of config loading or of building the policies.
func vaBuild(t *testing.T, yaml string) error {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), config.Source{File: "t.yaml", Environ: []string{}})
	if err != nil {
		return err
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), AccessLog: io.Discard})
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}
	return err
}

// JSON Schemas: internal $refs work; "format" is an annotation in draft
// 2020-12 (the default); a schema that cannot be read or compiled is a
// config error naming the key, never a panic, a hang or a network fetch.
func TestValidationAuditSchemas(t *testing.T) {
	t.Run("internal $ref and format", func(t *testing.T) {
		schema := `{"$defs":{"item":{"type":"object","required":["id"],"properties":{"id":{"type":"integer"},"mail":{"type":"string","format":"email"}}}},"type":"array","items":{"$ref":"#/$defs/item"}}`
		up := vaServe(t, "application/json", `[{"id":1,"mail":"not an address"}]`)
		b := startBallast(t, vaRoute(up.url, fmt.Sprintf("    retry: {attempts: 1}\n    validate: {schema: %q}", schema)))
		if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
			t.Errorf("format is not asserted in draft 2020-12: %d %.200s", resp.StatusCode, body)
		}
		up.set("application/json", `[{"id":1},{"id":"2"}]`)
		resp, body := do(t, "GET", b.base+"/x", "")
		vaInvalid(t, resp, body, "schema", 1)
		if !strings.Contains(body, "/1/id") {
			t.Errorf("detail does not point at /1/id: %s", body)
		}
	})
	var fetched atomic.Int64
	remote, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		fetched.Add(1)
		_, _ = io.WriteString(w, `{"type":"object"}`)
	})
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, key, value string
	}{
		{"schema_file is a directory", "schema_file", dir},
		{"schema_file missing", "schema_file", filepath.Join(dir, "absent.json")},
		{"schema_file not JSON", "schema_file", write("broken.json", `{"type":`)},
		{"schema_file refs a missing file", "schema_file", write("ref.json", `{"$ref":"absent.json"}`)},
		{"schema_file breaks the meta-schema", "schema_file", write("meta.json", `{"type":"strin"}`)},
		{"inline schema refs a remote URL", "schema", `{"$ref":"` + remote + `/s.json"}`},
		{"schema_file refs a remote URL", "schema_file", write("remote.json", `{"$ref":"`+remote+`/s.json"}`)},
		{"inline schema refs a local file", "schema", `{"$ref":"file:///etc/passwd"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				done <- vaBuild(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: "http://127.0.0.1:1", validate: {%s: %q}}
`, tt.key, tt.value))
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("building the schema did not finish")
			}
			if err == nil || !strings.Contains(err.Error(), "routes[0].validate."+tt.key+":") {
				t.Errorf("error %v, want a config error at routes[0].validate.%s", err, tt.key)
			}
		})
	}
	if fetched.Load() != 0 {
		t.Errorf("a schema's remote $ref was fetched %d times while loading the config", fetched.Load())
	}
	t.Run("a $ref cycle", func(t *testing.T) {
		up := vaServe(t, "application/json", `{"a":{"a":{}}}`)
		done := make(chan error, 1)
		go func() {
			done <- vaBuild(t, vaRoute(up.url, `    validate: {schema: '{"$ref":"#"}'}`))
		}()
		select {
		case <-done: // refused or accepted, but it finished
		case <-time.After(20 * time.Second):
			t.Fatal("compiling a self-referencing schema did not finish")
		}
	})
}

// Event streams get the status and content_type checks only: a stream
// that fails them is invalid before any byte reaches the agent, one that
// passes is relayed without being read whole.
func TestValidationAuditStreamsGetTheHeadChecks(t *testing.T) {
	sse := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, "data: not json at all\n\n")
		}
	}
	for _, tt := range []struct {
		name, validate string
		status         int
		check          string
	}{
		{"content type refused", "{content_type: [application/json]}", 200, "content_type"},
		{"status refused", "{status: ['200']}", 201, "status"},
		{"body checks skipped", "{status: [2xx], content_type: [text/event-stream], json: true, provider_error: true, max_body: 4}", 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up, _ := upstream(t, sse(tt.status))
			b := startBallast(t, vaRoute(up, "    retry: {attempts: 1}\n    validate: "+tt.validate))
			resp, body := do(t, "GET", b.base+"/x", "")
			if tt.check == "" {
				if resp.StatusCode != 200 || body != "data: not json at all\n\n" {
					t.Errorf("%d %q: want the stream relayed", resp.StatusCode, body)
				}
				return
			}
			vaInvalid(t, resp, body, tt.check, 1)
		})
	}
}

// A 10MiB JSON answer is validated (json, provider_error, jsonrpc) and
// relayed intact, well within a request's time.
func TestValidationAuditTenMiBBody(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"jsonrpc":"2.0","id":1,"result":{"items":[`)
	for i := 0; sb.Len() < 10<<20; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"n":%d,"s":"caf\u00e9 [{\"x\"}] é","f":[1.5e3,true,null]}`, i)
	}
	sb.WriteString(`]}}`)
	want := sb.String()
	up := vaServe(t, "application/json", want)
	b := startBallast(t, vaRoute(up.url, "    retry: {attempts: 1}\n    timeouts: {total: 20s}\n    validate: {json: true, jsonrpc: true, provider_error: true, non_empty: true}"))
	start := time.Now()
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 || body != want {
		t.Fatalf("status %d, %d of %d bytes", resp.StatusCode, len(body), len(want))
	}
	t.Logf("10MiB validated and relayed in %v", time.Since(start))
}

// Every duration key at its longest (config.MaxDuration, 87600h) and the
// int keys near int64's top still make a working route: no sum of two
// durations (cache.ttl + cache.stale, timeouts.total plus a lease)
// overflows into a negative that would make every entry expired at once,
// and a breaker.failures beyond int32 does not wrap into a bound that the
// first success meets (which opened the breaker for good).
func TestValidationAuditConfigLongestDurations(t *testing.T) {
	up := vaServe(t, "application/json", `{"ok":true}`)
	const long = "87600h"
	b := startBallast(t, fmt.Sprintf(`
shutdown_timeout: %[2]s
server: {idle_timeout: %[2]s, read_timeout: %[2]s}
state: {sweep_every: %[2]s}
notify: {cooldown_threshold: %[2]s, dedup_window: %[2]s}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %[1]q
    timeouts: {connect: %[2]s, per_try: %[2]s, idle: %[2]s, total: %[2]s}
    retry: {backoff: {base: %[2]s, max: %[2]s}, max_retry_after: %[2]s}
    hedge_after: %[2]s
    breaker: {open_for: %[2]s, failures: 9000000000000000000}
    rate_limit: {rps: 100, max_wait: %[2]s}
    concurrency: {max: 9000000000000000000, queue: 9000000000000000000, max_wait: %[2]s}
    cache: {mode: fresh, ttl: %[2]s, stale: %[2]s, max_entries: 9000000000000000000}
    idempotency: {mode: header, ttl: %[2]s, window: %[2]s}
    async: {ttl: %[2]s}
`, up.url, long))
	for i := range 2 {
		if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != `{"ok":true}` {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if up.hits.Load() != 1 {
		t.Errorf("upstream hits %d, want 1: a %s ttl entry was not served fresh", up.hits.Load(), long)
	}
	for i, replayed := range []string{"", "true"} {
		resp, body := do(t, "POST", b.base+"/y", "{}", "Idempotency-Key", "k")
		if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != replayed {
			t.Errorf("keyed request %d: %d replayed %q, want %q: %.200s", i, resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), replayed, body)
		}
	}
}
