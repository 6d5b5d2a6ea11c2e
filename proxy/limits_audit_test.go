package proxy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// laRefusal checks a 429 from ballast's own request limit: problem+json,
// never forwarded, Retry-After equal to retry_after_s, and the IETF fields.
func laRefusal(t *testing.T, resp *http.Response, body string, retryAfter int, policyField, limitField string) {
	t.Helper()
	if resp.StatusCode != 429 {
		t.Fatalf("status %d %s, want 429", resp.StatusCode, body)
	}
	p := decodeProblem(t, resp, body)
	if p.Reason != "rate_limited" || p.Attempts != 0 || p.RetryAfterS != retryAfter ||
		resp.Header.Get("Retry-After") != fmt.Sprint(retryAfter) {
		t.Errorf("problem %+v Retry-After %q, want rate_limited, attempts 0, Retry-After %d",
			p, resp.Header.Get("Retry-After"), retryAfter)
	}
	if got := resp.Header.Get("RateLimit-Policy"); got != policyField {
		t.Errorf("RateLimit-Policy %q, want %q", got, policyField)
	}
	if got := resp.Header.Get("RateLimit"); got != limitField {
		t.Errorf("RateLimit %q, want %q", got, limitField)
	}
}

// TestLimitsAuditHalfRPSDefaultBurst: rps 0.5 with burst unset takes the
// documented burst ⌈rps⌉ = 1: one request, then a refusal whose
// Retry-After is the wait for the next token in whole seconds rounded up
// (never 0 while refused), with RateLimit-Policy "r";q=1;w=2 and RateLimit
// r=0 and t the seconds until the bucket is full.
func TestLimitsAuditHalfRPSDefaultBurst(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.5, max_wait: 0s}}
`, up))
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("first: %d %s", resp.StatusCode, body)
	}
	resp, body := do(t, "GET", b.base+"/x", "")
	laRefusal(t, resp, body, 2, `"r";q=1;w=2`, `"r";r=0;t=2`)
	clock.Advance(time.Second)
	resp, body = do(t, "GET", b.base+"/x", "")
	laRefusal(t, resp, body, 1, `"r";q=1;w=2`, `"r";r=0;t=1`)
	clock.Advance(999*time.Millisecond + 999*time.Microsecond)
	resp, body = do(t, "GET", b.base+"/x", "")
	laRefusal(t, resp, body, 1, `"r";q=1;w=2`, `"r";r=0;t=1`)
	clock.Advance(time.Millisecond)
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("after two seconds: %d %s", resp.StatusCode, body)
	}
	if hits.Load() != 2 {
		t.Errorf("upstream hits %d, want 2: a refused request is never forwarded", hits.Load())
	}
	if got := b.metric("ballast_ratelimit_rejected_total", map[string]string{"route": "r", "reason": "rate_limited"}); got != 3 {
		t.Errorf("ballast_ratelimit_rejected_total %v, want 3", got)
	}
}

// TestLimitsAuditBurstAndRefill: rps 2, burst 3: three at once, the fourth
// refused (Retry-After 1 for a half-second wait, t=2 for 1.5s to full);
// half a second later exactly one more goes.
func TestLimitsAuditBurstAndRefill(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
limiters: {p: {rps: 2, burst: 3}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {limiter: p, max_wait: 0s}}
`, up))
	var codes []int
	for range 4 {
		resp, _ := do(t, "GET", b.base+"/x", "")
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 200 200 429]" {
		t.Fatalf("a burst of 4 against burst 3: %v", codes)
	}
	resp, body := do(t, "GET", b.base+"/x", "")
	laRefusal(t, resp, body, 1, `"p";q=4;w=2`, `"p";r=0;t=2`)
	clock.Advance(500 * time.Millisecond)
	codes = codes[:0]
	for range 2 {
		resp, _ := do(t, "GET", b.base+"/x", "")
		codes = append(codes, resp.StatusCode)
	}
	if fmt.Sprint(codes) != "[200 429]" {
		t.Errorf("half a second later at 2 rps: %v, want [200 429]", codes)
	}
	if hits.Load() != 4 {
		t.Errorf("upstream hits %d, want 4", hits.Load())
	}
}

