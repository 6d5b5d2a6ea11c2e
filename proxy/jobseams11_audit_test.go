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

// js11Submit starts a job with Prefer: respond-async and returns its
// Location.
func js11Submit(t *testing.T, b *ballast, method, path, body string, headers ...string) string {
	t.Helper()
	resp, got := do(t, method, b.base+path, body, append([]string{"Prefer", "respond-async"}, headers...)...)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || !strings.HasPrefix(loc, "/_ballast/jobs/") {
		t.Fatalf("%s %s as a job: %d %q (Location %q), want 202", method, path, resp.StatusCode, got, loc)
	}
	return loc
}

// A job whose upstream answers with a stream: the job keeps the whole
// stream as its body with its content type (NDJSON as SSE), and settles
// its token reservation from the stream's usage only when the upstream
// ended the stream (a929424's rule for relayed streams): a stream cut
// mid-way, or one over state.max_response_bytes (which the job stops
// reading, and fails), keeps the estimate, since the event that says what
// the model spent was never read.
func TestJobSeams11_StreamJobSettlesTokensOnlyWhenEnded(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	const start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n"
	const delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"word \"}}\n\n"
	const end = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":90}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		switch {
		case strings.HasPrefix(r.URL.Path, "/probe/"):
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"usage":{"total_tokens":0}}`)
			return
		case strings.HasSuffix(r.URL.Path, "/ndjson"):
			w.Header().Set("Content-Type", "application/x-ndjson")
			_, _ = io.WriteString(w, "{\"n\":1}\n")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "{\"n\":2,\"done\":true}\n")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, start)
		n := 3
		if strings.HasSuffix(r.URL.Path, "/big") {
			n = 400 // about 30KiB: over the 8KiB store limit
		}
		for range n {
			_, _ = io.WriteString(w, delta)
		}
		w.(http.Flusher).Flush()
		if strings.HasSuffix(r.URL.Path, "/cut") {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		_, _ = io.WriteString(w, end)
	})
	b := startBallastClock(t, clock, "state: {max_response_bytes: 8KiB}\n"+ib11TokenRoutes(up, 6000, "    async: {enabled: true}\n"))
	const call = `{"max_tokens":1000,"stream":true}`

	// Ended: settled from its usage (10 + 90 = 100 tokens).
	resp, body := do(t, "POST", b.base+"/chat/whole", call, "Prefer", "respond-async, wait=10")
	if want := start + strings.Repeat(delta, 3) + end; resp.StatusCode != 200 || body != want ||
		resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("an ended stream as a job: %d %q state %q, %q; want the whole stream",
			resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 5900 {
		t.Fatalf("after the ended stream's job: %d tokens left, want 5900 (settled from its usage, 100)", left)
	}

	// Cut: failed, no partial body, the estimate (1000) stands.
	resp, body = do(t, "POST", b.base+"/chat/cut", call, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 502 || resp.Header.Get("X-Ballast-Job-State") != "failed" || strings.Contains(body, "message_start") {
		t.Fatalf("a cut stream as a job: %d state %q %q, want a failed job with 502 and no partial stream",
			resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 4900 {
		t.Errorf("after the cut stream's job: %d tokens left, want 4900 (no last event: the estimate stands)", left)
	}
	var last string
	for _, l := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(l, `"msg":"async job failed"`) {
			last = l
		}
	}
	if !strings.Contains(last, "broke off after") {
		t.Errorf("the cut stream's job failure should say the answer broke off: %q", last)
	}

	// Over max_response_bytes: failed 502, the estimate stands.
	resp, body = do(t, "POST", b.base+"/chat/big", call, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 502 || resp.Header.Get("X-Ballast-Job-State") != "failed" || strings.Contains(body, "message_start") {
		t.Fatalf("a stream over the store limit as a job: %d state %q %.80q, want a failed job with 502",
			resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if left := ib11TokensLeft(t, b, "/probe/x"); left != 3900 {
		t.Errorf("after the too-large stream's job: %d tokens left, want 3900 (the stream was not read to its end: the estimate stands)", left)
	}

	// NDJSON: stored whole, with its content type.
	resp, body = do(t, "POST", b.base+"/chat/ndjson", `{"stream":true}`, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || body != "{\"n\":1}\n{\"n\":2,\"done\":true}\n" || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Errorf("an NDJSON stream as a job: %d %q %q, want the whole stream as application/x-ndjson", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// Jobs running when ballast stops (shutdown_timeout ran out), with the
// file backend, resume on the next start only where running them again is
// safe (docs/config.md, async): a GET job and a keyed POST job in header
// mode (its Idempotency-Key travels upstream with every attempt, which is
// what makes ballast retry it: retries.md#retry-safety) run again and
// succeed; an unkeyed POST job, and a job whose route the new config no
// longer has, fail as outcome unknown. A repeat of the keyed request on
// the new process is answered with the same job.
func TestJobSeams11_FileJobsAcrossRestart(t *testing.T) {
	var second atomic.Bool
	arrived := make(chan string, 16)
	var mu sync.Mutex
	var resumed []string // path and Idempotency-Key of the calls the second process made
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		if !second.Load() {
			arrived <- r.URL.Path
			<-r.Context().Done() // the first process's calls never end
			return
		}
		mu.Lock()
		resumed = append(resumed, r.URL.Path+" key="+r.Header.Get("Idempotency-Key"))
		mu.Unlock()
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	})
	path := t.TempDir() + "/state.db"
	routes := func(gone bool) string {
		y := fmt.Sprintf(`
