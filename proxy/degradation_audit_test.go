package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// A JSON-RPC error the route does not retry is the tool's own answer: docs
// say it passes to the agent "counted, never cached". A fresh-mode cache
// must therefore not answer the next identical call from it.
func TestJSONRPCErrorIsNeverCached(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if n == 1 {
			io.WriteString(w, `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params"}}`)
			return
		}
		io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{"ok":true}}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: mcp
    match: {path_prefix: /}
    upstream: %q
    validate: {jsonrpc: true}
    cache: {mode: fresh, ttl: 1h}
`, up))
	call := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}`
	resp, body := do(t, "POST", b.base+"/mcp", call, "Content-Type", "application/json")
	if resp.StatusCode != 200 || !strings.Contains(body, "Invalid params") {
		t.Fatalf("first call: %d %q, want the tool's JSON-RPC error", resp.StatusCode, body)
	}
	if cs := resp.Header.Get("Cache-Status"); strings.Contains(cs, "stored") {
		t.Errorf("first call: Cache-Status %q: a JSON-RPC error answer was stored", cs)
	}
	resp, body = do(t, "POST", b.base+"/mcp", call, "Content-Type", "application/json")
	if hits.Load() != 2 || strings.Contains(body, "Invalid params") {
		t.Errorf("second call: %d %q Cache-Status %q, upstream hits %d: the cached JSON-RPC error answered it (want a fresh upstream call)",
			resp.StatusCode, body, resp.Header.Get("Cache-Status"), hits.Load())
	}
}

// Degradation (stale cache, static fallback) is for upstream failures only:
// "a 400 or 401 always reaches the agent as the upstream sent it". Here the
// primary asks for a pause longer than max_retry_after, so ballast moves to
// the fallback, and the fallback answers 401: the agent must get that 401,
// not the static fallback.
func TestCallerFaultFromFallbackIsNotDegraded(t *testing.T) {
	for _, tt := range []struct{ name, extra string }{
		{"with a static fallback", `
    static_fallback: {status: 503, body: '{"static":true}'}`},
		{"without one", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "3600")
				w.WriteHeader(429)
			})
			var fbHits atomic.Int64
			fallback, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				fbHits.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(401)
				io.WriteString(w, `{"error":{"type":"authentication_error","message":"bad key"}}`)
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {max_retry_after: 10s}%s
`, primary, fallback, tt.extra))
			resp, body := do(t, "GET", b.base+"/x", "")
			if fbHits.Load() != 1 {
				t.Fatalf("fallback hits %d, want 1", fbHits.Load())
			}
			if resp.StatusCode != 401 || !strings.Contains(body, "bad key") || resp.Header.Get("X-Ballast-Fallback") != "" {
				t.Errorf("got %d %q (X-Ballast-Fallback %q); want the fallback's own 401: auth answers are never degraded",
					resp.StatusCode, body, resp.Header.Get("X-Ballast-Fallback"))
			}
		})
	}
}

// Same rule with the stale cache: the primary's breaker is open, the
// fallback answers 404 for this request, and a stored answer exists. The
// 404 is about the request and must reach the agent.
func TestCallerFaultAfterOpenBreakerIsNotServedStale(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var primaryDown atomic.Bool
	primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if primaryDown.Load() {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"doc":"v1"}`)
	})
	fallback, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(404)
		io.WriteString(w, `{"error":"no such document"}`)
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: docs
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {attempts: 1}
    breaker: {failures: 1, open_for: 1h}
    cache: {mode: fallback, stale: 24h}
