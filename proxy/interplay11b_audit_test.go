package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// These probes sit on more seams between features than
// interplay11_audit_test.go covers: the token budget with the cache, the
// breaker, async jobs and streams; concurrency slots with async jobs;
// fallbacks with header rules; JSON-RPC with validation, retries and the
// cache. Each runs against loopback upstreams scripted to fail in precise
// ways, on a fake clock where time matters (a token bucket then never
// refills by itself, so its level is exact).

// ib11TokensLeft reads how many tokens the shared limiter behind path has
// left: a request that asks for more than the bucket holds is refused, and
// its RateLimit field says the remainder (r=N). It spends nothing.
func ib11TokensLeft(t *testing.T, b *ballast, path string) int {
	t.Helper()
	resp, body := do(t, "POST", b.base+path, `{"max_tokens":100000000}`)
	if resp.StatusCode != 429 {
		t.Fatalf("the token probe: %d %q, want 429", resp.StatusCode, body)
	}
	m := regexp.MustCompile(`;r=(\d+);`).FindStringSubmatch(resp.Header.Get("RateLimit"))
	if m == nil {
		t.Fatalf("the token probe's RateLimit %q has no r=", resp.Header.Get("RateLimit"))
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// ib11TokenRoutes is a config of two routes on up that share the limiter
// model of tokensPerMinute: chat (/chat/, one attempt, with more of its
// keys in chat) and probe (/probe/), through which ib11TokensLeft reads
// the bucket's level.
func ib11TokenRoutes(up string, tokensPerMinute int, chat string) string {
	return fmt.Sprintf(`
limiters:
  model: {tokens_per_minute: %[2]d}
routes:
  - name: chat
    match: {path_prefix: /chat/}
    upstream: %[1]q
    retry: {attempts: 1}
%[3]s    rate_limit: {limiter: model, max_wait: 0s}
  - name: probe
    match: {path_prefix: /probe/}
    upstream: %[1]q
    rate_limit: {limiter: model, max_wait: 0s}
`, up, tokensPerMinute, chat)
}

// TestInterplay11b_StaleAnswerNeverSettlesTokensFromStoredUsage: a stored
// answer served because the upstream failed carries another request's
// usage, so it must never settle this request's token reservation
// (settleTokens). Two shapes of it escaped that rule: a stale entry served
// without asking the upstream (every breaker open: "hit; ...;
// detail=stale-if-error", no fwd=stale), and a stale entry whose stored
// headers hold the upstream's own Cache-Status member (ballast's member is
// then the second line). Nothing reached the model for the first, so its
// reservation is given back whole, as for the 503 breaker_open ballast
// answers without a stored entry; the upstream failed for the second, and
// its estimate stands.
func TestInterplay11b_StaleAnswerNeverSettlesTokensFromStoredUsage(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var sick atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if sick.Load() {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Status", "edge; fwd=uri-miss")
		io.WriteString(w, `{"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}`)
	})
	b := startBallastClock(t, clock, ib11TokenRoutes(up, 5000, "    breaker: {failures: 1, open_for: 1m}\n    cache: {mode: fallback, stale: 1h}\n"))
	const call = `{"max_tokens":1000}` // an estimate of 1000 tokens

	resp, body := do(t, "POST", b.base+"/chat/v1", call)
	if resp.StatusCode != 200 || !strings.Contains(strings.Join(resp.Header.Values("Cache-Status"), ", "), "ballast; fwd=bypass; stored") {
		t.Fatalf("the healthy call: %d %q (%v)", resp.StatusCode, body, resp.Header.Values("Cache-Status"))
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 4990 {
		t.Fatalf("after the healthy call: %d tokens left, want 4990 (settled from its usage of 10)", left)
	}

	sick.Store(true)
	resp, body = do(t, "POST", b.base+"/chat/v1", call)
	cs := strings.Join(resp.Header.Values("Cache-Status"), ", ")
	if resp.StatusCode != 200 || !strings.Contains(cs, "ballast; fwd=stale") {
		t.Fatalf("the upstream failing: %d %q (%s); want the stored answer, stale", resp.StatusCode, body, cs)
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 3990 {
		t.Errorf("after the stale answer to a failed call: %d tokens left, want 3990 (the estimate stands; the stored usage is another call's)", left)
	}

	// The breaker is open now: the stored answer is served unasked.
	resp, body = do(t, "POST", b.base+"/chat/v1", call)
	cs = strings.Join(resp.Header.Values("Cache-Status"), ", ")
	if resp.StatusCode != 200 || !strings.Contains(cs, "ballast; hit;") || resp.Header.Get("X-Ballast-Attempts") != "0" {
		t.Fatalf("the breaker open: %d %q (%s, %s attempts); want the stored answer, a stale hit", resp.StatusCode, body, cs, resp.Header.Get("X-Ballast-Attempts"))
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 3990 {
		t.Errorf("after a stale hit (nothing sent): %d tokens left, want 3990 (the reservation given back, as for breaker_open)", left)
	}
}

// TestInterplay11b_AsyncJobInvalidAnswerKeepsTokenEstimate: a model
// answer that fails validation was generated, and paid for: ballast's
// 502 invalid_response keeps the token estimate (limiters.NAME.
// tokens_per_minute), while a call that never reached the model gives it
// back. A job runs with the route's policies, so its call must settle the
// same way as the request run directly: a job has no decision trail of
// its own, and that must not turn its invalid answer into "nothing
// reached the model".
func TestInterplay11b_AsyncJobInvalidAnswerKeepsTokenEstimate(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"usage":{"total_tokens":10},"choices":[`) // cut short: not JSON
	})
	b := startBallastClock(t, clock, ib11TokenRoutes(up, 5000, "    validate: {json: true}\n    async: {enabled: true}\n"))
	const call = `{"max_tokens":1000}`
	resp, body := do(t, "POST", b.base+"/chat/v1", call)
	if p := decodeProblem(t, resp, body); resp.StatusCode != 502 || p.Reason != "invalid_response" {
		t.Fatalf("run directly: %d %+v, want 502 invalid_response", resp.StatusCode, p)
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 4000 {
		t.Fatalf("after the direct call: %d tokens left, want 4000 (the estimate stands)", left)
	}
	resp, body = do(t, "POST", b.base+"/chat/v1", call, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 502 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Fatalf("as a job: %d %q (job %q), want its 502", resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"))
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 3000 {
		t.Errorf("after the job: %d tokens left, want 3000 (the job's invalid answer keeps its estimate, as run directly)", left)
	}
}

// TestInterplay11b_CutStreamKeepsTokenEstimate: a stream's tokens are
// settled "from its first and last events" (Anthropic reports input
// tokens at the start, output tokens at the end). A stream the upstream
// breaks off has no last event: its first one says only what the prompt
// cost (and output_tokens: 1), while the model went on generating until
// the cut. Settling from that would give back tokens the model spent;
// the estimate must stand, as for an answer without usage.
func TestInterplay11b_CutStreamKeepsTokenEstimate(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "cut") {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"usage":{"total_tokens":0}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n")
		for i := 0; i < 20; i++ {
			io.WriteString(w, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"word \"}}\n\n")
		}
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack() // break the stream off
		if err == nil {
			conn.Close()
		}
	})
	b := startBallastClock(t, clock, ib11TokenRoutes(up, 5000, ""))
	req, _ := http.NewRequest("POST", b.base+"/chat/cut", strings.NewReader(`{"max_tokens":1000,"stream":true}`))
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || !strings.Contains(string(got), "message_start") {
		t.Fatalf("the cut stream: %d, read %d bytes, error %v; want it relayed, then cut", resp.StatusCode, len(got), err)
	}
	// The stream's line is written once it has ended (and settled).
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), `"truncated":true`) })
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 4000 {
		t.Errorf("after the cut stream: %d tokens left, want 4000 (no last event: the estimate stands)", left)
	}
}

// TestInterplay11b_AsyncJobHoldsAndFreesConcurrencySlot: a job runs "with
// the route's policies", so it takes one of the route's concurrency slots
// (max 1, no queue) while it runs, and gives it back exactly once however
// it ends: an event stream read whole by the job, an answer that failed
// (504 after its per_try), a plain answer. Throughout, a direct request
// finds the slot free once the job is done (ballast_concurrency_inflight
// back to 0), and is shed with 503 overloaded while the job holds it.
func TestInterplay11b_AsyncJobHoldsAndFreesConcurrencySlot(t *testing.T) {
	held := make(chan struct{})
	release := make(chan struct{})
	var once atomic.Bool
	t.Cleanup(func() {
		if once.CompareAndSwap(false, true) {
			close(release)
		}
	})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/c/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				w.(http.Flusher).Flush()
			}
		case "/c/slow":
			select {
			case <-r.Context().Done():
			case <-release:
			}
		case "/c/hold":
			close(held)
			<-release
			io.WriteString(w, "held")
		default:
			io.WriteString(w, "ok")
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: c
    match: {path_prefix: /c/}
    upstream: %q
    retry: {attempts: 1}
    timeouts: {per_try: 100ms, total: 10s}
    concurrency: {max: 1, queue: 0}
    async: {enabled: true}
`, up))
	inflight := func() float64 { return b.metric("ballast_concurrency_inflight", map[string]string{"route": "c"}) }

	resp, body := do(t, "POST", b.base+"/c/stream", `{}`, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || body != "data: 0\n\ndata: 1\n\ndata: 2\n\n" || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("the streamed job: %d %q (%s)", resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"))
	}
	waitFor(t, func() bool { return inflight() == 0 })
	if resp, body := do(t, "GET", b.base+"/c/direct", ""); resp.StatusCode != 200 {
		t.Fatalf("a direct call after the streamed job: %d %q; want the slot free", resp.StatusCode, body)
	}

	resp, body = do(t, "POST", b.base+"/c/slow", `{}`, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 504 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Fatalf("the job that timed out: %d %q (%s); want its 504, failed", resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"))
	}
	waitFor(t, func() bool { return inflight() == 0 })
	if resp, body := do(t, "GET", b.base+"/c/direct", ""); resp.StatusCode != 200 {
		t.Fatalf("a direct call after the failed job: %d %q; want the slot free", resp.StatusCode, body)
	}

	// A job holding the slot sheds a direct call; once it ends, the slot
	// is free again.
	resp, _ = do(t, "POST", b.base+"/c/hold", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 {
		t.Fatalf("the holding job: %d", resp.StatusCode)
	}
	<-held
	if inflight() != 1 {
		t.Errorf("ballast_concurrency_inflight %v while the job runs, want 1", inflight())
	}
	resp, body = do(t, "GET", b.base+"/c/direct", "")
	if p := decodeProblem(t, resp, body); resp.StatusCode != 503 || p.Reason != "overloaded" {
		t.Errorf("a direct call while the job holds the slot: %d %+v, want 503 overloaded", resp.StatusCode, p)
	}
	once.Store(true)
	close(release)
	resp, body = do(t, "GET", b.base+loc, "", "Prefer", "wait=10")
	if resp.StatusCode != 200 || body != "held" {
		t.Fatalf("the holding job's result: %d %q", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return inflight() == 0 })
	if resp, body := do(t, "GET", b.base+"/c/direct", ""); resp.StatusCode != 200 {
		t.Errorf("a direct call after the holding job: %d %q; want the slot free", resp.StatusCode, body)
	}
}

// TestInterplay11b_FallbackOwnCredentialsAndCooldown: the route sets the
// primary's API key; its fallback removes it and sets its own. The
// fallback must never see the primary's secret, and the primary's 429
// (which pauses the primary's key) must not pause the fallback, whose
// key is another: the next request skips the paused primary (nothing
// sent) and the fallback answers at once. X-Ballast-Upstream and
// X-Ballast-Attempts say so.
func TestInterplay11b_FallbackOwnCredentialsAndCooldown(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var pHits, fHits atomic.Int64
	var leaked atomic.Value
	leaked.Store("")
	primary, paddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		pHits.Add(1)
		w.Header().Set("x-ratelimit-remaining-requests", "0")
		w.Header().Set("x-ratelimit-reset-requests", "2m")
		w.WriteHeader(429)
	})
	fallback, faddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		fHits.Add(1)
		if k := r.Header.Values("X-Api-Key"); len(k) > 0 {
			leaked.Store(strings.Join(k, ","))
		}
		w.Header().Set("x-ratelimit-remaining-requests", "5")
		io.WriteString(w, "fallback "+strings.Join(r.Header.Values("Authorization"), ","))
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: model
    match: {path_prefix: /m/}
    upstream: %q
    headers: {set: {X-Api-Key: "${PRIMARY_KEY}"}}
    retry: {attempts: 2, unsafe_methods: true}
    fallbacks:
      - upstream: %q
        headers: {remove: [x-api-key], set: {authorization: "Bearer ${FALLBACK_KEY}"}}
`, primary, fallback), "PRIMARY_KEY=sk-primary-secret", "FALLBACK_KEY=fb-key")
	for i := 1; i <= 2; i++ {
		resp, body := do(t, "POST", b.base+"/m/v1", `{}`, "Authorization", "Bearer agent", "X-Ballast-Timeout", "30s", "X-Ballast-Debug", "1")
		if resp.StatusCode != 200 || body != "fallback Bearer fb-key" || resp.Header.Get("X-Ballast-Upstream") != faddr {
			t.Fatalf("call %d: %d %q from %q; want the fallback's answer, sent with its own key only", i, resp.StatusCode, body, resp.Header.Get("X-Ballast-Upstream"))
		}
		want := []string{"", "2", "1"}[i] // the second skips the paused primary
		if a := resp.Header.Get("X-Ballast-Attempts"); a != want {
			t.Errorf("call %d: X-Ballast-Attempts %q, want %s", i, a, want)
		}
		// The trail tells what happened: the primary's 429, then the
		// fallback's answer; no stop reason, since the fallback answered.
		trail := regexp.MustCompile(` \d+ms`).ReplaceAllString(resp.Header.Get("X-Ballast-Trail"), " Nms")
		wantTrail := []string{"", paddr + " rate_limited 429 Nms, " + faddr + " ok 200 Nms", faddr + " ok 200 Nms"}[i]
		if trail != wantTrail {
			t.Errorf("call %d: X-Ballast-Trail %q, want %q", i, trail, wantTrail)
		}
	}
	if l := leaked.Load().(string); l != "" {
		t.Errorf("the fallback saw the primary's X-Api-Key %q", l)
	}
	if pHits.Load() != 1 || fHits.Load() != 2 {
		t.Errorf("calls: primary %d, fallback %d; want 1 and 2 (the primary's pause, 2m, outlasts the deadline)", pHits.Load(), fHits.Load())
	}
}

// TestInterplay11b_AutoIdempotencyKeepsMCPSessionsApart: in auto mode a
// request's fingerprint is its method, path, body and the listed
// headers. JSON-RPC ids restart at 1 in every MCP session, so two
// sessions' calls collide byte for byte; the cache keeps them apart by
// Mcp-Session-Id for exactly that reason (cache/key.go), and a tool's
// answer within one session is not another's. Session B's call must run,
// not replay session A's answer; A's own resend (the same session) is the
// duplicate auto mode exists for, and replays.
func TestInterplay11b_AutoIdempotencyKeepsMCPSessionsApart(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":1,"result":{"session":%q,"n":%d}}`, r.Header.Get("Mcp-Session-Id"), n)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: mcp
    match: {path_prefix: /mcp}
    upstream: %q
    retry: {jsonrpc: true}
    validate: {jsonrpc: true}
    idempotency: {mode: auto, window: 10m}
`, up))
	call := `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///notes"}}`
	_, a := do(t, "POST", b.base+"/mcp", call, "Content-Type", "application/json", "Mcp-Session-Id", "sess-A")
	resp, bb := do(t, "POST", b.base+"/mcp", call, "Content-Type", "application/json", "Mcp-Session-Id", "sess-B")
	if !strings.Contains(bb, `"session":"sess-B"`) || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("session B's call: %q (replayed %q); want its own answer, not session A's %q", bb, resp.Header.Get("Idempotent-Replayed"), a)
	}
	resp, again := do(t, "POST", b.base+"/mcp", call, "Content-Type", "application/json", "Mcp-Session-Id", "sess-A")
	if again != a || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("session A's resend: %q (replayed %q); want its own answer replayed", again, resp.Header.Get("Idempotent-Replayed"))
	}
}

// TestInterplay11b_JSONRPCBatchRetryValidationCache: a batch of
// read-only calls on an MCP route with retry.jsonrpc, validate.jsonrpc
// with a retryable code, and a fresh cache. An element carrying the
// retryable code makes the whole answer invalid: retried (the batch is
// safe), never relayed or stored. An element carrying a tool's own error
// is the tool's answer: relayed as it is, but never cached, so the next
// identical batch asks again; a clean answer is stored and then served.
func TestInterplay11b_JSONRPCBatchRetryValidationCache(t *testing.T) {
	answers := []string{
		`[{"jsonrpc":"2.0","id":1,"result":{"tools":[]}},{"jsonrpc":"2.0","id":2,"error":{"code":-32603,"message":"busy"}}]`,
		`[{"jsonrpc":"2.0","id":1,"result":{"tools":[]}},{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"bad params"}}]`,
		`[{"jsonrpc":"2.0","id":1,"result":{"tools":[]}},{"jsonrpc":"2.0","id":2,"result":{}}]`,
	}
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := int(hits.Add(1))
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answers[min(n, len(answers))-1])
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: mcp
    match: {path_prefix: /mcp}
    upstream: %q
    retry: {jsonrpc: true, attempts: 3, backoff: {base: 1ms, max: 1ms}}
    validate: {jsonrpc: true, retryable_rpc_codes: [-32603]}
    cache: {mode: fresh, ttl: 1m}
`, up))
	batch := `[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"ping"}]`
	resp, body := do(t, "POST", b.base+"/mcp", batch, "Content-Type", "application/json")
	if resp.StatusCode != 200 || body != answers[1] || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("first batch: %d %q after %s attempts; want the tool's answer after the retried busy one", resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}
	if cs := resp.Header.Get("Cache-Status"); strings.Contains(cs, "stored") {
		t.Errorf("first batch: Cache-Status %q; a tool's error is never stored", cs)
	}
	resp, body = do(t, "POST", b.base+"/mcp", batch, "Content-Type", "application/json")
	if resp.StatusCode != 200 || body != answers[2] || resp.Header.Get("Cache-Status") != "ballast; fwd=uri-miss; stored" {
		t.Fatalf("second batch: %d %q (%s); want a new call, its clean answer stored", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	resp, body = do(t, "POST", b.base+"/mcp", batch, "Content-Type", "application/json")
	if body != answers[2] || !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") || hits.Load() != 3 {
		t.Errorf("third batch: %q (%s) after %d calls; want the stored answer, a hit", body, resp.Header.Get("Cache-Status"), hits.Load())
	}
	if v := b.metric("ballast_validation_failures_total", map[string]string{"route": "mcp", "check": "jsonrpc"}); v != 2 {
		t.Errorf("ballast_validation_failures_total{check=jsonrpc} %v, want 2 (the busy answer and the tool's error)", v)
	}
}

// TestInterplay11b_HedgedStreamFirstCopyWinsThenStalls: a GET's first
// copy sends nothing for hedge_after, so a hedge goes out; then the first
// copy's headers and first bytes arrive (chunked, relayed as they come;
// an event stream answering a GET would be exempt from idle): it wins,
// and the hedge is called off at once (its upstream sees the client go
// away). The body then stalls past timeouts.idle: the agent sees it cut,
// never complete. The
// answer says one attempt (a hedge is not one), the hedge is counted, and
// the trail marks the attempt hedged.
func TestInterplay11b_HedgedStreamFirstCopyWinsThenStalls(t *testing.T) {
	hedgeIn := make(chan struct{})
	hedgeGone := make(chan struct{})
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch hits.Add(1) {
		case 1:
			select {
			case <-hedgeIn:
			case <-r.Context().Done():
				return
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"first":`) // chunked: relayed as it comes
			w.(http.Flusher).Flush()
			<-r.Context().Done() // stalls until ballast lets go
		case 2:
			close(hedgeIn)
			select {
			case <-r.Context().Done():
				close(hedgeGone)
			case <-time.After(5 * time.Second):
			}
		}
	})
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: h
    match: {path_prefix: /h/}
    upstream: %q
    hedge_after: 30ms
    timeouts: {idle: 300ms, total: 10s}
`, up))
	req, _ := http.NewRequest("GET", b.base+"/h/events", nil)
	req.Header.Set("X-Ballast-Debug", "1")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != `{"first":` || err == nil {
		t.Fatalf("the stream: %d %q, read error %v; want the first copy's bytes, then a cut", resp.StatusCode, got, err)
	}
	select {
	case <-hedgeGone:
	case <-time.After(5 * time.Second):
		t.Fatal("the losing hedge was not called off")
	}
	if a := resp.Header.Get("X-Ballast-Attempts"); a != "1" {
		t.Errorf("X-Ballast-Attempts %q, want 1", a)
	}
	if tr := resp.Header.Get("X-Ballast-Trail"); !strings.Contains(tr, " ok 200 ") || strings.Count(tr, ",") != 0 {
		t.Errorf("X-Ballast-Trail %q, want the one attempt, ok", tr)
	}
	if h := b.metric("ballast_hedges_total", map[string]string{"route": "h"}); h != 1 {
		t.Errorf("ballast_hedges_total %v, want 1", h)
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "h"}) == 1 })
	if hits.Load() != 2 {
		t.Errorf("the upstream saw %d calls, want 2 (the copy and its hedge)", hits.Load())
	}
}
