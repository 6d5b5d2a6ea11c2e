package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
)

// asUpstream answers every request with a fixed, recognisable answer
// and counts the calls it executes.
type asUpstream struct {
	calls   atomic.Int64
	release chan struct{} // when not nil, each call waits for it
	status  int
	body    string
}

func (a *asUpstream) handler(w http.ResponseWriter, r *http.Request) {
	n := a.calls.Add(1)
	_, _ = io.ReadAll(r.Body)
	if a.release != nil {
		select {
		case <-a.release:
		case <-r.Context().Done():
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Tool", "t1")
	w.Header().Add("X-Multi", "a")
	w.Header().Add("X-Multi", "b")
	st := a.status
	if st == 0 {
		st = 200
	}
	body := a.body
	if body == "" {
		body = fmt.Sprintf(`{"call":%d}`, n)
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(st)
	_, _ = io.WriteString(w, body)
}

// TestIdempotencyKeyUpTo255Characters: docs/config.md (idempotency.mode)
// and errors.md (bad_request) promise Idempotency-Key values of 1-255 visible
// ASCII characters. A 200-character key must be guarded and replayed, not
// refused with 400.
func TestIdempotencyKeyUpTo255Characters(t *testing.T) {
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, idemRoute(u, ""))
	key := strings.Repeat("k", 200)
	resp, body := do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", key)
	if resp.StatusCode != 200 {
		t.Fatalf("a 200-character Idempotency-Key got %d %s; docs allow 1-255 visible ASCII characters", resp.StatusCode, body)
	}
	resp, _ = do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", key)
	if resp.Header.Get("Idempotent-Replayed") != "true" || up.calls.Load() != 1 {
		t.Errorf("repeat with the 200-character key: replayed %q, upstream calls %d", resp.Header.Get("Idempotent-Replayed"), up.calls.Load())
	}
	// 256 characters is over the documented limit.
	resp, body = do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", strings.Repeat("k", 256))
	if resp.StatusCode != 400 || decodeProblem(t, resp, body).Reason != "bad_request" {
		t.Errorf("256-character key: %d %s", resp.StatusCode, body)
	}
}

// TestReplayFidelity: a replay carries the first answer's status,
// end-to-end headers and body byte for byte, plus Idempotent-Replayed: true
// and X-Ballast-Attempts: 0, and its own X-Request-Id; hostile keys get 400.
func TestReplayFidelity(t *testing.T) {
	up := &asUpstream{status: 201, body: "{\"id\": \"x\\u00e9\",\n  \"n\":   1}\n"}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, idemRoute(u, ""))
	first, fbody := do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", "fid-1", "Authorization", "Bearer a")
	again, abody := do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", "fid-1", "Authorization", "Bearer a")
	if first.StatusCode != 201 || again.StatusCode != 201 || fbody != abody || fbody != up.body {
		t.Fatalf("first %d %q, replay %d %q", first.StatusCode, fbody, again.StatusCode, abody)
	}
	for _, h := range []string{"Content-Type", "X-Tool"} {
		if first.Header.Get(h) != again.Header.Get(h) {
			t.Errorf("%s: first %q, replay %q", h, first.Header.Get(h), again.Header.Get(h))
		}
	}
	if got := again.Header.Values("X-Multi"); strings.Join(got, ",") != "a,b" {
		t.Errorf("repeated header replayed as %q", got)
	}
	if first.Header.Get("Idempotent-Replayed") != "" || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("Idempotent-Replayed: first %q, replay %q", first.Header.Get("Idempotent-Replayed"), again.Header.Get("Idempotent-Replayed"))
	}
	if again.Header.Get("X-Ballast-Attempts") != "0" || first.Header.Get("X-Ballast-Attempts") != "1" {
		t.Errorf("X-Ballast-Attempts: first %q, replay %q", first.Header.Get("X-Ballast-Attempts"), again.Header.Get("X-Ballast-Attempts"))
	}
	if id := again.Header.Get("X-Request-Id"); id == "" || id == first.Header.Get("X-Request-Id") {
		t.Errorf("replay X-Request-Id %q (first %q): want the replay's own id", id, first.Header.Get("X-Request-Id"))
	}
	if up.calls.Load() != 1 {
		t.Errorf("upstream calls %d", up.calls.Load())
	}
	for _, key := range []string{"has space", "tab\there", "caf\u00e9"} {
		resp, body := do(t, "POST", b.base+"/x", `{"a":1}`, "Idempotency-Key", key)
		if resp.StatusCode != 400 || decodeProblem(t, resp, body).Reason != "bad_request" {
			t.Errorf("key %q: %d %s", key, resp.StatusCode, body)
		}
	}
}

