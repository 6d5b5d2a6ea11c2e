package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/redis/go-redis/v9"
)

// fs11Paused is an upstream that answers its first call 429 with
// Retry-After: hint, and every later call 200 with the call's number.
func fs11Paused(t *testing.T, hits *atomic.Int64, hint string) string {
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		n := hits.Add(1)
		if n == 1 {
			w.Header().Set("Retry-After", hint)
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"call":%d}`, n)
	})
	return u
}

// fs11RetryAfter reads resp's Retry-After as whole seconds (-1: none).
func fs11RetryAfter(resp *http.Response) int {
	n, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil {
		return -1
	}
	return n
}

// TestFleetSeams11_CooldownSeenDuringOutageReachesFleet: a 429 that
// replica A hears while Redis is away pauses the key on A only (its
// publication fails). Once Redis answers again the pause, still in force,
// must reach the fleet: "one replica's 429 pauses every replica's
// requests with that key". Replica B then holds the key's requests back
// rather than send them into the upstream's rate limit.
func TestFleetSeams11_CooldownSeenDuringOutageReachesFleet(t *testing.T) {
	var hits atomic.Int64
	u := fs11Paused(t, &hits, "30")
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	cfg := fo9State(g.addr, 300*time.Millisecond) + fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, u)
	a, b := startBallast(t, cfg), startBallast(t, cfg)
	fo9Up(t, a, b)
	g.cutOff()
	fo9Down(t, a, b)
	if resp, _ := do(t, "GET", a.base+"/x", "", "Authorization", "Bearer k", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 {
		t.Fatalf("replica A during the outage: %d, want 429", resp.StatusCode)
	}
	if got := a.metric("ballast_cooldown_seconds", nil); got < 25 {
		t.Fatalf("replica A's pause: %vs, want about 30", got)
	}
	// A's publication of the pause fails (counted) before Redis is back.
	waitFor(t, func() bool { return a.metric("ballast_state_errors_total", map[string]string{"op": "cooldown"}) >= 1 })
	g.open()
	fo9Up(t, a, b)
	waitFor(t, func() bool { return b.metric("ballast_cooldown_seconds", nil) > 20 })
	resp, body := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer k", "X-Ballast-Timeout", "2s")
	if resp.StatusCode != 429 || hits.Load() != 1 {
		t.Errorf("replica B after Redis came back: %d %s (upstream hits %d); want 429 from the fleet's pause, nothing sent", resp.StatusCode, body, hits.Load())
	}
	if ra := fs11RetryAfter(resp); ra < 20 || ra > 30 {
		t.Errorf("replica B's Retry-After %q, want the pause's remaining ~30s", resp.Header.Get("Retry-After"))
	}
}

// TestFleetSeams11_KeyedRetryOnOtherReplicaHonoursFleetPause: a keyed call
// on replica A is answered 429 with a two-hour hint (past the deadline:
// answered at once). A 429 is never stored, so the key is free. The
// agent's retry with the same Idempotency-Key lands on replica B, whose
// retry.max_cooldown is 1h: B holds the key's request back (nothing
// sent), says 429 rate_limited with a truthful Retry-After (its own cap,
// not the two hours A heard), and neither 409 in_progress nor
// outcome_unknown: the key is not stuck. Once B's pause is over the retry
// runs once, and its answer replays on A.
func TestFleetSeams11_KeyedRetryOnOtherReplicaHonoursFleetPause(t *testing.T) {
	var hits atomic.Int64
	u := fs11Paused(t, &hits, "7200")
	rs := redistest.Start(t)
	prefix := fmt.Sprintf("fs11k%d:", time.Now().UnixNano()%1e6)
	replica := func(clock policy.Clock, maxCooldown string) *ballast {
		return startBallastClock(t, clock, fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: %q}}
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, retry: {attempts: 2, max_cooldown: %s}}
`, rs.Addr(), prefix, u, maxCooldown))
	}
	a := replica(nil, "24h")
	clock := policy.NewFakeClock(time.Now())
	b := replica(clock, "1h")
	key := []string{"Authorization", "Bearer k", "Idempotency-Key", "order-1", "X-Ballast-Timeout", "2s"}
	resp, body := do(t, "POST", a.base+"/charge", `{"n":1}`, key...)
	if resp.StatusCode != 429 || fs11RetryAfter(resp) < 7100 {
		t.Fatalf("replica A: %d Retry-After %q %s, want 429 with the upstream's two hours", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	waitFor(t, func() bool { return b.metric("ballast_cooldown_seconds", nil) > 0 })
	resp, body = do(t, "POST", b.base+"/charge", `{"n":1}`, key...)
	if resp.StatusCode != 429 || hits.Load() != 1 {
		t.Fatalf("the retry on replica B: %d %s (upstream hits %d); want 429, nothing sent", resp.StatusCode, body, hits.Load())
	}
	if p := decodeProblem(t, resp, body); p.Reason != "rate_limited" {
		t.Errorf("the retry on replica B: reason %q, want rate_limited", p.Reason)
	}
	if ra := fs11RetryAfter(resp); ra < 3500 || ra > 3600 {
		t.Errorf("the retry on replica B: Retry-After %q, want at most B's max_cooldown of 1h (and about that)", resp.Header.Get("Retry-After"))
	}
	clock.Advance(time.Hour + time.Second)
	waitFor(t, func() bool { return b.metric("ballast_cooldown_seconds", nil) == 0 })
	resp, body = do(t, "POST", b.base+"/charge", `{"n":1}`, key...)
	if resp.StatusCode != 200 || body != `{"call":2}` || hits.Load() != 2 {
		t.Fatalf("the retry on replica B after its pause: %d %s (hits %d), want the call run once", resp.StatusCode, body, hits.Load())
	}
	resp, body = do(t, "POST", a.base+"/charge", `{"n":1}`, key...)
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" || body != `{"call":2}` || hits.Load() != 2 {
		t.Errorf("the key on replica A then: %d replayed=%q %s (hits %d), want B's answer replayed", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body, hits.Load())
	}
}

