package proxy_test

// A documentation-versus-behaviour audit: each test pins one or more
// concrete claims of README.md and docs/*.md (cited as file:line) to what a
// real ballast does against real loopback upstreams. A failing test here
// means the docs and the code disagree; the test names the doc line.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/proxy"
)

// daProblem is a problem body with the members errors.md:35-46 lists,
// including the OpenAI/Anthropic-style error envelope and whether route
// and retry_after_s were present at all.
type daProblem struct {
	problemBody
	Error struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	raw map[string]json.RawMessage
}

func daDecode(t *testing.T, resp *http.Response, body string) daProblem {
	t.Helper()
	var p daProblem
	p.problemBody = decodeProblem(t, resp, body)
	if err := json.Unmarshal([]byte(body), &p.raw); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(p.raw["error"], &p.Error)
	// errors.md:46: error = {type: reason, code: reason, message: detail}.
	if p.Error.Type != p.Reason || p.Error.Code != p.Reason || p.Error.Message != p.Detail {
		t.Errorf("errors.md:46: error envelope %+v, want type=code=%q message=detail", p.Error, p.Reason)
	}
	// errors.md:48-50: every agent-listener problem carries no-store and
	// never X-Ballast-Attempts / X-Ballast-Upstream.
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("errors.md:48: problem Cache-Control %q, want no-store", cc)
	}
	for _, h := range []string{"X-Ballast-Attempts", "X-Ballast-Upstream"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("errors.md:49: problem carries %s: %q", h, v)
		}
	}
	// errors.md:44,54: retry_after_s and Retry-After come together, same value.
	ra := resp.Header.Get("Retry-After")
	_, hasRA := p.raw["retry_after_s"]
	if hasRA != (ra != "") || (ra != "" && ra != strconv.Itoa(p.RetryAfterS)) {
		t.Errorf("errors.md:44: Retry-After %q vs retry_after_s %v (present %v)", ra, p.RetryAfterS, hasRA)
	}
	return p
}

func (p daProblem) has(member string) bool { _, ok := p.raw[member]; return ok }

// okUpstream counts hits and answers 200 JSON.
func daOK(t *testing.T) (string, *atomic.Int64) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "11")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	return up, &hits
}

// TestDocsAudit_NoRouteProblem: errors.md:42,48-50,133-134 and
// metrics.md:686 for a request no route takes.
func TestDocsAudit_NoRouteProblem(t *testing.T) {
	up, _ := daOK(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /api/}, upstream: %q}]\n", up))
	resp, body := do(t, "DELETE", b.base+"/nothing/here", "", "Host", "tools.example")
	if resp.StatusCode != 404 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	p := daDecode(t, resp, body)
	if p.Reason != "no_route" || p.Attempts != 0 || p.has("route") || p.has("retry_after_s") {
		t.Errorf("errors.md:42,131: no_route problem %s", body)
	}
	// errors.md:134: detail repeats the method, path and host.
	for _, w := range []string{"DELETE", "/nothing/here"} {
		if !strings.Contains(p.Detail, w) {
			t.Errorf("errors.md:134: detail %q lacks %q", p.Detail, w)
		}
	}
	// errors.md:136: /openai/ does not match /openai.
	if resp, _ := do(t, "GET", b.base+"/api", ""); resp.StatusCode != 404 {
		t.Errorf("errors.md:135: /api matched a /api/ prefix: %d", resp.StatusCode)
	}
	// metrics.md:686: _unmatched for requests no route took.
	if got := b.metric("ballast_requests_total", map[string]string{"route": "_unmatched", "code": "4xx"}); got != 2 {
		t.Errorf("metrics.md:686: requests_total{_unmatched,4xx} = %v, want 2", got)
	}
}

// TestDocsAudit_TimeoutHeader: README.md:218, config.md:819 and
// errors.md:106 — X-Ballast-Timeout must be a positive Go duration, else
// 400 bad_request (no Retry-After, errors.md:68).
func TestDocsAudit_TimeoutHeader(t *testing.T) {
	up, hits := daOK(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	for _, v := range []string{"abc", "0s", "-1s", "5"} {
		resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", v)
		if resp.StatusCode != 400 {
			t.Errorf("X-Ballast-Timeout %q: %d, want 400", v, resp.StatusCode)
			continue
		}
		if p := daDecode(t, resp, body); p.Reason != "bad_request" || p.Route != "r" || p.has("retry_after_s") {
			t.Errorf("X-Ballast-Timeout %q: %s", v, body)
		}
	}
	if hits.Load() != 0 {
		t.Errorf("a refused request reached the upstream %d times", hits.Load())
	}
	if resp, _ := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "1500ms"); resp.StatusCode != 200 {
		t.Errorf("X-Ballast-Timeout 1500ms: %d", resp.StatusCode)
	}
}

// TestDocsAudit_TimeoutHeaderNeverRaises: README.md:218 — the header never
// raises the deadline above timeouts.total; errors.md:158-164 — the answer
// is 504 timeout without Retry-After.
func TestDocsAudit_TimeoutHeaderNeverRaises(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up, _ := upstream(t, hang(release))
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, timeouts: {connect: 100ms, per_try: 5s, total: 200ms}, retry: {attempts: 1}}
`, up))
	start := time.Now()
	resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "20s")
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("README.md:218: X-Ballast-Timeout 20s raised a 200ms total: answered after %v", el)
	}
	if resp.StatusCode != 504 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "timeout" || p.Attempts != 1 || p.has("retry_after_s") {
		t.Errorf("errors.md:158: %s", body)
	}
}

// TestDocsAudit_RequestID: README.md:201-202, config.md:818,834-835.
func TestDocsAudit_RequestID(t *testing.T) {
	var upstreamID atomic.Value
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		upstreamID.Store(r.Header.Get("X-Request-Id"))
		if r.URL.Path == "/own" {
			w.Header().Set("X-Request-Id", "upstream-id-1")
		}
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))

	resp, _ := do(t, "GET", b.base+"/x", "", "X-Request-Id", "agent-id-42")
	if got := resp.Header.Get("X-Request-Id"); got != "agent-id-42" || upstreamID.Load() != "agent-id-42" {
		t.Errorf("README.md:201: a sane agent id is adopted: response %q, upstream saw %v", got, upstreamID.Load())
	}
	long := strings.Repeat("a", 129)
	resp, _ = do(t, "GET", b.base+"/x", "", "X-Request-Id", long)
	if got := resp.Header.Get("X-Request-Id"); got == long || got == "" || upstreamID.Load() != got {
		t.Errorf("README.md:201: a 129-character id must be replaced: response %q, upstream %v", got, upstreamID.Load())
	}
	edge := strings.Repeat("b", 128)
	if resp, _ = do(t, "GET", b.base+"/x", "", "X-Request-Id", edge); resp.Header.Get("X-Request-Id") != edge {
		t.Errorf("README.md:201: a 128-character id must be adopted, got %q", resp.Header.Get("X-Request-Id"))
	}
	resp, _ = do(t, "GET", b.base+"/own", "", "X-Request-Id", "agent-id-43")
	if resp.Header.Get("X-Request-Id") != "upstream-id-1" || resp.Header.Get("X-Ballast-Request-Id") != "agent-id-43" {
		t.Errorf("README.md:202: upstream id %q, ballast id %q", resp.Header.Get("X-Request-Id"), resp.Header.Get("X-Ballast-Request-Id"))
	}
	if resp, _ = do(t, "GET", b.base+"/x", ""); resp.Header.Get("X-Ballast-Request-Id") != "" {
		t.Errorf("README.md:202: X-Ballast-Request-Id %q without an upstream id", resp.Header.Get("X-Ballast-Request-Id"))
	}
}

// TestDocsAudit_OutboundHeaders: config.md:793-812 and README.md:229-230.
func TestDocsAudit_OutboundHeaders(t *testing.T) {
	up := echoUpstream(t)
	_, upAddr, _ := strings.Cut(up, "://")
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    headers:
      remove: [X-Drop-Me, X-Replace]
      set: {X-Replace: from-ballast, X-Added: yes}
`, up))
	resp, body := do(t, "POST", b.base+"/x", "hello",
		"X-Ballast-Whatever", "secret", "X-Ballast-Priority", "low",
		"Connection", "X-Named-Hop", "X-Named-Hop", "1", "Proxy-Authorization", "Basic Zm9vOmJhcg==",
		"X-Forwarded-For", "10.9.8.7", "X-Drop-Me", "1", "X-Replace", "agent",
		"Idempotency-Key", "k1", "Prefer", "wait=5", "Host", "agent-chosen.example")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	e := decodeEcho(t, body)
	h := http.Header(e.Headers)
	for _, name := range []string{"X-Ballast-Whatever", "X-Ballast-Priority", "X-Named-Hop", "Proxy-Authorization", "X-Drop-Me"} {
		if v := h.Get(name); v != "" {
			t.Errorf("config.md:795-798: %s forwarded upstream: %q", name, v)
		}
	}
	if e.Host != upAddr {
		t.Errorf("config.md:804: Host %q, want %q", e.Host, upAddr)
	}
	if got := h.Get("X-Forwarded-For"); got != "10.9.8.7, 127.0.0.1" {
		t.Errorf("config.md:805: X-Forwarded-For %q", got)
	}
	if got := h.Get("X-Forwarded-Proto"); got != "http" {
		t.Errorf("config.md:806: X-Forwarded-Proto %q", got)
	}
	if h.Get("X-Replace") != "from-ballast" || h.Get("X-Added") != "yes" {
		t.Errorf("config.md:809: headers.set: X-Replace %q X-Added %q", h.Get("X-Replace"), h.Get("X-Added"))
	}
	if h.Get("Idempotency-Key") != "k1" || h.Get("Prefer") != "wait=5" {
		t.Errorf("config.md:810: Idempotency-Key %q Prefer %q not forwarded", h.Get("Idempotency-Key"), h.Get("Prefer"))
	}
	if e.Body != "hello" || e.Method != "POST" {
		t.Errorf("config.md:810: method %q body %q", e.Method, e.Body)
	}
	// config.md:828-830: response hop-by-hop headers are dropped.
	for _, name := range []string{"Keep-Alive", "X-Upstream-Hop", "Proxy-Authenticate"} {
		if v := resp.Header.Get(name); v != "" {
			t.Errorf("config.md:828: response %s relayed: %q", name, v)
		}
	}
	if resp.Header.Get("X-Kept") != "yes" {
		t.Errorf("config.md:828: end-to-end response header dropped")
	}
}

