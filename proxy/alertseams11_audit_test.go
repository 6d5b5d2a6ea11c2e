package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/supervise"
)

// Probes of the seams between supervision (/status, alerts, metrics) and
// this session's features: keyed stream replays, refunded retry charges,
// jobs that store streams, reloads and slow webhooks.

// as11Route finds a route in a snapshot.
func as11Route(t *testing.T, snap supervise.Snapshot, name string) supervise.RouteStatus {
	t.Helper()
	for _, r := range snap.Routes {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("route %s not in /status", name)
	return supervise.RouteStatus{}
}

// as11Attempts sums ballast_upstream_attempts_total of a route over its
// upstreams and outcomes.
func as11Attempts(t *testing.T, b *ballast, route string) float64 {
	t.Helper()
	return b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": route})
}

// A keyed stream replayed twice: the upstream ran once, and every count
// of upstream traffic says once (ballast_upstream_attempts_total, the
// upstream's /status window); the route's window and
// ballast_requests_total count the three answers; nothing is a failure.
func TestAlertSeams11_StreamReplayIsNoUpstreamAttempt(t *testing.T) {
	up := &streamReplay11Upstream{ct: "text/event-stream", events: []string{"data: a\n\n", "data: b\n\n"}}
	b := streamReplay11Start(t, up, "")
	c := client(t)
	for i := range 3 {
		resp, body := streamReplay11Post(t, c, b.base+"/v1/run", "k1")
		if resp.StatusCode != 200 || body != "data: a\n\ndata: b\n\n" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("the upstream ran %d times, want 1", n)
	}
	if n := as11Attempts(t, b, "pay"); n != 1 {
		t.Errorf("ballast_upstream_attempts_total = %v, the upstream saw 1", n)
	}
	if n := b.metric("ballast_requests_total", map[string]string{"route": "pay", "code": "2xx"}); n != 3 {
		t.Errorf("ballast_requests_total{2xx} = %v, want 3", n)
	}
	if got := b.streamReplay11Idem("claimed"); got != 1 {
		t.Errorf("claimed %v, want 1", got)
	}
	if got := b.streamReplay11Idem("replayed"); got != 2 {
		t.Errorf("replayed %v, want 2", got)
	}
	snap, _ := fetchStatusOpen(t, b)
	rs := as11Route(t, snap, "pay")
	if rs.Stats.Requests != 3 || rs.Stats.Failures != 0 || rs.Stats.Retries != 0 {
		t.Errorf("route window %+v, want 3 requests, no failure, no retry", rs.Stats)
	}
	if us := rs.Upstreams[0].Stats; us.Requests != 1 || us.Failures != 0 {
		t.Errorf("upstream window %+v, want the 1 attempt the upstream saw", us)
	}
	if len(snap.Failures) != 0 {
		t.Errorf("failures %+v, want none", snap.Failures)
	}
}

// A keyed stream over state.max_response_bytes is relayed whole and not
// stored: it is a success (no failure anywhere), and its retry, which
// runs again, is an upstream attempt like the first.
func TestAlertSeams11_TooLargeStreamNoFailure(t *testing.T) {
	ev, up, b := streamReplay11StartTooLarge(t)
	c := client(t)
	for i := range 2 {
		resp, body := streamReplay11Post(t, c, b.base+"/v1/run", "big")
		if resp.StatusCode != 200 || len(body) != 3*len(ev) {
			t.Fatalf("request %d: %d, %d bytes", i, resp.StatusCode, len(body))
		}
		// A stream's accounting ends with its relay, which may be after
		// the agent read the last byte; the request's line comes after it.
		sr11bTrailLine(t, b, resp.Header.Get("X-Request-Id"))
	}
	if n, a := up.calls.Load(), as11Attempts(t, b, "pay"); n != 2 || a != 2 {
		t.Errorf("upstream calls %d, attempts counted %v; want 2 and 2", n, a)
	}
	if n := b.metric("ballast_stream_truncated_total", map[string]string{"route": "pay"}); n != 0 {
		t.Errorf("ballast_stream_truncated_total = %v, want 0", n)
	}
	snap, _ := fetchStatusOpen(t, b)
	rs := as11Route(t, snap, "pay")
	if rs.Stats.Requests != 2 || rs.Stats.Failures != 0 {
		t.Errorf("route window %+v, want 2 requests, no failure", rs.Stats)
	}
	if us := rs.Upstreams[0].Stats; us.Requests != 2 || us.Failures != 0 {
		t.Errorf("upstream window %+v, want 2 attempts, no failure", us)
	}
	if len(snap.Failures) != 0 {
		t.Errorf("failures %+v, want none", snap.Failures)
	}
}

// An agent that left a keyed stream while ballast read the rest into the
// record: the upstream answered whole, so neither its window nor the
// failure list blames it, and the stream is no truncation; the agent's
// retry is replayed, not an attempt.
func TestAlertSeams11_AgentLeftStreamNotAnUpstreamFailure(t *testing.T) {
	up := streamReplay11Held(streamReplay11Overflowing()...)
	b := streamReplay11Start(t, up, "")
	sr11bLeave(t, b, "gone")
	close(up.next)
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), `"stopped":"agent_gone"`) })
	again, _ := streamReplay11Post(t, client(t), b.base+"/v1/run", "gone")
	if again.StatusCode != 200 || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d replayed %q", again.StatusCode, again.Header.Get("Idempotent-Replayed"))
	}
	if n, a := up.calls.Load(), as11Attempts(t, b, "pay"); n != 1 || a != 1 {
		t.Errorf("upstream calls %d, attempts counted %v; want 1 and 1", n, a)
	}
	if n := b.metric("ballast_stream_truncated_total", map[string]string{"route": "pay"}); n != 0 {
		t.Errorf("ballast_stream_truncated_total = %v: the upstream ended the stream whole", n)
	}
	snap, _ := fetchStatusOpen(t, b)
	rs := as11Route(t, snap, "pay")
	if us := rs.Upstreams[0].Stats; us.Requests != 1 || us.Failures != 0 {
		t.Errorf("upstream window %+v, want 1 attempt, no failure", us)
	}
	if rs.Stats.Requests != 2 || rs.Stats.Failures != 0 {
		t.Errorf("route window %+v, want 2 requests (the left one, the replay), no failure", rs.Stats)
	}
	for _, f := range snap.Failures {
		t.Errorf("listed as a failure: %+v", f)
	}
}

