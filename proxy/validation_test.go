package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

func answer(ct, body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		io.WriteString(w, body)
	}
}

func TestValidators(t *testing.T) {
	good := answer("application/json", `{"items":[{"price":3}]}`)
	schema := `{"type":"object","required":["items"],"properties":{"items":{"type":"array","items":{"type":"object","properties":{"price":{"type":"number","minimum":0}}}}}}`
	tests := []struct {
		name       string
		validate   string
		defect     func(http.ResponseWriter, *http.Request)
		wantCheck  string // in the 502 detail when every attempt is defective
		wantDetail string
	}{
		{"malformed JSON", "{json: true}", answer("application/json", `{"items": [1, 2,`), "json", "offset"},
		{"HTML error page", "{content_type: [application/json]}", answer("text/html", "<html>502 Bad Gateway</html>"), "content_type", "text/html"},
		{"empty 200", "{non_empty: true}", answer("application/json", ""), "non_empty", ""},
		{"schema violation", "{schema: '" + schema + "'}", answer("application/json", `{"items":[{"price":-1}]}`), "schema", "/items/0/price"},
		{"JSON-RPC error in a 200", "{jsonrpc: true, retryable_rpc_codes: [-32603]}",
			answer("application/json", `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error"}}`), "jsonrpc", "-32603"},
		{"provider error envelope", "{provider_error: true}", answer("application/json", `{"error":{"message":"overloaded","type":"server_error"}}`), "provider_error", ""},
		{"oversize body", "{max_body: 30}", answer("application/json", `{"a":"0123456789012345678901234567890"}`), "max_body", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+": retried, then good", func(t *testing.T) {
			goodRPC := good
			if strings.Contains(tt.validate, "jsonrpc") {
				goodRPC = answer("application/json", `{"jsonrpc":"2.0","id":1,"result":{"ok":true}}`)
			}
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){tt.defect, goodRPC}}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: tool, match: {path_prefix: /}, upstream: %q, validate: %s, retry: {backoff: {base: 1ms, max: 2ms}}}
`, up, tt.validate))
			resp, body := do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "2" || s.hits.Load() != 2 {
				t.Fatalf("%d attempts %s hits %d: %s", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"), s.hits.Load(), body)
			}
			if got := b.metric("ballast_validation_failures_total", map[string]string{"route": "tool", "check": tt.wantCheck}); got != 1 {
				t.Errorf("validation failures counted for %s: %v", tt.wantCheck, got)
			}
		})
		t.Run(tt.name+": always defective", func(t *testing.T) {
			s := &scripted{}
			for range 3 {
				s.steps = append(s.steps, tt.defect)
			}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: tool, match: {path_prefix: /}, upstream: %q, validate: %s, retry: {backoff: {base: 1ms, max: 2ms}}}
`, up, tt.validate))
			resp, body := do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != 502 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			p := decodeProblem(t, resp, body)
			if p.Reason != "invalid_response" || p.Attempts != 3 || !strings.Contains(p.Detail, tt.wantCheck+":") || !strings.Contains(p.Detail, tt.wantDetail) {
				t.Errorf("problem %+v: want check %s and %q in the detail", p, tt.wantCheck, tt.wantDetail)
			}
		})
	}
}

func TestNonRetryableJSONRPCErrorIsTheToolsAnswer(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){
		answer("application/json", `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params"}}`)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: mcp, match: {path_prefix: /}, upstream: %q, validate: {jsonrpc: true, retryable_rpc_codes: [-32603]}}
