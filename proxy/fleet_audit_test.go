package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/redis/go-redis/v9"
)

func auditOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"ok":true}`)
}

// A Redis that hangs must not hold a request past its own deadline: the
// deadline is law, and X-Ballast-Timeout lowers it. With op_timeout 1s
// and an agent deadline of 150ms, the rate-limit decision (which fails
// open) may not keep the agent waiting a full second.
func TestHangingRedisHoldsNoRequestPastItsDeadline(t *testing.T) {
	addr := redistest.Hung(t)
	up, _ := upstream(t, auditOK)
	b := startBallast(t, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, on_error: fail_open, op_timeout: 1s, read_timeout: 1s, write_timeout: 1s, dial_timeout: 1s}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 1000}}
`, addr, up))
	// Warm up: the first request also waits for start-up's own Redis calls.
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("warm-up (fail_open): %d", resp.StatusCode)
	}
	start := time.Now()
	resp, _ := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "150ms")
	took := time.Since(start)
	if took > 450*time.Millisecond {
		t.Errorf("the request with a 150ms deadline took %v (status %d): the Redis rate-limit call ran its whole op_timeout past the deadline", took.Round(time.Millisecond), resp.StatusCode)
	}
}

// Once the health watcher knows Redis is down, fail_open must cost a
// request no Redis round trip (as the shared cache tier does): an outage
// of a hung Redis may not add op_timeout to every request of the fleet
// for as long as it lasts.
func TestKnownDownRedisCostsNoRequestOpTimeout(t *testing.T) {
	addr := redistest.Hung(t)
	up, _ := upstream(t, auditOK)
	b := startBallast(t, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, on_error: fail_open, op_timeout: 500ms, read_timeout: 500ms, write_timeout: 500ms, dial_timeout: 500ms}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 1000, tokens_per_minute: 1000000}}
`, addr, up))
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	for i := range 3 {
		start := time.Now()
		resp, _ := do(t, "POST", b.base+"/x", `{"max_tokens":10}`)
		took := time.Since(start)
		if resp.StatusCode != 200 {
			t.Errorf("request %d: status %d, want 200 (fail_open)", i, resp.StatusCode)
		}
		if took > 400*time.Millisecond { // below op_timeout (500ms), with room for a loaded machine
			t.Errorf("request %d took %v with Redis known to be down: each limiter still waits op_timeout on Redis", i, took.Round(time.Millisecond))
		}
	}
}

// Redis restarting empty: the shared bucket starts full again (no stuck
// state, no 503s after the watcher sees Redis back), and fail_closed
// refuses only while Redis is away.
func TestFleetRedisRestartEmptyRefillsSharedBucket(t *testing.T) {
	rs := redistest.Start(t)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf(`
limiters: {p: {rps: 0.001, burst: 2}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {limiter: p, max_wait: 0s}}
`, up), "fail_closed")
	codes := func() []int {
		var out []int
		for i := range 4 {
			resp, _ := do(t, "GET", reps[i%2].base+"/x", "")
			out = append(out, resp.StatusCode)
		}
		return out
	}
	if got := fmt.Sprint(codes()); got != "[200 200 429 429]" {
		t.Fatalf("before the restart: %s, want [200 200 429 429]", got)
	}
	rs.Kill()
	if resp, body := do(t, "GET", reps[0].base+"/x", ""); resp.StatusCode != 503 || !strings.Contains(body, "state_unavailable") {
		t.Errorf("fail_closed without Redis: %d %s", resp.StatusCode, body)
	}
	if err := rs.Restart(); err != nil { // returns once the new server answers PING
		t.Fatal(err)
	}
	// A health check that saw Redis down keeps a replica answering 503
	// until its next one: wait until both know it is back.
	fo9Up(t, reps...)
	if got := fmt.Sprint(codes()); got != "[200 200 429 429]" {
		t.Errorf("after an empty restart: %s, want [200 200 429 429] (a full shared bucket, once)", got)
	}
	if hits.Load() != 4 {
		t.Errorf("upstream hits %d, want 4", hits.Load())
	}
}

// fail_open: while Redis is down each replica falls back to a local
// bucket of the same size, so a burst-2 limiter admits 2 per replica and
// then refuses with 429 (never 503).
func TestFleetFailOpenFallsBackToLocalBucketOfSameSize(t *testing.T) {
	rs := redistest.Start(t)
	up, _ := upstream(t, auditOK)
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf(`
limiters: {p: {rps: 0.001, burst: 2}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {limiter: p, max_wait: 0s}}
`, up), "fail_open")
	rs.Kill()
	for ri, rep := range reps {
		var got []int
		for range 3 {
			resp, _ := do(t, "GET", rep.base+"/x", "")
			got = append(got, resp.StatusCode)
		}
		if fmt.Sprint(got) != "[200 200 429]" {
			t.Errorf("replica %d without Redis: %v, want [200 200 429]", ri, got)
		}
	}
}

// Shared keyed limit: one bucket per tenant for the whole fleet; requests
// without the key share one bucket; tenants never consume each other's.
func TestFleetKeyedSharedLimitPerTenant(t *testing.T) {
	rs := redistest.Start(t)
	up, _ := upstream(t, auditOK)
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.001, burst: 1, key: "header:X-Tenant", max_wait: 0s}}
`, up), "fail_closed")
	step := func(rep int, tenant string) int {
		var h []string
		if tenant != "" {
			h = []string{"X-Tenant", tenant}
		}
		resp, _ := do(t, "GET", reps[rep].base+"/x", "", h...)
		return resp.StatusCode
	}
	tests := []struct {
		name   string
		rep    int
		tenant string
		want   int
	}{
		{"alice on A", 0, "alice", 200},
		{"alice on B: the fleet's bucket is spent", 1, "alice", 429},
		{"bob on B", 1, "bob", 200},
		{"no key on A", 0, "", 200},
		{"no key on B: one shared bucket", 1, "", 429},
		{"carol on A", 0, "carol", 200},
	}
	for _, tt := range tests {
		if got := step(tt.rep, tt.tenant); got != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.want)
		}
	}
}

