package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// These probes sit on the seams between features: each drives one route
// whose policies combine (idempotency with async jobs, the rate limit with
// the retry budget, hedging with validation, fallbacks with the cache,
// the shared cool-down with per-key limits) against loopback upstreams
// scripted to fail in precise ways.

// ip11KeyedJobRoute is a route named jobs on up (/j/) that retries,
// guards keyed requests with idempotency and runs jobs.
func ip11KeyedJobRoute(up string) string {
	return fmt.Sprintf(`
routes:
  - name: jobs
    match: {path_prefix: /j/}
    upstream: %q
    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}}
    idempotency: {mode: header}
    async: {enabled: true}
`, up)
}

// TestInterplay11_KeyedAsyncJobRetriedLikeKeyedRequest: a request the
// route's idempotency block guards is safe to retry (retries.md, retry
// safety), and a keyed Prefer: respond-async request is guarded by it
// (guardJob starts its job once per key, and the key travels upstream).
// So the job's POST must be retried after a 503 exactly as the same keyed
// POST run directly is, not answered by its first 503.
func TestInterplay11_KeyedAsyncJobRetriedLikeKeyedRequest(t *testing.T) {
	var hits atomic.Int64
	var keys sync.Map // path → the Idempotency-Key each attempt carried
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		keys.Store(fmt.Sprint(n), r.Header.Get("Idempotency-Key"))
		if n%3 != 0 { // two 503s, then the answer
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, `{"done":true}`)
	})
	b := startBallast(t, ip11KeyedJobRoute(up))

	resp, body := do(t, "POST", b.base+"/j/run", `{"task":1}`, "Idempotency-Key", "sync-1")
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "3" {
		t.Fatalf("the keyed POST run directly: %d %q after %s attempts; want 200 after 3", resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"))
	}

	resp, body = do(t, "POST", b.base+"/j/run", `{"task":2}`, "Idempotency-Key", "async-1", "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || body != `{"done":true}` || resp.Header.Get("X-Ballast-Attempts") != "3" {
		t.Fatalf("the same keyed POST as a job: %d %q after %s attempts (job %s); want the job's 200 after 3 attempts, as when run directly",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("X-Ballast-Job-State"))
	}
	if hits.Load() != 6 {
		t.Fatalf("the upstream saw %d calls, want 6", hits.Load())
	}
	for n := 4; n <= 6; n++ {
		if k, _ := keys.Load(fmt.Sprint(n)); k != "async-1" {
			t.Errorf("job attempt %d carried Idempotency-Key %q, want async-1 (the key is what makes the retry safe)", n, k)
		}
	}
	// The key names the job: a repeat starts no second one.
	resp, body = do(t, "POST", b.base+"/j/run", `{"task":2}`, "Idempotency-Key", "async-1", "Prefer", "respond-async")
	if resp.StatusCode != 200 || body != `{"done":true}` || resp.Header.Get("Idempotent-Replayed") != "true" || hits.Load() != 6 {
		t.Errorf("the job's repeat: %d %q replayed=%q, upstream calls %d; want the job's result, replayed, no new call",
			resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), hits.Load())
	}
}