// TestLimitsAuditEveryAttemptPays: each retry takes a token; a retry the
// limit refuses is not sent, and the agent gets the last attempt's reason
// (errors.md: 503 upstream_unavailable after an upstream 5xx, 429
// rate_limited after an upstream 429) with the limit's wait as Retry-After,
// a detail that blames the limit rather than the upstream, and no
// RateLimit fields; the next request finds the bucket spent and is never
// forwarded.
func TestLimitsAuditEveryAttemptPays(t *testing.T) {
	for _, tt := range []struct {
		status int
		reason string
	}{
		{503, "upstream_unavailable"},
		{429, "rate_limited"},
	} {
		t.Run(tt.reason, func(t *testing.T) {
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); w.WriteHeader(tt.status) })
			clock := policy.NewFakeClock(time.Now())
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 5, backoff: {base: 1ms, max: 1ms}}
    breaker: {enabled: false}
    rate_limit: {rps: 0.001, burst: 2, max_wait: 0s}
`, up))
			resp, body := doTicking(t, clock, "GET", b.base+"/x")
			if resp.StatusCode != tt.status || hits.Load() != 2 {
				t.Fatalf("5 attempts against a burst of 2: %d %s, upstream hits %d; want %d after 2 attempts",
					resp.StatusCode, body, hits.Load(), tt.status)
			}
			if p := decodeProblem(t, resp, body); p.Reason != tt.reason || p.Attempts != 2 || p.RetryAfterS < 999 ||
				resp.Header.Get("RateLimit") != "" || !strings.Contains(p.Detail, "rate limit (r) has no room for a retry") ||
				strings.Contains(p.Detail, "upstream asked") {
				t.Errorf("problem %+v RateLimit %q; want %s after 2 attempts, Retry-After the limit's wait, no RateLimit fields",
					p, resp.Header.Get("RateLimit"), tt.reason)
			}
			resp, body = do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != 429 || hits.Load() != 2 {
				t.Errorf("the next request: %d %s, upstream hits %d; want 429 and no forward", resp.StatusCode, body, hits.Load())
			}
		})
	}
}

// TestLimitsAuditHedgePaysTheRateLimit: a hedge is a second copy sent
// upstream, so it pays the request limit like any attempt ("every attempt
// pays"): with one token, a slow first copy is not hedged, and the upstream
// sees one request, not two.
func TestLimitsAuditHedgePaysTheRateLimit(t *testing.T) {
	var hits atomic.Int64
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 20ms
    retry: {budget: {ratio: 1, min_per_second: 100}}
    rate_limit: {rps: 0.001, burst: 1, max_wait: 0s}
`, up))
	done := raSend(t, "GET", b.base+"/x", "")
	waitFor(t, func() bool { return hits.Load() >= 1 })
	// Long enough for a hedge to go out, were it free.
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) && hits.Load() < 2 {
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	if got := raAnswer(t, done).resp.StatusCode; got != 200 {
		t.Errorf("the hedged request: %d", got)
	}
	if hits.Load() != 1 {
		t.Errorf("upstream saw %d copies with one token in the bucket; a hedge must pay the rate limit", hits.Load())
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got > 0 {
		t.Errorf("ballast_hedges_total %v, want 0", got)
	}
}

// TestLimitsAuditBulkheadQueuedAgentLeaves: an agent that hangs up while
// its request waits for a concurrency slot frees its place in the queue
// (the next request queues instead of being shed), and its request is
// never sent upstream once a slot frees.
func TestLimitsAuditBulkheadQueuedAgentLeaves(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var seen []string
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/hold" {
			<-release
		}
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 1, max_wait: 20s}, timeouts: {total: 30s, per_try: 30s}}
`, up))
	held := raSend(t, "GET", b.base+"/hold", "")
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 1 })
	gone, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(gone, "GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
	depth := func() float64 { return b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}) }
	waitFor(t, func() bool { return depth() == 1 })
	gone.Close()
	waitFor(t, func() bool { return depth() == 0 })
	next := raSend(t, "GET", b.base+"/next", "")
	waitFor(t, func() bool {
		if r, ok := raReady(t, next); ok {
			t.Fatalf("the next request got %d while the slot was taken; the gone agent kept its place", r.resp.StatusCode)
		}
		return depth() == 1
	})
	close(release)
	if got := raAnswer(t, held).resp.StatusCode; got != 200 {
		t.Errorf("the holding request: %d", got)
	}
	if got := raAnswer(t, next).resp.StatusCode; got != 200 {
		t.Errorf("the next request: %d", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[/hold /next]" {
		t.Errorf("upstream saw %v, want [/hold /next]: a request whose agent left is never sent", seen)
	}
	if !strings.Contains(b.logs.String(), `"stopped":"agent_gone"`) {
		t.Errorf("the gone agent's request was not logged as agent_gone")
	}
}

// laHolding is an upstream whose /hold requests wait for release; it
// records the order of the paths it sees and the most requests it has had
// in flight at once.
type laHolding struct {
	release  chan struct{}
	mu       sync.Mutex
	seen     []string
	inFlight int
	peak     int
}

func newLAHolding(t *testing.T) (*laHolding, string) {
	h := &laHolding{release: make(chan struct{})}
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.seen = append(h.seen, r.URL.Path)
		h.inFlight++
		h.peak = max(h.peak, h.inFlight)
		h.mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/hold") {
			<-h.release
		}
		h.mu.Lock()
		h.inFlight--
		h.mu.Unlock()
		io.WriteString(w, "ok")
	})
	return h, up
}

func (h *laHolding) paths() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprint(h.seen)
}

func (h *laHolding) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.seen)
}

// TestLimitsAuditBulkheadExactUnderLoad: 10 requests at once on max 3,
// queue 2: exactly 3 reach the upstream together, 2 wait, 5 are shed at
// once with 503 overloaded and Retry-After; once the slots free, the 2
// queued go; the upstream never has more than 3 in flight.
func TestLimitsAuditBulkheadExactUnderLoad(t *testing.T) {
	h, up := newLAHolding(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, concurrency: {max: 3, queue: 2, max_wait: 20s}, timeouts: {total: 30s, per_try: 30s}}
`, up))
	pending := make([]<-chan raResult, 10)
	for i := range pending {
		pending[i] = raSend(t, "GET", b.base+"/hold", "")
	}
	shed, ok := 0, 0
	count := func(r raResult) {
		switch r.resp.StatusCode {
		case 200:
			ok++
		case 503:
			if p := decodeProblem(t, r.resp, r.body); p.Reason != "overloaded" || p.RetryAfterS < 1 || r.resp.Header.Get("Retry-After") == "" {
				t.Errorf("shed: %+v Retry-After %q", p, r.resp.Header.Get("Retry-After"))
			}
			shed++
		}
	}
	// The shed requests are answered at once, the others once released.
	waitFor(t, func() bool {
		pending = raCollect(t, pending, count)
		return shed == 5 && h.count() == 3
	})
	if got := b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}); got != 2 {
		t.Errorf("queue depth %v, want 2", got)
	}
	if got := b.metric("ballast_concurrency_inflight", map[string]string{"route": "r"}); got != 3 {
		t.Errorf("in flight %v, want 3", got)
	}
	if got := b.metric("ballast_ratelimit_rejected_total", map[string]string{"route": "r", "reason": "overloaded"}); got != 5 {
		t.Errorf("overloaded rejections %v, want 5", got)
	}
	close(h.release)
	for _, ch := range pending {
		count(raAnswer(t, ch))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if ok != 5 || len(h.seen) != 5 || h.peak != 3 {
		t.Errorf("%d answered 200, upstream saw %d with a peak of %d in flight; want 5, 5, 3", ok, len(h.seen), h.peak)
	}
}