state: {backend: file, path: %q}
defaults:
  async: {enabled: true}
  retry: {attempts: 1}
  timeouts: {per_try: 60s, total: 120s}
routes:
  - {name: keyed, match: {path_prefix: /keyed/}, upstream: %[2]q, idempotency: {mode: header}}
  - {name: plain, match: {path_prefix: /plain/}, upstream: %[2]q}
  - {name: get, match: {path_prefix: /get/}, upstream: %[2]q}
`, path, up)
		if gone {
			y += fmt.Sprintf("  - {name: gone, match: {path_prefix: /gone/}, upstream: %q}\n", up)
		}
		return y
	}
	b1 := startBallast(t, routes(true))
	auth := []string{"Authorization", "Bearer agent-1"}
	jobs := map[string]string{
		"keyed": js11Submit(t, b1, "POST", "/keyed/charge", `{"a":1}`, append(auth, "Idempotency-Key", "k-restart")...),
		"plain": js11Submit(t, b1, "POST", "/plain/send", `{"a":2}`, auth...),
		"get":   js11Submit(t, b1, "GET", "/get/report", "", auth...),
		"gone":  js11Submit(t, b1, "POST", "/gone/x", `{"a":3}`, auth...),
	}
	for range jobs {
		s9Recv(t, arrived, 5*time.Second, "a job's call reaching the upstream")
	}
	if err, _ := s9Shutdown(t, b1, 300*time.Millisecond); err == nil {
		t.Fatal("Shutdown with four jobs that never end returned no error")
	}
	second.Store(true)
	b2 := startBallast(t, routes(false))
	for name, want := range map[string]struct {
		status int
		body   string
	}{"keyed": {200, "done /keyed/charge"}, "get": {200, "done /get/report"}, "plain": {409, "outcome_unknown"}, "gone": {409, "outcome_unknown"}} {
		resp, body := do(t, "GET", b2.base+jobs[name], "", append(auth, "Prefer", "wait=10")...)
		if resp.StatusCode != want.status || !strings.Contains(body, want.body) {
			t.Errorf("the %s job after the restart: %d %q (state %q), want %d %q",
				name, resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"), want.status, want.body)
		}
	}
	mu.Lock()
	got := strings.Join(resumed, ", ")
	mu.Unlock()
	if strings.Contains(got, "/plain/") || strings.Contains(got, "/gone/") || !strings.Contains(got, "/keyed/charge key=k-restart") {
		t.Errorf("the calls resumed: %s; want the keyed one (with its key) and the GET, never the unkeyed POST", got)
	}
	resp, body := do(t, "POST", b2.base+"/keyed/charge", `{"a":1}`, append(auth, "Idempotency-Key", "k-restart", "Prefer", "respond-async")...)
	if resp.StatusCode != 200 || body != "done /keyed/charge" || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a repeat of the keyed job's request after the restart: %d %q (replayed %q), want the job's result",
			resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
}

// A job on a route with hedge_after, validate and a fallback stores the
// winning answer, and GET /_ballast/jobs/{id} tells the truth about it as
// the same request run directly does: the same body, X-Ballast-Upstream
// naming the upstream that answered, and X-Ballast-Attempts counting the
// same attempts.
func TestJobSeams11_HedgeValidateFallbackWinner(t *testing.T) {
	var hedged atomic.Int64
	primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v" {
			_, _ = io.WriteString(w, `{"a":`) // not JSON: fails validation
			return
		}
		if hedged.Add(1)%2 == 1 {
			<-r.Context().Done() // the first copy never answers: the hedge wins
			return
		}
		_, _ = io.WriteString(w, `{"from":"primary-hedge"}`)
	})
	fallback, faddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"from":"fallback"}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    hedge_after: 50ms
    validate: {json: true}
    retry: {attempts: 1}
    async: {enabled: true}
    timeouts: {per_try: 10s, total: 20s}
`, primary, fallback))
	for _, tc := range []struct{ path, body, upstream string }{
		{"/h", `{"from":"primary-hedge"}`, strings.TrimPrefix(primary, "http://")},
		{"/v", `{"from":"fallback"}`, faddr},
	} {
		direct, dbody := do(t, "GET", b.base+tc.path, "")
		if direct.StatusCode != 200 || dbody != tc.body || direct.Header.Get("X-Ballast-Upstream") != tc.upstream {
			t.Fatalf("%s run directly: %d %q upstream %q, want %q from %s", tc.path, direct.StatusCode, dbody, direct.Header.Get("X-Ballast-Upstream"), tc.body, tc.upstream)
		}
		loc := js11Submit(t, b, "GET", tc.path, "")
		resp, body := do(t, "GET", b.base+loc, "", "Prefer", "wait=10")
		if resp.StatusCode != 200 || body != tc.body || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
			t.Errorf("%s as a job: %d %q state %q, want the winning answer %q", tc.path, resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"), tc.body)
		}
		for _, h := range []string{"X-Ballast-Upstream", "X-Ballast-Attempts"} {
			if got, want := resp.Header.Values(h), direct.Header.Values(h); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("%s as a job: %s %q, the request run directly %q", tc.path, h, got, want)
			}
		}
	}
}