// TestDocsAudit_FallbackHeaders: README.md:203-204, config.md:686,837 and
// retries.md:255-256 — a fallback's headers apply after the route's
// (names compared without case), X-Ballast-Upstream names the host:port
// that answered, X-Ballast-Attempts counts over all upstreams.
func TestDocsAudit_FallbackHeaders(t *testing.T) {
	prim, _ := upstream(t, status(503))
	fb := echoUpstream(t)
	_, fbAddr, _ := strings.Cut(fb, "://")
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    headers: {set: {authorization: route-key}}
    fallbacks: [{upstream: %q, headers: {set: {Authorization: fallback-key}}}]
    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}
    breaker: {enabled: false}
`, prim, fb))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("X-Ballast-Upstream"); got != fbAddr {
		t.Errorf("README.md:204: X-Ballast-Upstream %q, want the fallback %q", got, fbAddr)
	}
	if got := resp.Header.Get("X-Ballast-Attempts"); got != "3" {
		t.Errorf("README.md:203: X-Ballast-Attempts %q, want 3 (2 primary + 1 fallback)", got)
	}
	if got := http.Header(decodeEcho(t, body).Headers).Values("Authorization"); len(got) != 1 || got[0] != "fallback-key" {
		t.Errorf("config.md:686: fallback Authorization %q, want only fallback-key", got)
	}
}

// TestDocsAudit_StaticFallback: config.md:462-471 and README.md:208 — the
// defaults of static_fallback, its markers, and that it never answers
// for caller faults or auth.
func TestDocsAudit_StaticFallback(t *testing.T) {
	var code atomic.Int64
	code.Store(503)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(code.Load()))
		_, _ = io.WriteString(w, `{"error":{"message":"x"}}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    breaker: {enabled: false}
    static_fallback: {body: '{"fallback":true}'}
`, up))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 || body != `{"fallback":true}` {
		t.Fatalf("config.md:468: static default status: %d %q", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("config.md:469: static content type %q", ct)
	}
	if resp.Header.Get("X-Ballast-Fallback") != "static" {
		t.Errorf("config.md:464: X-Ballast-Fallback %q", resp.Header.Get("X-Ballast-Fallback"))
	}
	if cs := resp.Header.Get("Cache-Status"); cs != "ballast; fwd=uri-miss; fwd-status=503; detail=static-fallback" {
		t.Errorf("config.md:464: Cache-Status %q", cs)
	}
	if u := resp.Header.Get("X-Ballast-Upstream"); u != "" {
		t.Errorf("config.md:837: X-Ballast-Upstream %q on a static fallback", u)
	}
	for _, c := range []int64{400, 401, 404} {
		code.Store(c)
		resp, _ := do(t, "GET", b.base+"/x", "")
		if resp.StatusCode != int(c) || resp.Header.Get("X-Ballast-Fallback") != "" {
			t.Errorf("config.md:463: upstream %d answered %d fallback %q; want the upstream's own", c, resp.StatusCode, resp.Header.Get("X-Ballast-Fallback"))
		}
	}
}

// TestDocsAudit_FreshCache: config.md:845-852, README.md:205-206,223 and
// metrics.md:743-744.
func TestDocsAudit_FreshCache(t *testing.T) {
	up, hits := daOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: 60s}}
`, up))
	resp, _ := do(t, "GET", b.base+"/x?a=1&b=2", "")
	if cs := resp.Header.Get("Cache-Status"); cs != "ballast; fwd=uri-miss; stored" {
		t.Errorf("config.md:850: first Cache-Status %q", cs)
	}
	// config.md:855: "query with its parameters in any order" is part of the key.
	resp, _ = do(t, "GET", b.base+"/x?b=2&a=1", "")
	cs := resp.Header.Get("Cache-Status")
	if !strings.HasPrefix(cs, "ballast; hit; ttl=") {
		t.Errorf("config.md:849: second Cache-Status %q", cs)
	}
	if resp.Header.Get("Age") == "" || resp.Header.Get("X-Ballast-Attempts") != "0" || resp.Header.Get("X-Ballast-Upstream") != "" {
		t.Errorf("config.md:836-839: hit Age %q attempts %q upstream %q", resp.Header.Get("Age"),
			resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("X-Ballast-Upstream"))
	}
	for _, h := range [][2]string{{"Cache-Control", "no-cache"}, {"Cache-Control", "max-age=0"}, {"Cache-Control", "no-store"}, {"Pragma", "no-cache"}} {
		resp, _ := do(t, "GET", b.base+"/x?a=1&b=2", "", h[0], h[1])
		if cs := resp.Header.Get("Cache-Status"); !strings.HasPrefix(cs, "ballast; fwd=request") {
			t.Errorf("config.md:824,852: %s: %s gave Cache-Status %q", h[0], h[1], cs)
		}
	}
	if hits.Load() != 5 {
		t.Errorf("upstream hits %d, want 5 (one miss, four bypasses)", hits.Load())
	}
	for res, want := range map[string]float64{"hit": 1, "miss": 1, "bypass": 4, "stale": 0} {
		if got := b.metric("ballast_cache_requests_total", map[string]string{"route": "r", "result": res}); got != want {
			t.Errorf("metrics.md:743: cache_requests_total{%s} = %v, want %v", res, got, want)
		}
	}
	if got := b.metric("ballast_cache_bytes", map[string]string{"route": "r"}); got <= 0 {
		t.Errorf("metrics.md:744: ballast_cache_bytes %v", got)
	}
}

// TestDocsAudit_FallbackCache: config.md:851,853, retries.md:287-289 and
// metrics.md:743 ("In fallback mode only stale counts").
func TestDocsAudit_FallbackCache(t *testing.T) {
	var fail atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Length", "4")
		_, _ = io.WriteString(w, "good")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, cache: {mode: fallback, stale: 1h}, retry: {attempts: 1}, breaker: {enabled: false}}
`, up))
	resp, _ := do(t, "GET", b.base+"/x", "")
	if cs := resp.Header.Get("Cache-Status"); cs != "ballast; fwd=bypass; stored" {
		t.Errorf("config.md:851: Cache-Status %q", cs)
	}
	fail.Store(true)
	resp, body := do(t, "GET", b.base+"/x", "")
	cs := resp.Header.Get("Cache-Status")
	if resp.StatusCode != 200 || body != "good" || !strings.HasPrefix(cs, "ballast; fwd=stale; fwd-status=503; ttl=") ||
		!strings.HasSuffix(cs, "; detail=stale-if-error") || resp.Header.Get("Age") == "" {
		t.Errorf("config.md:853: stale answer %d %q Cache-Status %q Age %q", resp.StatusCode, body, cs, resp.Header.Get("Age"))
	}
	for res, want := range map[string]float64{"hit": 0, "miss": 0, "bypass": 0, "stale": 1} {
		if got := b.metric("ballast_cache_requests_total", map[string]string{"route": "r", "result": res}); got != want {
			t.Errorf("metrics.md:743: fallback-mode cache_requests_total{%s} = %v, want %v", res, got, want)
		}
	}
}

// TestDocsAudit_CacheStoresOnlyCacheable: config.md:855-858 — answers with
// Set-Cookie, no-store, private or a status outside the list are not stored.
func TestDocsAudit_CacheStoresOnlyCacheable(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/cookie":
			w.Header().Set("Set-Cookie", "a=b")
		case "/nostore":
			w.Header().Set("Cache-Control", "no-store")
		case "/private":
			w.Header().Set("Cache-Control", "private")
		case "/created":
			w.WriteHeader(201)
		}
		_, _ = io.WriteString(w, "x")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: 60s}}
`, up))
	for _, p := range []string{"/cookie", "/nostore", "/private", "/created"} {
		do(t, "GET", b.base+p, "")
		resp, _ := do(t, "GET", b.base+p, "")
		if cs := resp.Header.Get("Cache-Status"); strings.Contains(cs, "hit") {
			t.Errorf("config.md:856: %s was stored and served: %q", p, cs)
		}
	}
}

// TestDocsAudit_SeriesExistAtStart: metrics.md:699-700 (route series at zero
// before the first request), 759 (state_backend_up 1 with memory), 767 (both
// reload series from start-up), 726 (no breaker series when disabled).
func TestDocsAudit_SeriesExistAtStart(t *testing.T) {
	up, _ := daOK(t)
	off, _ := daOK(t)
	_, offAddr, _ := strings.Cut(off, "://")
	_, upAddr, _ := strings.Cut(up, "://")
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /r/}, upstream: %q, cache: {mode: fresh, ttl: 1m}, concurrency: {max: 2}}
  - {name: s, match: {path_prefix: /s/}, upstream: %q, breaker: {enabled: false}}
