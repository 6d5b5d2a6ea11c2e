package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLeftoversAuditRefusedHedgeCostsNoBudget: a hedge pays the retry
// budget and the rate limit, or neither. When the rate limit refuses it,
// no copy goes out, so the budget must not be spent: here it holds one
// retry, and after a refused hedge another request on the same upstream
// (a route without the limit, sharing the upstream's budget) still gets
// its retry.
func TestLeftoversAuditRefusedHedgeCostsNoBudget(t *testing.T) {
	var hedgedHits, retriedHits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/a/x":
			hedgedHits.Add(1)
			<-r.Context().Done() // the first copy times out (per_try)
		case "/b/x":
			if retriedHits.Add(1) == 1 {
				w.WriteHeader(503)
				return
			}
			io.WriteString(w, "ok")
		}
	})
	// One retry in the budget: ratio 0 leaves the reserve, 0.1/s × 10s.
	b := startBallast(t, fmt.Sprintf(`
defaults:
  retry: {budget: {ratio: 0, min_per_second: 0.1}, backoff: {base: 1ms, max: 1ms}}
routes:
  - name: a
    match: {path_prefix: /a/}
    upstream: %[1]q
    hedge_after: 20ms
    timeouts: {per_try: 300ms}
    retry: {attempts: 1}
    rate_limit: {rps: 0.001, burst: 1, max_wait: 0s}
  - name: b
    match: {path_prefix: /b/}
    upstream: %[1]q
    retry: {attempts: 2}
`, up))
	// The hedge is decided at 20ms, long before the first copy's 300ms
	// per_try ends and the agent is answered.
	if resp, body := do(t, "GET", b.base+"/a/x", ""); resp.StatusCode != 504 {
		t.Fatalf("the hedged request: %d %s, want 504 (its only copy timed out)", resp.StatusCode, body)
	}
	if hedgedHits.Load() != 1 || b.metric("ballast_hedges_total", map[string]string{"route": "a"}) > 0 {
		t.Fatalf("the rate limit had no token for a hedge, yet the upstream saw %d copies", hedgedHits.Load())
	}
	resp, body := do(t, "GET", b.base+"/b/x", "")
	if resp.StatusCode != 200 || retriedHits.Load() != 2 {
		t.Errorf("a retry on the same upstream: %d %s after %d attempts; want 200 after 2 (the refused hedge spent the budget's only retry)",
			resp.StatusCode, body, retriedHits.Load())
	}
}

