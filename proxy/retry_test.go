package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/freeport"
	"github.com/ballast-proxy/ballast/policy"
)

// scripted is an upstream that answers each request with the next step of
// a script; after the script it answers 200 "ok".
type scripted struct {
	mu    sync.Mutex
	steps []func(w http.ResponseWriter, r *http.Request)
	hits  atomic.Int64
}

func (s *scripted) handler(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	s.mu.Lock()
	var step func(http.ResponseWriter, *http.Request)
	if len(s.steps) > 0 {
		step, s.steps = s.steps[0], s.steps[1:]
	}
	s.mu.Unlock()
	if step == nil {
		_, _ = io.WriteString(w, "ok")
		return
	}
	step(w, r)
}

func status(code int, headers ...string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"error":{"message":"scripted %d"}}`, code)
	}
}

func reset(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		conn.Close() // read the request, answer nothing
	}
}

func hang(release <-chan struct{}) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
}

func retryRoute(up string, extra string) string {
	return fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 5ms}%s}
    timeouts: {per_try: 300ms, total: 10s}
`, up, extra)
}

func do(t *testing.T, method, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestRetryConditions(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tests := []struct {
		name         string
		method       string
		extra        string
		steps        []func(http.ResponseWriter, *http.Request)
		wantStatus   int
		wantAttempts string
		wantHits     int64
	}{
		{"503 then ok", "GET", "", []func(http.ResponseWriter, *http.Request){status(503)}, 200, "2", 2},
		{"502 and 504 then ok", "GET", "", []func(http.ResponseWriter, *http.Request){status(502), status(504)}, 200, "3", 3},
		{"reset then ok", "GET", "", []func(http.ResponseWriter, *http.Request){reset}, 200, "2", 2},
		{"hang past per_try then ok", "GET", "", []func(http.ResponseWriter, *http.Request){hang(release)}, 200, "2", 2},
		{"attempts spent: the upstream's answer", "GET", "", []func(http.ResponseWriter, *http.Request){status(503), status(503), status(503)}, 503, "3", 3},
		{"500 not listed by default", "GET", "", []func(http.ResponseWriter, *http.Request){status(500)}, 500, "1", 1},
		{"500 listed via 5xx", "GET", ", on: [5xx]", []func(http.ResponseWriter, *http.Request){status(500)}, 200, "2", 2},
		{"auth never retried even when listed", "GET", ", on: [401, 503]", []func(http.ResponseWriter, *http.Request){status(401)}, 401, "1", 1},
		{"quota never retried", "GET", "", []func(http.ResponseWriter, *http.Request){
			func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(429)
				io.WriteString(w, `{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`)
			}}, 429, "1", 1},
		{"POST 503 is not repeated by default", "POST", "", []func(http.ResponseWriter, *http.Request){status(503)}, 503, "1", 1},
		{"POST reset is not repeated by default", "POST", "", []func(http.ResponseWriter, *http.Request){reset}, 502, "1", 1},
		{"POST repeated with unsafe_methods", "POST", ", unsafe_methods: true", []func(http.ResponseWriter, *http.Request){status(503)}, 200, "2", 2},
		{"attempts: 1 never retries", "GET", ", attempts: 1", []func(http.ResponseWriter, *http.Request){status(503)}, 503, "1", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &scripted{steps: tt.steps}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, retryRoute(up, tt.extra))
			resp, body := do(t, tt.method, b.base+"/x", `{"q":1}`)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if got := resp.Header.Get("X-Ballast-Attempts"); got != tt.wantAttempts && resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("X-Ballast-Attempts %q, want %s", got, tt.wantAttempts)
			}
			if got := s.hits.Load(); got != tt.wantHits {
				t.Errorf("upstream hits %d, want %d", got, tt.wantHits)
			}
		})
	}
}