`, up, off))
	zero := []struct {
		name   string
		labels map[string]string
	}{
		{"ballast_requests_total", map[string]string{"route": "r", "code": "2xx"}},
		{"ballast_requests_total", map[string]string{"route": "r", "code": "5xx"}},
		{"ballast_inflight_requests", map[string]string{"route": "r"}},
		{"ballast_retries_total", map[string]string{"route": "r", "reason": "transient"}},
		{"ballast_retry_budget_exhausted_total", map[string]string{"route": "r"}},
		{"ballast_ratelimit_rejected_total", map[string]string{"route": "r", "reason": "overloaded"}},
		{"ballast_cache_requests_total", map[string]string{"route": "r", "result": "hit"}},
		{"ballast_idempotency_total", map[string]string{"route": "r", "result": "claimed"}},
		{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": upAddr, "outcome": "ok"}},
		{"ballast_stream_truncated_total", map[string]string{"route": "r"}},
		{"ballast_concurrency_queue_depth", map[string]string{"route": "r"}},
		{"ballast_concurrency_inflight", map[string]string{"route": "r"}},
		{"ballast_breaker_state", map[string]string{"upstream": upAddr}},
		{"ballast_config_reloads_total", map[string]string{"result": "success"}},
		{"ballast_config_reloads_total", map[string]string{"result": "failure"}},
	}
	for _, z := range zero {
		if got := b.metric(z.name, z.labels); got != 0 {
			t.Errorf("metrics.md:699: %s%v = %v before any request, want 0", z.name, z.labels, got)
		}
	}
	if got := b.metric("ballast_state_backend_up", nil); got != 1 {
		t.Errorf("metrics.md:759: state_backend_up %v with memory, want 1", got)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": offAddr}); got != -1 {
		t.Errorf("metrics.md:726: breaker_state exists (%v) for an upstream whose breaker is disabled", got)
	}
	// metrics.md:662: the go_* and process_* collectors are exported.
	mfs, _ := b.reg.Gather()
	var goM, procM bool
	for _, mf := range mfs {
		goM = goM || strings.HasPrefix(mf.GetName(), "go_")
		procM = procM || strings.HasPrefix(mf.GetName(), "process_")
	}
	if !goM || !procM {
		t.Errorf("metrics.md:662: go_* %v process_* %v", goM, procM)
	}
}

// TestDocsAudit_RetryMetrics: metrics.md:715-720 and README.md:203 for one
// 503 retried into a 200.
func TestDocsAudit_RetryMetrics(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503), status(429, "Retry-After", "0")}}
	up, addr := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ""))
	resp, _ := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "3" {
		t.Fatalf("%d attempts %q", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"))
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ballast_retries_total", map[string]string{"route": "r", "reason": "transient"}, 1},
		{"ballast_retries_total", map[string]string{"route": "r", "reason": "rate_limited"}, 1},
		{"ballast_retry_wait_seconds", map[string]string{"route": "r"}, 2},
		{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr, "outcome": "transient"}, 1},
		{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr, "outcome": "rate_limited"}, 1},
		{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr, "outcome": "ok"}, 1},
		{"ballast_requests_total", map[string]string{"route": "r", "code": "2xx"}, 1},
		{"ballast_request_duration_seconds", map[string]string{"route": "r", "code": "2xx"}, 1},
		{"ballast_inflight_requests", map[string]string{"route": "r"}, 0},
	} {
		if got := b.metric(c.name, c.labels); got != c.want {
			t.Errorf("metrics.md: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// TestDocsAudit_DefaultRetryOn: config.md:316 and README.md:51-52 — the
// default retry.on retries 529 and invalid answers, but not 500, 421 or
// 408; retries.md:47 — 421 and 425 are transient, 408 a timeout.
func TestDocsAudit_DefaultRetryOn(t *testing.T) {
	for _, tc := range []struct {
		code     int
		attempts string
	}{{529, "2"}, {500, "1"}, {421, "1"}, {408, "1"}, {501, "1"}, {504, "2"}} {
		t.Run(strconv.Itoa(tc.code), func(t *testing.T) {
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(tc.code)}}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, retryRoute(up, ""))
			resp, _ := do(t, "GET", b.base+"/x", "")
			if got := resp.Header.Get("X-Ballast-Attempts"); got != tc.attempts {
				t.Errorf("config.md:316: upstream %d took %q attempts, want %s", tc.code, got, tc.attempts)
			}
		})
	}
}

// TestDocsAudit_ShouldRetryHeader: retries.md:619-621 — a 5xx relayed after
// ballast retried, without Retry-After, carries x-should-retry: false.
func TestDocsAudit_ShouldRetryHeader(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503), status(503), status(503)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ""))
	resp, _ := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 || resp.Header.Get("X-Ballast-Attempts") != "3" {
		t.Fatalf("%d attempts %q", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"))
	}
	if got := resp.Header.Get("x-should-retry"); got != "false" {
		t.Errorf("retries.md:620: x-should-retry %q after ballast's retries, want false", got)
	}
}

// TestDocsAudit_HintBeyondCap: errors.md:149-151,188-193 and
// retries.md:198-202 — a 429 (503) hint over max_retry_after is answered at
// once as 429 rate_limited (503 upstream_unavailable) with the hint as
// Retry-After and no RateLimit fields.
func TestDocsAudit_HintBeyondCap(t *testing.T) {
	for _, tc := range []struct {
		code       int
		wantReason string
	}{{429, "rate_limited"}, {503, "upstream_unavailable"}} {
		t.Run(strconv.Itoa(tc.code), func(t *testing.T) {
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(tc.code, "Retry-After", "120")}}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, retryRoute(up, ""))
			resp, body := do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != tc.code {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			p := daDecode(t, resp, body)
			if p.Reason != tc.wantReason || p.RetryAfterS != 120 || p.Attempts != 1 || p.Route != "r" {
				t.Errorf("errors.md:149,188: %s", body)
			}
			if resp.Header.Get("RateLimit") != "" || resp.Header.Get("RateLimit-Policy") != "" {
				t.Errorf("errors.md:192: RateLimit fields on an upstream's limit")
			}
			if s.hits.Load() != 1 {
				t.Errorf("hits %d, want 1", s.hits.Load())
			}
		})
	}
}

// TestDocsAudit_BudgetExhausted: errors.md:206-212, retries.md:234-237 —
// 503 budget_exhausted with Retry-After: 1, counted, no fallback tried.
func TestDocsAudit_BudgetExhausted(t *testing.T) {
	prim, _ := upstream(t, status(503))
	fb, fbHits := daOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {budget: {ratio: 0, min_per_second: 0}, backoff: {base: 1ms, max: 2ms}}
    breaker: {enabled: false}
`, prim, fb))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "budget_exhausted" || p.RetryAfterS != 1 || p.Attempts != 1 {
		t.Errorf("errors.md:206: %s", body)
	}
	if fbHits.Load() != 0 {
		t.Errorf("retries.md:234: a spent budget moved on to the fallback (%d hits)", fbHits.Load())
	}
	if got := b.metric("ballast_retry_budget_exhausted_total", map[string]string{"route": "r"}); got != 1 {
		t.Errorf("metrics.md:719: budget_exhausted_total %v", got)
	}
}

// TestDocsAudit_BreakerOpen: errors.md:214-220, retries.md:246-249 and
// metrics.md:726.
func TestDocsAudit_BreakerOpen(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, addr := upstream(t, status(502))
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, breaker: {failures: 1, open_for: 30s}}
`, up))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 502 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": addr}); got != 2 {
		t.Errorf("metrics.md:726: breaker_state %v after opening, want 2", got)
	}
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 {
		t.Fatalf("second: %d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "breaker_open" || p.Attempts != 0 || p.RetryAfterS != 30 {
		t.Errorf("errors.md:216: %s", body)
	}
}

// TestDocsAudit_Overloaded: errors.md:199-204, config.md:438-440 and
// metrics.md:733,737.
func TestDocsAudit_Overloaded(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 0}}
`, up))
	done := raSend(t, "GET", b.base+"/slow", "")
	<-entered
	resp, body := do(t, "GET", b.base+"/x", "")
	close(release)
	if resp.StatusCode != 503 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "overloaded" || p.Attempts != 0 || p.RetryAfterS < 1 {
		t.Errorf("errors.md:199: %s", body)
	}
	if got := b.metric("ballast_ratelimit_rejected_total", map[string]string{"route": "r", "reason": "overloaded"}); got != 1 {
		t.Errorf("metrics.md:733: rejected{overloaded} %v", got)
	}
	if c := raAnswer(t, done).resp.StatusCode; c != 200 {
		t.Errorf("held request %d", c)
	}
}

// TestDocsAudit_RateLimitFields: errors.md:175-185, config.md:676-680 and
// metrics.md:733 — the worked example's numbers: rps 8, burst 10 gives
// RateLimit-Policy "openai";q=16;w=2 and RateLimit "openai";r=0;t=2.
func TestDocsAudit_RateLimitFields(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, hits := daOK(t)
	b := startBallastClock(t, clock, fmt.Sprintf(`
limiters:
  openai: {rps: 8, burst: 10}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {limiter: openai, max_wait: 0s}}
`, up))
	for i := range 10 {
		if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 429 {
		t.Fatalf("11th: %d %s", resp.StatusCode, body)
	}
	p := daDecode(t, resp, body)
	if p.Reason != "rate_limited" || p.Attempts != 0 || p.Route != "r" || p.RetryAfterS != 1 {
		t.Errorf("errors.md:175: %s", body)
	}
	if got := resp.Header.Get("RateLimit-Policy"); got != `"openai";q=16;w=2` {
		t.Errorf("config.md:677: RateLimit-Policy %q", got)
	}
	if got := resp.Header.Get("RateLimit"); got != `"openai";r=0;t=2` {
		t.Errorf("config.md:678: RateLimit %q", got)
	}
	if hits.Load() != 10 {
		t.Errorf("errors.md:178: refused request forwarded (%d hits)", hits.Load())
	}
	if got := b.metric("ballast_ratelimit_rejected_total", map[string]string{"route": "r", "reason": "rate_limited"}); got != 1 {
		t.Errorf("metrics.md:733: rejected{rate_limited} %v", got)
	}
	if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "openai"}); got != 8 {
		t.Errorf("metrics.md:735: ratelimit_rate{openai} %v", got)
	}
}