// TestInterplay11_UnkeyedAsyncPostNotRetried pins the other side: an
// unkeyed POST job on the same kind of route is not safe to repeat, and
// its first 503 is the job's answer.
func TestInterplay11_UnkeyedAsyncPostNotRetried(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(503)
	})
	b := startBallast(t, ip11KeyedJobRoute(up))
	resp, body := do(t, "POST", b.base+"/j/run", `{}`, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 503 || resp.Header.Get("X-Ballast-Job-State") != "failed" || hits.Load() != 1 {
		t.Errorf("an unkeyed POST job: %d %q state %q after %d calls; want its first 503, failed, one call",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"), hits.Load())
	}
}

// TestInterplay11_RetryStoppedByRateLimitRefundsBudget: the retry budget
// is withdrawn when a retry is decided, "and only when it will go out"
// (retries.md, the retry budget). A retry the route's rate limit then
// refuses never reaches the upstream, so it must not spend the budget
// another request on the same upstream needs: here the budget holds one
// retry, route a's retry is refused by its rate limit, and route b
// (same upstream, same budget, no limit) must still get its retry.
func TestInterplay11_RetryStoppedByRateLimitRefundsBudget(t *testing.T) {
	up, aHits, bHits := refundUpstream(t)
	b := startBallast(t, refundRoutes(up))
	resp, body := do(t, "GET", b.base+"/a/x", "")
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != 503 || p.Reason != "upstream_unavailable" || aHits.Load() != 1 || p.Attempts != 1 {
		t.Fatalf("route a: %d %+v after %d calls; want 503 upstream_unavailable after 1 (its retry has no token)", resp.StatusCode, p, aHits.Load())
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("route a's 503 says when the limit has room: Retry-After %q", ra)
	}
	resp, body = do(t, "GET", b.base+"/b/x", "")
	if resp.StatusCode != 200 || bHits.Load() != 2 {
		t.Errorf("route b on the same upstream: %d %q after %d calls; want 200 after 2 (a's refused retry never went out, so it spent no budget)",
			resp.StatusCode, body, bHits.Load())
	}
}

// TestInterplay11_HedgedKeyedRequestInvalidThenValid: a keyed POST is
// hedged (its key makes it safe to repeat); the first copy answers late
// with invalid JSON, the hedge with valid JSON. The agent gets the valid
// answer, the key's record holds it (the replay is byte for byte the
// same), and the invalid loser leaves no "outcome unknown" behind.
func TestInterplay11_HedgedKeyedRequestInvalidThenValid(t *testing.T) {
	var hits atomic.Int64
	secondIn := make(chan struct{})
	firstOut := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch hits.Add(1) {
		case 1:
			select { // no headers until the hedge is out
			case <-secondIn:
			case <-r.Context().Done():
				return
			}
			io.WriteString(w, `{"half":`)
			close(firstOut)
		case 2:
			close(secondIn)
			select {
			case <-firstOut:
			case <-time.After(2 * time.Second):
			}
			io.WriteString(w, `{"answer":42}`)
		default:
			io.WriteString(w, `{"answer":"again"}`)
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /t/}
    upstream: %q
    hedge_after: 30ms
    retry: {attempts: 1}
    validate: {json: true}
    idempotency: {mode: header}
`, up))
	resp, body := do(t, "POST", b.base+"/t/call", `{"q":1}`, "Idempotency-Key", "h-1")
	if resp.StatusCode != 200 || body != `{"answer":42}` {
		t.Fatalf("the hedged keyed call: %d %q; want the hedge's valid answer", resp.StatusCode, body)
	}
	if a := resp.Header.Get("X-Ballast-Attempts"); a != "1" {
		t.Errorf("X-Ballast-Attempts %q, want 1 (a hedge is not an attempt)", a)
	}
	if h := b.metric("ballast_hedges_total", map[string]string{"route": "tool"}); h != 1 {
		t.Errorf("ballast_hedges_total %v, want 1", h)
	}
	resp, body = do(t, "POST", b.base+"/t/call", `{"q":1}`, "Idempotency-Key", "h-1")
	if resp.StatusCode != 200 || body != `{"answer":42}` || resp.Header.Get("Idempotent-Replayed") != "true" || resp.Header.Get("X-Ballast-Attempts") != "0" {
		t.Errorf("the repeat: %d %q replayed=%q attempts=%q; want the stored valid answer replayed",
			resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("X-Ballast-Attempts"))
	}
	if hits.Load() != 2 {
		t.Errorf("the upstream saw %d calls, want 2 (the copy and its hedge)", hits.Load())
	}
}

// TestInterplay11_FallbackValidationAndStaleCache: with fallbacks, a
// fallback-mode cache and validation on one route, an invalid answer is
// never what the agent gets while a valid one exists, and never what the
// cache keeps: the primary's invalid answer moves the request to the
// fallback, whose valid answer is served and stored; when both answer
// invalidly, the last valid stored answer is served stale.
func TestInterplay11_FallbackValidationAndStaleCache(t *testing.T) {
	var primaryBad, fallbackBad atomic.Bool
	var pHits, fHits atomic.Int64
	answer := func(bad *atomic.Bool, hits *atomic.Int64, good string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.Header().Set("Content-Type", "application/json")
			if bad.Load() {
				io.WriteString(w, `{"truncated`)
				return
			}
			io.WriteString(w, good)
		}
	}
	primary, _ := upstream(t, answer(&primaryBad, &pHits, `{"from":"primary"}`))
	fallback, faddr := upstream(t, answer(&fallbackBad, &fHits, `{"from":"fallback"}`))
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: search
    match: {path_prefix: /s/}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {attempts: 1}
    breaker: {enabled: false}
    validate: {json: true, content_type: [application/json]}
    cache: {mode: fallback, stale: 1h}
