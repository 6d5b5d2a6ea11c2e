package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// Audit of retries, backoff, server hints, the shared cool-down, the retry
// budget, the breaker and hedging (docs/retries.md, docs/config.md#retry).
// Every wait runs on a fake clock; upstreams are real loopback servers that
// count what reaches them.

// raResult is one agent request's answer, read whole.
type raResult struct {
	resp *http.Response
	body string
	err  error
	at   time.Time // when the answer had been read whole
}

// raSend sends a request from a goroutine of its own; the answer arrives
// on the channel.
func raSend(t *testing.T, method, url, body string, headers ...string) <-chan raResult {
	t.Helper()
	c := client(t)
	ch := make(chan raResult, 1)
	go func() {
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			ch <- raResult{err: err}
			return
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			ch <- raResult{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- raResult{resp: resp, body: string(b), err: err, at: time.Now()}
	}()
	return ch
}

// raAtOnce returns the answer of a request that must not wait on clock at
// all. When the request starts a wait instead, the probe fails, and the
// clock is moved on until the request ends, so the test can finish.
func raAtOnce(t *testing.T, clock *policy.FakeClock, ch <-chan raResult, why string) raResult {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	failed := false
	for {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("request: %v", r.err)
			}
			return r
		case <-time.After(2 * time.Millisecond):
		}
		if clock.Waiters() > 0 {
			if !failed {
				t.Errorf("%s: ballast started a wait instead of answering at once", why)
				failed = true
			}
			clock.Advance(time.Hour)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no answer within 5s", why)
		}
	}
}

// raAnswer waits (in real time, bounded) for the answer of a request that
// needs no more clock moves.
func raAnswer(t *testing.T, ch <-chan raResult) raResult {
	t.Helper()
	return raWithin(t, ch, 10*time.Second, "no answer within 10s")
}

// raWithin is raAnswer with a bound of the test's own, and the failure to
// report when the answer does not come within it.
func raWithin(t *testing.T, ch <-chan raResult, bound time.Duration, late string) raResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		return r
	case <-time.After(bound):
		t.Fatal(late)
	}
	return raResult{}
}

// raReady returns the answer on ch if it has come, without waiting for
// one: for a test that must see a request still unanswered.
func raReady(t *testing.T, ch <-chan raResult) (raResult, bool) {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("request: %v", r.err)
		}
		return r, true
	default:
		return raResult{}, false
	}
}

// raCollect hands each answer that has come on pending to got, without
// waiting, and returns the requests still unanswered: for a test that
// counts answers while others are held.
func raCollect(t *testing.T, pending []<-chan raResult, got func(raResult)) []<-chan raResult {
	t.Helper()
	waiting := pending[:0]
	for _, ch := range pending {
		if r, ok := raReady(t, ch); ok {
			got(r)
		} else {
			waiting = append(waiting, ch)
		}
	}
	return waiting
}

// raReleases advances clock by d and reports whether that ended every
// pending wait (a wait still pending goes on past d).
func raReleases(clock *policy.FakeClock, d time.Duration) bool {
	clock.Advance(d)
	return clock.Waiters() == 0
}

// raEventually polls cond for up to 2s of real time.
func raEventually(cond func() bool) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// raRawUpstream is a raw loopback upstream: the n-th request (from 1) is
// answered with the exact bytes answer(n) returns. It counts requests.
type raRawUpstream struct {
	url  string
	hits atomic.Int64
}

func raRaw(t *testing.T, answer func(n int64) string) *raRawUpstream {
	t.Helper()
	u := &raRawUpstream{}
	u.url = serveRawHeads(t, func(string) string { return answer(u.hits.Add(1)) })
	return u
}

// --- the retry budget ----------------------------------------------------------

// The retry budget is consulted when a retry is decided, before its wait:
// an agent whose retry the budget refuses is answered 503 budget_exhausted
// at once, not after sitting out a Retry-After (or a backoff) that could
// only end in that refusal (retries.md "The retry decision": attempts
// left, then the budget, then the wait; Finagle and Envoy withdraw when
// they schedule the retry).
func TestRetriesAuditBudgetRefusesBeforeTheWait(t *testing.T) {
	for _, tc := range []struct {
		name string
		step func(http.ResponseWriter, *http.Request)
		back string
	}{
		{name: "a 429's Retry-After", step: status(429, "Retry-After", "20"), back: "1ms"},
		{name: "a 503's backoff", step: status(503), back: "10s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){tc.step, tc.step}}
			up, _ := upstream(t, s.handler)
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: %s, max: %s}, budget: {ratio: 0, min_per_second: 0}}
    breaker: {enabled: false}
    timeouts: {total: 60s}
`, up, tc.back, tc.back))
			r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "a retry the budget refuses")
			if r.resp.StatusCode != 503 {
				t.Fatalf("status %d, want 503 budget_exhausted: %s", r.resp.StatusCode, r.body)
			}
			if p := decodeProblem(t, r.resp, r.body); p.Reason != "budget_exhausted" || p.Attempts != 1 || p.RetryAfterS != 1 {
				t.Errorf("problem %+v", p)
			}
			if s.hits.Load() != 1 {
				t.Errorf("upstream hits %d, want 1", s.hits.Load())
			}
			if got := b.metricSum("ballast_retries_total", map[string]string{"route": "r"}); got != 0 {
				t.Errorf("ballast_retries_total = %v for a retry that never happened", got)
			}
		})
	}
}

// A retry the budget allows is paid once, and the budget is not charged
// for retries that never go out: a hint that cannot fit the deadline moves
// on without spending a retry, so the next request may still retry.
func TestRetriesAuditBudgetNotSpentOnRetriesNotMade(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	// min_per_second 0.1 over a 10s window: exactly one retry.
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){
		status(503, "Retry-After", "30"), // 30s cannot fit 10s: no retry, no withdrawal
		status(503),                      // retried with the one retry
	}}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0, min_per_second: 0.1}}
    breaker: {enabled: false}
    timeouts: {total: 10s}
`, up))
	r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "a hint beyond the deadline")
	if r.resp.StatusCode != 503 || r.resp.Header.Get("Retry-After") != "30" {
		t.Fatalf("hint beyond the deadline: %d Retry-After %q: %s", r.resp.StatusCode, r.resp.Header.Get("Retry-After"), r.body)
	}
	ch := raSend(t, "GET", b.base+"/y", "")
	waitFor(t, func() bool { return s.hits.Load() == 3 || clock.Waiters() > 0 })
	clock.Advance(time.Millisecond)
	r = raAnswer(t, ch)
	if r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Errorf("second request: %d attempts %q: %s (the first request's unsent retry was charged)",
			r.resp.StatusCode, r.resp.Header.Get("X-Ballast-Attempts"), r.body)
	}
}