// A job that waits for the route's only concurrency slot queues in turn
// with direct requests: one queued before a direct request gets the slot
// before it.
func TestJobSeams11_QueuedJobKeepsItsTurn(t *testing.T) {
	release := make(chan struct{})
	order := make(chan string, 8)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		order <- r.URL.Path
		if r.URL.Path == "/hold" {
			<-release
		}
		_, _ = io.WriteString(w, "ok "+r.URL.Path)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, concurrency: {max: 1, queue: 10, max_wait: 20s}, timeouts: {total: 30s}}
`, up))
	held := raSend(t, "GET", b.base+"/hold", "")
	if got := s9Recv(t, order, 5*time.Second, "the slot's holder reaching the upstream"); got != "/hold" {
		t.Fatalf("first call: %s", got)
	}
	depth := func() float64 { return b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}) }
	loc := js11Submit(t, b, "GET", "/job", "")
	waitFor(t, func() bool { return depth() == 1 })
	direct := raSend(t, "GET", b.base+"/direct", "")
	waitFor(t, func() bool { return depth() == 2 })
	close(release)
	first := s9Recv(t, order, 5*time.Second, "the next call")
	second := s9Recv(t, order, 5*time.Second, "the call after it")
	if first != "/job" || second != "/direct" {
		t.Errorf("after the slot was freed: %s then %s; want the job (queued first), then the direct request", first, second)
	}
	if r := raWithin(t, direct, 5*time.Second, "the direct answer: not within 5s"); r.body != "ok /direct" {
		t.Errorf("the direct request: %q", r.body)
	}
	raWithin(t, held, 5*time.Second, "the holder's answer: not within 5s")
	if resp, body := do(t, "GET", b.base+loc, "", "Prefer", "wait=10"); resp.StatusCode != 200 || body != "ok /job" {
		t.Errorf("the job: %d %q", resp.StatusCode, body)
	}
}

// A job whose run was refused by the route's rate limit records the 429
// with Retry-After: the wait the limit named when the job ran. Polled
// later, the result must not name a wait that has already passed: its
// Retry-After counts from the poll, never more than what is left of it.
func TestJobSeams11_RecordedRetryAfterCountsDown(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, rate_limit: {rps: 0.1, burst: 1, max_wait: 0s}}
`, up))
	if resp, _ := do(t, "GET", b.base+"/first", ""); resp.StatusCode != 200 {
		t.Fatalf("the first call: %d", resp.StatusCode)
	}
	loc := js11Submit(t, b, "GET", "/job", "")
	resp, body := do(t, "GET", b.base+loc, "", "Prefer", "wait=5")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "10" {
		t.Fatalf("the job refused by the rate limit: %d Retry-After %q %s; want 429 with Retry-After: 10", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	for _, tc := range []struct {
		advance time.Duration
		want    string
	}{{0, "10"}, {3 * time.Second, "7"}, {1500 * time.Millisecond, "6"}, {10 * time.Second, "0"}} {
		clock.Advance(tc.advance)
		resp, body = do(t, "GET", b.base+loc, "")
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != tc.want {
			t.Errorf("the job's 429 polled %v later: %d Retry-After %q, want %s (what is left of the recorded wait) %s",
				tc.advance, resp.StatusCode, resp.Header.Get("Retry-After"), tc.want, body)
		}
	}
	// And the wait it names holds: a call after it gets through.
	if resp, _ := do(t, "GET", b.base+"/after", ""); resp.StatusCode != 200 {
		t.Errorf("a call once the recorded wait has passed: %d, want 200", resp.StatusCode)
	}
}

// X-Ballast-Timeout on a poll (GET /_ballast/jobs/{id} with Prefer:
// wait=N) bounds its wait, as it bounds the wait of the request that
// starts a job: the agent said how long it gives ballast. The poll is
// answered 202 when the timeout passes, and Preference-Applied names the
// seconds waited at most. An invalid one is 400, as on any request.
func TestJobSeams11_PollWaitBoundedByTimeoutHeader(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, timeouts: {total: 600s, per_try: 600s}}
`, up))
	loc := js11Submit(t, b, "GET", "/slow", "")
	// The job is running (its call is at the upstream) before the poll
	// starts: the poll then reads it running, and the only new waiter on
	// the clock is the poll's.
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the job's call never reached the upstream")
	}
	base := clock.Waiters()
	done := raSend(t, "GET", b.base+loc, "", "Prefer", "wait=30", "X-Ballast-Timeout", "2s")
	waitFor(t, func() bool { return clock.Waiters() > base })
	clock.Advance(2 * time.Second)
	select {
	case a := <-done:
		if a.err != nil {
			t.Fatalf("the poll: %v", a.err)
		}
		if a.resp.StatusCode != 202 || a.resp.Header.Get("Preference-Applied") != "wait=2" || !strings.Contains(a.body, `"state":"running"`) {
			t.Errorf("the poll with X-Ballast-Timeout: 2s: %d Preference-Applied %q %s; want 202 after 2s, wait=2",
				a.resp.StatusCode, a.resp.Header.Get("Preference-Applied"), a.body)
		}
	case <-time.After(5 * time.Second):
		clock.Advance(30 * time.Second)
		t.Fatal("a poll with Prefer: wait=30 and X-Ballast-Timeout: 2s was not answered once 2s had passed")
	}
	if resp, body := do(t, "GET", b.base+loc, "", "X-Ballast-Timeout", "soon"); resp.StatusCode != 400 {
		t.Errorf("a poll with an invalid X-Ballast-Timeout: %d %s, want 400", resp.StatusCode, body)
	}
}

// An agent that hangs up while it waits for its job (Prefer:
// respond-async, wait=N, longer than the route's total) loses nothing:
// the job runs on, once, and its result is stored: the agent's retry
// with the same Idempotency-Key gets it.
func TestJobSeams11_AgentGoneDuringWaitJobStillStored(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan string, 4)
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		calls.Add(1)
		arrived <- r.URL.Path
		<-release
		_, _ = io.WriteString(w, "result")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, idempotency: {mode: header}, retry: {attempts: 1}, timeouts: {total: 20s}}
`, up))
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(c, "POST /work HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-gone\r\nPrefer: respond-async, wait=600\r\nContent-Length: 2\r\n\r\n{}")
	s9Recv(t, arrived, 5*time.Second, "the job's call reaching the upstream")
	c.Close()
	close(release)
	waitFor(t, func() bool { return b.metric("ballast_jobs", map[string]string{"state": "succeeded"}) == 1 })
	resp, body := do(t, "POST", b.base+"/work", "{}", "Idempotency-Key", "k-gone", "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || body != "result" || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the agent's retry after it hung up: %d %q (replayed %q), want the stored result", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the upstream was called %d times, want once", n)
	}
}