`, up))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "Invalid params") || s.hits.Load() != 1 {
		t.Errorf("%d %q hits %d: a non-retryable JSON-RPC error passes to the agent as it is", resp.StatusCode, body, s.hits.Load())
	}
}

// downable is an upstream that counts its requests and, once down is set,
// answers 503 to every one; until then it answers with h.
type downable struct {
	url  string
	down atomic.Bool
	hits atomic.Int64
}

func downableUpstream(t *testing.T, h http.HandlerFunc) *downable {
	d := &downable{}
	d.url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		d.hits.Add(1)
		if d.down.Load() {
			w.WriteHeader(503)
			return
		}
		h(w, r)
	})
	return d
}

func TestStaleIfErrorWhenTheUpstreamIsDown(t *testing.T) {
	up := downableUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"user":%q}`, r.Header.Get("Authorization"))
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    cache: {mode: fallback, stale: 1h}
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
`, up.url))
	resp, body := do(t, "GET", b.base+"/weather?city=x", "", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("first: %d Cache-Status %q", resp.StatusCode, resp.Header.Get("Cache-Status"))
	}
	up.down.Store(true)
	clock.Advance(90 * time.Second)
	resp, body = doTicking(t, clock, "GET", b.base+"/weather?city=x", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || body != `{"user":"Bearer alice"}` {
		t.Fatalf("with the upstream down: %d %q, want the stored answer", resp.StatusCode, body)
	}
	cs := resp.Header.Get("Cache-Status")
	if !strings.Contains(cs, "fwd=stale") || !strings.Contains(cs, "fwd-status=503") || !strings.Contains(cs, "detail=stale-if-error") {
		t.Errorf("Cache-Status %q", cs)
	}
	if age := resp.Header.Get("Age"); age != "90" {
		t.Errorf("Age %q, want 90", age)
	}
	// Another caller never gets alice's answer.
	resp, body = doTicking(t, clock, "GET", b.base+"/weather?city=x", "Authorization", "Bearer bob")
	if resp.StatusCode != 503 || strings.Contains(body, "alice") {
		t.Errorf("bob with the upstream down: %d %q; another tenant's entry must never be served", resp.StatusCode, body)
	}
	if got := b.metric("ballast_cache_requests_total", map[string]string{"route": "tool", "result": "stale"}); got != 1 {
		t.Errorf("stale serves counted: %v", got)
	}
}

// An answer the cache already holds, received again, restarts its age: a
// stale-if-error answer is as old as the last time the upstream gave it.
func TestStaleAgeCountsFromTheLatestSameAnswer(t *testing.T) {
	up := downableUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"forecast":"sun"}`)
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    cache: {mode: fallback, stale: 1h}
    retry: {attempts: 1}
`, up.url))
	for range 2 {
		resp, _ := do(t, "GET", b.base+"/weather", "")
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
			t.Fatalf("healthy: %d Cache-Status %q", resp.StatusCode, resp.Header.Get("Cache-Status"))
		}
		clock.Advance(40 * time.Second)
	}
	up.down.Store(true)
	resp, body := doTicking(t, clock, "GET", b.base+"/weather")
	if resp.StatusCode != 200 || body != `{"forecast":"sun"}` || !strings.Contains(resp.Header.Get("Cache-Status"), "stale-if-error") {
		t.Fatalf("upstream down: %d %q Cache-Status %q", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	if age := resp.Header.Get("Age"); age != "40" {
		t.Errorf("Age %q, want 40: the second, identical answer was received 40s ago", age)
	}
}

// The cache key holds the request body, also when ballast streamed it in:
// a stored answer to one prompt never answers another. (fasthttp's
// Request.Body() is empty once its body stream was read; the key took it
// from there and gave every body of a route the same entry.)
func TestCacheKeyHoldsTheRequestBody(t *testing.T) {
	for _, mode := range []string{"fallback", "fresh"} {
		t.Run(mode, func(t *testing.T) {
			up := downableUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"echo":%q}`, b)
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: model
    match: {path_prefix: /}
    upstream: %q
    cache: {mode: %s, ttl: 1h}
    retry: {attempts: 1}