// asJobStatus is the JSON of a 202 job status.
type asJobStatus struct {
	ID, State, Route, Location string
	LastError                  string `json:"last_error"`
}

func asDecodeJob(t *testing.T, body string) asJobStatus {
	t.Helper()
	var j asJobStatus
	if err := json.Unmarshal([]byte(body), &j); err != nil {
		t.Fatalf("job status %q: %v", body, err)
	}
	return j
}

// TestJobExpiresOnFakeClock: docs say an expired job id gets
// 404 and that an expired record reads as absent before it is swept. A
// finished job read after async.ttl (on the server's clock) must be gone,
// and the sweeper (paced on the wall clock) removes it by that clock too.
func TestJobExpiresOnFakeClock(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallastClock(t, clock, fmt.Sprintf(`
state: {sweep_every: 20ms}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true, ttl: 1m}}
`, u))
	resp, body := do(t, "POST", b.base+"/r", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("submit: %d %q %s", resp.StatusCode, loc, body)
	}
	// wait=5 is on the fake clock: the job finishes long before anyone advances it.
	if r, body := do(t, "GET", b.base+loc, "", "Prefer", "wait=5"); r.StatusCode != 200 || r.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("finished job: %d %q %s", r.StatusCode, r.Header.Get("X-Ballast-Job-State"), body)
	}
	if r, _ := do(t, "GET", b.base+loc, ""); r.StatusCode != 200 {
		t.Fatalf("job within its ttl: %d", r.StatusCode)
	}
	succeeded := map[string]string{"state": "succeeded"}
	if got := b.metric("ballast_jobs", succeeded); got != 1 {
		t.Fatalf("ballast_jobs{state=succeeded} = %v within the ttl, want 1", got)
	}
	clock.Advance(2 * time.Minute)
	r, body := do(t, "GET", b.base+loc, "")
	if r.StatusCode != 404 {
		t.Errorf("job read 1m past async.ttl answered %d %q, want 404 (expired)", r.StatusCode, body)
	}
	waitFor(t, func() bool { return b.metric("ballast_jobs", succeeded) == 0 })
}

// TestJobHead: HEAD /_ballast/jobs/{id} answers as GET does,
// without a body, and is never routed to an upstream.
func TestJobHead(t *testing.T) {
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, u))
	resp, body := do(t, "POST", b.base+"/r", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("submit: %d %q %s", resp.StatusCode, loc, body)
	}
	if resp, body := do(t, "HEAD", b.base+loc, "", "Prefer", "wait=5"); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD waiting for the job: %d %q", resp.StatusCode, body)
	}
	tests := []struct {
		name, path, state string
		status            int
	}{
		{"finished job", loc, "succeeded", 200},
		{"unknown job", "/_ballast/jobs/none", "", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			get, gbody := do(t, "GET", b.base+tt.path, "")
			head, hbody := do(t, "HEAD", b.base+tt.path, "")
			if head.StatusCode != tt.status || get.StatusCode != tt.status || hbody != "" || gbody == "" {
				t.Errorf("GET %d (%d bytes), HEAD %d %q; want %d, and no body for HEAD", get.StatusCode, len(gbody), head.StatusCode, hbody, tt.status)
			}
			for _, h := range []string{"X-Ballast-Job-State", "Content-Type"} {
				if head.Header.Get(h) != get.Header.Get(h) {
					t.Errorf("%s: HEAD %q, GET %q", h, head.Header.Get(h), get.Header.Get(h))
				}
			}
			if head.Header.Get("X-Ballast-Job-State") != tt.state {
				t.Errorf("X-Ballast-Job-State %q, want %q", head.Header.Get("X-Ballast-Job-State"), tt.state)
			}
		})
	}
	if up.calls.Load() != 1 {
		t.Errorf("upstream calls %d, want 1 (HEAD on the jobs path was routed)", up.calls.Load())
	}
}