// A keyed stream the upstream cut: one failure (stream_truncated) on the
// upstream; the retry's 409 outcome_unknown is no upstream attempt and
// adds nothing to the upstream's window.
func TestAlertSeams11_CutStreamRetryNotAnAttempt(t *testing.T) {
	var calls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	})
	b := startBallast(t, idemRoute(u, ""))
	c := client(t)
	req, _ := http.NewRequest(http.MethodPost, b.base+"/v1/run", strings.NewReader(`{"stream":true}`))
	req.Header.Set("Idempotency-Key", "cut")
	if resp, err := c.Do(req); err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	waitFor(t, func() bool {
		return b.metric("ballast_stream_truncated_total", map[string]string{"route": "pay"}) == 1
	})
	again, _ := streamReplay11Post(t, c, b.base+"/v1/run", "cut")
	if again.StatusCode != 409 {
		t.Fatalf("retry: %d, want 409 outcome_unknown", again.StatusCode)
	}
	if n, a := calls.Load(), as11Attempts(t, b, "pay"); n != 1 || a != 1 {
		t.Errorf("upstream calls %d, attempts counted %v; want 1 and 1", n, a)
	}
	snap, _ := fetchStatusOpen(t, b)
	rs := as11Route(t, snap, "pay")
	if us := rs.Upstreams[0].Stats; us.Requests != 1 || us.Failures != 1 {
		t.Errorf("upstream window %+v, want 1 attempt, failed", us)
	}
	var cut int
	for _, f := range snap.Failures {
		if f.Reason == "stream_truncated" {
			cut++
			if f.Attempts != 1 {
				t.Errorf("the cut stream listed with %d attempts", f.Attempts)
			}
		} else if f.Attempts != 0 || f.Upstream != "" {
			t.Errorf("the retry's answer listed as an upstream attempt: %+v", f)
		}
	}
	if cut != 1 {
		t.Errorf("stream_truncated listed %d times, want 1: %+v", cut, snap.Failures)
	}
}

