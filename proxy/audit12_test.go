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

	"github.com/ballast-proxy/ballast/policy"
)

// a12Result is an agent's answer, read in the background.
type a12Result struct {
	resp *http.Response
	body string
}

// a12Get sends GET url in the background; its answer arrives on the
// channel.
func a12Get(t *testing.T, url string) <-chan a12Result {
	t.Helper()
	c := client(t)
	done := make(chan a12Result, 1)
	go func() {
		resp, err := c.Get(url)
		if err != nil {
			done <- a12Result{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- a12Result{resp: resp, body: string(b)}
	}()
	return done
}

// a12Recv waits (at most 10s) for a value of ch.
func a12Recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10s", what)
		var zero T
		return zero
	}
}

// A 503's hint is cut to retry.max_cooldown, as a 429's is: a Retry-After
// of a year (delta-seconds or an HTTP-date) is what ballast answers with
// as at most max_cooldown, and, when max_retry_after allows the wait,
// what it waits for is max_cooldown, after which the retry goes out.
// Nor does a 503 pause the key (no cool-down).
func TestAudit12_ServiceUnavailableHintCappedByMaxCooldown(t *testing.T) {
	farDate := time.Now().Add(300 * 24 * time.Hour).UTC().Format(http.TimeFormat)
	tests := []struct {
		name       string
		retryAfter string
		retry      string // the route's retry block
		// wantRetryAfter, when not empty, is the Retry-After of the 503
		// the agent hears at once; otherwise ballast waits wantWait on
		// the fake clock and the retry answers 200.
		wantRetryAfter string
		wantWait       time.Duration
	}{
		{name: "delta-seconds answered as max_cooldown", retryAfter: "31536000",
			retry: "{attempts: 2, max_cooldown: 10m}", wantRetryAfter: "600"},
		{name: "HTTP-date answered as max_cooldown", retryAfter: farDate,
			retry: "{attempts: 2, max_cooldown: 10m}", wantRetryAfter: "600"},
		{name: "delta-seconds waited for max_cooldown", retryAfter: "31536000",
			retry: "{attempts: 2, max_cooldown: 1m, max_retry_after: 1h, backoff: {base: 1ms, max: 1ms}}", wantWait: time.Minute},
		{name: "HTTP-date waited for max_cooldown", retryAfter: farDate,
			retry: "{attempts: 2, max_cooldown: 1m, max_retry_after: 1h, backoff: {base: 1ms, max: 1ms}}", wantWait: time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					w.Header().Set("Retry-After", tc.retryAfter)
					w.WriteHeader(503)
					return
				}
				_, _ = io.WriteString(w, "ok")
			})
			clock := policy.NewFakeClock(time.Now())
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: %s
    timeouts: {per_try: 30s, total: 10m}