// asPost sends a request from a background goroutine, ignoring the
// outcome (the agent that gave up, or the process that died under it).
func asPost(url, body string, headers ...string) {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	if resp, err := c.Do(req); err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	c.CloseIdleConnections()
}

// asCrash stops b the way a dying process does as far as the state file is
// concerned: requests still running never record their outcome.
func asCrash(t *testing.T, b *ballast) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_ = b.srv.Shutdown(ctx)
}

// TestOutcomeUnknownAfterCrash: with the file backend, a claim in
// flight when ballast stopped reads as 409 outcome_unknown (no Retry-After)
// after a restart on the same file; on an idempotent route it runs again.
func TestOutcomeUnknownAfterCrash(t *testing.T) {
	path := t.TempDir() + "/state.db"
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	cfg := fmt.Sprintf(`
state: {path: %s}
routes:
  - {name: pay, match: {path_prefix: /pay/}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}
  - {name: idem, match: {path_prefix: /idem/}, upstream: %q, idempotency: {mode: header, idempotent: true}, timeouts: {total: 20s}}
`, path, u, u)
	b1 := startBallast(t, cfg)
	t.Cleanup(func() { close(up.release) }) // before b1's own cleanup waits for it
	go asPost(b1.base+"/pay/x", `{"a":1}`, "Idempotency-Key", "k1")
	go asPost(b1.base+"/idem/x", `{"a":1}`, "Idempotency-Key", "k2")
	waitFor(t, func() bool { return up.calls.Load() == 2 })
	asCrash(t, b1)

	up2 := &asUpstream{}
	u2, _ := upstream(t, up2.handler)
	b2 := startBallast(t, strings.ReplaceAll(cfg, u, u2))
	resp, body := do(t, "POST", b2.base+"/pay/x", `{"a":1}`, "Idempotency-Key", "k1")
	if resp.StatusCode != 409 || decodeProblem(t, resp, body).Reason != "outcome_unknown" || resp.Header.Get("Retry-After") != "" {
		t.Errorf("after the crash: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if up2.calls.Load() != 0 {
		t.Errorf("the call whose outcome was lost ran again: %d", up2.calls.Load())
	}
	// Another body under that key is still a mismatch.
	if resp, body := do(t, "POST", b2.base+"/pay/x", `{"a":2}`, "Idempotency-Key", "k1"); resp.StatusCode != 422 {
		t.Errorf("other body after the crash: %d %s", resp.StatusCode, body)
	}
	// idempotent: true runs it again, then replays.
	resp, body = do(t, "POST", b2.base+"/idem/x", `{"a":1}`, "Idempotency-Key", "k2")
	if resp.StatusCode != 200 || up2.calls.Load() != 1 {
		t.Errorf("idempotent route after the crash: %d %s, calls %d", resp.StatusCode, body, up2.calls.Load())
	}
	if resp, _ := do(t, "POST", b2.base+"/idem/x", `{"a":1}`, "Idempotency-Key", "k2"); resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("no replay after the re-run")
	}
}