// TestLeftoversAuditRepeatedTimeoutHeader: X-Ballast-Timeout sent twice
// (an agent and a library each adding one) is two bounds that both hold:
// the lower applies, in either order, and an invalid line is a 400 like a
// single invalid value.
func TestLeftoversAuditRepeatedTimeoutHeader(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    timeouts: {per_try: 20s, total: 20s}
    retry: {attempts: 1}
`, up))
	send := func(values ...string) (*http.Response, string, time.Duration) {
		req, _ := http.NewRequest("GET", b.base+"/x", nil)
		for _, v := range values {
			req.Header.Add("X-Ballast-Timeout", v)
		}
		start := time.Now()
		resp, err := client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body), time.Since(start)
	}
	for _, order := range [][]string{{"10s", "100ms"}, {"100ms", "10s"}} {
		resp, body, took := send(order...)
		if resp.StatusCode != 504 || took > 5*time.Second {
			t.Errorf("X-Ballast-Timeout %q: %d after %v (%s); want 504 within the lower bound, 100ms", order, resp.StatusCode, took, body)
		}
	}
	before := hits.Load()
	for _, order := range [][]string{{"10s", "soon"}, {"soon", "10s"}} {
		resp, body, _ := send(order...)
		if resp.StatusCode != 400 || !strings.Contains(body, "X-Ballast-Timeout") {
			t.Errorf("X-Ballast-Timeout %q: %d %s; want 400 bad_request", order, resp.StatusCode, body)
		}
	}
	if hits.Load() != before {
		t.Errorf("a request with an invalid X-Ballast-Timeout line was forwarded")
	}
}

// TestLeftoversAuditRepeatedIdempotencyKey: two different Idempotency-Key
// lines name two calls; reading either one as the key would let a retry
// carrying the other run the call again. It is a 400, never forwarded; the
// same key sent twice is one key.
func TestLeftoversAuditRepeatedIdempotencyKey(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		fmt.Fprintf(w, "call %d", n)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: header}
`, up))
	post := func(keys ...string) (*http.Response, string) {
		req, _ := http.NewRequest("POST", b.base+"/x", strings.NewReader("{}"))
		for _, k := range keys {
			req.Header.Add("Idempotency-Key", k)
		}
		resp, err := client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	for _, keys := range [][]string{{"k1", "k2"}, {"k2", "k1"}} {
		resp, body := post(keys...)
		if resp.StatusCode != 400 || !strings.Contains(body, "Idempotency-Key") {
			t.Errorf("Idempotency-Key %q: %d %s; want 400 bad_request", keys, resp.StatusCode, body)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("a request with two different keys reached the upstream (%d calls)", hits.Load())
	}
	if resp, body := post("k3", "k3"); resp.StatusCode != 200 || body != "call 1" {
		t.Fatalf("the same key twice: %d %q, want 200 \"call 1\"", resp.StatusCode, body)
	}
	resp, body := post("k3")
	if resp.StatusCode != 200 || body != "call 1" || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a repeat with key k3: %d %q replayed=%q; want the first call's answer replayed", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
}

// TestLeftoversAuditRepeatedPriorityHeader: X-Ballast-Priority resolves
// over all its lines like X-Ballast-Timeout, to the more cautious value:
// a request whose lines say normal and low waits behind a normal one.
func TestLeftoversAuditRepeatedPriorityHeader(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		order = append(order, r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/hold" {
			<-release
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    concurrency: {max: 1, queue: 4, max_wait: 10s}
`, up))
	var wg sync.WaitGroup
	c := client(t)
	send := func(path string, priorities ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", b.base+path, nil)
			for _, p := range priorities {
				req.Header.Add("X-Ballast-Priority", p)
			}
			if resp, err := c.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	send("/hold")
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(order) == 1 })
	send("/twice", "normal", "low")
	waitFor(t, func() bool {
		return b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}) == 1
	})
	send("/normal")
	waitFor(t, func() bool {
		return b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}) == 2
	})
	close(release)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(order, " ") != "/hold /normal /twice" {
		t.Errorf("served %v; the request whose priority lines say normal and low must wait behind the normal one", order)
	}
}

// TestLeftoversAuditProviderDenialInA200IsFinal: a provider error in a 200
// that refuses the key or says the quota is spent is never retried, as the
// same error with its 401, 403 or 429-quota status is not: it is counted
// as auth or quota, and the agent gets 502 invalid_response at once, with
// x-should-retry: false. A transient envelope (overloaded) is still
// retried.
func TestLeftoversAuditProviderDenialInA200IsFinal(t *testing.T) {
	tests := []struct {
		name, body, outcome string
		wantHits            int64
	}{
		{"openai insufficient_quota", `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`, "quota", 1},
		{"openai invalid_api_key", `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}`, "auth", 1},
		{"anthropic authentication_error", `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`, "auth", 1},
		{"anthropic permission_error", `{"type":"error","error":{"type":"permission_error","message":"not allowed"}}`, "auth", 1},
		{"google permission denied", `{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}`, "auth", 1},
		{"permission_denied code", `{"error":{"code":"permission_denied","message":"no access to model"}}`, "auth", 1},
		{"anthropic overloaded", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`, "invalid", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, tc.body)
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 3, unsafe_methods: true, backoff: {base: 1ms, max: 1ms}}
    validate: {provider_error: true}
`, up))
			resp, body := do(t, "POST", b.base+"/v1/chat/completions", "{}")
			if resp.StatusCode != 502 || !strings.Contains(body, "invalid_response") {
				t.Errorf("%d %s, want 502 invalid_response", resp.StatusCode, body)
			}
			if hits.Load() != tc.wantHits {
				t.Errorf("the upstream saw %d attempts, want %d", hits.Load(), tc.wantHits)
			}
			if got := b.metric("ballast_upstream_attempts_total", map[string]string{"route": "r", "outcome": tc.outcome}); got != float64(tc.wantHits) {
				t.Errorf("ballast_upstream_attempts_total{outcome=%q} = %v, want %d", tc.outcome, got, tc.wantHits)
			}
			if tc.wantHits == 1 && resp.Header.Get("x-should-retry") != "false" {
				t.Errorf("x-should-retry %q on a final answer, want false", resp.Header.Get("x-should-retry"))
			}
		})
	}
}

// TestLeftoversAuditLogCacheIsBallasts: the log line's cache field is
// ballast's own cache outcome, never the upstream's Cache-Status text
// (the line holds no header values): absent on a route without a cache,
// ballast's member alone on a route with one.
func TestLeftoversAuditLogCacheIsBallasts(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Status", "edge-cdn; hit; key=secret-tenant-42")
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: plain
    match: {path_prefix: /plain/}
    upstream: %[1]q
  - name: cached
    match: {path_prefix: /cached/}
    upstream: %[1]q
    cache: {mode: fresh, ttl: 60s}
`, up))
	for _, p := range []string{"/plain/x", "/cached/x"} {
		if resp, _ := do(t, "GET", b.base+p, ""); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", p, resp.StatusCode)
		}
	}
	b.srv.FlushAccessLog()
	seen := 0
	for _, l := range trails(t, b) {
		if strings.Contains(l.Cache, "edge-cdn") || strings.Contains(l.Cache, "secret") {
			t.Errorf("%s: the log line's cache field holds the upstream's Cache-Status: %q", l.Path, l.Cache)
		}
		switch l.Path {
		case "/plain/x":
			seen++
			if l.Cache != "" {
				t.Errorf("/plain/x has no cache, yet its line says cache %q", l.Cache)
			}
		case "/cached/x":
			seen++
			if !strings.HasPrefix(l.Cache, "ballast; fwd=") {
				t.Errorf("/cached/x: cache %q, want ballast's outcome", l.Cache)
			}
		}
	}
	if seen != 2 {
		t.Errorf("found %d of the 2 request lines", seen)
	}
}