func TestPOSTWhoseConnectFailedIsRetried(t *testing.T) {
	// The primary refuses connections: nothing was sent, so even a POST may
	// go again — here, to the fallback.
	dead := deadAddr(t)
	s := &scripted{}
	fb, _ := upstream(t, s.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: http://%s
    fallbacks: [{upstream: %q}]
    retry: {backoff: {base: 1ms, max: 2ms}}
`, dead, fb))
	resp, body := do(t, "POST", b.base+"/x", "{}")
	if resp.StatusCode != 200 || body != "ok" || s.hits.Load() != 1 {
		t.Fatalf("%d %q hits %d", resp.StatusCode, body, s.hits.Load())
	}
}

func TestRetryAfterHintIsHonoured(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers []string
		want    time.Duration
	}{
		{"Retry-After seconds", []string{"Retry-After", "3"}, 3 * time.Second},
		{"retry-after-ms", []string{"retry-after-ms", "1500"}, 1500 * time.Millisecond},
		{"OpenAI reset", []string{"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "2s"}, 2 * time.Second},
		{"Anthropic reset", []string{"anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", "@+4s"}, 4 * time.Second},
		{"RateLimit t=", []string{"RateLimit", `"default";r=0;t=5`}, 5 * time.Second},
		{"hostile value ignored: backoff only", []string{"Retry-After", "-99999999999999999999"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Whole seconds, so an RFC 3339 instant names the exact reset.
			clock := policy.NewFakeClock(time.Now().Truncate(time.Second))
			headers := tc.headers
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){func(w http.ResponseWriter, r *http.Request) {
				h := append([]string(nil), headers...)
				for i := range h {
					if strings.HasPrefix(h[i], "@+") { // an instant relative to the fake now
						d, _ := time.ParseDuration(h[i][2:])
						h[i] = clock.Now().Add(d).UTC().Format(time.RFC3339)
					}
				}
				status(429, h...)(w, r)
			}}}
			up, _ := upstream(t, s.handler)
			b := startBallastClock(t, clock, retryRoute(up, ""))
			done := raSend(t, "GET", b.base+"/x", "")
			waitFor(t, func() bool { return clock.Waiters() == 1 })
			if tc.want > 0 {
				clock.Advance(tc.want - 10*time.Millisecond)
				if s.hits.Load() != 1 || clock.Waiters() != 1 {
					t.Fatalf("retried before the hint of %v (hits %d)", tc.want, s.hits.Load())
				}
				clock.Advance(10 * time.Millisecond)
			} else {
				clock.Advance(time.Millisecond)
			}
			if got := raAnswer(t, done).resp.StatusCode; got != 200 || s.hits.Load() != 2 {
				t.Fatalf("after the hint: %d, hits %d", got, s.hits.Load())
			}
		})
	}
}

func TestDeadlineIsNeverOverrun(t *testing.T) {
	// A sweep of hints against a 400ms deadline: ballast never sleeps past
	// it; when the hint cannot fit it answers at once with Retry-After.
	for _, hint := range []string{"0", "1", "2", "30", "3600"} {
		t.Run("Retry-After "+hint, func(t *testing.T) {
			s := &scripted{}
			for range 20 {
				s.steps = append(s.steps, status(503, "Retry-After", hint))
			}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 10, backoff: {base: 50ms, max: 1s}}
    breaker: {enabled: false}
    timeouts: {total: 400ms, connect: 100ms}
`, up))
			start := time.Now()
			resp, body := do(t, "GET", b.base+"/x", "")
			took := time.Since(start)
			// The last attempt may end at the deadline itself; the slack
			// is for a loaded machine, and a sleep past the deadline (a
			// backoff of up to 1s) would mostly overshoot it.
			if took > 400*time.Millisecond+250*time.Millisecond {
				t.Errorf("answered after %v; the deadline was 400ms", took)
			}
			if hint != "0" && resp.Header.Get("Retry-After") == "" {
				t.Errorf("status %d without Retry-After: %s", resp.StatusCode, body)
			}
		})
	}
}

func TestSharedCooldownHoldsEveryRequest(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	var limited atomic.Bool
	limited.Store(true)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if limited.Swap(false) { // the first request meets the limit
			w.Header().Set("x-ratelimit-remaining-requests", "0")
			w.Header().Set("x-ratelimit-reset-requests", "2s")
			w.WriteHeader(429)
			return
		}
		io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, retryRoute(up, ", unsafe_methods: true"))
	var wg sync.WaitGroup
	codes := make(chan int, 20)
	send := func() {
		defer wg.Done()
		resp, _ := do(t, "POST", b.base+"/v1/chat", "{}")
		codes <- resp.StatusCode
	}
	wg.Add(1)
	go send()
	waitFor(t, func() bool { return clock.Waiters() == 1 }) // the first waits for the reset
	for range 19 {
		wg.Add(1)
		go send()
	}
	waitFor(t, func() bool { return clock.Waiters() == 20 }) // all 20 wait for the reset
	if got := hits.Load(); got != 1 {
		t.Fatalf("the upstream saw %d requests during the cool-down, want 1", got)
	}
	if got := b.metric("ballast_cooldown_seconds", nil); got < 1.9 || got > 2 {
		t.Errorf("ballast_cooldown_seconds = %v", got)
	}
	clock.Advance(2 * time.Second)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Errorf("a request got %d", c)
		}
	}
	if got := hits.Load(); got != 21 {
		t.Errorf("upstream hits %d, want 21", got)
	}
}