// as11Hook is a loopback webhook receiver: it decodes each alert into
// events.
func as11Hook(t *testing.T) (url string, events chan supervise.Event) {
	t.Helper()
	events = make(chan supervise.Event, 64)
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err == nil {
			events <- e
		}
	})
	return u + "/hook", events
}

// as11Collect collects alerts until one that is the last arrives (a
// sentinel raised after everything under test: one sender delivers in
// order); what names that alert when none comes within 10s.
func as11Collect(t *testing.T, events chan supervise.Event, what string, isLast func(supervise.Event) bool) []supervise.Event {
	t.Helper()
	var got []supervise.Event
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if isLast(e) {
				return got
			}
			got = append(got, e)
		case <-timeout:
			t.Fatalf("no %s within 10s; got %+v", what, got)
		}
	}
}

// as11Until collects alerts until one of kind last arrives.
func as11Until(t *testing.T, events chan supervise.Event, last supervise.Kind) []supervise.Event {
	t.Helper()
	return as11Collect(t, events, fmt.Sprintf("%s alert", last), func(e supervise.Event) bool { return e.Kind == last })
}

// as11Pausing is an upstream that answers every call 429 with
// Retry-After: 120: each call raises a cool-down alert, the sentinel the
// tests wait for.
func as11Pausing(t *testing.T) string {
	t.Helper()
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(429)
	})
	return u
}

// A retry paid from the budget and then refused by the rate limit is
// refunded (b18c379): it spent nothing, so it raises no budget_exhausted
// alert, and ballast_retries_total does not count it (a retry made); the
// next route's retry on the same upstream goes out.
func TestAlertSeams11_RefundedRetryNoBudgetAlert(t *testing.T) {
	up, aHits, bHits := refundUpstream(t)
	limited := as11Pausing(t)
	hook, events := as11Hook(t)
	b := startBallast(t, `notify: {webhook: "${HOOK}", cooldown_threshold: 30s, max_per_minute: 100}`+refundRoutes(up)+
		fmt.Sprintf("  - {name: sentinel, match: {path_prefix: /sentinel/}, upstream: %q, retry: {attempts: 1}}\n", limited), "HOOK="+hook)
	c := client(t)
	if resp, _ := get(t, c, b.base+"/a/x"); resp.StatusCode != 503 || aHits.Load() != 1 {
		t.Fatalf("route a: %d after %d calls", resp.StatusCode, aHits.Load())
	}
	if resp, _ := get(t, c, b.base+"/b/x"); resp.StatusCode != 200 || bHits.Load() != 2 {
		t.Fatalf("route b: %d after %d calls; want 200 after 2", resp.StatusCode, bHits.Load())
	}
	get(t, c, b.base+"/sentinel/x")
	for _, e := range as11Until(t, events, supervise.KindCooldown) {
		if e.Kind == supervise.KindBudgetExhausted {
			t.Errorf("budget_exhausted alert for a budget never spent: %+v", e)
		}
	}
	if n := b.metricSum("ballast_retries_total", map[string]string{"route": "a"}); n != 0 {
		t.Errorf("ballast_retries_total{route=a} = %v; its retry never went out", n)
	}
	if n := b.metricSum("ballast_retries_total", map[string]string{"route": "b"}); n != 1 {
		t.Errorf("ballast_retries_total{route=b} = %v, want 1", n)
	}
	if n := b.metricSum("ballast_retry_budget_exhausted_total", nil); n > 0 {
		t.Errorf("ballast_retry_budget_exhausted_total = %v, want 0", n)
	}
}