// TestLeftoversAuditRefusedReloadKeepsGauges: a reload that passes config
// validation but fails while building its routes (a schema file that
// cannot be read, after a route whose limiter it changes) is refused, and the limiter gauge keeps reading the limiter still
// in force, not the one the refused build made.
func TestLeftoversAuditRefusedReloadKeepsGauges(t *testing.T) {
	up := opsOK(t)
	cfg := func(rps int, bad string) string {
		return fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /r/}, upstream: %q, rate_limit: {rps: %d}, concurrency: {max: %d}}
%s`, up, rps, rps, bad)
	}
	b := startBallast(t, cfg(5, ""))
	rate := func() float64 { return b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "r"}) }
	if got := rate(); got != 5 {
		t.Fatalf("rate %v, want 5", got)
	}
	bad := fmt.Sprintf("  - {name: z, match: {path_prefix: /z/}, upstream: %q, validate: {schema_file: %q}}\n",
		up, t.TempDir()+"/missing-schema.json")
	if code, body := opsReload(t, b, cfg(7, bad)); code == 200 || !strings.Contains(body, "schema") {
		t.Fatalf("the reload with an unreadable schema file: %d %s; want it refused", code, body)
	}
	if got := rate(); got != 5 {
		t.Errorf("after a refused reload, ballast_ratelimit_rate{limiter=r} = %v; the limiter in force allows 5", got)
	}
	if code, body := opsReload(t, b, cfg(7, "")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if got := rate(); got != 7 {
		t.Errorf("after reloading to rps 7, ballast_ratelimit_rate{limiter=r} = %v", got)
	}
}

// TestLeftoversAuditStreamAgentGoneIsLogged: the line of a streamed answer
// whose agent hung up mid-stream says so ("stopped":"agent_gone", at WARN),
// as the line of a call the agent left before its answer does; a stream
// read to its end says nothing of the kind. body_bytes never exceeds what
// the upstream sent.
func TestLeftoversAuditStreamAgentGoneIsLogged(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		if r.URL.Path == "/whole" {
			return
		}
		<-r.Context().Done() // quiet until ballast lets go
	})
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 60s, total: 120s}\n"))
	if resp, body := do(t, "POST", b.base+"/whole", `{"stream":true}`); resp.StatusCode != 200 || body != "data: one\n\n" {
		t.Fatalf("whole stream: %d %q", resp.StatusCode, body)
	}
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(streamsAuditBound))
	fmt.Fprint(c, "POST /left HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}")
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if strings.HasPrefix(line, "data: one") {
			break
		}
	}
	c.Close()
	lineOf := func(path string) (trailLine, bool) {
		b.srv.FlushAccessLog()
		for _, l := range trails(t, b) {
			if l.Path == path {
				return l, true
			}
		}
		return trailLine{}, false
	}
	waitFor(t, func() bool { _, ok := lineOf("/left"); return ok })
	left, _ := lineOf("/left")
	if left.Stopped != "agent_gone" || left.Level != "WARN" {
		t.Errorf("the stream the agent left: stopped %q at %s; want agent_gone at WARN", left.Stopped, left.Level)
	}
	whole, ok := lineOf("/whole")
	if !ok || whole.Stopped != "" || whole.Level != "INFO" {
		t.Errorf("the whole stream: %+v; want no stop, INFO", whole)
	}
	for _, raw := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(raw, `"path":"/left"`) && strings.Count(raw, `"stopped"`) != 1 {
			t.Errorf("the line says stopped %d times: %s", strings.Count(raw, `"stopped"`), raw)
		}
		if strings.Contains(raw, `"msg":"request"`) && !strings.Contains(raw, `"body_bytes":11`) {
			t.Errorf("body_bytes is not the 11 bytes relayed: %s", raw)
		}
	}
}