`, primary, fallback))
	c := client(t)

	resp, body := get(t, c, b.base+"/s/q")
	if resp.StatusCode != 200 || body != `{"from":"primary"}` {
		t.Fatalf("both healthy: %d %q", resp.StatusCode, body)
	}
	primaryBad.Store(true)
	resp, body = get(t, c, b.base+"/s/q")
	if resp.StatusCode != 200 || body != `{"from":"fallback"}` || resp.Header.Get("X-Ballast-Upstream") != faddr || resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("primary invalid: %d %q from %q after %s attempts; want the fallback's valid answer after 2",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Upstream"), resp.Header.Get("X-Ballast-Attempts"))
	}
	if cs := resp.Header.Get("Cache-Status"); cs != "ballast; fwd=bypass; stored" {
		t.Errorf("the fallback's answer: Cache-Status %q, want it stored", cs)
	}
	fallbackBad.Store(true)
	resp, body = get(t, c, b.base+"/s/q")
	if resp.StatusCode != 200 || body != `{"from":"fallback"}` {
		t.Fatalf("both invalid: %d %q; want the last valid answer, stale", resp.StatusCode, body)
	}
	if cs := resp.Header.Get("Cache-Status"); !strings.HasPrefix(cs, "ballast; fwd=stale; ") || !strings.Contains(cs, "detail=stale-if-error") ||
		resp.Header.Get("X-Ballast-Attempts") != "2" || resp.Header.Get("X-Ballast-Upstream") != "" || resp.Header.Get("Age") == "" {
		t.Errorf("the stale answer's headers: Cache-Status %q attempts %q upstream %q Age %q", cs,
			resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("X-Ballast-Upstream"), resp.Header.Get("Age"))
	}
	// The invalid answers were not stored over the good one: once the
	// primary recovers and then fails again, the stale answer is still a
	// valid one.
	primaryBad.Store(false)
	if resp, body = get(t, c, b.base+"/s/q"); body != `{"from":"primary"}` {
		t.Fatalf("primary recovered: %d %q", resp.StatusCode, body)
	}
	primaryBad.Store(true)
	if resp, body = get(t, c, b.base+"/s/q"); body != `{"from":"primary"}` || !strings.Contains(resp.Header.Get("Cache-Status"), "fwd=stale") {
		t.Errorf("both invalid again: %d %q (%s); want the primary's stored answer, stale", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	if pHits.Load() != 5 || fHits.Load() != 3 {
		t.Errorf("upstream calls: primary %d, fallback %d; want 5 and 3", pHits.Load(), fHits.Load())
	}
}

// TestInterplay11_CooldownPerKeyWithKeyedLimit: one API key's 429 (with
// its reset headers) pauses that key's requests, never another key's, on a
// route whose rate limit is partitioned by the same header. The paused
// key's next call is answered at once when the pause outlasts its
// deadline (429 rate_limited with the pause as Retry-After, nothing sent,
// no token of its bucket spent) and goes through once the pause is over.
func TestInterplay11_CooldownPerKeyWithKeyedLimit(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var limited atomic.Bool
	limited.Store(true)
	var hitsA, hitsB atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer A" {
			hitsA.Add(1)
			if limited.Load() {
				w.Header().Set("x-ratelimit-remaining-requests", "0")
				w.Header().Set("x-ratelimit-reset-requests", "20s")
				w.WriteHeader(429)
				io.WriteString(w, `{"error":{"type":"rate_limit_exceeded"}}`)
				return
			}
		} else {
			hitsB.Add(1)
		}
		io.WriteString(w, "ok "+r.Header.Get("Authorization"))
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: model
    match: {path_prefix: /m/}
    upstream: %q
    retry: {attempts: 1}
    rate_limit: {rps: 1, burst: 1, key: "header:Authorization", max_wait: 0s}
`, up))
	c := client(t)
	resp, _ := get(t, c, b.base+"/m/x", "Authorization", "Bearer A")
	if resp.StatusCode != 429 || hitsA.Load() != 1 {
		t.Fatalf("key A's first call: %d after %d calls; want the upstream's 429", resp.StatusCode, hitsA.Load())
	}
	resp, body := get(t, c, b.base+"/m/x", "Authorization", "Bearer B", "X-Ballast-Timeout", "5s")
	if resp.StatusCode != 200 || body != "ok Bearer B" {
		t.Fatalf("key B while A is paused: %d %q; want B's answer at once (A's 429 is A's)", resp.StatusCode, body)
	}
	clock.Advance(2 * time.Second) // A's bucket has its token again
	resp, body = get(t, c, b.base+"/m/x", "Authorization", "Bearer A", "X-Ballast-Timeout", "5s")
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != 429 || p.Reason != "rate_limited" || hitsA.Load() != 1 || p.Attempts != 0 {
		t.Fatalf("key A, paused past its deadline: %d %+v after %d calls; want 429 rate_limited at once, nothing sent", resp.StatusCode, p, hitsA.Load())
	}
	if ra := resp.Header.Get("Retry-After"); ra != "18" {
		t.Errorf("Retry-After %q, want 18 (the 20s reset, 2s of it gone)", ra)
	}
	if rl := resp.Header.Get("RateLimit-Policy"); rl != "" {
		t.Errorf("the upstream's pause is not the route's limit: RateLimit-Policy %q", rl)
	}
	limited.Store(false)
	clock.Advance(18 * time.Second)
	resp, body = get(t, c, b.base+"/m/x", "Authorization", "Bearer A", "X-Ballast-Timeout", "5s")
	if resp.StatusCode != 200 || body != "ok Bearer A" || hitsA.Load() != 2 {
		t.Errorf("key A once the pause is over: %d %q after %d calls; want its answer (the refused call took no token)", resp.StatusCode, body, hitsA.Load())
	}
}