// A finished job's result is the caller's alone: polled with another
// Authorization, with none, or with the same one plus another credential
// (a second identity), GET and HEAD are 404 and nothing of the result
// shows, even with Prefer: wait and X-Ballast-Timeout; its own caller
// still gets it.
func TestJobSeams11_OtherTenantNeverSeesTheResult(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Secret", "s3")
		_, _ = io.WriteString(w, "alice's result")
	})
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}]
`, up))
	loc := js11Submit(t, b, "POST", "/x", "{}", "Authorization", "Bearer alice")
	if resp, body := do(t, "GET", b.base+loc, "", "Authorization", "Bearer alice", "Prefer", "wait=10"); resp.StatusCode != 200 || body != "alice's result" {
		t.Fatalf("alice's poll: %d %q", resp.StatusCode, body)
	}
	for _, h := range [][]string{
		{"Authorization", "Bearer mallory"},
		{},
		{"Authorization", "Bearer alice", "X-Api-Key", "mallory"},
		{"Authorization", "Bearer mallory", "Prefer", "wait=5", "X-Ballast-Timeout", "1s"},
	} {
		for _, method := range []string{"GET", "HEAD"} {
			resp, body := do(t, method, b.base+loc, "", h...)
			if resp.StatusCode != 404 || strings.Contains(body, "alice") || resp.Header.Get("X-Secret") != "" || resp.Header.Get("X-Ballast-Job-State") != "" {
				t.Errorf("%s by %q: %d %q (X-Secret %q, state %q), want 404 and nothing of the result",
					method, h, resp.StatusCode, body, resp.Header.Get("X-Secret"), resp.Header.Get("X-Ballast-Job-State"))
			}
		}
	}
}