// --- the deadline law ------------------------------------------------------------

// A wait that ends exactly at the deadline leaves no time for the attempt
// it waits for: ballast must not start it (retries.md "The deadline law"),
// but answer at once with the hint.
func TestRetriesAuditWaitEndingAtTheDeadline(t *testing.T) {
	t.Run("server hint", func(t *testing.T) {
		clock := policy.NewFakeClock(time.Now())
		s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, "Retry-After", "10")}}
		up, _ := upstream(t, s.handler)
		b := startBallastClock(t, clock, retryRoute(up, ""))
		r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "a 10s hint against a 10s deadline")
		if r.resp.StatusCode != 429 || s.hits.Load() != 1 {
			t.Fatalf("%d, hits %d: %s", r.resp.StatusCode, s.hits.Load(), r.body)
		}
		if p := decodeProblem(t, r.resp, r.body); p.Reason != "rate_limited" || p.RetryAfterS != 10 || p.Attempts != 1 {
			t.Errorf("problem %+v", p)
		}
	})
	t.Run("shared cool-down", func(t *testing.T) {
		clock := policy.NewFakeClock(time.Now())
		s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, "Retry-After", "10")}}
		up, _ := upstream(t, s.handler)
		b := startBallastClock(t, clock, retryRoute(up, ", attempts: 1"))
		if r := raAnswer(t, raSend(t, "GET", b.base+"/x", "")); r.resp.StatusCode != 429 {
			t.Fatalf("first: %d", r.resp.StatusCode)
		}
		// The pause ends exactly when this request's 10s deadline does.
		r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "a 10s cool-down against a 10s deadline")
		if r.resp.StatusCode != 429 || s.hits.Load() != 1 {
			t.Fatalf("%d, hits %d: %s", r.resp.StatusCode, s.hits.Load(), r.body)
		}
		if p := decodeProblem(t, r.resp, r.body); p.Reason != "rate_limited" || p.RetryAfterS != 10 || p.Attempts != 0 {
			t.Errorf("problem %+v", p)
		}
	})
}

// The last attempt's per_try window is cut to the time the deadline
// leaves, and when it runs out the agent gets 504 timeout counting both
// attempts, well before per_try.
func TestRetriesAuditLastTryCutToTheDeadline(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var started atomic.Value
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){
		func(w http.ResponseWriter, r *http.Request) {
			clock.Advance(2700 * time.Millisecond) // the first attempt took 2.7s of the 3s
			status(503)(w, r)
		},
		func(w http.ResponseWriter, r *http.Request) {
			started.Store(time.Now())
			hang(release)(w, r)
		},
	}}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    timeouts: {per_try: 2500ms, total: 3s}