func TestCooldownBeyondDeadlineAnswersAtOnce(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, "Retry-After", "30")}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ""))
	resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "2s")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "30" {
		t.Fatalf("%d Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	p := decodeProblem(t, resp, body)
	if p.Reason != "rate_limited" || p.RetryAfterS != 30 {
		t.Errorf("problem %+v", p)
	}
	// A new request meets the shared cool-down before touching the upstream.
	resp, _ = do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "2s")
	if resp.StatusCode != 429 || s.hits.Load() != 1 {
		t.Errorf("during the cool-down: %d, upstream hits %d (want 1)", resp.StatusCode, s.hits.Load())
	}
}

func TestRetryBudgetBoundsAttempts(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(503)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 3, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0.2, min_per_second: 1}}
    breaker: {enabled: false}
`, up))
	const requests = 200
	start := time.Now()
	exhausted := 0
	for range requests {
		resp, body := do(t, "GET", b.base+"/x", "")
		if resp.StatusCode == 503 && strings.Contains(body, "budget_exhausted") {
			exhausted++
		}
	}
	seconds := time.Since(start).Seconds()
	// ttl 10s of min_per_second reserve, plus the ratio of the requests.
	bound := float64(requests)*(1+0.2) + 1*(seconds+10) + 1
	if got := float64(hits.Load()); got > bound {
		t.Errorf("upstream attempts %v > bound %v (requests × (1 + ratio) + min_per_second × (seconds + ttl))", got, bound)
	}
	if hits.Load() >= 3*requests {
		t.Errorf("no budget applied: %d attempts", hits.Load())
	}
	if exhausted == 0 || b.metric("ballast_retry_budget_exhausted_total", map[string]string{"route": "r"}) < 1 {
		t.Errorf("budget exhaustion not reported: %d responses, metric %v", exhausted, b.metric("ballast_retry_budget_exhausted_total", nil))
	}
}

func TestFallbackWhenPrimaryIsDown(t *testing.T) {
	var seen atomic.Value
	fb, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("Authorization") + "|" + r.URL.Path)
		io.WriteString(w, "from fallback")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /api/}
    upstream: http://%s/v1/
    strip_prefix: true
    headers: {set: {Authorization: "Bearer primary"}}
    fallbacks:
      - upstream: %s/backup/
        headers: {set: {Authorization: "Bearer ${BACKUP_KEY}"}}
    retry: {backoff: {base: 1ms, max: 2ms}}
`, deadAddr(t), fb), "BACKUP_KEY=sk-backup")
	resp, body := do(t, "GET", b.base+"/api/models", "")
	if resp.StatusCode != 200 || body != "from fallback" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if got := seen.Load(); got != "Bearer sk-backup|/backup/models" {
		t.Errorf("fallback saw %v", got)
	}
	if up := resp.Header.Get("X-Ballast-Upstream"); !strings.HasPrefix(fb, "http://"+up) {
		t.Errorf("X-Ballast-Upstream %q, want the fallback %s", up, fb)
	}
	if resp.Header.Get("X-Ballast-Attempts") != "4" {
		t.Errorf("X-Ballast-Attempts %q, want 4 (3 on the primary, 1 on the fallback)", resp.Header.Get("X-Ballast-Attempts"))
	}
}