// TestDocsAudit_Idempotency: README.md:207,221, config.md:491-505 and
// metrics.md:757.
func TestDocsAudit_Idempotency(t *testing.T) {
	up, hits := daOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, up))
	first, _ := do(t, "POST", b.base+"/orders", `{"n":1}`, "Idempotency-Key", "key-1")
	again, body := do(t, "POST", b.base+"/orders", `{"n":1}`, "Idempotency-Key", "key-1")
	if first.StatusCode != 200 || again.StatusCode != 200 || body != `{"ok":true}` || hits.Load() != 1 {
		t.Fatalf("first %d again %d %q hits %d", first.StatusCode, again.StatusCode, body, hits.Load())
	}
	if again.Header.Get("Idempotent-Replayed") != "true" || again.Header.Get("X-Ballast-Attempts") != "0" || again.Header.Get("X-Ballast-Upstream") != "" {
		t.Errorf("config.md:503,837: replay Idempotent-Replayed %q attempts %q upstream %q",
			again.Header.Get("Idempotent-Replayed"), again.Header.Get("X-Ballast-Attempts"), again.Header.Get("X-Ballast-Upstream"))
	}
	resp, body := do(t, "POST", b.base+"/orders", `{"n":2}`, "Idempotency-Key", "key-1")
	if resp.StatusCode != 422 {
		t.Fatalf("mismatch: %d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "idempotency_mismatch" || p.has("retry_after_s") {
		t.Errorf("errors.md:226: %s", body)
	}
	resp, body = do(t, "POST", b.base+"/orders", `{"n":1}`, "Idempotency-Key", strings.Repeat("k", 256))
	if resp.StatusCode != 400 {
		t.Fatalf("256-char key: %d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "bad_request" {
		t.Errorf("errors.md:107: %s", body)
	}
	for res, want := range map[string]float64{"claimed": 1, "replayed": 1, "mismatch": 1} {
		if got := b.metric("ballast_idempotency_total", map[string]string{"route": "r", "result": res}); got != want {
			t.Errorf("metrics.md:757: idempotency_total{%s} = %v, want %v", res, got, want)
		}
	}
	if got := b.metric("ballast_state_store_seconds", map[string]string{"op": "claim", "backend": "memory"}); got < 1 {
		t.Errorf("metrics.md:758: state_store_seconds{claim,memory} count %v", got)
	}
}

// TestDocsAudit_InProgressReject: errors.md:229-236 and config.md:494 —
// on_conflict: reject answers a duplicate 409 in_progress, Retry-After 1.
func TestDocsAudit_InProgressReject(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "done")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header, on_conflict: reject}}
`, up))
	done := raSend(t, "POST", b.base+"/x", "a", "Idempotency-Key", "k")
	<-entered
	resp, body := do(t, "POST", b.base+"/x", "a", "Idempotency-Key", "k")
	close(release)
	raAnswer(t, done)
	if resp.StatusCode != 409 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "in_progress" || p.RetryAfterS != 1 {
		t.Errorf("errors.md:229: %s", body)
	}
	if got := b.metric("ballast_idempotency_total", map[string]string{"route": "r", "result": "conflict"}); got != 1 {
		t.Errorf("metrics.md:757: idempotency_total{conflict} %v", got)
	}
}

// TestDocsAudit_AsyncAccepted: README.md:211,222,225, config.md:509-514,
// errors.md:73,138-140 and metrics.md:686.
func TestDocsAudit_AsyncAccepted(t *testing.T) {
	up, _ := daOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, up))
	resp, body := do(t, "POST", b.base+"/x", "payload", "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var job map[string]any
	if err := json.Unmarshal([]byte(body), &job); err != nil {
		t.Fatal(err)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "/_ballast/jobs/") || resp.Header.Get("Retry-After") != "1" ||
		resp.Header.Get("Preference-Applied") != "respond-async" {
		t.Errorf("config.md:509-511: Location %q Retry-After %q Preference-Applied %q", loc, resp.Header.Get("Retry-After"), resp.Header.Get("Preference-Applied"))
	}
	for _, k := range []string{"id", "state", "route", "attempts", "created_at", "updated_at", "location"} {
		if _, ok := job[k]; !ok {
			t.Errorf("config.md:512: job body lacks %q: %s", k, body)
		}
	}
	waitFor(t, func() bool {
		r, _ := do(t, "GET", b.base+loc, "")
		return r.StatusCode == 200
	})
	r, got := do(t, "GET", b.base+loc, "")
	if got != `{"ok":true}` || r.Header.Get("X-Ballast-Job-State") != "succeeded" || r.Header.Get("X-Ballast-Attempts") != "1" {
		t.Errorf("config.md:517-518: finished job %q state %q attempts %q", got, r.Header.Get("X-Ballast-Job-State"), r.Header.Get("X-Ballast-Attempts"))
	}
	resp, body = do(t, "GET", b.base+"/_ballast/jobs/does-not-exist", "")
	if resp.StatusCode != 404 {
		t.Fatalf("unknown job: %d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "no_route" || p.has("route") {
		t.Errorf("errors.md:42,138: %s", body)
	}
}

// TestDocsAudit_Admin: README.md:260-266 and errors.md:289-299.
func TestDocsAudit_Admin(t *testing.T) {
	up, _ := daOK(t)
	good := fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    max_body: 1MiB
    headers: {set: {Authorization: "Bearer literal-secret", X-Ref: "${DA_REF}", X-Plain: visible}}
`, up)
	b := startBallast(t, good, "DA_REF=expanded-value")
	if resp, body := do(t, "GET", b.admin+"/healthz", ""); resp.StatusCode != 200 || strings.TrimSpace(body) != "ok" {
		t.Errorf("README.md:260: /healthz %d %q", resp.StatusCode, body)
	}
	if resp, body := do(t, "GET", b.admin+"/readyz", ""); resp.StatusCode != 200 || strings.TrimSpace(body) != "ready" {
		t.Errorf("README.md:261: /readyz %d %q", resp.StatusCode, body)
	}
	resp, body := do(t, "GET", b.admin+"/nope", "")
	if resp.StatusCode != 404 || !strings.Contains(body, `"reason":"no_route"`) || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("errors.md:296: unknown admin path %d %q", resp.StatusCode, body)
	}
	// errors.md:291: admin problems come without a request id.
	if strings.Contains(body, "request_id") {
		t.Errorf("errors.md:291: admin problem with a request id: %q", body)
	}
	resp, body = do(t, "GET", b.admin+"/reload", "")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") == "" || !strings.Contains(body, `"reason":"bad_request"`) {
		t.Errorf("errors.md:297: GET /reload %d Allow %q %q", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
	resp, body = do(t, "GET", b.admin+"/config", "")
	if resp.StatusCode != 200 || strings.Contains(body, "literal-secret") || !strings.Contains(body, "[redacted]") ||
		!strings.Contains(body, "${DA_REF}") || strings.Contains(body, "expanded-value") || !strings.Contains(body, "visible") {
		t.Errorf("README.md:265, config.md:694: /config redaction: %s", body)
	}
	// config.md:87: /config shows sizes as plain byte counts.
	var shown struct {
		Routes []struct {
			MaxBody json.RawMessage `json:"max_body"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(body), &shown); err != nil || len(shown.Routes) != 1 || string(shown.Routes[0].MaxBody) != "1048576" {
		t.Errorf("config.md:87: /config max_body not a byte count: %v %+v", err, shown)
	}
	code, body := opsReload(t, b, good+"    retry: {attempts: 0}\n")
	var rej struct {
		Reason string   `json:"reason"`
		Errors []string `json:"errors"`
	}
	_ = json.Unmarshal([]byte(body), &rej)
	if code != 422 || rej.Reason != "invalid_config" || len(rej.Errors) == 0 || !strings.Contains(rej.Errors[0], "routes[0].retry.attempts") {
		t.Errorf("config.md:912-913: bad reload %d %s", code, body)
	}
	if got := b.metric("ballast_config_reloads_total", map[string]string{"result": "failure"}); got != 1 {
		t.Errorf("config.md:921: reloads{failure} %v", got)
	}
	code, body = opsReload(t, b, good)
	if code != 200 || strings.TrimSpace(body) != `{"result":"success"}` {
		t.Errorf("README.md:266: good reload %d %q", code, body)
	}
}

// TestDocsAudit_Debug: README.md:220 and config.md:161,821 — X-Ballast-Trail
// only with admin.allow_debug.
func TestDocsAudit_Debug(t *testing.T) {
	up, _ := daOK(t)
	route := fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up)
	off := startBallast(t, route)
	if resp, _ := do(t, "GET", off.base+"/x", "", "X-Ballast-Debug", "1"); resp.Header.Get("X-Ballast-Trail") != "" {
		t.Errorf("config.md:161: trail without allow_debug: %q", resp.Header.Get("X-Ballast-Trail"))
	}
	on := startBallast(t, "admin: {allow_debug: true}\n"+route)
	resp, _ := do(t, "GET", on.base+"/x", "", "X-Ballast-Debug", "1")
	_, upAddr, _ := strings.Cut(up, "://")
	if tr := resp.Header.Get("X-Ballast-Trail"); !strings.Contains(tr, upAddr) {
		t.Errorf("README.md:220: trail %q lacks the upstream", tr)
	}
	if resp, _ := do(t, "GET", on.base+"/x", ""); resp.Header.Get("X-Ballast-Trail") != "" {
		t.Errorf("config.md:821: trail without X-Ballast-Debug")
	}
}

// TestDocsAudit_FramingErrors: errors.md:103-121,123-129 for requests
// ballast refuses before routing or reading.
func TestDocsAudit_FramingErrors(t *testing.T) {
	up, hits := daOK(t)
	b := startBallast(t, fmt.Sprintf(`
server: {max_header_bytes: 1KiB}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, max_body: 1KiB}
`, up))
	tests := []struct {
		name, raw  string
		wantStatus int
		wantReason string
		wantRoute  bool
	}{
		{"CL and TE", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request", false},
		{"CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, "bad_request", false},
		{"headers over max_header_bytes", "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 2048) + "\r\n\r\n", 431, "headers_too_large", false},
		{"Content-Length over max_body", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\n\r\n" + strings.Repeat("z", 4096), 413, "body_too_large", true},
		{"chunked over max_body", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + strings.Repeat("z", 2048) + "\r\n0\r\n\r\n", 413, "body_too_large", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := secRawExchange(t, b.addr, tc.raw)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if !strings.Contains(body, `"reason":"`+tc.wantReason+`"`) || strings.Contains(body, `"route"`) != tc.wantRoute {
				t.Errorf("errors.md: body %q", body)
			}
			// errors.md:48: every agent-listener problem has these.
			if resp.Header.Get("X-Request-Id") == "" || resp.Header.Get("Cache-Control") != "no-store" ||
				resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("errors.md:48: headers %v", resp.Header)
			}
			// errors.md:105,121,128: these close the connection.
			if tc.wantStatus != 405 && !resp.Close {
				t.Errorf("errors.md: connection not closed after %d", tc.wantStatus)
			}
			if tc.wantStatus == 405 && resp.Header.Get("Allow") == "" {
				t.Errorf("errors.md:113: 405 without Allow")
			}
		})
	}
	if hits.Load() != 0 {
		t.Errorf("a refused request reached the upstream")
	}
}

// TestDocsAudit_MCPSessionStaysOnUpstream: config.md:689-691 — a request
// with Mcp-Session-Id never moves to a fallback.
func TestDocsAudit_MCPSessionStaysOnUpstream(t *testing.T) {
	prim, _ := upstream(t, status(503))
	fb, fbHits := daOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}
    breaker: {enabled: false}
`, prim, fb))
	resp, _ := do(t, "GET", b.base+"/mcp", "", "Mcp-Session-Id", "s-1")
	if resp.StatusCode != 503 || fbHits.Load() != 0 {
		t.Errorf("config.md:689: status %d, fallback hits %d", resp.StatusCode, fbHits.Load())
	}
	if resp, _ := do(t, "GET", b.base+"/plain", ""); resp.StatusCode != 200 || fbHits.Load() != 1 {
		t.Errorf("without a session the fallback answers: %d", resp.StatusCode)
	}
}