`, up))
	ch := raSend(t, "GET", b.base+"/x", "")
	waitFor(t, func() bool { return s.hits.Load() == 2 || clock.Waiters() > 0 })
	clock.Advance(time.Millisecond)
	r := raAnswer(t, ch)
	if r.resp.StatusCode != 504 {
		t.Fatalf("status %d, want 504: %s", r.resp.StatusCode, r.body)
	}
	if st, ok := started.Load().(time.Time); !ok || time.Since(st) > 1500*time.Millisecond {
		t.Errorf("the last attempt ran %v; the deadline left it under 300ms (per_try is 2.5s)", time.Since(st))
	}
	if p := decodeProblem(t, r.resp, r.body); p.Reason != "timeout" || p.Attempts != 2 {
		t.Errorf("problem %+v", p)
	}
	if s.hits.Load() != 2 {
		t.Errorf("hits %d, want 2: no attempt after the deadline", s.hits.Load())
	}
}

// --- server hints ------------------------------------------------------------------

// A hint counts from when the response arrived (RFC 9110 §10.2.3: "the
// number of seconds to delay after the response is received"), not from
// when the attempt began: a 429 that took 10s to come with Retry-After: 30
// pauses the key for 30s from its arrival, and an HTTP-date is waited for
// until that date, not 10s longer.
func TestRetriesAuditHintCountsFromTheResponse(t *testing.T) {
	t.Run("cool-down after delta seconds", func(t *testing.T) {
		clock := policy.NewFakeClock(time.Now())
		s := &scripted{steps: []func(http.ResponseWriter, *http.Request){func(w http.ResponseWriter, r *http.Request) {
			clock.Advance(10 * time.Second) // a slow answer
			status(429, "Retry-After", "30")(w, r)
		}}}
		up, addr := upstream(t, s.handler)
		b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, timeouts: {per_try: 60s, total: 120s}}
`, up))
		if r := raAnswer(t, raSend(t, "GET", b.base+"/x", "")); r.resp.StatusCode != 429 {
			t.Fatalf("first: %d", r.resp.StatusCode)
		}
		if got := b.metric("ballast_cooldown_seconds", map[string]string{"upstream": addr}); got < 29.9 || got > 30 {
			t.Errorf("ballast_cooldown_seconds = %v right after the 429, want 30", got)
		}
		r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "1s"), "during the cool-down")
		if p := decodeProblem(t, r.resp, r.body); p.Reason != "rate_limited" || p.RetryAfterS != 30 {
			t.Errorf("during the cool-down: %+v, want Retry-After 30", p)
		}
	})
	t.Run("retry after an HTTP-date", func(t *testing.T) {
		clock := policy.NewFakeClock(time.Now().Truncate(time.Second))
		s := &scripted{steps: []func(http.ResponseWriter, *http.Request){func(w http.ResponseWriter, r *http.Request) {
			clock.Advance(10 * time.Second)
			status(503, "Retry-After", clock.Now().Add(5*time.Second).UTC().Format(http.TimeFormat))(w, r)
		}}}
		up, _ := upstream(t, s.handler)
		b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {backoff: {base: 1ms, max: 1ms}}, timeouts: {per_try: 60s, total: 120s}}
`, up))
		ch := raSend(t, "GET", b.base+"/x", "")
		waitFor(t, func() bool { return clock.Waiters() == 1 })
		if !raReleases(clock, 5*time.Second) {
			t.Errorf("not retried at the date the upstream named: still waiting")
			clock.Advance(time.Hour)
		}
		if r := raAnswer(t, ch); r.resp.StatusCode != 200 {
			t.Errorf("status %d", r.resp.StatusCode)
		}
	})
	t.Run("exhausted limit on a success", func(t *testing.T) {
		clock := policy.NewFakeClock(time.Now())
		s := &scripted{steps: []func(http.ResponseWriter, *http.Request){func(w http.ResponseWriter, r *http.Request) {
			clock.Advance(10 * time.Second)
			w.Header().Set("x-ratelimit-remaining-requests", "0")
			w.Header().Set("x-ratelimit-reset-requests", "30s")
			_, _ = io.WriteString(w, "ok")
		}}}
		up, addr := upstream(t, s.handler)
		b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, timeouts: {per_try: 60s, total: 120s}}
`, up))
		if r := raAnswer(t, raSend(t, "GET", b.base+"/x", "")); r.resp.StatusCode != 200 {
			t.Fatalf("first: %d", r.resp.StatusCode)
		}
		if got := b.metric("ballast_cooldown_seconds", map[string]string{"upstream": addr}); got < 29.9 || got > 30 {
			t.Errorf("ballast_cooldown_seconds = %v right after the answer, want 30", got)
		}
	})
}