// TestFleetSeams11_KeyedJobTakenOverKeepsItsKey: a keyed async job
// accepted on replica A is running when A shuts down (its drain runs
// out): with the redis backend it stays pending, and replica C, starting
// once A's lease has lapsed (by C's clock), resumes it (a model route:
// repeating the call is safe). Through all of it the Idempotency-Key
// keeps naming the job on every replica: a keyed repeat on replica B
// starts no second job and is answered with the first one's Location,
// then with its result; GET on B reads the result; the upstream ran the
// call twice (A's cut attempt, C's) and never more.
func TestFleetSeams11_KeyedJobTakenOverKeepsItsKey(t *testing.T) {
	var calls atomic.Int64
	first := make(chan struct{})
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		n := calls.Add(1)
		if n == 1 {
			close(first)
			<-r.Context().Done() // A's call never answers: A goes away
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"call":%d}`, n)
	})
	rs := redistest.Start(t)
	cfg := fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "fs11j:"}}
routes:
  - {name: gen, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, async: {enabled: true}, retry: {unsafe_methods: true, attempts: 1}, timeouts: {total: 10s}}
`, rs.Addr(), u)
	a, b := startBallast(t, cfg), startBallast(t, cfg)
	keyed := []string{"Prefer", "respond-async", "Idempotency-Key", "gen-1", "Authorization", "Bearer k"}
	resp, body := do(t, "POST", a.base+"/v1/gen", `{"p":1}`, keyed...)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("the job on A: %d %s", resp.StatusCode, body)
	}
	<-first
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_ = a.srv.Shutdown(ctx) // the drain runs out: the job is called off, pending
	cancel()
	resp, body = do(t, "POST", b.base+"/v1/gen", `{"p":1}`, keyed...)
	if resp.StatusCode != 202 || resp.Header.Get("Location") != loc || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the keyed repeat on B while the job is pending: %d Location %q replayed=%q %s, want 202 naming %s", resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Idempotent-Replayed"), body, loc)
	}
	startBallastClock(t, policy.NewFakeClock(time.Now().Add(31*time.Second)), cfg) // replica C
	waitFor(t, func() bool { return calls.Load() == 2 })
	resp, body = do(t, "GET", b.base+loc, "", "Authorization", "Bearer k", "Prefer", "wait=5")
	if resp.StatusCode != 200 || body != `{"call":2}` {
		t.Errorf("GET %s on B after the takeover: %d %s, want the resumed call's answer", loc, resp.StatusCode, body)
	}
	resp, body = do(t, "POST", b.base+"/v1/gen", `{"p":1}`, keyed...)
	if resp.StatusCode != 200 || body != `{"call":2}` || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the keyed repeat on B after the takeover: %d replayed=%q %s, want the job's result", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times, want 2 (A's cut call, C's)", n)
	}
}