// A 429 with Retry-After seen by replica A pauses that credential's
// requests on replica B, and only that credential's.
func TestFleetCooldownIsPerCredentialAcrossReplicas(t *testing.T) {
	rs := redistest.Start(t)
	var aliceHits, bobHits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer alice" {
			if aliceHits.Add(1) == 1 {
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(429)
				return
			}
		} else {
			bobHits.Add(1)
		}
		io.WriteString(w, "ok")
	})
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up), "fail_open")
	if resp, _ := do(t, "GET", reps[0].base+"/x", "", "Authorization", "Bearer alice", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 {
		t.Fatalf("alice on A: %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return reps[1].metric("ballast_cooldown_seconds", nil) > 25 })
	if resp, _ := do(t, "GET", reps[1].base+"/x", "", "Authorization", "Bearer alice", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 || aliceHits.Load() != 1 {
		t.Errorf("alice on B during her cool-down: %d, upstream saw alice %d times", resp.StatusCode, aliceHits.Load())
	}
	if resp, _ := do(t, "GET", reps[1].base+"/x", "", "Authorization", "Bearer bob", "X-Ballast-Timeout", "2s"); resp.StatusCode != 200 || bobHits.Load() != 1 {
		t.Errorf("bob on B: %d, upstream saw bob %d times: another tenant must not be paused", resp.StatusCode, bobHits.Load())
	}
}

// ballast_state_backend_up (and the "unreachable Redis" alert rule on it)
// must come back to 1 once Redis answers again. One Redis operation that
// timed out while the health check's PING still succeeded (here: Redis
// paused for 500ms, longer than op_timeout 200ms, shorter than the
// check's 1s) must not set the gauge to 0: the health watcher, which
// writes it only when its own view changes, would never set it back.
func TestBackendUpGaugeFollowsTheHealthCheck(t *testing.T) {
	rs := redistest.Start(t)
	up, _ := upstream(t, auditOK)
	b := fleet(t, rs.Addr(), 1, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 1000}}
`, up), "fail_open")[0]
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("with Redis up: %d", resp.StatusCode)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	if err := rdb.Do(context.Background(), "CLIENT", "PAUSE", "500").Err(); err != nil {
		t.Fatal(err)
	}
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("fail_open during the pause: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_state_backend_up", nil); got != 0 {
		t.Logf("backend_up during the pause: %v", got)
	}
	// Redis answers again; a few health checks later the gauge must say so.
	waitFor(t, func() bool {
		if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
			t.Fatalf("after the pause: %d", resp.StatusCode)
		}
		return b.metric("ballast_state_backend_up", nil) == 1
	})
}

// The shared tier's Redis entry lives ttl+stale.
func TestFleetSharedCacheRedisTTLIsTTLPlusStale(t *testing.T) {
	rs := redistest.Start(t)
	up, _ := upstream(t, auditOK)
	a, _ := sharedPair(t, rs, nil, up, "mode: fresh, ttl: 1m, stale: 2m", "", "fail_open")
	if resp, _ := hostDo(t, "GET", a.base+"/x"); resp.StatusCode != 200 {
		t.Fatalf("through A: %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return sharedEntries(t, rs) == 1 })
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), "*cache:{tool}:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v %v", keys, err)
	}
	ttl, err := rdb.PTTL(context.Background(), keys[0]).Result()
	if err != nil || ttl < 170*time.Second || ttl > 180*time.Second {
		t.Errorf("PTTL %v (%v), want about 3m (ttl 1m + stale 2m)", ttl, err)
	}
}

// tokens_per_minute settles an Anthropic stream from its usage: input
// tokens come in message_start at the start of the stream, output tokens
// in message_delta at its end. A long answer (more than a few KiB of
// deltas) must still be settled with both, or the limit under-counts
// every long stream by its whole prompt.
func TestLongAnthropicStreamSettlesInputTokens(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":900,\"output_tokens\":1}}}\n\n")
		w.(http.Flusher).Flush()
		for range 200 { // ~20KiB of text deltas
			io.WriteString(w, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdef0123456789\"}}\n\n")
		}
		io.WriteString(w, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":50}}\n\n")
		io.WriteString(w, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    retry: {unsafe_methods: true}
    rate_limit: {tokens_per_minute: 2000, max_wait: 0s}
`, up))
	// Estimate: a few prompt tokens + max_tokens 100 ≈ 105. Used: 950.
	body := `{"model":"m","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
	resp, got := do(t, "POST", b.base+"/v1/messages", body)
	if resp.StatusCode != 200 || !strings.Contains(got, "message_stop") {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	// A probe larger than the bucket is always refused, and its RateLimit
	// field reports the tokens left: 2000 − 101 reserved, until the
	// stream's settlement replaces the estimate (just after the agent read
	// the end) by what it used: 950, leaving 1050.
	probe := `{"model":"m","max_tokens":1000000,"messages":[]}`
	left := func() string {
		resp, _ := do(t, "POST", b.base+"/v1/messages", probe)
		if resp.StatusCode != 429 {
			t.Fatalf("probe: %d", resp.StatusCode)
		}
		f := resp.Header.Get("RateLimit")
		if i := strings.Index(f, "r="); i >= 0 {
			f = f[i+2:]
			if j := strings.IndexByte(f, ';'); j >= 0 {
				f = f[:j]
			}
		}
		return f
	}
	waitFor(t, func() bool { return left() != "1899" })
	if got := left(); got != "1050" {
		t.Errorf("tokens left after a stream that used 900 input + 50 output tokens of 2000: %s, want 1050 (the input tokens of message_start were not counted)", got)
	}
}

// A request whose upstream could not be reached gives its reserved
// tokens back: nothing reached the model.
func TestFleetTokensRefundedWhenUpstreamUnreachable(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	dead := deadAddr(t)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: http://%s
    retry: {attempts: 1}
    rate_limit: {tokens_per_minute: 1500, max_wait: 0s}
`, dead))
	body := `{"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`
	for i := range 3 {
		resp, text := do(t, "POST", b.base+"/v1/chat/completions", body)
		if resp.StatusCode == 429 {
			t.Fatalf("request %d refused by the token limit (%s): the failed requests' tokens were not given back", i, text)
		}
	}
}