// The hint values a 429 may carry, well-formed and hostile, read from the
// raw bytes an upstream sends. A valid hint is waited for exactly; an
// invalid one is ignored, leaving only the backoff (under 1ms here); one
// over max_retry_after (60s) is answered at once with 429 rate_limited and
// the hint as Retry-After.
func TestRetriesAuditServerHintValues(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	date := func(d time.Duration) string { return start.Add(d).UTC().Format(http.TimeFormat) }
	instant := func(d time.Duration) string { return start.Add(d).UTC().Format(time.RFC3339) }
	for _, tc := range []struct {
		name    string
		headers string        // raw header lines of the 429, each ending in \r\n
		wait    time.Duration // the wait before the retry; 0: backoff only
		answer  int           // when > 0: answered at once, Retry-After = answer
	}{
		{name: "seconds", headers: "Retry-After: 3\r\n", wait: 3 * time.Second},
		{name: "fractional seconds", headers: "Retry-After: 1.5\r\n", wait: 1500 * time.Millisecond},
		{name: "whitespace around", headers: "Retry-After: \t 2 \t\r\n", wait: 2 * time.Second},
		{name: "zero", headers: "Retry-After: 0\r\n"},
		{name: "exactly max_retry_after", headers: "Retry-After: 60\r\n", wait: time.Minute},
		{name: "just over max_retry_after", headers: "Retry-After: 60.5\r\n", answer: 61},
		{name: "retry-after-ms over max_retry_after", headers: "retry-after-ms: 90000\r\n", answer: 90},
		{name: "HTTP-date in the future", headers: "Retry-After: " + date(5*time.Second) + "\r\n", wait: 5 * time.Second},
		{name: "HTTP-date in the past", headers: "Retry-After: " + date(-time.Hour) + "\r\n"},
		{name: "HTTP-date beyond the cap", headers: "Retry-After: " + date(2*time.Hour) + "\r\n", answer: 7200},
		{name: "HTTP-date two years out", headers: "Retry-After: " + date(2*366*24*time.Hour) + "\r\n"},
		{name: "negative", headers: "Retry-After: -5\r\n"},
		{name: "exponent", headers: "Retry-After: 1e9\r\n"},
		{name: "sign", headers: "Retry-After: +5\r\n"},
		{name: "huge", headers: "Retry-After: 99999999999999999999999\r\n"},
		{name: "over a year", headers: "Retry-After: 40000000\r\n"},
		{name: "empty", headers: "Retry-After: \r\n"},
		{name: "non-ASCII digits", headers: "Retry-After: \xef\xbc\x95\r\n"},
		{name: "trailing garbage", headers: "Retry-After: 5s\r\n"},
		{name: "two values in one line", headers: "Retry-After: 3, 60\r\n"},
		{name: "several lines: the longest", headers: "Retry-After: 3\r\nRetry-After: 60\r\n", wait: time.Minute}, // see TestEdgesAuditRepeatedHintLines
		{name: "an empty line, then a value", headers: "Retry-After: \r\nRetry-After: 4\r\n", wait: 4 * time.Second},
		{name: "lower-case name", headers: "retry-after: 2\r\n", wait: 2 * time.Second},
		{name: "retry-after-ms wins over Retry-After", headers: "Retry-After: 3\r\nretry-after-ms: 2500\r\n", wait: 2500 * time.Millisecond},
		{name: "bad retry-after-ms falls back to Retry-After", headers: "retry-after-ms: soon\r\nRetry-After: 3\r\n", wait: 3 * time.Second},
		{name: "OpenAI 1s", headers: "x-ratelimit-reset-requests: 1s\r\n", wait: time.Second},
		{name: "OpenAI 20ms", headers: "x-ratelimit-reset-requests: 20ms\r\n", wait: 20 * time.Millisecond},
		{name: "OpenAI 1m30.5s", headers: "x-ratelimit-reset-tokens: 1m30.5s\r\n", answer: 91},
		{name: "OpenAI 6m0s", headers: "x-ratelimit-reset-requests: 6m0s\r\n", answer: 360},
		{name: "OpenAI 1h2m3.5s", headers: "x-ratelimit-reset-tokens: 1h2m3.5s\r\n", answer: 3724},
		{name: "OpenAI garbage", headers: "x-ratelimit-reset-requests: soon\r\n"},
		{name: "OpenAI negative", headers: "x-ratelimit-reset-requests: -1s\r\n"},
		{name: "OpenAI exhausted limit wins", headers: "x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 2s\r\n" +
			"x-ratelimit-remaining-tokens: 5000\r\nx-ratelimit-reset-tokens: 9s\r\n", wait: 2 * time.Second},
		{name: "OpenAI latest of all when none is exhausted", headers: "x-ratelimit-reset-requests: 2s\r\nx-ratelimit-reset-tokens: 4s\r\n", wait: 4 * time.Second},
		{name: "Anthropic reset ahead", headers: "anthropic-ratelimit-requests-remaining: 0\r\nanthropic-ratelimit-requests-reset: " + instant(3*time.Second) + "\r\n", wait: 3 * time.Second},
		{name: "Anthropic reset in the past", headers: "anthropic-ratelimit-tokens-remaining: 0\r\nanthropic-ratelimit-tokens-reset: " + instant(-time.Minute) + "\r\n"},
		{name: "Anthropic reset not RFC 3339", headers: "anthropic-ratelimit-requests-reset: tomorrow\r\n"},
		{name: "Retry-After wins over resets", headers: "x-ratelimit-reset-requests: 9s\r\nRetry-After: 2\r\n", wait: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(start)
			up := raRaw(t, func(n int64) string {
				if n == 1 {
					return "HTTP/1.1 429 Too Many Requests\r\n" + tc.headers + "Content-Length: 0\r\n\r\n"
				}
				return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
			})
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    timeouts: {total: 10m}
`, up.url))
			ch := raSend(t, "GET", b.base+"/x", "")
			if tc.answer > 0 {
				r := raAtOnce(t, clock, ch, "a hint over max_retry_after")
				if p := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 429 || p.Reason != "rate_limited" ||
					r.resp.Header.Get("Retry-After") != strconv.Itoa(tc.answer) || up.hits.Load() != 1 {
					t.Errorf("%d Retry-After %q hits %d: %+v; want 429 rate_limited with Retry-After %d at once",
						r.resp.StatusCode, r.resp.Header.Get("Retry-After"), up.hits.Load(), p, tc.answer)
				}
				return
			}
			if tc.wait == 0 { // the backoff alone: under 1ms, perhaps no wait at all
				waitFor(t, func() bool { return up.hits.Load() == 2 || clock.Waiters() > 0 })
				clock.Advance(time.Millisecond)
			} else {
				waitFor(t, func() bool { return clock.Waiters() == 1 })
				clock.Advance(tc.wait - time.Millisecond)
				if up.hits.Load() != 1 || clock.Waiters() != 1 {
					t.Errorf("retried before the hint of %v ran out", tc.wait)
				}
				if !raReleases(clock, time.Millisecond) {
					t.Errorf("not retried when the hint of %v ran out (waiting longer)", tc.wait)
					clock.Advance(time.Hour)
				}
			}
			r := raAnswer(t, ch)
			if r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Attempts") != "2" {
				t.Errorf("%d attempts %q: %s", r.resp.StatusCode, r.resp.Header.Get("X-Ballast-Attempts"), r.body)
			}
		})
	}
}

// A hint that cannot fit the deadline is not waited for: the agent gets
// 429 rate_limited with the hint as Retry-After at once, and with a
// fallback, the fallback answers at once instead.
func TestRetriesAuditHintBeyondTheDeadline(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, "Retry-After", "45")}}
	prim, _ := upstream(t, s.handler)
	fb := &scripted{}
	fbURL, fbAddr := upstream(t, fb.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: solo
    match: {path_prefix: /solo/}
    upstream: %q
    timeouts: {total: 30s}
  - name: fb
    match: {path_prefix: /fb/}
    upstream: %q
    fallbacks: [{upstream: %q}]
    timeouts: {total: 30s}
`, prim, prim, fbURL))
	r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/solo/x", ""), "a 45s hint against a 30s deadline")
	if p := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 429 || p.Reason != "rate_limited" || p.RetryAfterS != 45 || p.Attempts != 1 {
		t.Errorf("%d %+v", r.resp.StatusCode, p)
	}
	// The primary is now paused for 45s: the fallback answers at once.
	r = raAtOnce(t, clock, raSend(t, "GET", b.base+"/fb/x", ""), "a paused primary with a fallback")
	if r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Upstream") != fbAddr || r.resp.Header.Get("X-Ballast-Attempts") != "1" {
		t.Errorf("%d upstream %q attempts %q: %s", r.resp.StatusCode, r.resp.Header.Get("X-Ballast-Upstream"),
			r.resp.Header.Get("X-Ballast-Attempts"), r.body)
	}
	if s.hits.Load() != 1 || fb.hits.Load() != 1 {
		t.Errorf("primary hits %d (want 1), fallback hits %d (want 1)", s.hits.Load(), fb.hits.Load())
	}
}