// TestInterplay11_FreshCacheIdempotencyTenants: a fresh-mode cache and
// header-mode idempotency on one route. Neither the cache nor the
// idempotency record crosses tenants (their keys hold the caller's
// identity), a repeat of a key is a replay (not a cache hit), and a new key
// with the same request is a cache hit (not a replay); each answer's
// headers say which it was.
func TestInterplay11_FreshCacheIdempotencyTenants(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"for":%q,"n":%d}`, r.Header.Get("X-Api-Key"), n)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /t/}
    upstream: %q
    cache: {mode: fresh, ttl: 1m}
    idempotency: {mode: header}
`, up))
	post := func(apiKey, idemKey string) (*http.Response, string) {
		t.Helper()
		return do(t, "POST", b.base+"/t/call", `{"q":"same"}`, "X-Api-Key", apiKey, "Idempotency-Key", idemKey)
	}
	resp, body := post("tenant-a", "k1")
	if resp.StatusCode != 200 || body != `{"for":"tenant-a","n":1}` || resp.Header.Get("Cache-Status") != "ballast; fwd=uri-miss; stored" {
		t.Fatalf("A's first call: %d %q (%s)", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	resp, body = post("tenant-b", "k1")
	if body != `{"for":"tenant-b","n":2}` || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("B with A's key and body: %d %q replayed=%q; want B's own call (neither A's record nor A's cache entry)",
			resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
	resp, body = post("tenant-a", "k1")
	if body != `{"for":"tenant-a","n":1}` || resp.Header.Get("Idempotent-Replayed") != "true" || resp.Header.Get("X-Ballast-Attempts") != "0" ||
		strings.Contains(resp.Header.Get("Cache-Status"), "ballast") || resp.Header.Get("X-Ballast-Upstream") != "" {
		t.Errorf("A's repeat: %q replayed=%q attempts=%q Cache-Status=%q upstream=%q; want a replay, not marked as a cache answer",
			body, resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("Cache-Status"), resp.Header.Get("X-Ballast-Upstream"))
	}
	resp, body = post("tenant-a", "k2")
	if body != `{"for":"tenant-a","n":1}` || resp.Header.Get("Idempotent-Replayed") != "" || resp.Header.Get("X-Ballast-Attempts") != "0" ||
		!strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") || resp.Header.Get("Age") == "" {
		t.Errorf("A, new key, same call: %q replayed=%q attempts=%q Cache-Status=%q Age=%q; want a fresh cache hit",
			body, resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("Cache-Status"), resp.Header.Get("Age"))
	}
	resp, body = post("tenant-b", "k2")
	if body != `{"for":"tenant-b","n":2}` || !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") {
		t.Errorf("B, new key: %q (%s); want B's own cached answer", body, resp.Header.Get("Cache-Status"))
	}
	if hits.Load() != 2 {
		t.Errorf("the upstream saw %d calls, want 2", hits.Load())
	}
}