func TestBreakerOpensAndFailsFast(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{}
	for range 2 {
		s.steps = append(s.steps, status(500))
	}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    breaker: {failures: 2, open_for: 10s}
`, up))
	for range 2 {
		if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 500 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 || s.hits.Load() != 2 {
		t.Fatalf("with the breaker open: %d (hits %d): %s", resp.StatusCode, s.hits.Load(), body)
	}
	if p := decodeProblem(t, resp, body); p.Reason != "breaker_open" || p.RetryAfterS != 10 {
		t.Errorf("problem %+v", p)
	}
	upName := strings.TrimPrefix(up, "http://")
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": upName}); got != 2 {
		t.Errorf("ballast_breaker_state = %v, want 2 (open)", got)
	}
	clock.Advance(10 * time.Second) // half open: one probe, which succeeds
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after open_for: %d %q", resp.StatusCode, body)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": upName}); got != 0 {
		t.Errorf("ballast_breaker_state = %v after a good probe, want 0", got)
	}
}

func TestStreamRetriedOnlyBeforeTheFirstByte(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){
		status(503),
		func(w http.ResponseWriter, r *http.Request) { // streams, then breaks
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: 1\n\n")
			w.(http.Flusher).Flush()
			reset(w, r)
		},
	}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ""))
	resp, err := client(t).Get(b.base + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Errorf("attempts %q: the 503 before the stream must be retried", resp.Header.Get("X-Ballast-Attempts"))
	}
	if err == nil {
		t.Error("the stream broke after its first byte; the agent must see an error, not a retry or a clean end")
	}
	if s.hits.Load() != 2 {
		t.Errorf("hits %d: a stream is never retried after its first byte", s.hits.Load())
	}
}

// deadAddr is a loopback address nothing listens on.
// deadAddr returns a loopback address nothing listens on, from below the
// ephemeral range: a port freed after listening on :0 may be handed to
// another test's listener (a hanging upstream, say) a moment later.
func deadAddr(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestHedgingBeatsASlowAttempt(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			select { // the first attempt is slow
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "fast")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, hedge_after: 100ms, timeouts: {per_try: 5s}}
`, up))
	start := time.Now()
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 || body != "fast" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v: the hedge should answer long before the slow attempt's per_try", took)
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got != 1 {
		t.Errorf("hedges counted %v", got)
	}
	// A POST is never hedged.
	hits.Store(10)
	resp, _ = do(t, "POST", b.base+"/x", "{}")
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got != 1 {
		t.Errorf("a POST was hedged (%v)", got)
	}
}

// The slow copy of a hedged request is called off once the hedge
// answers: the upstream sees its connection close at once, not at the
// attempt's per_try, and /status does not count it as a failure.
func TestHedgeLoserIsCalledOff(t *testing.T) {
	gone := make(chan struct{}, 1)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			<-r.Context().Done() // the client went away
			gone <- struct{}{}
			return
		}
		io.WriteString(w, "fast")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, hedge_after: 50ms, timeouts: {per_try: 60s, total: 120s}}
`, up))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 || body != "fast" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	select {
	case <-gone:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow copy still holds its upstream connection 10s after the hedge answered (per_try is 60s)")
	}
	waitFor(t, func() bool {
		var st struct {
			Routes []struct {
				Upstreams []struct {
					Requests, Failures uint64
					InFlight           int64 `json:"inflight"`
				} `json:"upstreams"`
			} `json:"routes"`
		}
		_, raw := get(t, client(t), b.admin+"/status")
		if err := json.Unmarshal([]byte(raw), &st); err != nil || len(st.Routes) != 1 || len(st.Routes[0].Upstreams) != 1 {
			t.Fatalf("/status: %v %s", err, raw)
		}
		u := st.Routes[0].Upstreams[0]
		if u.Failures != 0 {
			t.Fatalf("/status counts the called-off copy as a failure: %+v", u)
		}
		return u.InFlight == 0 && u.Requests == 1
	})
}

// Providers limit per API key: a 429 for one agent's key pauses the
// requests that carry that key, not another agent's. A key the route sets
// itself is everyone's, so there one 429 pauses every agent.
func TestCooldownIsPerCredential(t *testing.T) {
	for _, tt := range []struct {
		name        string
		routeKeys   string
		otherPaused bool
	}{
		{name: "the agents' own keys", routeKeys: "", otherPaused: false},
		{name: "the route's key", routeKeys: `, headers: {set: {Authorization: "Bearer route-key"}}`, otherPaused: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var hits, limited atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if r.Header.Get("Authorization") != "Bearer bob" && limited.Add(1) == 1 {
					w.Header().Set("Retry-After", "30")
					w.WriteHeader(429)
					return
				}
				io.WriteString(w, "ok")
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q%s}
`, up, tt.routeKeys))
			if resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer alice", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 {
				t.Fatalf("alice's first request: %d, want the upstream's 429", resp.StatusCode)
			}
			// Alice's key is paused: her next request never reaches the upstream.
			if resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer alice", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 || hits.Load() != 1 {
				t.Fatalf("alice during her pause: %d, upstream hits %d (want 1)", resp.StatusCode, hits.Load())
			}
			resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer bob", "X-Ballast-Timeout", "2s")
			if paused := resp.StatusCode == 429 && hits.Load() == 1; paused != tt.otherPaused {
				t.Errorf("bob: %d, upstream hits %d; paused = %v, want %v", resp.StatusCode, hits.Load(), paused, tt.otherPaused)
			}
			if got := b.metric("ballast_cooldown_seconds", nil); got < 25 {
				t.Errorf("ballast_cooldown_seconds = %v, want alice's pause (about 30)", got)
			}
		})
	}
}