// --- attempts and what is retried -------------------------------------------------

// attempts = 1 + retries, in the answer's header, the metrics and the
// decision trail.
func TestRetriesAuditAttemptsCountedExactly(t *testing.T) {
	s := &scripted{}
	for range 10 {
		s.steps = append(s.steps, status(503))
	}
	up, addr := upstream(t, s.handler)
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 4, backoff: {base: 1ms, max: 1ms}}
    breaker: {enabled: false}
`, up))
	resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Debug", "1")
	if resp.StatusCode != 503 || resp.Header.Get("X-Ballast-Attempts") != "4" || s.hits.Load() != 4 {
		t.Fatalf("%d attempts %q hits %d: %s", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"), s.hits.Load(), body)
	}
	if got := strings.Count(resp.Header.Get("X-Ballast-Trail"), "transient 503"); got != 4 {
		t.Errorf("the trail shows %d attempts, want 4: %q", got, resp.Header.Get("X-Ballast-Trail"))
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr, "outcome": "transient"}, 4},
		{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr}, 4},
		{"ballast_retries_total", map[string]string{"route": "r", "reason": "transient"}, 3},
		{"ballast_retries_total", map[string]string{"route": "r"}, 3},
		{"ballast_retry_wait_seconds", map[string]string{"route": "r"}, 3},
	} {
		if got := b.metricSum(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// Caller faults, auth and quota answers are never retried, even when
// retry.on lists their codes; 408 (a timeout) is retried once listed; a
// status retry.on does not list is not retried.
func TestRetriesAuditWhatIsNeverRetried(t *testing.T) {
	quota := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(429)
		_, _ = io.WriteString(w, `{"error":{"type":"insufficient_quota","code":"insufficient_quota","message":"out of credit"}}`)
	}
	tooLarge := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(429)
		_, _ = io.WriteString(w, `{"error":{"message":"Request too large for gpt-4 in organization org-x on tokens per min","type":"tokens","code":"rate_limit_exceeded"}}`)
	}
	listed := ", on: [400, 401, 402, 403, 404, 407, 409, 413, 422, 501, 505, 511, 408, 429]"
	for _, tc := range []struct {
		name  string
		on    string
		step  func(http.ResponseWriter, *http.Request)
		hits  int64
		class string
	}{
		{"400", listed, status(400), 1, ""},
		{"401", listed, status(401), 1, ""},
		{"402", listed, status(402), 1, ""},
		{"403", listed, status(403), 1, ""},
		{"404", listed, status(404), 1, ""},
		{"407", listed, status(407), 1, ""},
		{"409", listed, status(409), 1, ""},
		{"413", listed, status(413), 1, ""},
		{"422", listed, status(422), 1, ""},
		{"501", listed, status(501), 1, ""},
		{"505", listed, status(505), 1, ""},
		{"511", listed, status(511), 1, ""},
		{"insufficient_quota 429", listed, quota, 1, ""},
		{"request too large 429", listed, tooLarge, 1, ""},
		{"408 listed", listed, status(408), 2, ""},
		{"429 not listed", ", on: [503]", status(429), 1, ""},
		{"503 not listed", ", on: [429]", status(503), 1, ""},
		{"503 via gateway-error", ", on: [gateway-error]", status(503), 2, ""},
		{"599 via 5xx", ", on: [5xx]", status(599), 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){tc.step}}
			up, _ := upstream(t, s.handler)
			b := startBallast(t, retryRoute(up, tc.on))
			resp, body := do(t, "GET", b.base+"/x", "")
			if s.hits.Load() != tc.hits {
				t.Errorf("upstream hits %d, want %d (%d %s)", s.hits.Load(), tc.hits, resp.StatusCode, body)
			}
		})
	}
}

// --- retry safety -------------------------------------------------------------------

// A POST whose bytes may have reached the upstream is not sent again on a
// route that does not declare it safe: not after a reset of a fresh
// connection, not after a reused keep-alive connection closed once the
// request was written (Go's net/http resends only idempotent requests
// there), not after a 503 — unless the route makes it safe.
func TestRetriesAuditPostNeverResentOnceSent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		extra   string // retry keys
		block   string // route keys
		headers []string
		body    string
		hits    int64
	}{
		{name: "plain route", hits: 1},
		{name: "Idempotency-Key on a route without idempotency", headers: []string{"Idempotency-Key", "k-1"}, hits: 1},
		{name: "keyed, header mode", block: "    idempotency: {mode: header}\n", headers: []string{"Idempotency-Key", "k-2"}, hits: 2},
		{name: "unsafe_methods", extra: ", unsafe_methods: true", hits: 2},
		{name: "read-only JSON-RPC", extra: ", jsonrpc: true", body: `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, hits: 2},
		{name: "JSON-RPC tools/call", extra: ", jsonrpc: true", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}}`, hits: 1},
		{name: "JSON-RPC method spelled twice", extra: ", jsonrpc: true", body: `{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"rm"}}`, hits: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := tc.body
			if body == "" {
				body = `{"send":"mail"}`
			}
			for _, pooled := range []bool{false, true} {
				var posts atomic.Int64
				up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
					if r.Method != "POST" {
						_, _ = io.WriteString(w, "warm")
						return
					}
					_, _ = io.ReadAll(r.Body) // the whole request arrived
					if posts.Add(1) == 1 {
						reset(w, r)
						return
					}
					_, _ = io.WriteString(w, "ok")
				})
				b := startBallast(t, retryRoute(up, tc.extra)+tc.block)
				c := client(t)
				if pooled { // ballast's upstream pool now holds a keep-alive connection
					if resp, _ := get(t, c, b.base+"/warm"); resp.StatusCode != 200 {
						t.Fatalf("warm-up: %d", resp.StatusCode)
					}
				}
				req, _ := http.NewRequest("POST", b.base+"/x", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				for i := 0; i+1 < len(tc.headers); i += 2 {
					req.Header.Set(tc.headers[i], tc.headers[i+1])
				}
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				rb, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if posts.Load() != tc.hits {
					t.Errorf("pooled %v: the upstream saw the POST %d times, want %d (%d %s)", pooled, posts.Load(), tc.hits, resp.StatusCode, rb)
				}
				if tc.hits == 1 && resp.StatusCode != 502 {
					t.Errorf("pooled %v: status %d, want 502 upstream_unavailable", pooled, resp.StatusCode)
				}
			}
		})
	}
}

// --- the shared cool-down -----------------------------------------------------------

// The pause after a 429 belongs to the upstream and the key: a second
// route to the same upstream with the same key waits it out too, a route
// to another upstream does not, and once it ends requests flow again.
func TestRetriesAuditCooldownSharedByRoutesOfTheUpstream(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, "Retry-After", "20")}}
	up, _ := upstream(t, s.handler)
	other := &scripted{}
	otherURL, _ := upstream(t, other.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: a, match: {path_prefix: /a/}, upstream: %q, retry: {attempts: 1}, timeouts: {total: 60s}}
  - {name: b, match: {path_prefix: /b/}, upstream: %q, timeouts: {total: 60s}}
  - {name: c, match: {path_prefix: /c/}, upstream: %q, timeouts: {total: 60s}}
`, up, up, otherURL))
	if r := raAnswer(t, raSend(t, "GET", b.base+"/a/x", "", "Authorization", "Bearer k")); r.resp.StatusCode != 429 {
		t.Fatalf("first: %d", r.resp.StatusCode)
	}
	if r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/c/x", "", "Authorization", "Bearer k"), "another upstream"); r.resp.StatusCode != 200 {
		t.Errorf("another upstream: %d", r.resp.StatusCode)
	}
	ch := raSend(t, "GET", b.base+"/b/x", "", "Authorization", "Bearer k")
	waitFor(t, func() bool { return clock.Waiters() == 1 })
	clock.Advance(20*time.Second - time.Millisecond)
	if s.hits.Load() != 1 || clock.Waiters() != 1 {
		t.Fatalf("route b reached the paused upstream before the pause ended (hits %d)", s.hits.Load())
	}
	clock.Advance(time.Millisecond)
	if r := raAnswer(t, ch); r.resp.StatusCode != 200 || s.hits.Load() != 2 {
		t.Errorf("after the pause: %d, hits %d", r.resp.StatusCode, s.hits.Load())
	}
	// Over: a new request goes straight through.
	if r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/a/x", "", "Authorization", "Bearer k"), "after the pause"); r.resp.StatusCode != 200 {
		t.Errorf("after the pause: %d", r.resp.StatusCode)
	}
}