// TestInterplay11_RetryStormRateLimitBudgetBreaker: a 503ing upstream
// behind a binding shared rate limit, a one-retry budget and a breaker
// that opens after three failures. Every attempt (retries included) pays
// a token; the budget stops the storm with 503 budget_exhausted and
// Retry-After: 1; the breaker then opens and the next request is refused
// with 503 breaker_open, Retry-After near open_for, without a token (the
// breaker is asked before the rate limit); all three answers are
// problem+json naming the route.
func TestInterplay11_RetryStormRateLimitBudgetBreaker(t *testing.T) {
	var sick, healthy atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		sick.Add(1)
		w.WriteHeader(503)
	})
	other, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		healthy.Add(1)
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
limiters:
  quota: {rps: 0.001, burst: 4}
routes:
  - name: storm
    match: {path_prefix: /storm/}
    upstream: %q
    retry: {attempts: 3, budget: {ratio: 0, min_per_second: 0.1}, backoff: {base: 1ms, max: 1ms}}
    breaker: {failures: 3, open_for: 30s}
    rate_limit: {limiter: quota, max_wait: 0s}
  - name: calm
    match: {path_prefix: /calm/}
    upstream: %q
    rate_limit: {limiter: quota, max_wait: 0s}
`, up, other))

	resp, body := do(t, "GET", b.base+"/storm/x", "")
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != 503 || p.Reason != "budget_exhausted" || p.Attempts != 2 || p.Route != "storm" || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("first request: %d %+v Retry-After %q; want 503 budget_exhausted after 2 attempts, Retry-After 1", resp.StatusCode, p, resp.Header.Get("Retry-After"))
	}
	resp, body = do(t, "GET", b.base+"/storm/x", "")
	p = decodeProblem(t, resp, body)
	if resp.StatusCode != 503 || p.Reason != "budget_exhausted" || p.Attempts != 1 {
		t.Fatalf("second request: %d %+v; want 503 budget_exhausted after 1 attempt", resp.StatusCode, p)
	}
	resp, body = do(t, "GET", b.base+"/storm/x", "")
	p = decodeProblem(t, resp, body)
	ra := resp.Header.Get("Retry-After")
	if resp.StatusCode != 503 || p.Reason != "breaker_open" || p.Attempts != 0 || (ra != "30" && ra != "29") {
		t.Fatalf("third request: %d %+v Retry-After %q; want 503 breaker_open, nothing sent, Retry-After about 30", resp.StatusCode, p, ra)
	}
	if sick.Load() != 3 {
		t.Errorf("the sick upstream saw %d attempts, want 3", sick.Load())
	}
	// Three attempts took three of the four tokens; the refused request
	// took none: one call of the other route fits, the next does not.
	if resp, body := do(t, "GET", b.base+"/calm/x", ""); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("the shared limit's last token: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", b.base+"/calm/x", "")
	p = decodeProblem(t, resp, body)
	if resp.StatusCode != 429 || p.Reason != "rate_limited" || resp.Header.Get("RateLimit-Policy") == "" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the limit spent: %d %+v RateLimit-Policy %q Retry-After %q", resp.StatusCode, p, resp.Header.Get("RateLimit-Policy"), resp.Header.Get("Retry-After"))
	}
	if healthy.Load() != 1 {
		t.Errorf("the healthy upstream saw %d calls, want 1", healthy.Load())
	}
}

// TestInterplay11_DeadlineBoundsHintThenRateLimitWait: under an agent's
// X-Ballast-Timeout, the server's hint (2s) fits and is waited out, but
// the route's rate limit then has no token before the deadline (its
// max_wait would allow more): ballast answers at once, never sending an
// attempt it could not finish, with 503 (the upstream's last word was a
// 503) and Retry-After telling when the limit has room.
func TestInterplay11_DeadlineBoundsHintThenRateLimitWait(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, _ := upstream(t, hintOnce(&hits, 503, "2", "ok"))
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: slow
    match: {path_prefix: /s/}
    upstream: %q
    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}}
    rate_limit: {rps: 0.2, burst: 1, max_wait: 10s}
`, up))
	done := raSend(t, "GET", b.base+"/s/x", "", "X-Ballast-Timeout", "4s")
	waitFor(t, func() bool { return hits.Load() == 1 && clock.Waiters() > 0 })
	clock.Advance(2 * time.Second) // the hint's wait; the next token is 3s away, the deadline 2s
	res := raWithin(t, done, 5*time.Second, "the request still waits: a rate-limit turn past its deadline")
	p := decodeProblem(t, res.resp, res.body)
	if res.resp.StatusCode != 503 || p.Reason != "upstream_unavailable" || p.Attempts != 1 || hits.Load() != 1 {
		t.Fatalf("%d %+v after %d calls; want 503 upstream_unavailable after the one attempt", res.resp.StatusCode, p, hits.Load())
	}
	if ra := res.resp.Header.Get("Retry-After"); ra != "3" {
		t.Errorf("Retry-After %q, want 3 (when the limit has a token)", ra)
	}
}