// A half-open breaker's probe that the rate limit then stops is given
// back: the next request probes, instead of every request being refused
// for want of the lost probe's outcome.
func TestBreakerProbeStoppedByTheRateLimitIsGivenBack(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503)}}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    breaker: {failures: 1, failure_ratio: 0, open_for: 10s}
    rate_limit: {rps: 0.05, burst: 1, max_wait: 0s}
`, up))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Fatalf("the failing attempt: %d", resp.StatusCode)
	}
	clock.Advance(11 * time.Second) // half open; the rate limit's token is back at 20s
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 429 {
		t.Fatalf("the probe stopped by the rate limit: %d %s", resp.StatusCode, body)
	}
	clock.Advance(10 * time.Second)
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("after the rate limit refilled: %d %s (the breaker kept waiting for a probe that never ran)", resp.StatusCode, body)
	}
}

// A timeout the agent's own short deadline caused (X-Ballast-Timeout
// below per_try) says nothing about the upstream: it does not count
// against the breaker every agent shares.
func TestClippedTimeoutDoesNotCountAgainstTheBreaker(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){hang(release), hang(release)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    timeouts: {per_try: 10s}
    breaker: {failures: 1, failure_ratio: 0}
`, up))
	for range 2 {
		if resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "50ms"); resp.StatusCode != 504 {
			t.Fatalf("a request with a 50ms deadline on a hanging upstream: %d %s", resp.StatusCode, body)
		}
	}
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("after two agent-clipped timeouts: %d %s", resp.StatusCode, body)
	}
}

// An agent that closes its connection while its request is being tried
// gets no retries: they would call the upstream (and pay for a model call)
// for nobody. A call guarded by an idempotency key runs on, since the
// agent's retry attaches to it.
func TestNoRetryForAnAgentThatLeft(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		headers      string
		backoff      string
		hits         int64
	}{
		// A backoff of a minute: the request ends at once, not after it.
		{name: "unkeyed", method: "GET", backoff: "60s", hits: 1},
		{name: "keyed, detached", method: "POST", headers: "Idempotency-Key: k1\r\n", backoff: "1ms", hits: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			first, proceed := make(chan struct{}), make(chan struct{})
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					close(first)
					<-proceed
					w.WriteHeader(503)
					return
				}
				w.WriteHeader(200)
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 2, backoff: {base: %s, max: %s}}
    timeouts: {total: 120s}
    idempotency: {mode: header}
`, up, tc.backoff, tc.backoff))
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(conn, "%s /x HTTP/1.1\r\nHost: x\r\n%sContent-Length: 2\r\n\r\n{}", tc.method, tc.headers)
			<-first
			conn.Close() // the agent gives up while the first attempt runs
			close(proceed)
			waitFor(t, func() bool {
				b.srv.FlushAccessLog()
				return strings.Contains(b.logs.String(), `"msg":"request"`)
			})
			if n := hits.Load(); n != tc.hits {
				t.Errorf("upstream hits %d, want %d", n, tc.hits)
			}
			if tc.hits == 1 && !strings.Contains(b.logs.String(), `"stopped":"agent_gone"`) {
				t.Errorf("the log does not say why ballast stopped: %s", b.logs.String())
			}
		})
	}
}
