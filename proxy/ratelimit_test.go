package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// TestRateLimitHoldsTheUpstreamRate fires 40 requests at once at a limit
// of 50 rps with a burst of 10 and a max_wait of 490ms, on a fake clock:
// the burst goes at once, the next 24 wait 20ms apart (the 24th 480ms),
// and the 6 that would wait past max_wait are refused at once, before the
// clock moves. The upstream then sees exactly one more request per 20ms.
func TestRateLimitHoldsTheUpstreamRate(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    rate_limit: {rps: 50, burst: 10, max_wait: 490ms}
`, up))
	const sent, burst, waiting = 40, 10, 24
	pending := make([]<-chan raResult, sent)
	for i := range pending {
		pending[i] = raSend(t, "GET", b.base+"/x", "")
	}
	var ok, refused int64
	count := func(r raResult) {
		switch {
		case r.resp.StatusCode == 200:
			ok++
		case r.resp.StatusCode == 429 && r.resp.Header.Get("Retry-After") != "":
			refused++
		default:
			t.Errorf("status %d, Retry-After %q", r.resp.StatusCode, r.resp.Header.Get("Retry-After"))
		}
	}
	waitFor(t, func() bool {
		pending = raCollect(t, pending, count)
		return ok == burst && refused == sent-burst-waiting && clock.Waiters() == waiting
	})
	if hits.Load() != burst {
		t.Fatalf("before the clock moved the upstream saw %d requests, want the burst of %d", hits.Load(), burst)
	}
	for i := 1; i <= waiting; i++ {
		clock.Advance(20 * time.Millisecond)
		waitFor(t, func() bool {
			pending = raCollect(t, pending, count)
			return ok == int64(burst+i)
		})
		if got := hits.Load(); got != int64(burst+i) {
			t.Fatalf("after %dms the upstream saw %d requests, want %d", 20*i, got, burst+i)
		}
	}
	for _, ch := range pending {
		count(raAnswer(t, ch))
	}
	if hits.Load() != burst+waiting || refused != sent-burst-waiting {
		t.Errorf("upstream saw %d, %d refused; want %d and %d", hits.Load(), refused, burst+waiting, sent-burst-waiting)
	}
}

func TestRateLimitRefusalCarriesRetryAfterAndRateLimitFields(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
limiters:
  provider: {rps: 1, burst: 1, key: "header:X-Agent-Id"}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: %[1]q, rate_limit: {limiter: provider, max_wait: 0s}}
  - {name: b, match: {path_prefix: /b}, upstream: %[1]q, rate_limit: {limiter: provider, max_wait: 0s}}
`, up))
	c := client(t)
	if resp, _ := get(t, c, b.base+"/a", "X-Agent-Id", "agent-1"); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	// The same agent through the other route shares the named limiter.
	resp, body := get(t, c, b.base+"/b", "X-Agent-Id", "agent-1")
	if resp.StatusCode != 429 {
		t.Fatalf("second request of agent-1: %d, want 429 from the shared limiter", resp.StatusCode)
	}
	p := decodeProblem(t, resp, body)
	if p.Reason != "rate_limited" || p.RetryAfterS != 1 || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("problem %+v Retry-After %q", p, resp.Header.Get("Retry-After"))
	}
	if pol := resp.Header.Get("RateLimit-Policy"); !strings.Contains(pol, `"provider"`) || !strings.Contains(pol, "q=") {
		t.Errorf("RateLimit-Policy %q", pol)
	}
	if rl := resp.Header.Get("RateLimit"); !strings.Contains(rl, "r=0") || !strings.Contains(rl, "t=") {
		t.Errorf("RateLimit %q", rl)
	}
	// Another key has its own bucket.
	if resp, _ := get(t, c, b.base+"/a", "X-Agent-Id", "agent-2"); resp.StatusCode != 200 {
		t.Errorf("agent-2 was limited by agent-1's traffic: %d", resp.StatusCode)
	}
	if hits.Load() != 2 {
		t.Errorf("upstream hits %d: a refused request must never be forwarded", hits.Load())
	}
	if got := b.metric("ballast_ratelimit_rejected_total", map[string]string{"route": "b", "reason": "rate_limited"}); got != 1 {
		t.Errorf("rejections counted: %v", got)
	}
}

func TestConcurrencyLimitSheds(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 4)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 0}}
`, up))
	c := client(t)
	done := raSend(t, "GET", b.base+"/slow", "")
	<-started
	resp, body := get(t, c, b.base+"/x")
	if resp.StatusCode != 503 {
		t.Fatalf("second request while the slot is taken: %d", resp.StatusCode)
	}
	if p := decodeProblem(t, resp, body); p.Reason != "overloaded" || p.RetryAfterS < 1 {
		t.Errorf("problem %+v", p)
	}
	close(release)
	if got := raAnswer(t, done).resp.StatusCode; got != 200 {
		t.Errorf("the admitted request: %d", got)
	}
	if resp, _ := get(t, c, b.base+"/x"); resp.StatusCode != 200 {
		t.Errorf("after the slot was released: %d", resp.StatusCode)
	}
}

func TestAdaptiveLimitBacksOffOn429(t *testing.T) {
	var throttle atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if throttle.Load() {
			w.WriteHeader(429)
			return
		}
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 100, adaptive: true}, retry: {attempts: 1}}
`, up))
	c := client(t)
	get(t, c, b.base+"/x")
	if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "r"}); got != 100 {
		t.Fatalf("effective rate %v before any 429", got)
	}
	throttle.Store(true)
	get(t, c, b.base+"/x")
	if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "r"}); got != 50 {
		t.Errorf("effective rate after a 429: %v, want 50 (halved)", got)
	}
}

func TestTokensPerMinuteReservesAndSettles(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","usage":{"prompt_tokens":10,"completion_tokens":40,"total_tokens":50}}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: llm, match: {path_prefix: /}, upstream: %q, rate_limit: {tokens_per_minute: 1000, max_wait: 0s}, retry: {unsafe_methods: true}}
`, up))
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":600}`
	if resp, _ := do(t, "POST", b.base+"/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	// ~601 tokens were reserved, then settled to the 50 actually used, so
	// a second request of the same size fits in the minute.
	if resp, b := do(t, "POST", b.base+"/v1/chat/completions", body); resp.StatusCode != 200 {
		t.Fatalf("second, after settlement: %d %s", resp.StatusCode, b)
	}
	big := `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":990}`
	resp, text := do(t, "POST", b.base+"/v1/chat/completions", big)
	if resp.StatusCode != 429 || !strings.Contains(text, "tokens_per_minute") {
		t.Fatalf("a request beyond the token budget: %d %s", resp.StatusCode, text)
	}
	if hits.Load() != 2 {
		t.Errorf("upstream hits %d", hits.Load())
	}
}