// --- the breaker --------------------------------------------------------------------

// A breaker-open primary is skipped, nothing sent, to the fallback; after
// open_for one probe goes through, a failed probe opens it again for
// open_for, and a good one closes it.
func TestRetriesAuditBreakerSkipAndHalfOpen(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var failing atomic.Bool
	failing.Store(true)
	var primHits atomic.Int64
	prim, primAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		primHits.Add(1)
		if failing.Load() {
			w.WriteHeader(502)
			return
		}
		_, _ = io.WriteString(w, "primary")
	})
	fb := &scripted{}
	fbURL, fbAddr := upstream(t, fb.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {attempts: 1}
    breaker: {failures: 2, failure_ratio: 0, open_for: 10s}
`, prim, fbURL))
	send := func() raResult { return raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "breaker") }
	for range 2 { // two failures on the primary: each moves on to the fallback
		if r := send(); r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Attempts") != "2" {
			t.Fatalf("%d attempts %q", r.resp.StatusCode, r.resp.Header.Get("X-Ballast-Attempts"))
		}
	}
	if primHits.Load() != 2 {
		t.Fatalf("primary hits %d", primHits.Load())
	}
	r := send() // open: skipped
	if r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Upstream") != fbAddr || r.resp.Header.Get("X-Ballast-Attempts") != "1" || primHits.Load() != 2 {
		t.Fatalf("open primary: %d upstream %q attempts %q primary hits %d", r.resp.StatusCode,
			r.resp.Header.Get("X-Ballast-Upstream"), r.resp.Header.Get("X-Ballast-Attempts"), primHits.Load())
	}
	clock.Advance(10 * time.Second) // half open: the probe fails
	if r := send(); r.resp.StatusCode != 200 || primHits.Load() != 3 {
		t.Fatalf("failed probe: %d primary hits %d", r.resp.StatusCode, primHits.Load())
	}
	clock.Advance(10*time.Second - time.Millisecond) // open again, for a whole open_for
	if r := send(); r.resp.Header.Get("X-Ballast-Upstream") != fbAddr || primHits.Load() != 3 {
		t.Fatalf("after a failed probe, before open_for: primary hits %d", primHits.Load())
	}
	failing.Store(false)
	clock.Advance(time.Millisecond)
	if r := send(); r.resp.Header.Get("X-Ballast-Upstream") != primAddr || r.body != "primary" {
		t.Fatalf("good probe: upstream %q %q", r.resp.Header.Get("X-Ballast-Upstream"), r.body)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": primAddr}); got != 0 {
		t.Errorf("ballast_breaker_state = %v after a good probe, want 0", got)
	}
}

// While half open, only half_open_requests probes go through at once; the
// others fail fast instead of piling onto a recovering upstream.
func TestRetriesAuditHalfOpenAdmitsOneProbe(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	release := make(chan struct{})
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.WriteHeader(502)
			return
		}
		<-release
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, breaker: {failures: 1, failure_ratio: 0, open_for: 10s}}
`, up))
	if r := raAnswer(t, raSend(t, "GET", b.base+"/x", "")); r.resp.StatusCode != 502 {
		t.Fatalf("first: %d", r.resp.StatusCode)
	}
	clock.Advance(10 * time.Second)
	probe := raSend(t, "GET", b.base+"/x", "")
	waitFor(t, func() bool { return hits.Load() == 2 })
	r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "half open, probe running")
	close(release)
	if p := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 503 || p.Reason != "breaker_open" || p.Attempts != 0 {
		t.Errorf("a second request while the probe runs: %d %+v", r.resp.StatusCode, p)
	}
	if r := raAnswer(t, probe); r.resp.StatusCode != 200 {
		t.Errorf("probe: %d", r.resp.StatusCode)
	}
	if hits.Load() != 2 {
		t.Errorf("hits %d, want 2", hits.Load())
	}
}