`, primary, fallback))
	if resp, body := do(t, "GET", b.base+"/doc/1", ""); resp.StatusCode != 200 || body != `{"doc":"v1"}` {
		t.Fatalf("healthy: %d %q", resp.StatusCode, body)
	}
	primaryDown.Store(true)
	// One failure opens the primary's breaker (its answer here: the
	// fallback's 404, since the primary's 503 moved on to the fallback).
	do(t, "GET", b.base+"/doc/2", "")
	resp, body := do(t, "GET", b.base+"/doc/1", "")
	if resp.StatusCode != 404 || strings.Contains(resp.Header.Get("Cache-Status"), "stale") {
		t.Errorf("got %d %q Cache-Status %q; want the fallback's 404 (a caller fault is never degraded)",
			resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
}

// Fallback header rules are applied after the route's, and header names
// are case-insensitive: a fallback that sets its own Authorization must
// send its own key, never the primary's, whatever the case of the names.
func TestFallbackHeaderOverridesRouteHeaderAnyCase(t *testing.T) {
	primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	var seen sync.Map
	fallback, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store("auth", r.Header.Values("Authorization"))
		io.WriteString(w, "fb")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: model
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    headers: {set: {authorization: "Bearer PRIMARY-KEY"}}
    fallbacks: [{upstream: %q, headers: {set: {Authorization: "Bearer FALLBACK-KEY"}}}]
`, primary, fallback))
	resp, body := do(t, "GET", b.base+"/v1/models", "")
	if resp.StatusCode != 200 || body != "fb" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	v, _ := seen.Load("auth")
	if got := v.([]string); len(got) != 1 || got[0] != "Bearer FALLBACK-KEY" {
		t.Errorf("the fallback received Authorization %q; want only its own key (the primary's key leaked)", got)
	}
}

// Per-fallback rules: host, base path and headers are the fallback's own
// on the fallback, and none of the fallback's headers ever reach the
// primary.
func TestFallbackRewritesHostPathAndHeaders(t *testing.T) {
	type seenReq struct{ host, path, auth, extra string }
	var mu sync.Mutex
	var primarySeen, fbSeen []seenReq
	var primaryDown atomic.Bool
	primary, paddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		primarySeen = append(primarySeen, seenReq{r.Host, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Fb")})
		mu.Unlock()
		if primaryDown.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "primary")
	})
	fallback, faddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		fbSeen = append(fbSeen, seenReq{r.Host, r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Fb")})
		mu.Unlock()
		io.WriteString(w, "fallback")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: search
    match: {path_prefix: /search/}
    strip_prefix: true
    upstream: %s/v2/
    retry: {attempts: 1}
    breaker: {enabled: false}
    headers: {set: {Authorization: "Bearer PRIMARY"}}
    fallbacks: [{upstream: %s/mirror/v9/, headers: {set: {Authorization: "Bearer FB", X-Fb: "1"}}}]
`, primary, fallback))
	if resp, body := do(t, "GET", b.base+"/search/q?x=1", ""); body != "primary" || resp.Header.Get("X-Ballast-Upstream") != paddr {
		t.Fatalf("healthy: %q upstream %q", body, resp.Header.Get("X-Ballast-Upstream"))
	}
	primaryDown.Store(true)
	resp, body := do(t, "GET", b.base+"/search/q?x=1", "")
	if body != "fallback" || resp.Header.Get("X-Ballast-Upstream") != faddr || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("primary down: %q upstream %q attempts %q", body, resp.Header.Get("X-Ballast-Upstream"), resp.Header.Get("X-Ballast-Attempts"))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range primarySeen {
		if p.host != paddr || p.path != "/v2/q" || p.auth != "Bearer PRIMARY" || p.extra != "" {
			t.Errorf("primary saw %+v", p)
		}
	}
	if len(fbSeen) != 1 || fbSeen[0] != (seenReq{faddr, "/mirror/v9/q", "Bearer FB", "1"}) {
		t.Errorf("fallback saw %+v", fbSeen)
	}
}

// sseEvents reads an SSE stream line by line, sending each line as read.
func sseLines(r io.Reader, out chan<- string) error {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			out <- line
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// SSE comments (heartbeats) and events reach the agent as they arrive, the
// relayed stream is chunked (no Content-Length), and a route with a body
// check (validate.json) still streams an event stream instead of buffering it.
func TestSSEHeartbeatsFlowUnbufferedEvenWithBodyChecks(t *testing.T) {
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		io.WriteString(w, ": ping\n\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, "event: delta\ndata: {\"t\":\"he\"}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    validate: {status: [2xx], json: true, non_empty: true}
    timeouts: {idle: 5s}
`, up))
	resp, err := client(t).Post(b.base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("status %d, Content-Length %d, Transfer-Encoding %v: want a chunked 200", resp.StatusCode, resp.ContentLength, resp.TransferEncoding)
	}
	lines := make(chan string, 16)
	done := make(chan error, 1)
	go func() { done <- sseLines(resp.Body, lines) }()
	want := []string{": ping\n", "\n", "event: delta\n", "data: {\"t\":\"he\"}\n", "\n"}
	for _, w := range want {
		select {
		case got := <-lines:
			if got != w {
				t.Fatalf("line %q, want %q", got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("line %q did not arrive while the upstream was still streaming", w)
		}
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("end of stream: %v", err)
	}
	if got := <-lines; got != "data: [DONE]\n" {
		t.Errorf("last line %q", got)
	}
}

// An event stream answered with an error status before any byte reached
// the agent is retried like any answer; once retries are spent the
// upstream's own SSE error reaches the agent whole.
func TestSSEErrorStatusIsRetriedThenRelayed(t *testing.T) {
	sseErr := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(503)
		io.WriteString(w, "event: error\ndata: {\"error\":\"overloaded\"}\n\n")
	}
	sseOK := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: ok\n\n")
	}
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){sseErr, sseOK}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ""))
	resp, body := do(t, "GET", b.base+"/events", "")
	if resp.StatusCode != 200 || body != "data: ok\n\n" || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Errorf("%d %q attempts %q: want the retried 200 stream", resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}
	s2 := &scripted{steps: []func(http.ResponseWriter, *http.Request){sseErr, sseErr, sseErr}}
	up2, _ := upstream(t, s2.handler)
	b2 := startBallast(t, retryRoute(up2, ""))
	resp, body = do(t, "GET", b2.base+"/events", "")
	if resp.StatusCode != 503 || body != "event: error\ndata: {\"error\":\"overloaded\"}\n\n" || s2.hits.Load() != 3 {
		t.Errorf("%d %q hits %d: want the upstream's own SSE 503 after 3 attempts", resp.StatusCode, body, s2.hits.Load())
	}
}