// A webhook that never answers holds no request up: requests that raise
// alerts are answered at once while the first delivery hangs; that
// delivery is bounded (5s) and counted failed; the 64 alerts queued
// behind it are then delivered, and those that found the queue full are
// counted dropped, in /status.
func TestAlertSeams11_HungWebhookBoundedAndCounted(t *testing.T) {
	var calls atomic.Int64
	var delivered atomic.Int64
	hook, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if calls.Add(1) == 1 {
			<-r.Context().Done() // never answers: the notifier gives up
			return
		}
		delivered.Add(1)
	})
	failing, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	const routes = 70
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "notify: {webhook: \"${HOOK}\", max_per_minute: 1000}\n")
	cfg.WriteString("defaults: {retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}, budget: {ratio: 0, min_per_second: 0}}, breaker: {enabled: false}}\nroutes:\n")
	for i := range routes {
		fmt.Fprintf(&cfg, "  - {name: r%d, match: {path_prefix: /r%d/}, upstream: %q}\n", i, i, failing)
	}
	b := startBallast(t, cfg.String(), "HOOK="+hook+"/h")
	c := client(t)
	get(t, c, b.base+"/r0/x")
	waitFor(t, func() bool { return calls.Load() == 1 }) // the sender is stuck
	for i := 1; i < routes; i++ {
		start := time.Now()
		resp, _ := get(t, c, fmt.Sprintf("%s/r%d/x", b.base, i))
		if resp.StatusCode != 503 {
			t.Fatalf("r%d: %d, want 503 budget_exhausted", i, resp.StatusCode)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("r%d took %v while the webhook hung: an alert is on the request path", i, d)
		}
	}
	snap, _ := fetchStatusOpen(t, b)
	if a := snap.Alerts; a == nil || a.Sent != 0 || a.Dropped != routes-1-64 {
		t.Fatalf("alerts while the webhook hangs: %+v, want none sent and %d dropped (queue of 64)", a, routes-1-64)
	}
	as11WaitFor(t, 15*time.Second, func() bool {
		snap, _ = fetchStatusOpen(t, b)
		return snap.Alerts.Failed == 1 && snap.Alerts.Sent == 64
	})
	if n := delivered.Load(); n != 64 {
		t.Errorf("the webhook got %d alerts after the hung one, want 64", n)
	}
}