// TestFailedJobWithoutResponseIsOutcomeUnknown: a job whose outcome
// was lost in a restart is marked failed; GET /_ballast/jobs/{id} must then
// give a final answer (X-Ballast-Job-State: failed), not 202 Accepted with
// Retry-After: 1, which tells the agent to keep polling a job that will
// never finish. The safe job on the other route resumes and succeeds.
func TestFailedJobWithoutResponseIsOutcomeUnknown(t *testing.T) {
	path := t.TempDir() + "/state.db"
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	cfg := fmt.Sprintf(`
state: {path: %s}
routes:
  - {name: post, match: {path_prefix: /post/}, upstream: %q, async: {enabled: true}}
  - {name: safe, match: {path_prefix: /safe/}, upstream: %q, async: {enabled: true}, retry: {unsafe_methods: true}}
`, path, u, u)
	b1 := startBallast(t, cfg)
	t.Cleanup(func() { close(up.release) }) // before b1's own cleanup waits for it
	r1, _ := do(t, "POST", b1.base+"/post/x", `{}`, "Prefer", "respond-async", "Authorization", "Bearer a")
	r2, _ := do(t, "POST", b1.base+"/safe/x", `{}`, "Prefer", "respond-async", "Authorization", "Bearer a")
	lost, resumed := r1.Header.Get("Location"), r2.Header.Get("Location")
	if r1.StatusCode != 202 || r2.StatusCode != 202 {
		t.Fatalf("submit: %d %d", r1.StatusCode, r2.StatusCode)
	}
	waitFor(t, func() bool { return up.calls.Load() == 2 })
	asCrash(t, b1)

	up2 := &asUpstream{}
	u2, _ := upstream(t, up2.handler)
	b2 := startBallast(t, strings.ReplaceAll(cfg, u, u2))
	resp, body := do(t, "GET", b2.base+resumed, "", "Authorization", "Bearer a", "Prefer", "wait=5")
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" || up2.calls.Load() != 1 {
		t.Errorf("resumed job: %d %q %s (calls %d)", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body, up2.calls.Load())
	}
	resp, body = do(t, "GET", b2.base+lost, "", "Authorization", "Bearer a", "Prefer", "wait=5")
	if resp.StatusCode == 202 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Errorf("job failed with an unknown outcome answered %d, X-Ballast-Job-State %q, Retry-After %q: %s",
			resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), resp.Header.Get("Retry-After"), body)
	}
	// docs/config.md (async): 409 outcome_unknown, the reason as detail, no Retry-After.
	if p := decodeProblem(t, resp, body); resp.StatusCode != 409 || p.Reason != "outcome_unknown" ||
		!strings.Contains(body, "outcome is unknown") || resp.Header.Get("Retry-After") != "" {
		t.Errorf("job failed with an unknown outcome: %d %q Retry-After %q: %s", resp.StatusCode, p.Reason, resp.Header.Get("Retry-After"), body)
	}
	if up2.calls.Load() != 1 {
		t.Errorf("the unsafe job ran again: calls %d", up2.calls.Load())
	}
}