// TestDocsAudit_ValidationCheckLabel: config.md:392-396,402 and
// metrics.md:751, errors.md:222-227.
func TestDocsAudit_ValidationCheckLabel(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/text":
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "hi")
		case "/broken":
			w.Header().Set("Content-Type", "application/json; charset=UTF-8")
			_, _ = io.WriteString(w, `{"a":`)
		case "/empty":
			w.Header().Set("Content-Type", "application/json")
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}
    breaker: {enabled: false}
    validate: {status: [2xx], content_type: [application/json], json: true}
`, up))
	for _, c := range []struct{ path, check string }{{"/text", "content_type"}, {"/broken", "json"}} {
		resp, body := do(t, "GET", b.base+c.path, "")
		if resp.StatusCode != 502 {
			t.Fatalf("%s: %d %s", c.path, resp.StatusCode, body)
		}
		p := daDecode(t, resp, body)
		if p.Reason != "invalid_response" || p.Attempts != 2 || !strings.Contains(p.Detail, c.check) || p.has("retry_after_s") {
			t.Errorf("errors.md:222: %s: %s", c.path, body)
		}
		if got := b.metric("ballast_validation_failures_total", map[string]string{"route": "r", "check": c.check}); got != 2 {
			t.Errorf("metrics.md:751: validation_failures{%s} %v, want 2", c.check, got)
		}
	}
	// config.md:404: an empty body passes json (non_empty is off).
	if resp, _ := do(t, "GET", b.base+"/empty", ""); resp.StatusCode != 200 {
		t.Errorf("config.md:404: empty body with json: true: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_retries_total", map[string]string{"route": "r", "reason": "invalid"}); got != 2 {
		t.Errorf("metrics.md:716: retries{invalid} %v, want 2", got)
	}
}

// daLoad parses yaml as config.Load would, with env as the environment.
func daLoad(yaml string, env ...string) (*config.Config, error) {
	return config.Parse([]byte(yaml), config.Source{File: "t.yaml", Environ: env})
}

// TestDocsAudit_ConfigDefaults: the defaults column of config.md:141-505.
func TestDocsAudit_ConfigDefaults(t *testing.T) {
	cfg, err := daLoad("routes: [{name: r, match: {path_prefix: /}, upstream: http://127.0.0.1:1/}]\n")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Routes[0]
	d := func(x config.Duration) time.Duration { return x.D() }
	checks := []struct {
		claim     string
		got, want any
	}{
		{"config.md:143 listen", cfg.Listen, "127.0.0.1:8080"},
		{"config.md:159 admin.listen", cfg.Admin.Listen, "127.0.0.1:9901"},
		{"config.md:146 shutdown_timeout", d(cfg.ShutdownTimeout), 30 * time.Second},
		{"config.md:169 server.max_header_bytes", int64(cfg.Server.MaxHeaderBytes), int64(16 << 10)},
		{"config.md:170 server.idle_timeout", d(cfg.Server.IdleTimeout), 90 * time.Second},
		{"config.md:184 log.requests", cfg.Log.Requests, true},
		{"config.md:186 log.flush_interval", d(cfg.Log.FlushInterval), time.Second},
		{"config.md:197 state.max_records", cfg.State.MaxRecords, 10000},
		{"config.md:198 state.max_response_bytes", int64(cfg.State.MaxResponseBytes), int64(1 << 20)},
		{"config.md:226 redis.key_prefix", cfg.State.Redis.KeyPrefix, "ballast:"},
		{"config.md:230 redis.op_timeout", d(cfg.State.Redis.OpTimeout), 500 * time.Millisecond},
		{"config.md:231 redis.on_error", cfg.State.Redis.OnError, "fail_open"},
		{"config.md:258 notify.cooldown_threshold", d(cfg.Notify.CooldownThreshold), 30 * time.Second},
		{"config.md:260 notify.max_per_minute", cfg.Notify.MaxPerMinute, 10},
		{"config.md:297 timeouts.connect", d(r.Timeouts.Connect), 2 * time.Second},
		{"config.md:298 timeouts.per_try", d(r.Timeouts.PerTry), 30 * time.Second},
		{"config.md:299 timeouts.idle", d(r.Timeouts.Idle), 30 * time.Second},
		{"config.md:300 timeouts.total", d(r.Timeouts.Total), 120 * time.Second},
		{"config.md:301 max_body", int64(r.MaxBody), int64(10 << 20)},
		{"config.md:315 retry.attempts", r.Retry.Attempts, 3},
		{"config.md:316 retry.on", strings.Join(r.Retry.On, ","), "connect-failure,reset,timeout,invalid,429,502,503,504,529"},
		{"config.md:317 backoff.base", d(r.Retry.Backoff.Base), 100 * time.Millisecond},
		{"config.md:318 backoff.max", d(r.Retry.Backoff.Max), 10 * time.Second},
		{"config.md:319 max_retry_after", d(r.Retry.MaxRetryAfter), 60 * time.Second},
		{"config.md:320 budget.ratio", r.Retry.Budget.Ratio, 0.2},
		{"config.md:321 budget.min_per_second", r.Retry.Budget.MinPerSecond, 10.0},
		{"config.md:339 breaker.enabled", r.Breaker.Enabled, true},
		{"config.md:340 breaker.failures", r.Breaker.Failures, 20},
		{"config.md:343 breaker.open_for", d(r.Breaker.OpenFor), 10 * time.Second},
		{"config.md:356 rate_limit.max_wait", d(r.RateLimit.MaxWait), time.Second},
		{"config.md:368 concurrency.queue", r.Concurrency.Queue, 100},
		{"config.md:369 concurrency.max_wait", d(r.Concurrency.MaxWait), 5 * time.Second},
		{"config.md:418 cache.mode", r.Cache.Mode, "off"},
		{"config.md:420 cache.stale", d(r.Cache.Stale), 24 * time.Hour},
		{"config.md:424 cache.max_entries", r.Cache.MaxEntries, 10000},
		{"config.md:425 cache.max_bytes", int64(r.Cache.MaxBytes), int64(64 << 20)},
		{"config.md:488 idempotency.ttl", d(r.Idempotency.TTL), 24 * time.Hour},
		{"config.md:489 idempotency.window", d(r.Idempotency.Window), 10 * time.Minute},
		{"config.md:491 idempotency.on_conflict", r.Idempotency.OnConflict, "attach"},
		{"config.md:538 async.ttl", d(r.Async.TTL), time.Hour},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: default %v, docs say %v", c.claim, c.got, c.want)
		}
	}
	// config.md:944-964: the embedded default config as documented.
	emb, err := config.Load(config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(emb.Routes) != 2 || emb.Routes[0].Upstream != "https://api.openai.com/" || !emb.Routes[1].StripPrefix ||
		emb.Defaults.Timeouts.PerTry.D() != 300*time.Second || emb.Defaults.Timeouts.Connect.D() != 5*time.Second ||
		int64(emb.Defaults.MaxBody) != 32<<20 || emb.Defaults.Timeouts.Total.D() != 600*time.Second {
		t.Errorf("config.md:944: embedded default differs: %+v", emb.Routes)
	}
	// README.md:50: "the embedded default config does" set unsafe_methods on model routes.
	for _, r := range emb.Routes {
		if !r.Retry.UnsafeMethods {
			t.Errorf("README.md:50: embedded route %s lacks retry.unsafe_methods", r.Name)
		}
	}
}

// TestDocsAudit_ConfigValidation: the validation rules of config.md.
func TestDocsAudit_ConfigValidation(t *testing.T) {
	const up = "http://127.0.0.1:1/"
	route := func(extra string) string {
		return "routes:\n  - {name: r, match: {path_prefix: /}, upstream: " + up + extra + "}\n"
	}
	tests := []struct {
		claim, yaml, wantPath string
		env                   []string
	}{
		{"config.md:315 attempts ≥ 1", route(", retry: {attempts: 0}"), "routes[0].retry.attempts", nil},
		{"config.md:315 attempts ≤ 10", route(", retry: {attempts: 11}"), "routes[0].retry.attempts", nil},
		{"config.md:169 max_header_bytes ≥ 1KiB", "server: {max_header_bytes: 512}\n" + route(""), "server.max_header_bytes", nil},
		{"config.md:169 max_header_bytes ≤ 1MiB", "server: {max_header_bytes: 2MiB}\n" + route(""), "server.max_header_bytes", nil},
		{"config.md:301 max_body ≤ 1GiB", route(", max_body: 2GiB"), "routes[0].max_body", nil},
		{"config.md:560 name charset", "routes: [{name: 'a b', match: {path_prefix: /}, upstream: " + up + "}]\n", "routes[0].name", nil},
		{"config.md:560 name starts alnum", "routes: [{name: -a, match: {path_prefix: /}, upstream: " + up + "}]\n", "routes[0].name", nil},
		{"config.md:560 name ≤ 63", "routes: [{name: " + strings.Repeat("a", 64) + ", match: {path_prefix: /}, upstream: " + up + "}]\n", "routes[0].name", nil},
		{"config.md:560 name unique", "routes: [{name: a, match: {path_prefix: /x/}, upstream: " + up + "}, {name: a, match: {path_prefix: /y/}, upstream: " + up + "}]\n", "routes[1].name", nil},
		{"config.md:562 no user:password", "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://u:p@127.0.0.1/'}]\n", "routes[0].upstream", nil},
		{"config.md:562 no query", "routes: [{name: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1/?q=1'}]\n", "routes[0].upstream", nil},
		{"config.md:119 http or https", "routes: [{name: a, match: {path_prefix: /}, upstream: 'ftp://x'}]\n", "routes[0].upstream", nil},
		{"config.md:576 path_prefix starts with /", "routes: [{name: a, match: {path_prefix: api}, upstream: " + up + "}]\n", "routes[0].match.path_prefix", nil},
		{"config.md:576 no ..", "routes: [{name: a, match: {path_prefix: /a/../b}, upstream: " + up + "}]\n", "routes[0].match.path_prefix", nil},
		{"config.md:570 no duplicate match", "routes: [{name: a, match: {path_prefix: /x/}, upstream: " + up + "}, {name: b, match: {path_prefix: /x/}, upstream: " + up + "}]\n", "routes[1]", nil},
		{"config.md:153 at least one route", "listen: 127.0.0.1:8080\n", "routes", nil},
		{"config.md:318 backoff.max ≥ base", route(", retry: {backoff: {base: 2s, max: 1s}}"), "routes[0].retry.backoff.max", nil},
		{"config.md:297 connect ≤ total", route(", timeouts: {connect: 10s, total: 5s}"), "routes[0].timeouts.connect", nil},
		{"config.md:320 budget.ratio ≤ 1", route(", retry: {budget: {ratio: 1.5}}"), "routes[0].retry.budget.ratio", nil},
		{"config.md:340 failures ≥ 1", route(", breaker: {failures: 0}"), "routes[0].breaker.failures", nil},
		{"config.md:419 fresh needs ttl", route(", cache: {mode: fresh}"), "routes[0].cache.ttl", nil},
		{"config.md:425 max_bytes ≥ 1KiB", route(", cache: {mode: fallback, max_bytes: 512}"), "routes[0].cache.max_bytes", nil},
		{"config.md:426 shared needs redis", route(", cache: {mode: fallback, shared: true}"), "routes[0].cache.shared", nil},
		{"config.md:468 static status 200-599", route(", static_fallback: {status: 199}"), "routes[0].static_fallback.status", nil},
		{"config.md:584 no hop-by-hop set", route(", headers: {set: {Connection: close}}"), "routes[0].headers.set", nil},
		{"config.md:260 max_per_minute ≤ 1000", "notify: {max_per_minute: 1001}\n" + route(""), "notify.max_per_minute", nil},
		{"config.md:290 limiter needs rps or tpm", "limiters: {a: {burst: 5}}\n" + route(""), "limiters.a", nil},
		{"config.md:355 limiter excludes rps", "limiters: {a: {rps: 5}}\n" + route(", rate_limit: {limiter: a, rps: 3}"), "routes[0].rate_limit", nil},
		{"config.md:355 limiter must exist", route(", rate_limit: {limiter: nope}"), "routes[0].rate_limit.limiter", nil},
		{"config.md:159 admin beyond localhost needs token", "admin: {listen: 0.0.0.0:9901}\n" + route(""), "admin.listen", nil},
		{"config.md:116,122 unknown key", "defaults: {timeouts: {conect: 1s}}\n" + route(""), "defaults.timeouts.conect", nil},
		{"config.md:101 unset ${ENV}", route(", headers: {set: {X-K: '${DA_UNSET}'}}"), "routes[0].headers.set", nil},
		{"config.md:72 unknown BALLAST_ var", route(""), "bogus", []string{"BALLAST_BOGUS=1"}},
		{"config.md:83 negative duration", route(", timeouts: {idle: -1s}"), "routes[0].timeouts.idle", nil},
		{"config.md:87 size above 1TiB", route(", max_body: 2TiB"), "routes[0].max_body", nil},
		{"config.md:197 max_records ≥ 1", "state: {max_records: 0}\n" + route(""), "state.max_records", nil},
		{"config.md:489 window positive", route(", idempotency: {mode: auto, window: 0s}"), "routes[0].idempotency.window", nil},
	}
	for _, tc := range tests {
		t.Run(tc.claim, func(t *testing.T) {
			_, err := daLoad(tc.yaml, tc.env...)
			if err == nil {
				t.Fatalf("%s: accepted", tc.claim)
			}
			if !strings.Contains(err.Error(), tc.wantPath) {
				t.Errorf("%s: error %q does not name %s", tc.claim, err, tc.wantPath)
			}
			if tc.wantPath != "bogus" && !errors.Is(err, config.ErrInvalid) {
				t.Errorf("%s: %v is not config.ErrInvalid", tc.claim, err)
			}
		})
	}
	// config.md:131-134: ballast validate (proxy.Check) also compiles the
	// retry.on words and validate block, reporting them with their path.
	for _, bad := range []struct{ yaml, path string }{
		{route(", retry: {on: [bogus]}"), "routes[0].retry.on"},
		{route(", validate: {status: [7xx]}"), "routes[0].validate"},
		{route(", validate: {schema: '{\"type\": 5}'}"), "routes[0].validate"},
	} {
		cfg, err := daLoad(bad.yaml)
		if err != nil {
			t.Fatalf("config.Load refused %q early: %v", bad.yaml, err)
		}
		if err := proxy.Check(cfg); err == nil || !strings.Contains(err.Error(), bad.path) {
			t.Errorf("config.md:131: proxy.Check(%s) = %v, want an error at %s", bad.yaml, err, bad.path)
		}
	}
	// config.md:116: a typo gets a suggestion.
	if _, err := daLoad("defaults: {timeouts: {conect: 1s}}\n" + route("")); err == nil || !strings.Contains(err.Error(), `did you mean "connect"`) {
		t.Errorf("config.md:116: no suggestion: %v", err)
	}
	// Accepted forms.
	for _, ok := range []struct{ claim, yaml string }{
		{"config.md:90 a single word list", "routes: [{name: r, match: {path_prefix: /, methods: GET}, upstream: " + up + "}]\n"},
		{"config.md:299 idle 0", route(", timeouts: {idle: 0}")},
		{"config.md:345 breaker keys unchecked when disabled", route(", breaker: {enabled: false, failures: 0}")},
		{"config.md:85 decimal size", route(", max_body: 1GB")},
		{"config.md:102 empty ${ENV}", route(", headers: {set: {X-K: 'a${DA_EMPTY}b'}}")},
		{"config.md:104 lone $", route(", headers: {set: {X-K: 'a$b'}}")},
	} {
		if _, err := daLoad(ok.yaml, "DA_EMPTY="); err != nil {
			t.Errorf("%s: refused: %v", ok.claim, err)
		}
	}
	// config.md:103: $$ is a literal $; config.md:102 empty expands to nothing.
	cfg, err := daLoad(route(", headers: {set: {X-A: 'a$$b', X-B: 'a${DA_EMPTY}b', X-C: 'a$b'}}"), "DA_EMPTY=")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Routes[0].Headers.Set; s["X-A"] != "a$b" || s["X-B"] != "ab" || s["X-C"] != "a$b" {
		t.Errorf("config.md:101-104: expansion %v", s)
	}
	// config.md:60-72: environment overrides, lower-cased, __ between levels.
	cfg, err = daLoad(route(""), "BALLAST_DEFAULTS__TIMEOUTS__TOTAL=60s", "BALLAST_SHUTDOWN_TIMEOUT=10s", "BALLAST_DEFAULTS__RETRY__ON=5xx")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Routes[0].Timeouts.Total.D() != time.Minute || cfg.ShutdownTimeout.D() != 10*time.Second || strings.Join(cfg.Routes[0].Retry.On, ",") != "5xx" {
		t.Errorf("config.md:60-72: env overrides: total %v shutdown %v on %v", cfg.Routes[0].Timeouts.Total.D(), cfg.ShutdownTimeout.D(), cfg.Routes[0].Retry.On)
	}
	// config.md:733-737: mappings merge key by key, lists replace.
	cfg, err = daLoad(`