// TestLimitsAuditBulkheadPriorityOrder: queued requests go normal first,
// first come first served within a priority, whatever order they came in.
func TestLimitsAuditBulkheadPriorityOrder(t *testing.T) {
	h, up := newLAHolding(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 10, max_wait: 20s}, timeouts: {total: 30s, per_try: 30s}}
`, up))
	sent := map[string]<-chan raResult{}
	send := func(path string, headers ...string) {
		sent[path] = raSend(t, "GET", b.base+path, "", headers...)
	}
	send("/hold")
	waitFor(t, func() bool { return h.count() == 1 })
	depth := func() float64 { return b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}) }
	for i, q := range []struct{ path, prio string }{
		{"/low1", "low"}, {"/normal1", ""}, {"/low2", " LOW "}, {"/normal2", "urgent"}, {"/low3", "Low"}, {"/normal3", ""},
	} {
		if q.prio != "" {
			send(q.path, "X-Ballast-Priority", q.prio)
		} else {
			send(q.path)
		}
		waitFor(t, func() bool { return depth() == float64(i+1) })
	}
	close(h.release)
	for path, ch := range sent {
		if r := raAnswer(t, ch); r.resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", path, r.resp.StatusCode, r.body)
		}
	}
	if got, want := h.paths(), "[/hold /normal1 /normal2 /normal3 /low1 /low2 /low3]"; got != want {
		t.Errorf("upstream order %s, want %s", got, want)
	}
}

// TestLimitsAuditBulkheadQueueWaitBounded: a queued request waits at most
// concurrency.max_wait (on the server's clock), then gets 503 overloaded
// with Retry-After; it is never sent.
func TestLimitsAuditBulkheadQueueWaitBounded(t *testing.T) {
	h, up := newLAHolding(t)
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 1, max_wait: 2s}, timeouts: {total: 60s, per_try: 60s}}
`, up))
	held := raSend(t, "GET", b.base+"/hold", "")
	waitFor(t, func() bool { return h.count() == 1 })
	queued := raSend(t, "GET", b.base+"/queued", "")
	waitFor(t, func() bool { return clock.Waiters() == 1 })
	clock.Advance(1999 * time.Millisecond)
	select {
	case r := <-queued:
		if r.err != nil {
			t.Fatalf("the queued request: %v", r.err)
		}
		t.Fatalf("answered %d before max_wait: %s", r.resp.StatusCode, r.body)
	case <-time.After(50 * time.Millisecond):
	}
	clock.Advance(time.Millisecond)
	r := raAnswer(t, queued)
	if r.resp.StatusCode != 503 {
		t.Fatalf("after max_wait in the queue: %d %s", r.resp.StatusCode, r.body)
	}
	if p := decodeProblem(t, r.resp, r.body); p.Reason != "overloaded" || p.RetryAfterS < 1 || p.Attempts != 0 {
		t.Errorf("problem %+v", p)
	}
	close(h.release)
	if got := raAnswer(t, held).resp.StatusCode; got != 200 {
		t.Errorf("the holding request: %d", got)
	}
	if got := h.paths(); got != "[/hold]" {
		t.Errorf("upstream saw %s; a request shed from the queue is never sent", got)
	}
}