// asFleet starts n replicas on one Redis and one key prefix.
func asFleet(t *testing.T, addr string, n int, routes, onError string) []*ballast {
	prefix := fmt.Sprintf("as%d:", time.Now().UnixNano()%1e9)
	var out []*ballast
	for range n {
		out = append(out, startBallast(t, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, key_prefix: %q, on_error: %s, op_timeout: 200ms, read_timeout: 200ms, write_timeout: 200ms, dial_timeout: 200ms}
%s`, addr, prefix, onError, routes)))
	}
	return out
}

// TestReplicaStartLeavesOtherReplicasJobs: with state.backend redis,
// a replica that starts (a scale-up, a rolling restart) must not treat the
// jobs other live replicas are running as its own leftovers. Docs: jobs
// "pending when ballast stops are resumed on the next start"; a job that
// is running fine on replica A must stay running.
func TestReplicaStartLeavesOtherReplicasJobs(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	routes := fmt.Sprintf("routes: [{name: post, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}]\n", u)
	prefix := fmt.Sprintf("rs%d:", time.Now().UnixNano()%1e9)
	cfg := fmt.Sprintf("state: {backend: redis, redis: {address: %q, key_prefix: %q}}\n%s", rs.Addr(), prefix, routes)
	a := startBallast(t, cfg)
	t.Cleanup(func() { close(up.release) })
	resp, body := do(t, "POST", a.base+"/x", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("submit: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return up.calls.Load() == 1 })
	b := startBallast(t, cfg) // a second replica joins the fleet
	if r, _ := do(t, "GET", b.base+"/_ballast/jobs/none", ""); r.StatusCode != 404 {
		t.Fatalf("replica B is not serving: %d", r.StatusCode)
	}
	resp, body = do(t, "GET", a.base+loc, "")
	if resp.StatusCode != 202 || asDecodeJob(t, body).State != "running" {
		t.Errorf("the job still running on replica A reads %d %s after replica B started", resp.StatusCode, body)
	}
}

// TestJobWaitOnOtherReplica: docs say a job started on one
// replica "can be fetched from any", and Prefer: wait=N waits for its
// result. Waiting through replica B for a job running on replica A must
// answer once the job finishes, not after the whole N seconds with 202.
func TestJobWaitOnOtherReplica(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	reps := asFleet(t, rs.Addr(), 2, fmt.Sprintf("routes: [{name: post, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}]\n", u), "fail_open")
	a, b := reps[0], reps[1]
	released := false
	t.Cleanup(func() {
		if !released {
			close(up.release)
		}
	})
	resp, body := do(t, "POST", a.base+"/x", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("submit: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return up.calls.Load() == 1 })
	type answer struct {
		status int
		state  string
		took   time.Duration
	}
	got := make(chan answer, 1)
	go func() {
		start := time.Now()
		req, _ := http.NewRequest("GET", b.base+loc, nil)
		req.Header.Set("Prefer", "wait=4")
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		r, err := c.Do(req)
		if err != nil {
			got <- answer{}
			return
		}
		_, _ = io.ReadAll(r.Body)
		r.Body.Close()
		got <- answer{r.StatusCode, r.Header.Get("X-Ballast-Job-State"), time.Since(start)}
	}()
	// B has read the pending job and is waiting.
	waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "get_job"}) >= 1 })
	close(up.release)
	released = true
	ans := <-got
	if ans.status != 200 || ans.state != "succeeded" {
		t.Errorf("waiting on replica B for a job that finished on A: %d %q after %v; want the result as soon as it is there",
			ans.status, ans.state, ans.took.Round(time.Millisecond))
	}
}

// TestRedisDownWhileAttached: with on_error fail_closed, a
// duplicate attached to a running call when Redis goes away gets 503
// state_unavailable with Retry-After: 1 (errors.md), not a hang.
func TestRedisDownWhileAttached(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	b := asFleet(t, rs.Addr(), 1, fmt.Sprintf("routes: [{name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}]\n", u), "fail_closed")[0]
	t.Cleanup(func() { close(up.release) })
	go asPost(b.base+"/x", `{}`, "Idempotency-Key", "k")
	waitFor(t, func() bool { return up.calls.Load() == 1 })
	type answer struct {
		resp *http.Response
		body string
	}
	got := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("POST", b.base+"/x", strings.NewReader(`{}`))
		req.Header.Set("Idempotency-Key", "k")
		c := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		r, err := c.Do(req)
		if err != nil {
			got <- answer{}
			return
		}
		bb, _ := io.ReadAll(r.Body)
		r.Body.Close()
		got <- answer{r, string(bb)}
	}()
	waitFor(t, func() bool {
		select {
		case a := <-got:
			t.Fatalf("early answer %v %s", a.resp.StatusCode, a.body)
		default:
		}
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})
	rs.Kill()
	ans := <-got
	if ans.resp == nil {
		t.Fatal("the attached duplicate got no answer")
	}
	if ans.resp.StatusCode != 503 || decodeProblem(t, ans.resp, ans.body).Reason != "state_unavailable" || ans.resp.Header.Get("Retry-After") != "1" {
		t.Errorf("attached duplicate during the outage: %d %s", ans.resp.StatusCode, ans.body)
	}
}

// TestKeyedAnswerOver64KiBRunsOnce: state.max_response_bytes
// (default 1MiB) is documented as the largest response stored for replay;
// only a larger one "passes through unstored" (counted too_large) with its
// key freed. A keyed POST answered with a 100KiB JSON body (Content-Length
// set, not a stream) must replay, not run a second time.
func TestKeyedAnswerOver64KiBRunsOnce(t *testing.T) {
	up := &asUpstream{body: `{"pad":"` + strings.Repeat("x", 100<<10) + `"}`}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, idemRoute(u, ""))
	r1, b1 := do(t, "POST", b.base+"/charge", `{"amount":5}`, "Idempotency-Key", "big-1")
	r2, b2 := do(t, "POST", b.base+"/charge", `{"amount":5}`, "Idempotency-Key", "big-1")
	if r1.StatusCode != 200 || r2.StatusCode != 200 || b1 != up.body || b2 != up.body {
		t.Fatalf("answers %d (%d bytes), %d (%d bytes)", r1.StatusCode, len(b1), r2.StatusCode, len(b2))
	}
	if up.calls.Load() != 1 || r2.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a keyed POST with a 100KiB answer (under max_response_bytes 1MiB) ran %d times; replayed %q, too_large counted %v",
			up.calls.Load(), r2.Header.Get("Idempotent-Replayed"),
			b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "too_large"}))
	}
}

// TestUnstorableAnswersFreeTheKey: an answer over
// max_response_bytes passes through whole, is counted too_large and frees
// the key; so does an event stream over it; and a 5xx by default.
func TestUnstorableAnswersFreeTheKey(t *testing.T) {
	var calls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		switch r.URL.Path {
		case "/big":
			body := strings.Repeat("y", 4000)
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			_, _ = io.WriteString(w, body)
		case "/sse":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: 1\n\n")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "data: "+strings.Repeat("2", 2000)+"\n\n")
		default:
			w.WriteHeader(503)
			_, _ = io.WriteString(w, "busy")
		}
	})
	b := startBallast(t, "state: {max_response_bytes: 1KiB}\n"+idemRoute(u, ", store_server_errors: false")+"    retry: {attempts: 1}\n")
	for _, tc := range []struct{ name, path, want string }{
		{"too large", "/big", strings.Repeat("y", 4000)},
		{"event stream", "/sse", "data: 1\n\ndata: " + strings.Repeat("2", 2000) + "\n\n"},
		{"server error", "/err", "busy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := calls.Load()
			for i := range 2 {
				resp, body := do(t, "POST", b.base+tc.path, `{}`, "Idempotency-Key", "free"+tc.path)
				if body != tc.want || resp.Header.Get("Idempotent-Replayed") != "" {
					t.Errorf("request %d: %d replayed %q body %q", i, resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
				}
			}
			if calls.Load()-before != 2 {
				t.Errorf("the key was not freed: %d upstream calls for 2 requests", calls.Load()-before)
			}
		})
	}
	if got := b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "too_large"}); got != 4 {
		t.Errorf("too_large counted %v, want 4", got)
	}
}

// TestRedisJobWaitLongerThan5s: GET /_ballast/jobs/{id} with
// Prefer: wait=N (up to 600s) answers with the job's result once it
// finishes within N. With the redis backend, a job that finishes more than
// five seconds into the wait must still be answered with its result.
func TestRedisJobWaitLongerThan5s(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	b := asFleet(t, rs.Addr(), 1, fmt.Sprintf("routes: [{name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, timeouts: {per_try: 30s, total: 30s}}]\n", u), "fail_open")[0]
	// The tool takes 5.5 seconds: its own running time, not a wait for behaviour.
	timer := time.AfterFunc(5500*time.Millisecond, func() { close(up.release) })
	t.Cleanup(func() {
		if timer.Stop() {
			close(up.release)
		}
	})
	resp, body := do(t, "POST", b.base+"/x", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("submit: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", b.base+loc, "", "Prefer", "wait=20")
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Errorf("wait=20 for a job that finished after 5.5s: %d %q %s", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
}

// TestFailedFirstAttemptFreesKey: when the guarded call ends in
// one of ballast's own problems (timeout, reset, invalid response) on a
// route declared idempotent, the key is freed, so a retry with the same
// key runs and its answer is stored. (Without idempotent: true the retry
// reads 409 outcome_unknown: TestTorture9KeyedAttemptThatMayHaveRunIsNotRepeated.)
func TestFailedFirstAttemptFreesKey(t *testing.T) {
	release := make(chan struct{})
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){
		hang(release), // timeout
		reset,         // 502 upstream_unavailable
		func(w http.ResponseWriter, r *http.Request) { // invalid JSON
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"half":`)
		},
		func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"ok":true}`)
		},
	}}
	u, _ := upstream(t, s.handler)
	b := startBallast(t, idemRoute(u, ", idempotent: true")+`    retry: {attempts: 1}
    timeouts: {per_try: 200ms, total: 5s}
    validate: {json: true}