// --- hedging ------------------------------------------------------------------------

// A hedge goes out after hedge_after (on the clock) for a safe request
// only; it is counted once, in ballast_hedges_total and the trail, never
// as a second attempt; the slower copy is called off; a spent budget
// sends no hedge.
func TestRetriesAuditHedging(t *testing.T) {
	type hedgeCase struct {
		name    string
		method  string
		extra   string
		block   string
		headers []string
		body    string
		hedged  bool
	}
	for _, tc := range []hedgeCase{
		{name: "GET", method: "GET", hedged: true},
		{name: "PUT", method: "PUT", hedged: true},
		{name: "POST", method: "POST"},
		{name: "POST with unsafe_methods", method: "POST", extra: ", unsafe_methods: true"},
		{name: "keyed POST", method: "POST", block: "    idempotency: {mode: header}\n", headers: []string{"Idempotency-Key", "h-1"}, hedged: true},
		{name: "GET with the budget spent", method: "GET", extra: ", budget: {ratio: 0, min_per_second: 0}"},
		{name: "read-only JSON-RPC", method: "POST", extra: ", jsonrpc: true", body: `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, hedged: true},
		{name: "JSON-RPC tools/call", method: "POST", extra: ", jsonrpc: true", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			gone := make(chan struct{}, 1)
			release := make(chan struct{})
			var hits atomic.Int64
			up, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				if hits.Add(1) == 1 {
					select { // the first copy is slow
					case <-r.Context().Done():
						gone <- struct{}{}
					case <-release:
						_, _ = io.WriteString(w, "slow")
					}
					return
				}
				_, _ = io.WriteString(w, "fast")
			})
			b := startBallastClock(t, clock, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 2s
    retry: {backoff: {base: 1ms, max: 1ms}%s}
    timeouts: {per_try: 60s, total: 120s}
%s`, up, tc.extra, tc.block))
			headers := append([]string{"X-Ballast-Debug", "1"}, tc.headers...)
			body := tc.body
			if body == "" {
				body = "{}"
			}
			ch := raSend(t, tc.method, b.base+"/x", body, headers...)
			waitFor(t, func() bool { return hits.Load() == 1 })
			if tc.hedged {
				waitFor(t, func() bool { return clock.Waiters() == 1 })
				clock.Advance(2*time.Second - time.Millisecond)
				if hits.Load() != 1 {
					t.Fatalf("hedged before hedge_after")
				}
				clock.Advance(time.Millisecond)
				r := raAnswer(t, ch)
				if r.resp.StatusCode != 200 || r.body != "fast" || hits.Load() != 2 {
					t.Fatalf("%d %q hits %d", r.resp.StatusCode, r.body, hits.Load())
				}
				if r.resp.Header.Get("X-Ballast-Attempts") != "1" || strings.Count(r.resp.Header.Get("X-Ballast-Trail"), "ms") != 1 {
					t.Errorf("a hedge counted as an attempt: attempts %q trail %q", r.resp.Header.Get("X-Ballast-Attempts"), r.resp.Header.Get("X-Ballast-Trail"))
				}
				select {
				case <-gone:
				case <-time.After(5 * time.Second):
					t.Error("the slow copy was not called off")
				}
				for _, c := range []struct {
					name   string
					labels map[string]string
					want   float64
				}{
					{"ballast_hedges_total", map[string]string{"route": "r"}, 1},
					{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr, "outcome": "ok"}, 1},
					{"ballast_upstream_attempts_total", map[string]string{"route": "r", "upstream": addr}, 1},
					{"ballast_retries_total", map[string]string{"route": "r"}, 0},
				} {
					if got := b.metricSum(c.name, c.labels); got != c.want {
						t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
					}
				}
				return
			}
			// Not hedged: however long the clock runs, one copy only.
			for range 3 {
				clock.Advance(time.Minute)
			}
			if hits.Load() != 1 {
				t.Errorf("an unsafe (or unpaid) request was hedged: hits %d", hits.Load())
			}
			close(release)
			if r := raAnswer(t, ch); r.resp.StatusCode != 200 || r.body != "slow" {
				t.Errorf("%d %q", r.resp.StatusCode, r.body)
			}
			if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got > 0 {
				t.Errorf("ballast_hedges_total = %v", got)
			}
		})
	}
}