// tokens_per_minute settles a streamed answer from the usage in its last
// events: a stream that used 12 tokens gives back the rest of its 1000+
// token estimate, so the next request fits.
func TestTokenUsageSettledFromTheLastEvent(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12}}\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    retry: {unsafe_methods: true}
    rate_limit: {tokens_per_minute: 1500, max_wait: 0s}
`, up))
	body := `{"model":"m","stream":true,"max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`
	if resp, got := do(t, "POST", b.base+"/v1/chat/completions", body); resp.StatusCode != 200 || !strings.Contains(got, "[DONE]") {
		t.Fatalf("first: %d %q", resp.StatusCode, got)
	}
	// The settlement runs when the relay closes the body, just after the
	// agent read its end; poll until it is in.
	waitFor(t, func() bool {
		resp, _ := do(t, "POST", b.base+"/v1/chat/completions", body)
		return resp.StatusCode == 200
	})
}

// Hedging with a streamed winner: the slow copy is called off, the
// hedge's large streamed body reaches the agent intact, the hedge is
// counted, and the hedged POST (a read-only JSON-RPC call) carries its
// body on both copies.
func TestHedgeWinnerBodyIntactAndPostBodyOnBothCopies(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 12<<10) // 192KiB: streamed, not buffered
	var hits atomic.Int64
	var mu sync.Mutex
	var bodies []string
	gone := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		rb, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(rb))
		mu.Unlock()
		if hits.Add(1) == 1 {
			<-r.Context().Done()
			gone <- struct{}{}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, big)
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 100ms
    retry: {jsonrpc: true}
    timeouts: {per_try: 60s, total: 120s}