// TestInterplay11_KeyedJobAcrossReload: a keyed POST job waits out a
// 503's hint; a reload meanwhile points the route at another upstream.
// The job runs on through the route that accepted it (its retry goes to
// the first upstream), its key replays its result after the reload, and
// new requests take the new upstream.
func TestInterplay11_KeyedJobAcrossReload(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hitsA, hitsB atomic.Int64
	upA, _ := upstream(t, hintOnce(&hitsA, 503, "5", "from A"))
	upB, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hitsB.Add(1)
		io.WriteString(w, "from B")
	})
	cfg := `
routes:
  - name: jobs
    match: {path_prefix: /j/}
    upstream: %q
    retry: {attempts: 3}
    idempotency: {mode: header}
    async: {enabled: true}
`
	b := startBallastClock(t, clock, fmt.Sprintf(cfg, upA))
	resp, body := do(t, "POST", b.base+"/j/run", `{"n":1}`, "Idempotency-Key", "job-1", "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || !strings.HasPrefix(loc, "/_ballast/jobs/") {
		t.Fatalf("the keyed job: %d %q Location %q", resp.StatusCode, body, loc)
	}
	waitFor(t, func() bool { return hitsA.Load() == 1 && clock.Waiters() > 0 }) // waiting out the 503's 5s
	if err := os.WriteFile(b.file, []byte(fmt.Sprintf(cfg, upB)), 0o600); err != nil {
		t.Fatal(err)
	}
	if resp, body := do(t, "POST", b.admin+"/reload", ""); resp.StatusCode != 200 {
		t.Fatalf("reload: %d %q", resp.StatusCode, body)
	}
	clock.Advance(5 * time.Second)
	resp, body = do(t, "GET", b.base+loc, "", "Prefer", "wait=5")
	if resp.StatusCode != 200 || body != "from A" || resp.Header.Get("X-Ballast-Attempts") != "2" || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("the job after the reload: %d %q attempts %q state %q; want A's answer after 2 attempts",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("X-Ballast-Job-State"))
	}
	resp, body = do(t, "POST", b.base+"/j/run", `{"n":1}`, "Idempotency-Key", "job-1", "Prefer", "respond-async")
	if resp.StatusCode != 200 || body != "from A" || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the key's repeat after the reload: %d %q replayed %q; want the job's result", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
	if resp, body = do(t, "POST", b.base+"/j/run", `{"n":2}`); body != "from B" {
		t.Errorf("a new request after the reload: %d %q, want the new upstream's answer", resp.StatusCode, body)
	}
	if hitsA.Load() != 2 || hitsB.Load() != 1 {
		t.Errorf("calls: A %d, B %d; want 2 and 1", hitsA.Load(), hitsB.Load())
	}
}