// --- backoff ------------------------------------------------------------------------

// Full-jitter backoff: the wait before retry n is below min(max, base·2ⁿ),
// so advancing the clock by that ceiling always releases the retry; it is
// never longer than backoff.max.
func TestRetriesAuditBackoffWithinItsCeiling(t *testing.T) {
	for round := range 5 { // the jitter is random: several draws
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			s := &scripted{}
			for range 5 {
				s.steps = append(s.steps, status(503))
			}
			up, _ := upstream(t, s.handler)
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 6, backoff: {base: 1s, max: 3s}}
    breaker: {enabled: false}
    timeouts: {total: 1h}
`, up))
			ch := raSend(t, "GET", b.base+"/x", "")
			for n, ceiling := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second} {
				want := int64(n + 2)
				waitFor(t, func() bool { return s.hits.Load() >= want || clock.Waiters() > 0 })
				if s.hits.Load() < want {
					clock.Advance(ceiling)
					if !raEventually(func() bool { return s.hits.Load() >= want }) {
						t.Fatalf("retry %d not sent within its ceiling %v", n, ceiling)
					}
				}
			}
			if r := raAnswer(t, ch); r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Attempts") != "6" {
				t.Errorf("%d attempts %q", r.resp.StatusCode, r.resp.Header.Get("X-Ballast-Attempts"))
			}
		})
	}
}

// Providers key their limits by API key, whichever header carries it
// (Authorization for OpenAI, x-api-key for Anthropic, api-key for Azure,
// x-goog-api-key for Google): one agent's 429 pauses its own key only.
func TestRetriesAuditCooldownKeyHeaders(t *testing.T) {
	for _, h := range []string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key"} {
		t.Run(h, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			var limited atomic.Bool
			limited.Store(true)
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if r.Header.Get(h) == "alice" && limited.Swap(false) {
					w.Header().Set("Retry-After", "30")
					w.WriteHeader(429)
					return
				}
				_, _ = io.WriteString(w, "ok")
			})
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, timeouts: {total: 10s}}
`, up))
			if r := raAnswer(t, raSend(t, "GET", b.base+"/x", "", h, "alice")); r.resp.StatusCode != 429 {
				t.Fatalf("alice: %d", r.resp.StatusCode)
			}
			if r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", "", h, "bob"), "another key"); r.resp.StatusCode != 200 {
				t.Errorf("bob: %d, want 200: another key is not paused", r.resp.StatusCode)
			}
			r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", "", h, "alice"), "the paused key")
			if p := decodeProblem(t, r.resp, r.body); p.Reason != "rate_limited" || p.Attempts != 0 || hits.Load() != 2 {
				t.Errorf("alice during her pause: %+v, hits %d", p, hits.Load())
			}
		})
	}
}

// What is not sent is not an attempt: a request whose rate-limit turn
// comes exactly at its deadline has no time left to send in, and is
// refused (429, never forwarded) rather than answered 504 for an attempt
// that never left.
func TestRetriesAuditRateLimitTurnAtTheDeadline(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.1, burst: 1, max_wait: 1m}, timeouts: {total: 10s}}
`, up))
	if r := raAnswer(t, raSend(t, "GET", b.base+"/x", "")); r.resp.StatusCode != 200 {
		t.Fatalf("first: %d", r.resp.StatusCode)
	}
	// The next token comes in 10s: exactly this request's deadline.
	r := raAtOnce(t, clock, raSend(t, "GET", b.base+"/x", ""), "a turn at the deadline")
	if p := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 429 || p.Reason != "rate_limited" || p.Attempts != 0 {
		t.Errorf("%d %+v", r.resp.StatusCode, p)
	}
	if s.hits.Load() != 1 {
		t.Errorf("hits %d", s.hits.Load())
	}
}

// The same for a token budget: tokens that come exactly at the deadline
// leave no time to send in, so the request is refused at once (429,
// never forwarded) rather than held to its deadline for a 504.
func TestRetriesAuditTokensAtTheDeadline(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	s := &scripted{}
	up, _ := upstream(t, s.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {tokens_per_minute: 600, max_wait: 1m}, timeouts: {total: 10s}}
`, up))
	if r := raAnswer(t, raSend(t, "POST", b.base+"/x", `{"max_tokens":600}`)); r.resp.StatusCode != 200 {
		t.Fatalf("first: %d", r.resp.StatusCode)
	}
	// 100 more tokens come at 10 a second: in 10s, this request's deadline.
	r := raAtOnce(t, clock, raSend(t, "POST", b.base+"/x", `{"max_tokens":100}`), "tokens at the deadline")
	if p := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 429 || p.Reason != "rate_limited" || p.Attempts != 0 {
		t.Errorf("%d %+v", r.resp.StatusCode, p)
	}
	if s.hits.Load() != 1 {
		t.Errorf("hits %d", s.hits.Load())
	}
}