// laModelBody is a request whose estimate is ⌈2/4⌉ + 2000 = 2001 tokens.
const laModelBody = `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2000}`

// TestLimitsAuditTokenSettlement: with tokens_per_minute 3000 each request
// reserves its 2001-token estimate; what the answer's usage says then
// decides whether a second one fits at once. Anthropic's input_tokens +
// output_tokens settle like OpenAI's total_tokens; an answer without usage,
// or with nonsense (negative) usage, keeps the estimate; a call that never
// reached a model (502) gives its reservation back; a wild usage figure is
// taken as debt, but at most 16 minutes' worth.
func TestLimitsAuditTokenSettlement(t *testing.T) {
	closed := func() string { return "http://" + deadAddr(t) }
	tests := []struct {
		name     string
		answer   string // the upstream's JSON body; "" for a closed port
		first    int
		second   int
		retryS   int    // the second's Retry-After when refused
		limit    string // the second's RateLimit field when refused
		thirdGap time.Duration
	}{
		{name: "anthropic usage", answer: `{"type":"message","usage":{"input_tokens":10,"output_tokens":20}}`, first: 200, second: 200},
		{name: "openai total", answer: `{"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}`, first: 200, second: 200},
		// 999 left; 1002 more come in 20.04s; full (2001 missing) in 40.02s.
		{name: "no usage", answer: `{"choices":[]}`, first: 200, second: 429, retryS: 21, limit: `"llm";r=999;t=41`},
		{name: "negative usage", answer: `{"usage":{"total_tokens":-5000,"input_tokens":-1}}`, first: 200, second: 429, retryS: 21, limit: `"llm";r=999;t=41`},
		// 999 − 48000 (16 × the 3000 burst) leaves −47001: 49002 to go
		// at 50/s is 980.04s; full after 50001 at 50/s.
		{name: "huge usage", answer: `{"usage":{"total_tokens":1e300}}`, first: 200, second: 429, retryS: 981, limit: `"llm";r=0;t=1001`},
		{name: "unreachable upstream", first: 502, second: 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hits atomic.Int64
			up := closed()
			if tt.answer != "" {
				up, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
					hits.Add(1)
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, tt.answer)
				})
			}
			clock := policy.NewFakeClock(time.Now())
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: llm, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, rate_limit: {tokens_per_minute: 3000, max_wait: 0s}}
`, up))
			if resp, body := do(t, "POST", b.base+"/v1/messages", laModelBody); resp.StatusCode != tt.first {
				t.Fatalf("first: %d %s, want %d", resp.StatusCode, body, tt.first)
			}
			resp, body := do(t, "POST", b.base+"/v1/messages", laModelBody)
			if resp.StatusCode != tt.second {
				t.Fatalf("second: %d %s, want %d", resp.StatusCode, body, tt.second)
			}
			if tt.second == 429 {
				laRefusal(t, resp, body, tt.retryS, `"llm";q=3000;w=60`, tt.limit)
				if got := b.metric("ballast_ratelimit_rejected_total", map[string]string{"route": "llm", "reason": "tokens"}); got != 1 {
					t.Errorf("tokens rejections %v, want 1", got)
				}
				if tt.answer != "" && hits.Load() != 1 {
					t.Errorf("upstream hits %d, want 1", hits.Load())
				}
			}
		})
	}
}

// TestLimitsAuditAdaptiveAIMD: an adaptive limit of 10 rps halves on each
// upstream 429 (429s within a second of the last decrease count once),
// never below rps/10, and climbs back by rps/10 per 10 successes, never
// above rps; all on the server's clock.
func TestLimitsAuditAdaptiveAIMD(t *testing.T) {
	var throttle atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if throttle.Load() {
			w.WriteHeader(429)
			return
		}
		io.WriteString(w, "ok")
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, rate_limit: {rps: 10, adaptive: true, max_wait: 0s}}
`, up))
	rate := func() float64 { return b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "r"}) }
	send := func(want int) {
		t.Helper()
		clock.Advance(2 * time.Second) // a token at any rate down to the floor
		if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != want {
			t.Fatalf("status %d %s, want %d", resp.StatusCode, body, want)
		}
	}
	throttle.Store(true)
	send(429)
	if got := rate(); got != 5 {
		t.Fatalf("after one 429: %v, want 5", got)
	}
	// A second 429 in the same second (no clock advance) counts once.
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 429 {
		t.Fatalf("second 429: %d", resp.StatusCode)
	}
	if got := rate(); got != 5 {
		t.Errorf("after two 429s within a second: %v, want 5", got)
	}
	for _, want := range []float64{2.5, 1.25, 1, 1} {
		send(429)
		if got := rate(); got != want {
			t.Fatalf("after another 429: %v, want %v", got, want)
		}
	}
	throttle.Store(false)
	for i := range 9 {
		send(200)
		if got := rate(); got != 1 {
			t.Fatalf("after %d successes: %v, want 1 until the 10th", i+1, got)
		}
	}
	send(200)
	if got := rate(); got != 2 {
		t.Fatalf("after 10 successes: %v, want 2", got)
	}
	for range 100 {
		send(200)
	}
	if got := rate(); got != 10 {
		t.Errorf("after 110 successes: %v, want the configured 10 and no more", got)
	}
}