defaults:
  timeouts: {connect: 2s, per_try: 30s, idle: 30s, total: 120s}
  retry: {attempts: 3, backoff: {base: 200ms, max: 5s}}
routes:
  - {name: search, match: {path_prefix: /search/}, upstream: ` + up + `, timeouts: {per_try: 5s, total: 15s}, retry: {attempts: 2}}
`)
	if err != nil {
		t.Fatal(err)
	}
	rt := cfg.Routes[0]
	if rt.Timeouts.Connect.D() != 2*time.Second || rt.Timeouts.Idle.D() != 30*time.Second || rt.Timeouts.PerTry.D() != 5*time.Second ||
		rt.Retry.Backoff.Base.D() != 200*time.Millisecond || rt.Retry.Backoff.Max.D() != 5*time.Second || len(rt.Retry.On) != 9 {
		t.Errorf("config.md:733-737: merged route %+v", rt)
	}
}

// TestDocsAudit_OversizedContentLengthRefusedAtOnce: errors.md:126-128 —
// "A body whose Content-Length is over the limit is refused without being
// read further". An agent that sends the headers first (as curl does for
// a large upload) must get its 413 without sending the body.
func TestDocsAudit_OversizedContentLengthRefusedAtOnce(t *testing.T) {
	up, _ := daOK(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, max_body: 1KiB}]\n", up))
	// With Expect: 100-continue, before any of the body.
	out, _ := rawAll(t, b.addr, "POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1048576\r\n\r\n", 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 413") || !strings.Contains(out, `"reason":"body_too_large"`) {
		t.Errorf("errors.md:126: no 413 problem before the body with Expect: 100-continue: %q", out)
	}
	// Without it, after at most 8KiB of the body, the rest held back.
	out, _ = rawAll(t, b.addr, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n"+strings.Repeat("x", 8<<10), 2*time.Second)
	if !strings.HasPrefix(out, "HTTP/1.1 413") {
		t.Errorf("errors.md:126: no 413 after 8KiB of an oversized body: %q", out)
	}
}

// TestDocsAudit_FinalOutcomesStayOnUpstream: retries.md:132-134,252-253 —
// a final or not-listed outcome never moves to a fallback.
func TestDocsAudit_FinalOutcomesStayOnUpstream(t *testing.T) {
	for _, code := range []int{500, 400, 401} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			prim, _ := upstream(t, status(code))
			fb, fbHits := daOK(t)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, fallbacks: [{upstream: %q}], breaker: {enabled: false}}
`, prim, fb))
			resp, _ := do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != code || fbHits.Load() != 0 || resp.Header.Get("X-Ballast-Attempts") != "1" {
				t.Errorf("retries.md:132: upstream %d answered %d attempts %q, fallback hits %d", code, resp.StatusCode,
					resp.Header.Get("X-Ballast-Attempts"), fbHits.Load())
			}
		})
	}
}