`, up.url, mode))
			prompts := []string{`{"prompt":"A"}`, `{"prompt":"B"}`}
			for _, p := range prompts {
				if _, body := do(t, "POST", b.base+"/v1/chat", p); body != fmt.Sprintf(`{"echo":%q}`, p) {
					t.Fatalf("%s: answered %s", p, body)
				}
			}
			if up.hits.Load() != 2 {
				t.Fatalf("the upstream saw %d requests for two prompts, want 2", up.hits.Load())
			}
			up.down.Store(true)
			for _, p := range prompts {
				if _, body := do(t, "POST", b.base+"/v1/chat", p); body != fmt.Sprintf(`{"echo":%q}`, p) {
					t.Errorf("%s from the cache: answered %s", p, body)
				}
			}
		})
	}
}

func TestDegradationOrder(t *testing.T) {
	// retries → fallback upstream → stale cache → static fallback → error
	var primaryDown, fallbackDown atomic.Bool
	primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if primaryDown.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "primary")
	})
	fallback, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if fallbackDown.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "fallback")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    breaker: {enabled: false}
    cache: {mode: fallback}
    static_fallback: {status: 503, body: '{"status":"unavailable","retry_after_s":30}'}
`, primary, fallback))
	c := client(t)
	if _, body := get(t, c, b.base+"/cached"); body != "primary" {
		t.Fatalf("healthy: %q", body)
	}
	primaryDown.Store(true)
	if _, body := get(t, c, b.base+"/cached"); body != "fallback" {
		t.Errorf("primary down: %q, want the fallback upstream first", body)
	}
	fallbackDown.Store(true)
	resp, body := get(t, c, b.base+"/cached")
	if body != "fallback" || !strings.Contains(resp.Header.Get("Cache-Status"), "stale-if-error") {
		t.Errorf("both down, entry stored: %q %q, want the last stored answer, stale", body, resp.Header.Get("Cache-Status"))
	}
	resp, body = get(t, c, b.base+"/never-cached")
	if resp.StatusCode != 503 || body != `{"status":"unavailable","retry_after_s":30}` || resp.Header.Get("X-Ballast-Fallback") != "static" {
		t.Errorf("both down, nothing stored: %d %q, want the static fallback", resp.StatusCode, body)
	}
	if cs := resp.Header.Get("Cache-Status"); !strings.Contains(cs, "detail=static-fallback") {
		t.Errorf("static fallback Cache-Status %q", cs)
	}
}

func TestFreshModeCollapsesConcurrentMisses(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-release
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"v":1}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: tool, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: 1m}}
`, up))
	c := client(t)
	misses := make([]<-chan raResult, 20)
	for i := range misses {
		misses[i] = raSend(t, "GET", b.base+"/same", "", "Authorization", "Bearer k")
	}
	waitFor(t, func() bool { return hits.Load() == 1 })
	waitFor(t, func() bool { return b.srv.CollapsedWaiters("tool") == 19 }) // the other 19 queue behind the first
	close(release)
	for _, ch := range misses {
		r := raAnswer(t, ch)
		if got := fmt.Sprint(r.resp.StatusCode, r.body); got != `200{"v":1}` {
			t.Errorf("a collapsed request got %q", got)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("upstream hits %d for 20 concurrent identical misses, want 1", hits.Load())
	}
	resp, _ := get(t, c, b.base+"/same", "Authorization", "Bearer k")
	if !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") || resp.Header.Get("Age") == "" {
		t.Errorf("fresh hit: Cache-Status %q Age %q", resp.Header.Get("Cache-Status"), resp.Header.Get("Age"))
	}
	resp, _ = get(t, c, b.base+"/same", "Authorization", "Bearer k", "Cache-Control", "no-cache")
	if strings.Contains(resp.Header.Get("Cache-Status"), "hit") || hits.Load() != 2 {
		t.Errorf("no-cache: Cache-Status %q hits %d, want a forward", resp.Header.Get("Cache-Status"), hits.Load())
	}
}

// doTicking sends a request whose retry backoff waits on a fake clock, and
// steps the clock each time a wait begins, until the answer arrives.
func doTicking(t *testing.T, clock *policy.FakeClock, method, url string, headers ...string) (*http.Response, string) {
	t.Helper()
	done := raSend(t, method, url, "", headers...)
	for {
		if r, ok := raReady(t, done); ok {
			return r.resp, r.body
		}
		if clock.Waiters() > 0 {
			clock.Advance(time.Millisecond) // this route's backoff is at most 1ms
			continue
		}
		runtime.Gosched()
	}
}