// TestFleetSeams11_SharedTokensSettleOnceAcrossReplicas: one
// tokens_per_minute budget of 3000 for the fleet; each request reserves
// about 1000 tokens and the model reports 10 spent. Requests alternate
// between replicas A and B, and each replica retries a 503 first (the
// reservation is made once per request, not per attempt); the keyed
// agent retry of an answered call on the other replica is a replay and
// reserves nothing. Settling in the shared bucket gives back what was
// not spent, so eight requests fit where three estimates would not; and
// a 429 (no room) on either replica would mean an attempt or a replica
// paid twice.
func TestFleetSeams11_SharedTokensSettleOnceAcrossReplicas(t *testing.T) {
	var calls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		if calls.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}`)
	})
	rs := redistest.Start(t)
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf(`
limiters: {llm: {tokens_per_minute: 3000}}
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    retry: {unsafe_methods: true, attempts: 2, backoff: {base: 1ms, max: 1ms}}
    rate_limit: {limiter: llm, max_wait: 0s}
    idempotency: {mode: header}
`, u), "fail_closed")
	body := `{"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`
	for i := range 8 {
		key := fmt.Sprintf("k%d", i)
		resp, text := do(t, "POST", reps[i%2].base+"/v1/chat/completions", body, "Idempotency-Key", key)
		if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "2" {
			t.Fatalf("request %d on replica %d: %d attempts %q %s; want 200 after one retry (the fleet's bucket settled)", i, i%2, resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"), text)
		}
		resp, text = do(t, "POST", reps[(i+1)%2].base+"/v1/chat/completions", body, "Idempotency-Key", key)
		if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("the agent's retry of request %d on the other replica: %d replayed=%q %s", i, resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), text)
		}
	}
	if n := calls.Load(); n != 16 {
		t.Errorf("the upstream saw %d calls, want 16 (two attempts per request, none for the replays)", n)
	}
}

// TestFleetSeams11_SharedCacheAndKeysKeepTenantsApart: cache.shared with
// idempotency, across replicas. Tenant 1's keyed call on A stores its
// answer in both tiers and its key's record in Redis. On B: tenant 2 with
// the same Idempotency-Key and request is neither replayed tenant 1's
// record nor served tenant 1's cached answer; tenant 1's retry of the key
// is a replay (not marked as a cache answer); tenant 1 with a new key is
// a fresh hit from Redis's tier; tenant 2 with a new key hits its own.
func TestFleetSeams11_SharedCacheAndKeysKeepTenantsApart(t *testing.T) {
	var hits atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"for":%q,"n":%d}`, r.Header.Get("Authorization"), n)
	})
	rs := redistest.Start(t)
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf(`
routes:
  - {name: tool, match: {path_prefix: /t/}, upstream: %q, cache: {mode: fresh, ttl: 1m, shared: true}, idempotency: {mode: header}}