// TestDocsAudit_RetrySafety: retries.md:154-170 — connect failures are
// retried for any method; a guarded Idempotency-Key makes a POST safe to
// retry; read-only JSON-RPC calls are retried with retry.jsonrpc.
func TestDocsAudit_RetrySafety(t *testing.T) {
	t.Run("POST connect failure", func(t *testing.T) {
		dead := deadAddr(t)
		fb, fbHits := daOK(t)
		b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: "http://%s", fallbacks: [{upstream: %q}], retry: {backoff: {base: 1ms, max: 2ms}}, breaker: {enabled: false}}
`, dead, fb))
		resp, _ := do(t, "POST", b.base+"/x", "body")
		if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "4" || fbHits.Load() != 1 {
			t.Errorf("retries.md:154: POST to a dead upstream: %d attempts %q", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"))
		}
	})
	t.Run("guarded key", func(t *testing.T) {
		s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503)}}
		up, _ := upstream(t, s.handler)
		b := startBallast(t, retryRoute(up, "")+"    idempotency: {mode: header}\n")
		resp, _ := do(t, "POST", b.base+"/x", "b", "Idempotency-Key", "g-1")
		if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "2" {
			t.Errorf("retries.md:160: keyed POST after 503: %d attempts %q", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"))
		}
		resp, _ = do(t, "POST", b.base+"/y", "b")
		if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "1" {
			t.Errorf("unkeyed POST: %d attempts %q", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"))
		}
	})
	t.Run("jsonrpc", func(t *testing.T) {
		for _, tc := range []struct {
			call     string
			attempts string
		}{
			{`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, "2"},
			{`{"jsonrpc":"2.0","id":1,"method":"ping"}`, "2"},
			{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"}}`, "2"},
			{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_mail"}}`, "1"},
			{`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"send_mail"}}]`, "1"},
		} {
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503)}}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, retryRoute(up, ", jsonrpc: true, idempotent_tools: [search_docs]"))
			resp, _ := do(t, "POST", b.base+"/mcp", tc.call, "Content-Type", "application/json")
			if got := resp.Header.Get("X-Ballast-Attempts"); got != tc.attempts {
				t.Errorf("retries.md:166: %s took %q attempts, want %s", tc.call, got, tc.attempts)
			}
		}
	})
}

// TestDocsAudit_DegradationForRateLimitsAndQuota: retries.md:295-297,306 and
// config.md:462-463 — the static fallback answers a hint beyond
// max_retry_after and a quota answer (upstream failures), not a 401.
func TestDocsAudit_DegradationForRateLimitsAndQuota(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/long":
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(429)
		case "/quota":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(429)
			_, _ = io.WriteString(w, `{"error":{"type":"insufficient_quota","code":"insufficient_quota","message":"quota"}}`)
		case "/auth":
			w.WriteHeader(401)
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, static_fallback: {status: 200, body: static}}
`, up))
	for _, c := range []struct {
		path   string
		static bool
	}{{"/long", true}, {"/quota", true}, {"/auth", false}} {
		// Each its own key: the /long hint pauses requests with no key.
		resp, body := do(t, "GET", b.base+c.path, "", "Authorization", "Bearer "+c.path)
		if got := resp.Header.Get("X-Ballast-Fallback") == "static" && body == "static"; got != c.static {
			t.Errorf("retries.md:306: %s answered %d %q fallback %q, static wanted %v", c.path, resp.StatusCode, body,
				resp.Header.Get("X-Ballast-Fallback"), c.static)
		}
	}
}

// TestDocsAudit_MaxRetryAfterZero: config.md:319 — "0 never waits for
// hints": a 429 asking for 1s is answered at once.
func TestDocsAudit_MaxRetryAfterZero(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, "Retry-After", "1")}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ", max_retry_after: 0s"))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 429 || s.hits.Load() != 1 {
		t.Fatalf("config.md:319: %d hits %d %s", resp.StatusCode, s.hits.Load(), body)
	}
	if p := daDecode(t, resp, body); p.Reason != "rate_limited" || p.RetryAfterS != 1 {
		t.Errorf("config.md:319: %s", body)
	}
}

// TestDocsAudit_SharedCooldown: retries.md:214-232, errors.md:188-192 and
// metrics.md:727 — a 200 whose limit says 0 remaining pauses that key's
// requests until the reset; other keys are not stalled.
func TestDocsAudit_SharedCooldown(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("x-ratelimit-remaining-requests", "0")
			w.Header().Set("x-ratelimit-reset-requests", "30s")
		}
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, timeouts: {total: 10s}}
`, up))
	if resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer A"); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_cooldown_seconds", map[string]string{"upstream": addr}); got < 29 || got > 30 {
		t.Errorf("metrics.md:727: cooldown_seconds %v, want ~30", got)
	}
	resp, body := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer A")
	if resp.StatusCode != 429 {
		t.Fatalf("retries.md:223: same key during the pause: %d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "rate_limited" || p.Attempts != 0 || p.RetryAfterS != 30 {
		t.Errorf("errors.md:190: %s", body)
	}
	if resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer B"); resp.StatusCode != 200 {
		t.Errorf("retries.md:227: another key was stalled: %d", resp.StatusCode)
	}
	if hits.Load() != 2 {
		t.Errorf("hits %d, want 2", hits.Load())
	}
}

// TestDocsAudit_IdempotencyStorage: config.md:497-503 — 5xx and 429
// answers are not stored (the key is freed, a repeat runs again); in auto
// mode an identical request is a duplicate.
func TestDocsAudit_IdempotencyStorage(t *testing.T) {
	var code atomic.Int64
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(int(code.Load()))
		_, _ = io.WriteString(w, "x")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /k/}, upstream: %[1]q, idempotency: {mode: header}, retry: {attempts: 1}, breaker: {enabled: false}}
  - {name: a, match: {path_prefix: /a/}, upstream: %[1]q, idempotency: {mode: auto}}
`, up))
	for _, c := range []int64{500, 429} {
		code.Store(c)
		hits.Store(0)
		key := "key-" + strconv.Itoa(int(c))
		do(t, "POST", b.base+"/k/x", "b", "Idempotency-Key", key)
		resp, _ := do(t, "POST", b.base+"/k/x", "b", "Idempotency-Key", key)
		if hits.Load() != 2 || resp.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("config.md:497: a %d was stored: hits %d replayed %q", c, hits.Load(), resp.Header.Get("Idempotent-Replayed"))
		}
	}
	code.Store(201)
	hits.Store(0)
	do(t, "POST", b.base+"/a/x", "same")
	resp, _ := do(t, "POST", b.base+"/a/x", "same")
	if hits.Load() != 1 || resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("config.md:487: auto mode duplicate: hits %d %d replayed %q", hits.Load(), resp.StatusCode, resp.Header.Get("Idempotent-Replayed"))
	}
}

// TestDocsAudit_AsyncVariants: README.md:222 and config.md:507-520,538 —
// wait=N answers with the result, HEAD answers as GET without a body, and
// a route without async ignores Prefer (forwarding it).
func TestDocsAudit_AsyncVariants(t *testing.T) {
	var prefer atomic.Value
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		prefer.Store(r.Header.Get("Prefer"))
		_, _ = io.WriteString(w, "result")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: j, match: {path_prefix: /j/}, upstream: %[1]q, async: {enabled: true}}
  - {name: n, match: {path_prefix: /n/}, upstream: %[1]q}
`, up))
	resp, body := do(t, "POST", b.base+"/j/x", "p", "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || body != "result" || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Errorf("README.md:222: wait=10: %d %q state %q", resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"))
	}
	accepted, _ := do(t, "POST", b.base+"/j/y", "p", "Prefer", "respond-async")
	loc := accepted.Header.Get("Location")
	waitFor(t, func() bool {
		r, _ := do(t, "GET", b.base+loc, "")
		return r.StatusCode == 200
	})
	head, hbody := do(t, "HEAD", b.base+loc, "")
	if head.StatusCode != 200 || hbody != "" || head.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Errorf("config.md:519: HEAD job %d %q state %q", head.StatusCode, hbody, head.Header.Get("X-Ballast-Job-State"))
	}
	resp, body = do(t, "POST", b.base+"/n/x", "p", "Prefer", "respond-async")
	if resp.StatusCode != 200 || body != "result" || prefer.Load() != "respond-async" {
		t.Errorf("config.md:537: Prefer on a route without async: %d %q upstream Prefer %v", resp.StatusCode, body, prefer.Load())
	}
}

// TestDocsAudit_RoutingDetails: config.md:744-760,768-774.
func TestDocsAudit_RoutingDetails(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: any, match: {path_prefix: /m/}, upstream: %[1]q}
  - {name: posts, match: {path_prefix: /m/, methods: [POST]}, upstream: %[1]q}
  - {name: admin, match: {path_prefix: /admin}, upstream: "%[1]s/adm"}
  - {name: search, match: {path_prefix: /search}, upstream: "%[1]s/v2", strip_prefix: true}
  - {name: raw, match: {path_prefix: /raw}, upstream: "%[1]s/base"}
  - {name: root, match: {path_prefix: /}, upstream: %[1]q}