// A bulkhead slot is released on every way a request ends: an upstream
// that is down, a rate-limit refusal after the slot was taken, a timeout,
// an invalid answer. A max-1 route with no queue must serve the next
// request after each.
func TestFleetBulkheadReleasedOnEveryPath(t *testing.T) {
	var mode atomic.Int32
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch mode.Load() {
		case 1:
			w.WriteHeader(503)
		case 2:
			<-r.Context().Done() // hangs until ballast's per_try gives up on it
		case 3:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, "{not json")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    concurrency: {max: 1, queue: 0}
    retry: {attempts: 1}
    timeouts: {per_try: 100ms}
    validate: {json: true}
    rate_limit: {rps: 0.001, burst: 6, max_wait: 0s}
`, up))
	for i, m := range []int32{1, 2, 3, 0, 0, 0, 0} {
		mode.Store(m)
		resp, body := do(t, "GET", b.base+"/x", "")
		if resp.StatusCode == 503 && strings.Contains(body, "overloaded") {
			t.Fatalf("request %d (mode %d) shed: a slot leaked on an earlier path", i, m)
		}
	}
	if got := b.metric("ballast_concurrency_inflight", map[string]string{"route": "r"}); got != 0 {
		t.Errorf("in flight after every request ended: %v", got)
	}
}

// An invalid answer came from the model, which spent its tokens: the
// estimate stands, and the next request that needs them waits.
func TestInvalidAnswerKeepsItsTokens(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"truncated":`) // not JSON: validate refuses it
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    validate: {json: true}
    rate_limit: {tokens_per_minute: 1500, max_wait: 0s}
`, up))
	body := `{"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}`
	if resp, text := do(t, "POST", b.base+"/v1/chat/completions", body); resp.StatusCode != 502 {
		t.Fatalf("an invalid answer: %d %s", resp.StatusCode, text)
	}
	if resp, text := do(t, "POST", b.base+"/v1/chat/completions", body); resp.StatusCode != 429 {
		t.Fatalf("the next request got %d (%s): the invalid answer's tokens were given back", resp.StatusCode, text)
	}
}