`, up))
	call := `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`
	res := raSend(t, "POST", b.base+"/mcp", call, "Content-Type", "application/json")
	waitFor(t, func() bool { return clock.Waiters() > 0 && hits.Load() == 1 })
	clock.Advance(100 * time.Millisecond)
	r := raAnswer(t, res)
	if r.resp.StatusCode != 200 || r.body != big {
		t.Fatalf("status %d, body of %d bytes (want %d): the hedge's streamed body must arrive intact", r.resp.StatusCode, len(r.body), len(big))
	}
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow copy was not called off")
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got != 1 {
		t.Errorf("ballast_hedges_total = %v, want 1", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 2 || bodies[0] != call || bodies[1] != call {
		t.Errorf("upstream bodies %q: both copies must carry the request body", bodies)
	}
}

// retry.jsonrpc: a batch is safe only when every call in it is; a
// notification of a non-read-only method is not repeated; an MCP server's
// empty 202 for a notification passes validate.jsonrpc.
func TestJSONRPCBatchesAndNotifications(t *testing.T) {
	tests := []struct {
		name     string
		body     string
		wantHits int64
		wantCode int
	}{
		{"read-only batch retried", `[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"p"}}]`, 2, 200},
		{"batch with a tools/call not retried", `[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"send_email"}}]`, 1, 503},
		{"idempotent tool retried", `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search_docs","arguments":{}}}`, 2, 200},
		{"notification not retried", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, 1, 503},
		{"client response not retried", `{"jsonrpc":"2.0","id":9,"result":{}}`, 1, 503},
		{"duplicated method not retried", `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"send_email"},"method":"tools/list"}`, 1, 503},
		{"case-varied method not retried", `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"send_email"},"Method":"tools/list"}`, 1, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503), func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
			}}}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, retryRoute(up, ", jsonrpc: true, idempotent_tools: [search_docs]"))
			resp, _ := do(t, "POST", b.base+"/mcp", tt.body, "Content-Type", "application/json", "Mcp-Session-Id", "s1")
			if resp.StatusCode != tt.wantCode || s.hits.Load() != tt.wantHits {
				t.Errorf("%d with %d upstream hits, want %d with %d", resp.StatusCode, s.hits.Load(), tt.wantCode, tt.wantHits)
			}
		})
	}
	t.Run("empty 202 passes validation", func(t *testing.T) {
		var sid atomic.Value
		up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
			sid.Store(r.Header.Get("Mcp-Session-Id"))
			w.WriteHeader(202)
		})
		b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: mcp, match: {path_prefix: /}, upstream: %q, validate: {jsonrpc: true}}
`, up))
		resp, body := do(t, "POST", b.base+"/mcp", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, "Mcp-Session-Id", "abc")
		if resp.StatusCode != 202 || body != "" || sid.Load() != "abc" {
			t.Errorf("%d %q, session seen %v", resp.StatusCode, body, sid.Load())
		}
	})
}

// An MCP session lives on the server that issued it. A request carrying
// Mcp-Session-Id must not be failed over to a fallback upstream that never
// issued that session (it would answer 404 "session not found", or worse,
// run the call outside the session's state): the session must stay on one
// upstream, and the agent gets the primary's failure instead.
func TestMCPSessionIsNotSplitAcrossFallbacks(t *testing.T) {
	var primaryDown atomic.Bool
	primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if primaryDown.Load() {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Mcp-Session-Id", "primary-session-1")
		io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"p","version":"1"}}}`)
	})
	var foreign atomic.Int64
	fallback, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Mcp-Session-Id") != "" {
			foreign.Add(1)
			w.WriteHeader(404) // the go-sdk's answer to an unknown session
			io.WriteString(w, "session not found")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tools
    match: {path_prefix: /mcp}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {jsonrpc: true, attempts: 2, backoff: {base: 1ms, max: 1ms}}
    breaker: {enabled: false}