`, up))
	c := client(t)
	for _, tc := range []struct {
		method, path, wantPath string
	}{
		{"POST", "/m/x", ""},
		{"GET", "/tools/../admin", "/adm/admin"},
		{"GET", "/search", "/v2/"},
		{"GET", "/raw/x", "/base/raw/x"},
		{"GET", "/a//b", "/a/b"},
	} {
		req, _ := http.NewRequest(tc.method, b.base+"/", nil)
		req.URL.Opaque = tc.path // send the path as written
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s %s: %d", tc.method, tc.path, resp.StatusCode)
			continue
		}
		if tc.wantPath != "" {
			if got := decodeEcho(t, string(body)).Path; got != tc.wantPath {
				t.Errorf("config.md:755,768: %s went upstream as %q, want %q", tc.path, got, tc.wantPath)
			}
		}
	}
	// config.md:746: a route with methods is tried before one without.
	if got := b.metric("ballast_requests_total", map[string]string{"route": "posts", "code": "2xx"}); got != 1 {
		t.Errorf("config.md:746: POST /m/x did not take the methods route (posts 2xx = %v)", got)
	}
	// config.md:760: GET /_ballast/jobs/ is never routed, even with a / route.
	resp, _ := do(t, "GET", b.base+"/_ballast/jobs/abc", "")
	if resp.StatusCode != 404 {
		t.Errorf("config.md:760: /_ballast/jobs/abc was routed: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_requests_total", map[string]string{"route": "_unmatched", "code": "4xx"}); got != 1 {
		t.Errorf("metrics.md:686: job lookup not counted under _unmatched: %v", got)
	}
}

// TestDocsAudit_AdminToken: README.md:268-270 and errors.md:295.
func TestDocsAudit_AdminToken(t *testing.T) {
	up, _ := daOK(t)
	b := startBallast(t, fmt.Sprintf("admin: {token: t0k}\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	for _, path := range []string{"/metrics", "/config", "/status"} {
		resp, body := do(t, "GET", b.admin+path, "")
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" || !strings.Contains(body, `"reason":"bad_request"`) {
			t.Errorf("errors.md:295: %s without a token: %d %q %q", path, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
		}
		if resp, _ := do(t, "GET", b.admin+path, "", "Authorization", "Bearer t0k"); resp.StatusCode != 200 {
			t.Errorf("README.md:269: %s with the token: %d", path, resp.StatusCode)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if resp, _ := do(t, "GET", b.admin+path, ""); resp.StatusCode != 200 {
			t.Errorf("README.md:269: %s needs no token: %d", path, resp.StatusCode)
		}
	}
	resp, _ := do(t, "POST", b.admin+"/status", "", "Authorization", "Bearer t0k")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") == "" {
		t.Errorf("errors.md:297: POST /status %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestDocsAudit_MoreMetrics: metrics.md:734-735,744-745,718.
func TestDocsAudit_MoreMetrics(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := daOK(t)
	b := startBallastClock(t, clock, fmt.Sprintf(`
limiters:
  tok: {tokens_per_minute: 100000}
routes:
  - {name: c, match: {path_prefix: /c/}, upstream: %[1]q, cache: {mode: fresh, ttl: 1m, max_entries: 1}}
  - {name: t, match: {path_prefix: /t/}, upstream: %[1]q, rate_limit: {limiter: tok}}
`, up))
	do(t, "GET", b.base+"/c/1", "")
	do(t, "GET", b.base+"/c/2", "")
	if got := b.metric("ballast_cache_evictions_total", map[string]string{"route": "c"}); got != 1 {
		t.Errorf("metrics.md:745: cache_evictions_total %v after 2 entries with max_entries 1", got)
	}
	if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "tok"}); got != -1 {
		t.Errorf("metrics.md:735: ratelimit_rate exists (%v) for a limiter without rps", got)
	}
	if resp, _ := do(t, "POST", b.base+"/t/x", `{"model":"m","max_tokens":10}`); resp.StatusCode != 200 {
		t.Errorf("token-limited request %d", resp.StatusCode)
	}
	if got := b.metric("ballast_jobs", map[string]string{"state": "queued"}); got != 0 {
		t.Errorf("metrics.md:718: ballast_jobs{queued} %v", got)
	}
}

// TestDocsAudit_LogNeverHoldsQuery: config.md:174-177 — the request line
// has the path, never the query, header values or bodies.
func TestDocsAudit_LogNeverHoldsQuery(t *testing.T) {
	up, _ := daOK(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	do(t, "POST", b.base+"/p/ath?token=q-secret", "body-secret", "Authorization", "Bearer h-secret")
	logs := b.logs.String()
	if !strings.Contains(logs, "/p/ath") {
		t.Fatalf("config.md:175: the request was not logged: %s", logs)
	}
	for _, secret := range []string{"q-secret", "body-secret", "h-secret"} {
		if strings.Contains(logs, secret) {
			t.Errorf("config.md:177: the log holds %q", secret)
		}
	}
}

// TestDocsAudit_HistogramBuckets: metrics.md:708,720,734,758 — the bucket
// ranges of the four histograms.
func TestDocsAudit_HistogramBuckets(t *testing.T) {
	up, _ := daOK(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}]\n", up))
	do(t, "POST", b.base+"/x", "", "Idempotency-Key", "h")
	want := map[string][2]float64{
		"ballast_request_duration_seconds": {0.001, 120},
		"ballast_retry_wait_seconds":       {0.01, 60},
		"ballast_ratelimit_wait_seconds":   {0.001, 5},
		"ballast_state_store_seconds":      {0.0001, 1},
	}
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		w, ok := want[mf.GetName()]
		if !ok || len(mf.GetMetric()) == 0 {
			continue
		}
		seen[mf.GetName()] = true
		bs := mf.GetMetric()[0].GetHistogram().GetBucket()
		if len(bs) == 0 || bs[0].GetUpperBound() != w[0] || bs[len(bs)-1].GetUpperBound() != w[1] {
			t.Errorf("metrics.md: %s buckets %v … %v, docs say %v … %v", mf.GetName(), bs[0].GetUpperBound(), bs[len(bs)-1].GetUpperBound(), w[0], w[1])
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("metrics.md: %s not exported", name)
		}
	}
}

// TestDocsAudit_InlineLimitAndRetryRefusal: README.md:209, errors.md:181
// (an inline limit's policy is named after the route) and errors.md:183-185
// (a retry the limit refuses after an upstream 5xx is 503
// upstream_unavailable without RateLimit fields).
func TestDocsAudit_InlineLimitAndRetryRefusal(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503)}}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: inl, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 1, burst: 1, max_wait: 0s}, retry: {backoff: {base: 1ms, max: 1ms}}, breaker: {enabled: false}}
`, up))
	resp, body := doTicking(t, clock, "GET", b.base+"/x")
	if resp.StatusCode != 503 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if p := daDecode(t, resp, body); p.Reason != "upstream_unavailable" || p.Attempts != 1 || resp.Header.Get("RateLimit") != "" {
		t.Errorf("errors.md:184: a refused retry after a 503: %s RateLimit %q", body, resp.Header.Get("RateLimit"))
	}
	resp, body = do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 429 || !strings.HasPrefix(resp.Header.Get("RateLimit-Policy"), `"inl";`) {
		t.Errorf("errors.md:181: inline policy name: %d %q %s", resp.StatusCode, resp.Header.Get("RateLimit-Policy"), body)
	}
}

// TestDocsAudit_TooLargeForReplay: config.md:198,497-500 and metrics.md:757
// — an answer over state.max_response_bytes is relayed unstored, counted
// too_large, and its key is freed.
func TestDocsAudit_TooLargeForReplay(t *testing.T) {
	big := strings.Repeat("x", 4096)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, big)
	})
	b := startBallast(t, fmt.Sprintf(`
state: {max_response_bytes: 1KiB}
routes: [{name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}]
`, up))
	for range 2 {
		if resp, body := do(t, "POST", b.base+"/x", "b", "Idempotency-Key", "big"); resp.StatusCode != 200 || body != big {
			t.Fatalf("config.md:198: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
	if hits.Load() != 2 {
		t.Errorf("config.md:198: the key was not freed: hits %d", hits.Load())
	}
	if got := b.metric("ballast_idempotency_total", map[string]string{"route": "r", "result": "too_large"}); got != 2 {
		t.Errorf("metrics.md:757: idempotency_total{too_large} %v, want 2", got)
	}
}

// TestDocsAudit_ContentTypeRules: config.md:403 — parameters and case are
// ignored, +json is not special, */* refuses a missing Content-Type.
func TestDocsAudit_ContentTypeRules(t *testing.T) { daContentTypes(t, false) }

// TestDocsAudit_MissingContentTypeFailsWildcard: config.md:403 — "`*/*`
// allows anything but a missing Content-Type". The validator is handed
// fasthttp's default "text/plain; charset=utf-8" for an answer without one.
func TestDocsAudit_MissingContentTypeFailsWildcard(t *testing.T) {
	daContentTypes(t, true)
}

func daContentTypes(t *testing.T, missing bool) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upper":
			w.Header().Set("Content-Type", "Application/JSON; charset=utf-8")
		case "/problem":
			w.Header().Set("Content-Type", "application/problem+json")
		case "/none":
			w.Header()["Content-Type"] = nil // no sniffing either
		}
		_, _ = io.WriteString(w, "{}")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: j, match: {path_prefix: /j/}, upstream: "%[1]s/", strip_prefix: true, retry: {attempts: 1}, validate: {content_type: [application/json]}}
  - {name: a, match: {path_prefix: /a/}, upstream: "%[1]s/", strip_prefix: true, retry: {attempts: 1}, validate: {content_type: ["*/*"]}}
`, up))
	for _, c := range []struct {
		path string
		want int
	}{{"/j/upper", 200}, {"/j/problem", 502}, {"/a/problem", 200}, {"/a/none", 502}} {
		if (c.path == "/a/none") != missing {
			continue
		}
		if resp, body := do(t, "GET", b.base+c.path, ""); resp.StatusCode != c.want {
			t.Errorf("config.md:403: %s: %d %s, want %d (agent saw Content-Type %q)", c.path, resp.StatusCode, body, c.want, resp.Header.Values("Content-Type"))
		}
	}
}