`, up, tc.retry))
			before := clock.Waiters()
			done := a12Get(t, b.base+"/x")
			if tc.wantRetryAfter != "" {
				got := a12Recv(t, done, "the agent's answer")
				if got.resp == nil {
					t.Fatal(got.body)
				}
				p := decodeProblem(t, got.resp, got.body)
				if got.resp.StatusCode != 503 || p.Reason != "upstream_unavailable" || hits.Load() != 1 {
					t.Fatalf("%d %+v after %d calls; want 503 upstream_unavailable after 1", got.resp.StatusCode, p, hits.Load())
				}
				if ra := got.resp.Header.Get("Retry-After"); ra != tc.wantRetryAfter || strconv.Itoa(p.RetryAfterS) != tc.wantRetryAfter {
					t.Errorf("Retry-After %q, retry_after_s %d; want %s (retry.max_cooldown), not the upstream's year", ra, p.RetryAfterS, tc.wantRetryAfter)
				}
			} else {
				deadline := time.Now().Add(10 * time.Second)
				for clock.Waiters() <= before {
					select {
					case got := <-done:
						status, ra := 0, ""
						if got.resp != nil {
							status, ra = got.resp.StatusCode, got.resp.Header.Get("Retry-After")
						}
						t.Fatalf("answered %d (Retry-After %q) %s without waiting; want a wait of retry.max_cooldown, then the retry", status, ra, got.body)
					default:
					}
					if time.Now().After(deadline) {
						t.Fatal("no retry wait within 10s")
					}
					time.Sleep(5 * time.Millisecond)
				}
				clock.Advance(tc.wantWait - time.Millisecond)
				if clock.Waiters() <= before {
					t.Fatal("the retry wait ended before retry.max_cooldown had passed")
				}
				clock.Advance(time.Millisecond)
				got := a12Recv(t, done, "the retry after retry.max_cooldown")
				if got.resp == nil || got.resp.StatusCode != 200 || got.body != "ok" || hits.Load() != 2 {
					t.Fatalf("after retry.max_cooldown: %v %q after %d calls; want 200 ok after 2", got.resp, got.body, hits.Load())
				}
				if w := b.metric("ballast_retry_wait_seconds", map[string]string{"route": "r"}); w != 1 {
					t.Errorf("%v retry waits observed, want 1", w)
				}
			}
			if c := b.metric("ballast_cooldown_seconds", nil); c != 0 {
				t.Errorf("ballast_cooldown_seconds = %v after a 503: a 503 pauses no key", c)
			}
		})
	}
}

// A retry paid from the retry budget before its wait, whose wait
// Shutdown ends (the agent is answered 503 shutting_down), never reaches
// the upstream, so the budget gets it back: here the budget holds one
// retry, the agent's wait takes it, and an async job on the same
// upstream, which runs on through the drain, must still get its retry.
func TestAudit12_RetryPaidBeforeShutdownIsRefunded(t *testing.T) {
	var jobHits atomic.Int64
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var once atomic.Bool
	releaseJob := func() {
		if once.CompareAndSwap(false, true) {
			close(release)
		}
	}
	t.Cleanup(releaseJob)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/job":
			if jobHits.Add(1) == 1 {
				arrived <- struct{}{}
				select {
				case <-release:
				case <-r.Context().Done():
				}
				w.WriteHeader(503)
				return
			}
			_, _ = io.WriteString(w, "done")
		default:
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(503)
		}
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    async: {enabled: true}
    retry: {attempts: 2, budget: {ratio: 0, min_per_second: 0.1}, backoff: {base: 1ns, max: 1ns}}
    timeouts: {per_try: 30s, total: 60s}
`, up))
	resp, body := do(t, "GET", b.base+"/job", "", "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("the job: %d %q, want 202", resp.StatusCode, body)
	}
	a12Recv(t, arrived, "the job's first call")

	before := clock.Waiters()
	agent := a12Get(t, b.base+"/agent")
	waitFor(t, func() bool { return clock.Waiters() > before }) // its retry, paid, waits out the hint

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- b.srv.Shutdown(ctx)
	}()
	got := a12Recv(t, agent, "the agent's answer once Shutdown began")
	if got.resp == nil {
		t.Fatal(got.body)
	}
	if p := decodeProblem(t, got.resp, got.body); got.resp.StatusCode != 503 || p.Reason != "shutting_down" {
		t.Fatalf("the waiting agent: %d %+v, want 503 shutting_down", got.resp.StatusCode, p)
	}

	releaseJob() // the job's call answers 503: its retry needs the budget
	if err := a12Recv(t, shut, "Shutdown, once the job has finished"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := jobHits.Load(); n != 2 {
		t.Errorf("the job's calls: %d, want 2 (the agent's unsent retry was refunded, so the job's retry had the budget)", n)
	}
	if n := b.metric("ballast_retry_budget_exhausted_total", map[string]string{"route": "r"}); n != 0 {
		t.Errorf("ballast_retry_budget_exhausted_total = %v, want 0: a retry Shutdown stopped before it was sent spent nothing", n)
	}
	if n := b.metric("ballast_retries_total", map[string]string{"route": "r", "reason": "transient"}); n != 1 {
		t.Errorf("ballast_retries_total = %v, want 1 (the job's; the agent's never went out)", n)
	}
}

// a12Hook is a loopback webhook receiver that hands on each alert's body
// as it came.
func a12Hook(t *testing.T) (url string, bodies <-chan string) {
	t.Helper()
	ch := make(chan string, 64)
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ch <- string(b)
	})
	return u + "/hook", ch
}

// The id of an async job is the capability to read its result (for an
// agent without identity headers, all that guards it): the job_failed
// alert names the job by the first 8 hex digits of its id, never the
// whole id, and so do /status and ballast's logs.
func TestAudit12_JobFailedAlertShowsOnlyIDPrefix(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
	})
	hook, bodies := a12Hook(t)
	b := startBallast(t, fmt.Sprintf(`
notify: {webhook: "${HOOK}"}
routes:
  - {name: gen, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}}
`, up), "HOOK="+hook)
	resp, body := do(t, "GET", b.base+"/x", "", "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	id := strings.TrimPrefix(loc, "/_ballast/jobs/")
	if resp.StatusCode != 202 || len(id) != 32 {
		t.Fatalf("the job: %d %q, Location %q; want 202 and a 32-digit id", resp.StatusCode, body, loc)
	}
	resp, _ = do(t, "GET", b.base+loc, "", "Prefer", "wait=10")
	if resp.StatusCode != 500 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Fatalf("the job's poll: %d, state %q; want 500 failed", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"))
	}
	alert := a12Recv(t, bodies, "the job_failed alert")
	if !strings.Contains(alert, `"kind":"job_failed"`) || !strings.Contains(alert, "job "+id[:8]+" failed") {
		t.Errorf("the alert does not name the job by %s: %s", id[:8], alert)
	}
	if strings.Contains(alert, id) {
		t.Errorf("the alert carries the job's whole id %s: %s", id, alert)
	}

	r, status := get(t, client(t), b.admin+"/status")
	if r.StatusCode != 200 || !strings.Contains(status, `"failed":[{"id":"`+id[:8]+`"`) {
		t.Errorf("/status: %d, its failed jobs do not name %s: %s", r.StatusCode, id[:8], status)
	}
	if strings.Contains(status, id) {
		t.Errorf("/status carries the job's whole id %s", id)
	}
	if logs := b.logs.String(); !strings.Contains(logs, `"job":"`+id[:8]+`"`) || strings.Contains(logs, id) {
		t.Errorf("the logs must name the job %s, never by its whole id %s:\n%s", id[:8], id, logs)
	}
}