`)
	t.Cleanup(func() { close(release) })
	for i, want := range []struct {
		status int
		reason string
	}{{504, "timeout"}, {502, "upstream_unavailable"}, {502, "invalid_response"}} {
		resp, body := do(t, "POST", b.base+"/x", `{"n":1}`, "Idempotency-Key", "flaky")
		if resp.StatusCode != want.status || decodeProblem(t, resp, body).Reason != want.reason {
			t.Errorf("attempt %d: %d %s, want %d %s", i, resp.StatusCode, body, want.status, want.reason)
		}
	}
	resp, body := do(t, "POST", b.base+"/x", `{"n":1}`, "Idempotency-Key", "flaky")
	if resp.StatusCode != 200 || body != `{"ok":true}` || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("retry after three failures: %d %q replayed %q", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
	resp, body = do(t, "POST", b.base+"/x", `{"n":1}`, "Idempotency-Key", "flaky")
	if resp.Header.Get("Idempotent-Replayed") != "true" || body != `{"ok":true}` || s.hits.Load() != 4 {
		t.Errorf("after success: replayed %q %q, upstream hits %d", resp.Header.Get("Idempotent-Replayed"), body, s.hits.Load())
	}
}

// TestFileStoreFullRefuses: the file backend refuses new claims
// once it holds state.max_records records: 503 state_unavailable with
// Retry-After: 1; stored keys still replay.
func TestFileStoreFullRefuses(t *testing.T) {
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf("state: {path: %s/s.db, max_records: 2}\n", t.TempDir())+idemRoute(u, ""))
	for _, k := range []string{"a", "b"} {
		if resp, _ := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", k); resp.StatusCode != 200 {
			t.Fatalf("key %s: %d", k, resp.StatusCode)
		}
	}
	resp, body := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "c")
	if resp.StatusCode != 503 || decodeProblem(t, resp, body).Reason != "state_unavailable" || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("third key on a full store: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if resp, _ := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "a"); resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a stored key no longer replays on a full store")
	}
	if up.calls.Load() != 2 {
		t.Errorf("upstream calls %d", up.calls.Load())
	}
}

// TestJobLimitsAndFailures: a job whose request exceeds
// max_response_bytes is refused (413 body_too_large); a job whose
// upstream answers 5xx is failed and serves that answer with
// X-Ballast-Job-State: failed; a 4xx job succeeded; ids are 128-bit hex.
func TestJobLimitsAndFailures(t *testing.T) {
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(500)
			_, _ = io.WriteString(w, "down")
			return
		}
		w.WriteHeader(404)
		_, _ = io.WriteString(w, "nope")
	})
	b := startBallast(t, "state: {max_response_bytes: 2KiB}\n"+fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}}
`, u))
	resp, body := do(t, "POST", b.base+"/big", strings.Repeat("z", 4096), "Prefer", "respond-async")
	if resp.StatusCode != 413 || decodeProblem(t, resp, body).Reason != "body_too_large" {
		t.Errorf("too-large job request: %d %s", resp.StatusCode, body)
	}
	for _, tc := range []struct {
		path, state, body string
		status            int
	}{{"/fail", "failed", "down", 500}, {"/missing", "succeeded", "nope", 404}} {
		resp, body := do(t, "POST", b.base+tc.path, `{}`, "Prefer", "respond-async")
		loc := resp.Header.Get("Location")
		id := strings.TrimPrefix(loc, "/_ballast/jobs/")
		if resp.StatusCode != 202 || len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("submit %s: %d %q %s", tc.path, resp.StatusCode, loc, body)
		}
		resp, body = do(t, "GET", b.base+loc, "", "Prefer", "wait=10")
		if resp.StatusCode != tc.status || body != tc.body || resp.Header.Get("X-Ballast-Job-State") != tc.state {
			t.Errorf("job %s: %d %q %q", tc.path, resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
		}
	}
}