// as11WaitFor is waitFor with a bound of its own, for an event that takes
// seconds by design (the webhook's 5s delivery bound).
func as11WaitFor(t *testing.T, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", bound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A job whose stored stream the upstream cut fails (502) and raises one
// job_failed alert naming its route and id; nothing of its request (the
// credential, the prompt, the key) nor of the part of the answer that
// came is in the alert.
func TestAlertSeams11_CutStreamJobAlertsWithoutSecrets(t *testing.T) {
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: partial-OUTPUT-s3cret\n\n")
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			_ = conn.Close()
		}
	})
	limited := as11Pausing(t)
	hook, events := as11Hook(t)
	b := startBallast(t, fmt.Sprintf(`
notify: {webhook: "${HOOK}", cooldown_threshold: 30s}
routes:
  - {name: gen, match: {path_prefix: /gen/}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}, idempotency: {mode: header}}
  - {name: sentinel, match: {path_prefix: /sentinel/}, upstream: %q, retry: {attempts: 1}}
`, u, limited), "HOOK="+hook)
	loc := js11Submit(t, b, "POST", "/gen/x", `{"prompt":"PROMPT-s3cret"}`,
		"Authorization", "Bearer sk-CRED-s3cret", "Idempotency-Key", "KEY-s3cret")
	resp, _ := do(t, "GET", b.base+loc, "", "Authorization", "Bearer sk-CRED-s3cret", "Prefer", "wait=10")
	if resp.StatusCode != 502 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Fatalf("the cut job: %d, state %q; want 502 failed", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"))
	}
	get(t, client(t), b.base+"/sentinel/x")
	got := as11Until(t, events, supervise.KindCooldown)
	id := strings.TrimPrefix(loc, "/_ballast/jobs/")
	var failed int
	for _, e := range got {
		raw, _ := json.Marshal(e)
		if strings.Contains(string(raw), "s3cret") {
			t.Errorf("a secret in the alert: %s", raw)
		}
		if e.Kind == supervise.KindJobFailed {
			failed++
			if e.Route != "gen" || !strings.Contains(e.Detail, "job "+id[:8]+" ") || strings.Contains(e.Detail, id) {
				t.Errorf("job_failed alert %+v does not name route gen and job %s by its first 8 digits alone", e, id)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d job_failed alerts, want 1: %+v", failed, got)
	}
}

// A job resumed after a restart that then fails raises its job_failed
// alert from the process that ran it, once.
func TestAlertSeams11_ResumedJobFailureAlerts(t *testing.T) {
	var second atomic.Bool
	arrived := make(chan string, 4)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		if !second.Load() {
			arrived <- r.URL.Path
			<-r.Context().Done()
			return
		}
		w.WriteHeader(503)
	})
	limited := as11Pausing(t)
	hook, events := as11Hook(t)
	path := t.TempDir() + "/state.db"
	cfg := fmt.Sprintf(`
notify: {webhook: "${HOOK}", cooldown_threshold: 30s}
state: {backend: file, path: %q}
routes:
  - {name: report, match: {path_prefix: /report/}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}, timeouts: {per_try: 60s, total: 120s}}
  - {name: sentinel, match: {path_prefix: /sentinel/}, upstream: %q, retry: {attempts: 1}}
`, path, up, limited)
	b1 := startBallast(t, cfg, "HOOK="+hook)
	loc := js11Submit(t, b1, "GET", "/report/x", "")
	s9Recv(t, arrived, 5*time.Second, "the job's call reaching the upstream")
	if err, _ := s9Shutdown(t, b1, 300*time.Millisecond); err == nil {
		t.Fatal("Shutdown with a job that never ends returned no error")
	}
	second.Store(true)
	b2 := startBallast(t, cfg, "HOOK="+hook)
	resp, _ := do(t, "GET", b2.base+loc, "", "Prefer", "wait=10")
	if resp.StatusCode != 503 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Fatalf("the resumed job: %d, state %q; want 503 failed", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"))
	}
	get(t, client(t), b2.base+"/sentinel/x")
	var failed int
	for _, e := range as11Until(t, events, supervise.KindCooldown) {
		if e.Kind == supervise.KindJobFailed {
			failed++
			if id := strings.TrimPrefix(loc, "/_ballast/jobs/"); e.Route != "report" || !strings.Contains(e.Detail, "job "+id[:8]+" ") || strings.Contains(e.Detail, id) {
				t.Errorf("job_failed alert %+v does not name the route and the job", e)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d job_failed alerts, want 1", failed)
	}
}

// A breaker's opening alerts once per episode across reloads: a reload
// that keeps the upstream's policies carries the open breaker over, and
// requests failing fast on it raise nothing more, even past the dedup
// window; a reload that changes the breaker's settings starts a new
// breaker, whose own opening is a new episode and alerts once.
func TestAlertSeams11_BreakerEpisodeAcrossReload(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	dead := deadAddr(t)
	hook, events := as11Hook(t)
	var sentinels []string
	for range 3 {
		u := as11Pausing(t)
		sentinels = append(sentinels, u)
	}
	cfg := func(openFor string, n int) string {
		y := fmt.Sprintf(`
notify: {webhook: "${HOOK}", cooldown_threshold: 30s, dedup_window: 1s, max_per_minute: 100}
routes:
  - {name: flaky, match: {path_prefix: /flaky/}, upstream: "http://%s", retry: {attempts: 1}, breaker: {failures: 1, open_for: %s}}
`, dead, openFor)
		for i := range n {
			y += fmt.Sprintf("  - {name: s%d, match: {path_prefix: /s%d/}, upstream: %q, retry: {attempts: 1}}\n", i, i, sentinels[i])
		}
		return y
	}
	b := startBallastClock(t, clock, cfg("1m", 1), "HOOK="+hook)
	c := client(t)
	breakerAlerts := func(step string, sentinel int, want int) {
		t.Helper()
		get(t, c, fmt.Sprintf("%s/s%d/x", b.base, sentinel))
		n := 0
		for _, e := range as11Until(t, events, supervise.KindCooldown) {
			if e.Kind == supervise.KindBreakerOpen {
				n++
			}
		}
		if n != want {
			t.Errorf("%s: %d breaker_open alerts, want %d", step, n, want)
		}
	}
	get(t, c, b.base+"/flaky/x")
	breakerAlerts("the first opening", 0, 1)

	clock.Advance(5 * time.Second) // past the dedup window, within open_for
	if err := writeConfig(b, cfg("1m", 2)); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if resp, _ := get(t, c, b.base+"/flaky/x"); resp.StatusCode != 503 {
		t.Fatalf("after a reload keeping the breaker: %d, want 503 (still open)", resp.StatusCode)
	}
	breakerAlerts("the carried-over breaker", 1, 0)

	clock.Advance(5 * time.Second)
	if err := writeConfig(b, cfg("2m", 3)); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	get(t, c, b.base+"/flaky/x")
	get(t, c, b.base+"/flaky/x")
	breakerAlerts("a new breaker opening", 2, 1)
}

// as11UntilRoute collects alerts until one for route last arrives.
func as11UntilRoute(t *testing.T, events chan supervise.Event, last string) []supervise.Event {
	t.Helper()
	return as11Collect(t, events, "alert for "+last, func(e supervise.Event) bool { return e.Route == last })
}

// Two replicas sharing a cool-down through Redis: the replica whose
// attempt was told to pause alerts, and its alert names it (its host);
// the other, which honours the shared pause without sending anything,
// raises no second alert for it.
func TestAlertSeams11_FleetCooldownAlertsOnce(t *testing.T) {
	var hits atomic.Int64
	limited, limitedAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(429)
	})
	// A sentinel upstream per replica: a pause one replica takes for its
	// sentinel reaches the other through Redis, whose own sentinel call
	// would then raise nothing.
	sentinelA, sentinelB := as11Pausing(t), as11Pausing(t)
	hook, events := as11Hook(t)
	rs := redistest.Start(t)
	cfg := fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: "as11%d:"}}