`, u), "fail_open")
	a, b := reps[0], reps[1]
	post := func(rep *ballast, tenant, key string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", rep.base+"/t/call", strings.NewReader(`{"q":"same"}`))
		req.Host = agentHost // the agents reach every replica by one name
		req.Header.Set("Authorization", "Bearer "+tenant)
		req.Header.Set("Idempotency-Key", key)
		resp, err := client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	one := `{"for":"Bearer one","n":1}`
	if resp, body := post(a, "one", "k1"); resp.StatusCode != 200 || body != one {
		t.Fatalf("tenant one on A: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return redisKeys(t, rs.Addr(), "*cache:*") >= 1 })
	resp, body := post(b, "two", "k1")
	if body != `{"for":"Bearer two","n":2}` || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("tenant two on B with tenant one's key: %d %s replayed=%q; want its own call", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
	resp, body = post(b, "one", "k1")
	if body != one || resp.Header.Get("Idempotent-Replayed") != "true" || strings.Contains(resp.Header.Get("Cache-Status"), "ballast") {
		t.Errorf("tenant one's retry on B: %s replayed=%q Cache-Status=%q; want the replay of its record", body, resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("Cache-Status"))
	}
	resp, body = post(b, "one", "k2")
	if body != one || resp.Header.Get("Idempotent-Replayed") != "" || !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") {
		t.Errorf("tenant one, new key, on B: %s replayed=%q Cache-Status=%q; want a fresh hit from the shared tier", body, resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("Cache-Status"))
	}
	waitFor(t, func() bool { return redisKeys(t, rs.Addr(), "*cache:*") >= 2 })
	resp, body = post(a, "two", "k2")
	if body != `{"for":"Bearer two","n":2}` || !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") {
		t.Errorf("tenant two, new key, on A: %s Cache-Status=%q; want its own answer from the shared tier", body, resp.Header.Get("Cache-Status"))
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("the upstream saw %d calls, want 2", n)
	}
}

// redisKeys counts the keys of the Redis at addr matching pattern.
func redisKeys(t *testing.T, addr, pattern string) int {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), pattern).Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestFleetSeams11_CooldownOutlivesRedisRestartingEmpty: a pause replica A
// published is lost when Redis restarts empty. A still holds it, and
// once it sees Redis back it publishes it again, so replica C, starting
// after the restart, pauses the key too instead of sending into the
// upstream's rate limit.
func TestFleetSeams11_CooldownOutlivesRedisRestartingEmpty(t *testing.T) {
	var hits atomic.Int64
	u := fs11Paused(t, &hits, "30")
	rs := redistest.Start(t)
	cfg := fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "fs11r:", op_timeout: 200ms, read_timeout: 200ms, write_timeout: 200ms, dial_timeout: 200ms}}
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, rs.Addr(), u)
	a := startBallast(t, cfg)
	if resp, _ := do(t, "GET", a.base+"/x", "", "Authorization", "Bearer k", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 {
		t.Fatalf("replica A: %d, want 429", resp.StatusCode)
	}
	waitFor(t, func() bool { return redisKeys(t, rs.Addr(), "fs11r:cooldowns:*") == 1 })
	rs.Kill()
	waitFor(t, func() bool { return a.metric("ballast_state_backend_up", nil) == 0 })
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return a.metric("ballast_state_backend_up", nil) == 1 })
	waitFor(t, func() bool { return redisKeys(t, rs.Addr(), "fs11r:cooldowns:*") == 1 })
	c := startBallast(t, cfg)
	waitFor(t, func() bool { return c.metric("ballast_cooldown_seconds", nil) > 20 })
	if resp, body := do(t, "GET", c.base+"/x", "", "Authorization", "Bearer k", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 || hits.Load() != 1 {
		t.Errorf("replica C after Redis restarted empty: %d %s (upstream hits %d); want the pause honoured", resp.StatusCode, body, hits.Load())
	}
}