// TestInterplay11_AsyncJobKeepsAgentAddress: a job's call goes upstream
// "as the agent sent it" with the route's policies; its X-Forwarded-For
// must name the agent (as the same request run directly does), not an
// address of nobody, and a rate limit keyed by ip must charge the agent.
func TestInterplay11_AsyncJobKeepsAgentAddress(t *testing.T) {
	var xff sync.Map
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		xff.Store(r.URL.Path, r.Header.Get("X-Forwarded-For"))
		io.WriteString(w, "ok")
	})
	b := startBallast(t, jobRoutesLimitedByIP(up))
	do(t, "POST", b.base+"/j/direct", `{}`, "X-Forwarded-For", "10.1.2.3", "X-Ballast-Agent-Addr", "192.0.2.9:1")
	resp, body := do(t, "POST", b.base+"/j/job", `{}`, "X-Forwarded-For", "10.1.2.3", "Prefer", "respond-async, wait=10", "X-Ballast-Agent-Addr", "192.0.2.9:1")
	if resp.StatusCode != 200 {
		t.Fatalf("the job: %d %q", resp.StatusCode, body)
	}
	direct, _ := xff.Load("/j/direct")
	job, _ := xff.Load("/j/job")
	if direct != "10.1.2.3, 127.0.0.1" || job != direct {
		t.Errorf("X-Forwarded-For: run directly %q, as a job %q; want both to name the agent", direct, job)
	}
	// The agent's direct call takes its ip's only token; its job is the
	// same agent's, and finds none (an agent's own X-Ballast-Agent-Addr
	// line changes nothing).
	if resp, body := do(t, "GET", b.base+"/l/direct", ""); resp.StatusCode != 200 {
		t.Fatalf("the direct call: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", b.base+"/l/job", "", "Prefer", "respond-async, wait=10", "X-Ballast-Agent-Addr", "192.0.2.9:1")
	if resp.StatusCode != 429 || resp.Header.Get("X-Ballast-Job-State") == "" {
		t.Errorf("the same agent's job on a limit keyed by ip: %d %q (job %q); want its 429, the agent's bucket being empty",
			resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"))
	}
}

// TestInterplay11_KeyedCallPausedPastDeadline: a keyed POST whose 429
// asks for longer than the agent's X-Ballast-Timeout leaves is answered
// at once with 429 rate_limited and the hint as Retry-After (one attempt,
// nothing past the deadline). A 429 says "not now", not what the call
// did, so the key is not stored: the agent's retry after the pause runs
// the call and gets its answer, which then replays.
func TestInterplay11_KeyedCallPausedPastDeadline(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, _ := upstream(t, hintOnce(&hits, 429, "10", "created"))
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: orders
    match: {path_prefix: /o/}
    upstream: %q
    retry: {attempts: 3}
    idempotency: {mode: header}
`, up))
	resp, body := do(t, "POST", b.base+"/o/new", `{"item":1}`, "Idempotency-Key", "ord-1", "X-Ballast-Timeout", "3s")
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != 429 || p.Reason != "rate_limited" || p.Attempts != 1 || resp.Header.Get("Retry-After") != "10" || hits.Load() != 1 {
		t.Fatalf("paused past the deadline: %d %+v Retry-After %q after %d calls; want 429 rate_limited, Retry-After 10, one call",
			resp.StatusCode, p, resp.Header.Get("Retry-After"), hits.Load())
	}
	clock.Advance(10 * time.Second)
	resp, body = do(t, "POST", b.base+"/o/new", `{"item":1}`, "Idempotency-Key", "ord-1", "X-Ballast-Timeout", "3s")
	if resp.StatusCode != 200 || body != "created" || resp.Header.Get("Idempotent-Replayed") != "" || hits.Load() != 2 {
		t.Fatalf("the retry after the pause: %d %q replayed %q after %d calls; want the call run", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), hits.Load())
	}
	resp, body = do(t, "POST", b.base+"/o/new", `{"item":1}`, "Idempotency-Key", "ord-1")
	if resp.StatusCode != 200 || body != "created" || resp.Header.Get("Idempotent-Replayed") != "true" || hits.Load() != 2 {
		t.Errorf("the next repeat: %d %q replayed %q after %d calls; want the replay", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), hits.Load())
	}
}