notify: {webhook: "${HOOK}", cooldown_threshold: 30s}
routes:
  - {name: r, match: {path_prefix: /r/}, upstream: %q, retry: {attempts: 1}, timeouts: {total: 5s}}
  - {name: sentinel-a, match: {path_prefix: /sentinel-a/}, upstream: %q, retry: {attempts: 1}}
  - {name: sentinel-b, match: {path_prefix: /sentinel-b/}, upstream: %q, retry: {attempts: 1}}
`, rs.Addr(), time.Now().UnixNano()%1e9, limited, sentinelA, sentinelB)
	a := startBallast(t, cfg, "HOOK="+hook)
	b := startBallast(t, cfg, "HOOK="+hook)
	c := client(t)
	auth := []string{"Authorization", "Bearer k"}
	get(t, c, a.base+"/r/x", auth...)
	waitFor(t, func() bool {
		return b.metric("ballast_cooldown_seconds", map[string]string{"upstream": limitedAddr}) > 0
	})
	if resp, _ := get(t, c, b.base+"/r/x", auth...); resp.StatusCode != 429 {
		t.Fatalf("replica B during the fleet's pause: %d, want 429", resp.StatusCode)
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("the upstream got %d calls; want 1 (B honours A's cool-down)", n)
	}
	get(t, c, b.base+"/sentinel-b/x")
	get(t, c, a.base+"/sentinel-a/x")
	// Each replica delivers its own alerts in order, but not in order
	// with the other's: only both sentinels prove that both replicas'
	// alerts about r have arrived.
	sentinels := map[string]bool{}
	var cool int
	for _, e := range as11Collect(t, events, "both replicas' sentinel alerts", func(e supervise.Event) bool {
		if strings.HasPrefix(e.Route, "sentinel-") {
			sentinels[e.Route] = true
		}
		return len(sentinels) == 2
	}) {
		if e.Kind == supervise.KindCooldown && e.Route == "r" {
			cool++
			if host, _ := os.Hostname(); e.Host == "" || e.Host != host || !strings.Contains(e.Text, "("+host+")") {
				t.Errorf("the alert %+v does not say which replica raised it (host %q)", e, host)
			}
		}
	}
	if cool != 1 {
		t.Errorf("%d cooldown alerts for route r across the fleet, want 1", cool)
	}
}