// TestLimitsAuditJSONKey: json:user partitions by the top-level field's
// value (whitespace around it aside); a body without the field, a body that
// is not JSON and a request without a body share one bucket; one user never
// spends another's.
func TestLimitsAuditJSONKey(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, rate_limit: {rps: 0.001, burst: 1, key: "json:user", max_wait: 0s}}
`, up))
	huge := `{"user":"` + strings.Repeat("u", 256<<10) + `"}`
	steps := []struct {
		name, method, body string
		want               int
	}{
		{"alice", "POST", `{"user":"alice","n":1}`, 200},
		{"alice again, spaced", "POST", `{ "n":2, "user" : "alice" }`, 429},
		{"bob", "POST", `{"user":"bob"}`, 200},
		{"nested field is not top-level", "POST", `{"meta":{"user":"carol"}}`, 200},
		{"no field: the shared bucket", "POST", `{"x":1}`, 429},
		{"not JSON: the shared bucket", "POST", `user=dave`, 429},
		{"no body: the shared bucket", "GET", ``, 429},
		{"a huge key", "POST", huge, 200},
		{"the huge key again", "POST", huge, 429},
		{"an object value", "POST", `{"user":{"id":7}}`, 200},
	}
	for _, s := range steps {
		if resp, body := do(t, s.method, b.base+"/x", s.body, "Content-Type", "application/json"); resp.StatusCode != s.want {
			t.Errorf("%s: %d %s, want %d", s.name, resp.StatusCode, body, s.want)
		}
	}
	if hits.Load() != 5 {
		t.Errorf("upstream hits %d, want 5", hits.Load())
	}
}

// TestLimitsAuditReloadKeepsOrResets: a reload that changes only the
// route's max_wait keeps the limiter's bucket (a drained bucket stays
// drained); one that changes the limit starts a fresh bucket of the new
// size.
func TestLimitsAuditReloadKeepsOrResets(t *testing.T) {
	up := opsOK(t)
	cfg := func(rl string) string {
		return fmt.Sprintf("limiters: {p: %s}\nroutes:\n  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {limiter: p, max_wait: %%s}}\n", rl, up)
	}
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(cfg("{rps: 0.001, burst: 1}"), "0s"))
	codes := func(n int) string {
		var out []int
		for range n {
			resp, _ := do(t, "GET", b.base+"/x", "")
			out = append(out, resp.StatusCode)
		}
		return fmt.Sprint(out)
	}
	if got := codes(2); got != "[200 429]" {
		t.Fatalf("before any reload: %s", got)
	}
	if code, body := opsReload(t, b, fmt.Sprintf(cfg("{rps: 0.001, burst: 1}"), "1ms")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if got := codes(1); got != "[429]" {
		t.Errorf("after a reload that kept the limit: %s, want [429] (the drained bucket kept)", got)
	}
	if code, body := opsReload(t, b, fmt.Sprintf(cfg("{rps: 0.001, burst: 2}"), "1ms")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if got := codes(3); got != "[200 200 429]" {
		t.Errorf("after a reload that changed the burst to 2: %s, want [200 200 429]", got)
	}
}

// TestLimitsAuditWaitBoundedByDeadline: a request waits in line for its
// token only within its deadline: with max_wait 5s, an agent whose
// X-Ballast-Timeout leaves 1s is refused at once for a 2s wait (and its
// refusal takes nothing), while one with the route's deadline waits its 2s
// on the server's clock and goes.
func TestLimitsAuditWaitBoundedByDeadline(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.5, burst: 1, max_wait: 5s}, timeouts: {total: 60s}}
`, up))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "1s")
	laRefusal(t, resp, body, 2, `"r";q=1;w=2`, `"r";r=0;t=2`)
	done := raSend(t, "GET", b.base+"/x", "")
	waitFor(t, func() bool { return clock.Waiters() == 1 })
	if hits.Load() != 1 {
		t.Fatalf("upstream hits %d while the third waits", hits.Load())
	}
	clock.Advance(2 * time.Second)
	if got := raAnswer(t, done).resp.StatusCode; got != 200 || hits.Load() != 2 {
		t.Errorf("the waiting request: %d, upstream hits %d; want 200 and 2", got, hits.Load())
	}
}

// TestLimitsAuditMaxKeysEvictsLeastRecentlyUsed: with max_keys 2 the key
// dropped for a new one is the least recently used (a refused request
// uses its key too), and only a dropped key comes back to a full bucket.
func TestLimitsAuditMaxKeysEvictsLeastRecentlyUsed(t *testing.T) {
	up := opsOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.001, burst: 1, key: "header:X-Tenant", max_keys: 2, max_wait: 0s}}
`, up))
	var got []string
	for _, tenant := range []string{"a", "b", "a", "c", "a", "b", "c"} {
		resp, _ := do(t, "GET", b.base+"/x", "", "X-Tenant", tenant)
		got = append(got, fmt.Sprintf("%s:%d", tenant, resp.StatusCode))
	}
	// c drops b (a was used after it); a is kept, spent; b comes back to a
	// full bucket and drops c (a was used after c); c comes back full too.
	if want := "[a:200 b:200 a:429 c:200 a:429 b:200 c:200]"; fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s", got, want)
	}
}