`, primary, fallback))
	resp, _ := do(t, "POST", b.base+"/mcp", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`, "Content-Type", "application/json")
	sid := resp.Header.Get("Mcp-Session-Id")
	if sid != "primary-session-1" {
		t.Fatalf("initialize: session %q", sid)
	}
	primaryDown.Store(true)
	resp, body := do(t, "POST", b.base+"/mcp", `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, "Content-Type", "application/json", "Mcp-Session-Id", sid)
	if foreign.Load() != 0 {
		t.Errorf("the fallback received the primary's session id %q (%d times); the agent got %d %q: a session was split across upstreams",
			sid, foreign.Load(), resp.StatusCode, body)
	}
}

// Graceful degradation end to end: a stored answer is served stale on a
// transport failure only within ttl+stale, with Age and a Cache-Status
// without fwd-status (no response came); a 404 from the upstream is never
// degraded; past the stale window the static fallback answers with its
// own status, type and headers.
func TestStaleWindowThenStaticFallback(t *testing.T) {
	var mode atomic.Int32 // 0 healthy, 1 resets, 2 answers 404
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case 1:
			reset(w, r)
		case 2:
			w.WriteHeader(404)
			io.WriteString(w, "gone")
		default:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"v":1}`)
		}
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    breaker: {enabled: false}
    cache: {mode: fallback, ttl: 10s, stale: 60s}
    static_fallback: {status: 200, content_type: text/plain, headers: {X-Degraded: "yes"}, body: "static answer"}
`, up))
	if resp, body := do(t, "GET", b.base+"/a", ""); resp.StatusCode != 200 || body != `{"v":1}` || resp.Header.Get("Cache-Status") != "ballast; fwd=bypass; stored" {
		t.Fatalf("healthy: %d %q %q", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	mode.Store(1)
	clock.Advance(40 * time.Second)
	resp, body := do(t, "GET", b.base+"/a", "")
	if resp.StatusCode != 200 || body != `{"v":1}` || resp.Header.Get("Age") != "40" ||
		resp.Header.Get("Cache-Status") != "ballast; fwd=stale; ttl=-30; detail=stale-if-error" || resp.Header.Get("X-Ballast-Upstream") != "" {
		t.Errorf("stale: %d %q Age %q Cache-Status %q Upstream %q", resp.StatusCode, body, resp.Header.Get("Age"),
			resp.Header.Get("Cache-Status"), resp.Header.Get("X-Ballast-Upstream"))
	}
	mode.Store(2)
	if resp, body := do(t, "GET", b.base+"/a", ""); resp.StatusCode != 404 || body != "gone" {
		t.Errorf("a 404 was degraded: %d %q Cache-Status %q", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	mode.Store(1)
	clock.Advance(31 * time.Second) // 71s: past ttl+stale
	resp, body = do(t, "GET", b.base+"/a", "")
	if resp.StatusCode != 200 || body != "static answer" || resp.Header.Get("X-Ballast-Fallback") != "static" ||
		resp.Header.Get("X-Degraded") != "yes" || resp.Header.Get("Content-Type") != "text/plain" ||
		resp.Header.Get("Cache-Status") != "ballast; fwd=uri-miss; detail=static-fallback" || resp.Header.Get("Age") != "" {
		t.Errorf("past the stale window: %d %q headers %v", resp.StatusCode, body, resp.Header)
	}
}

// A body check reads a chunked answer whole before relaying it. When the
// upstream breaks off in the middle of that read, nothing has reached the
// agent yet, so ballast can still answer properly: after retries, a
// transport failure is "502 upstream_unavailable" (docs/retries.md, the
// order of degradation). It must not relay the broken response's 200
// headers with a body whose first bytes it already consumed.
func TestBodyBrokenDuringValidationIsNotRelayed(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		io.WriteString(w, `{"results":[1,2,3`)
		w.(http.Flusher).Flush() // chunked: no Content-Length
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    validate: {json: true}
`, up))
	req, _ := http.NewRequest("GET", b.base+"/search", nil)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatalf("no response at all (%v) after %d upstream hits; want a complete 502 upstream_unavailable problem", err, hits.Load())
	}
	body, readErr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(body), "upstream_unavailable") || readErr != nil {
		t.Errorf("got %d %q (read error %v) after %d upstream hits; want a complete 502 upstream_unavailable problem",
			resp.StatusCode, body, readErr, hits.Load())
	}
}
