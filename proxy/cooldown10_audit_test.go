package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/redis/go-redis/v9"
)

// --- retry.max_cooldown ------------------------------------------------------

// cd10Warnings returns the WARN lines of b's log whose message contains msg.
func cd10Warnings(b *ballast, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(b.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if m["level"] == "WARN" && strings.Contains(fmt.Sprint(m["msg"]), msg) {
			out = append(out, m)
		}
	}
	return out
}

// cd10YearLong429 is an upstream whose first call is answered 429 with a
// Retry-After of a year (a buggy upstream), and every later one 200 "ok";
// hits counts its calls.
func cd10YearLong429(t *testing.T, hits *atomic.Int64) (url, addr string) {
	return upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "31536000")
			w.WriteHeader(429)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
}

// A 429 asking for a year (a buggy upstream) pauses the key for
// retry.max_cooldown (default 24h), not a year: on the fake clock the
// pause still holds a second before the cap and is over at it. The agent
// is told the capped pause, and the WARN line names the upstream and the
// announced length, never the key.
func TestCooldown10_YearLongHintPausesForTheCap(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, addr := cd10YearLong429(t, &hits)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, up))
	const key = "Bearer sk-cooldown10-secret"
	if resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", key); resp.StatusCode != 429 {
		t.Fatalf("the upstream's 429 (relayed: attempts 1): %d", resp.StatusCode)
	}
	resp, body := do(t, "GET", b.base+"/x", "", "Authorization", key)
	if p := decodeProblem(t, resp, body); resp.StatusCode != 429 || p.Reason != "rate_limited" || resp.Header.Get("Retry-After") != "86400" || hits.Load() != 1 {
		t.Errorf("paused: %d Retry-After %q %s (upstream hits %d); want 429 rate_limited with Retry-After 86400 (the cap)", resp.StatusCode, resp.Header.Get("Retry-After"), body, hits.Load())
	}
	if got := b.metric("ballast_cooldown_seconds", nil); got < 86399 || got > 86400 {
		t.Errorf("ballast_cooldown_seconds = %v, want 86400 (retry.max_cooldown), not a year", got)
	}
	// A second before the cap a request waits out the rest of the pause
	// (it fits its deadline), and is sent when the cap is reached.
	clock.Advance(24*time.Hour - time.Second)
	done := raSend(t, "GET", b.base+"/x", "", "Authorization", key)
	waitFor(t, func() bool { return clock.Waiters() == 1 })
	if hits.Load() != 1 {
		t.Errorf("a second before the cap the upstream was called (hits %d)", hits.Load())
	}
	clock.Advance(time.Second)
	r := raAnswer(t, done)
	if got := strconv.Itoa(r.resp.StatusCode) + " " + r.body; got != "200 ok" || hits.Load() != 2 {
		t.Errorf("at the cap: %s (upstream hits %d); the pause must end at retry.max_cooldown", got, hits.Load())
	}
	warns := cd10Warnings(b, "max_cooldown")
	if len(warns) != 1 {
		t.Fatalf("%d WARN lines about the capped hint, want 1:\n%s", len(warns), b.logs.String())
	}
	if w := warns[0]; w["upstream"] != addr || w["announced"] != (365*24*time.Hour).String() || w["max_cooldown"] != "24h0m0s" {
		t.Errorf("the WARN line %v; want upstream %s, announced 8760h0m0s, max_cooldown 24h0m0s", w, addr)
	}
	if strings.Contains(b.logs.String(), "sk-cooldown10-secret") {
		t.Error("the log holds the API key")
	}
}

// Many requests that meet the same year-long 429 at once (all in flight
// before the pause began) log it once, not once each.
func TestCooldown10_CappedHintLoggedOnce(t *testing.T) {
	const n = 8
	arrived := make(chan struct{}, n)
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Retry-After", "31536000")
		w.WriteHeader(429)
	})
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, up))
	answers := make([]<-chan raResult, n)
	for i := range answers {
		answers[i] = raSend(t, "GET", b.base+"/x", "", "Authorization", "Bearer k")
	}
	for range n {
		<-arrived
	}
	close(release)
	for _, ch := range answers {
		if r := raAnswer(t, ch); r.resp.StatusCode != 429 {
			t.Errorf("%d Retry-After %q %s", r.resp.StatusCode, r.resp.Header.Get("Retry-After"), r.body)
		}
	}
	if got := len(cd10Warnings(b, "max_cooldown")); got != 1 {
		t.Errorf("%d WARN lines for one pause met by %d requests, want 1", got, n)
	}
}

// A reset header of an exhausted limit far out (on a 200) is capped too,
// by a retry.max_cooldown inherited from defaults.
func TestCooldown10_ResetHeaderCappedByInheritedKey(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("x-ratelimit-remaining-requests", "0")
			w.Header().Set("x-ratelimit-reset-requests", "8000h")
		}
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
defaults: {retry: {max_cooldown: 1h}}
routes: [{name: r, match: {path_prefix: /}, upstream: %q}]
`, up))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_cooldown_seconds", nil); got < 3599 || got > 3600 {
		t.Errorf("ballast_cooldown_seconds = %v, want 3600 (defaults.retry.max_cooldown)", got)
	}
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 429 || hits.Load() != 1 {
		t.Errorf("during the pause: %d (hits %d)", resp.StatusCode, hits.Load())
	}
	clock.Advance(time.Hour)
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || hits.Load() != 2 {
		t.Errorf("after the cap: %d (hits %d); want the pause over after 1h", resp.StatusCode, hits.Load())
	}
}

// retry.max_cooldown must be positive and at most a year, at the path it
// was written (defaults or a route).
func TestCooldown10_MaxCooldownValidated(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"zero in defaults", "defaults: {retry: {max_cooldown: 0s}}\n", "defaults.retry.max_cooldown: must be positive"},
		{"zero on a route", "", "routes[0].retry.max_cooldown: must be positive"},
		{"over a year", "defaults: {retry: {max_cooldown: 8761h}}\n", "defaults.retry.max_cooldown: must be positive and at most 8760h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			route := "routes: [{name: r, match: {path_prefix: /}, upstream: http://127.0.0.1:1/}]\n"
			if tc.yaml == "" {
				route = "routes: [{name: r, match: {path_prefix: /}, upstream: http://127.0.0.1:1/, retry: {max_cooldown: 0s}}]\n"
			}
			_, err := config.Parse([]byte(tc.yaml+route), config.Source{Environ: []string{}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	cfg, err := config.Parse([]byte("routes: [{name: r, match: {path_prefix: /}, upstream: http://127.0.0.1:1/}]\n"), config.Source{Environ: []string{}})
	if err != nil || cfg.Routes[0].Retry.MaxCooldown.D() != 24*time.Hour {
		t.Errorf("default max_cooldown: %v %v, want 24h", cfg, err)
	}
}

// With state.backend redis, a replica never takes a longer pause from
// the fleet than its own cap: replica A (max_cooldown 8760h) pauses the
// key for a year and publishes it; replica B (max_cooldown 1h) pauses it
// for an hour, and once the hour is over sends again although Redis still
// holds the year (the pause is not renewed on every sync).
func TestCooldown10_FleetPauseCappedByTheReplica(t *testing.T) {
	rs := redistest.Start(t)
	var hits atomic.Int64
	up, _ := cd10YearLong429(t, &hits)
	prefix := fmt.Sprintf("cd10%d:", time.Now().UnixNano()%1e6)
	replica := func(clock policy.Clock, maxCooldown string) *ballast {
		return startBallastClock(t, clock, fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: %q}}
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1, max_cooldown: %s}}]
`, rs.Addr(), prefix, up, maxCooldown))
	}
	a := replica(nil, "8760h")
	clock := policy.NewFakeClock(time.Now())
	b := replica(clock, "1h")
	if resp, _ := do(t, "GET", a.base+"/x", "", "Authorization", "Bearer k"); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "31536000" {
		t.Fatalf("replica A: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	waitFor(t, func() bool { return b.metric("ballast_cooldown_seconds", nil) > 0 })
	if got := b.metric("ballast_cooldown_seconds", nil); got > 3600 {
		t.Errorf("replica B took the fleet's pause for %vs, over its max_cooldown of 1h", got)
	}
	if resp, _ := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer k"); resp.StatusCode != 429 || hits.Load() != 1 {
		t.Errorf("replica B within the hour: %d (hits %d); want the fleet's pause honoured", resp.StatusCode, hits.Load())
	}
	// The sync that set the gauge writes the WARN line just after.
	waitFor(t, func() bool { return len(cd10Warnings(b, "max_cooldown")) > 0 })
	if got := len(cd10Warnings(b, "max_cooldown")); got != 1 {
		t.Errorf("replica B logged %d WARN lines about the capped fleet pause, want 1", got)
	}
	clock.Advance(time.Hour)
	// Several syncs (every 200ms) read the year again: none renews it.
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	reads := func() int {
		info, _ := rdb.Info(context.Background(), "commandstats").Result()
		_, rest, _ := strings.Cut(info, "cmdstat_hgetall:calls=")
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		return n
	}
	before := reads()
	waitFor(t, func() bool { return reads() >= before+6 }) // two replicas: three syncs each
	if got := b.metric("ballast_cooldown_seconds", nil); got != 0 {
		t.Errorf("replica B an hour later: cool-down %vs, want 0 (the year in Redis must not renew the cap)", got)
	}
	if resp, body := do(t, "GET", b.base+"/x", "", "Authorization", "Bearer k"); resp.StatusCode != 200 || hits.Load() != 2 {
		t.Errorf("replica B an hour later: %d %s (hits %d); want it sent", resp.StatusCode, body, hits.Load())
	}
	if got := len(cd10Warnings(b, "max_cooldown")); got != 1 {
		t.Errorf("replica B logged %d WARN lines after the syncs, want still 1", got)
	}
}

// --- async jobs ----------------------------------------------------------------

// cd10Job submits a Prefer: respond-async request and returns its
// Location, failing the test unless it is accepted.
func cd10Job(t *testing.T, b *ballast, path string, headers ...string) string {
	t.Helper()
	resp, body := do(t, "POST", b.base+path, "{}", append([]string{"Prefer", "respond-async"}, headers...)...)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || !strings.HasPrefix(loc, "/_ballast/jobs/") {
		t.Fatalf("submit %s: %d %q %s", path, resp.StatusCode, loc, body)
	}
	return loc
}

// cd10Held is an upstream whose calls wait until release is closed, then
// answer body.
func cd10Held(t *testing.T, body string) (url string, release chan struct{}) {
	release = make(chan struct{})
	url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		<-release
		_, _ = io.WriteString(w, body)
	})
	return url, release
}

// Job ids are 128 random bits, all distinct; a near miss of a real id (a
// digit changed, upper case) finds nothing; and another tenant's poll of
// a running job, even with Prefer: wait, is answered 404 at once, without
// waiting on a job it may not see.
func TestCooldown10_JobIdsUnguessableAndScoped(t *testing.T) {
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "result for "+r.Header.Get("Authorization"))
	})
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}]
`, up))
	defer close(release)
	seen := map[string]bool{}
	for range 20 {
		id := strings.TrimPrefix(cd10Job(t, b, "/fast", "Authorization", "Bearer alice"), "/_ballast/jobs/")
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" || seen[id] {
			t.Fatalf("job id %q: want 32 lower-case hex digits, never repeated", id)
		}
		seen[id] = true
	}
	loc := cd10Job(t, b, "/slow", "Authorization", "Bearer alice")
	id := strings.TrimPrefix(loc, "/_ballast/jobs/")
	flip := byte('0')
	if id[31] == '0' {
		flip = '1'
	}
	for _, near := range []string{strings.ToUpper(id), id[:31] + string(flip), id[:31], id + "0", id + "/"} {
		if resp, body := do(t, "GET", b.base+"/_ballast/jobs/"+near, "", "Authorization", "Bearer alice"); resp.StatusCode != 404 {
			t.Errorf("near miss %q: %d %s, want 404", near, resp.StatusCode, body)
		}
	}
	start := time.Now()
	resp, body := do(t, "GET", b.base+loc, "", "Authorization", "Bearer mallory", "Prefer", "wait=20")
	if p := decodeProblem(t, resp, body); resp.StatusCode != 404 || p.Reason != "no_route" || strings.Contains(body, "alice") {
		t.Errorf("another tenant's poll: %d %s, want 404 no_route", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("another tenant's poll with wait=20 took %v: it waited on a job it may not see", took)
	}
	if resp, _ := do(t, "GET", b.base+loc, "", "Authorization", "Bearer alice"); resp.StatusCode != 202 {
		t.Errorf("alice's own poll of her running job: %d, want 202", resp.StatusCode)
	}
}

// A keyed Prefer: respond-async request of another tenant with the same
// Idempotency-Key starts its own job: it is never answered with the first
// tenant's job (its Location, or its result).
func TestCooldown10_KeyedJobNotSharedAcrossTenants(t *testing.T) {
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.WriteString(w, "result for "+r.Header.Get("Authorization"))
	})
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, idempotency: {mode: header}}]
`, up))
	locA := cd10Job(t, b, "/j", "Authorization", "Bearer alice", "Idempotency-Key", "k1")
	if resp, body := do(t, "GET", b.base+locA, "", "Authorization", "Bearer alice", "Prefer", "wait=10"); resp.StatusCode != 200 || body != "result for Bearer alice" {
		t.Fatalf("alice's job: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", b.base+"/j", "{}", "Prefer", "respond-async", "Authorization", "Bearer alice", "Idempotency-Key", "k1"); resp.Header.Get("Idempotent-Replayed") != "true" || body != "result for Bearer alice" {
		t.Fatalf("alice's repeat is not answered with her job (%d %s): the probe proves nothing", resp.StatusCode, body)
	}
	resp, body := do(t, "POST", b.base+"/j", "{}", "Prefer", "respond-async, wait=10", "Authorization", "Bearer bob", "Idempotency-Key", "k1")
	if resp.Header.Get("Location") == locA || resp.Header.Get("Idempotent-Replayed") != "" || strings.Contains(body, "alice") {
		t.Errorf("bob with alice's key: %d Location %q Replayed %q %s; want a job of his own", resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Idempotent-Replayed"), body)
	}
	if calls.Load() != 2 {
		t.Errorf("the upstream ran %d calls, want 2 (alice's once, bob's once)", calls.Load())
	}
}

// A job whose answer (with a Content-Length, read whole) is larger than
// state.max_response_bytes fails with 502, on every backend, and its
// record does not stay running; an answer that fits is stored whole.
func TestCooldown10_JobAnswerOverTheStoreLimit(t *testing.T) {
	rs := redistest.Start(t)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		_, _ = io.WriteString(w, strings.Repeat("a", n))
	})
	for _, backend := range []string{"memory", "file", "redis"} {
		t.Run(backend, func(t *testing.T) {
			state := map[string]string{
				"memory": "{backend: memory, max_response_bytes: 4KiB}",
				"file":   fmt.Sprintf("{backend: file, path: %q, max_response_bytes: 4KiB}", t.TempDir()+"/state.db"),
				"redis":  fmt.Sprintf("{backend: redis, max_response_bytes: 4KiB, redis: {address: %q, key_prefix: \"cd10j%d:\"}}", rs.Addr(), time.Now().UnixNano()%1e6),
			}[backend]
			b := startBallast(t, fmt.Sprintf(`
state: %s
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}}]
`, state, up))
			for _, tc := range []struct {
				size   int
				status int
				state  string
			}{{1024, 200, "succeeded"}, {64 << 10, 502, "failed"}} {
				loc := cd10Job(t, b, "/"+strconv.Itoa(tc.size))
				resp, body := do(t, "GET", b.base+loc, "", "Prefer", "wait=10")
				if resp.StatusCode != tc.status || resp.Header.Get("X-Ballast-Job-State") != tc.state {
					t.Errorf("a %d-byte answer: %d %q (%d bytes); want %d %s", tc.size, resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), len(body), tc.status, tc.state)
				}
				if tc.status == 200 && len(body) != tc.size {
					t.Errorf("a %d-byte answer came back with %d bytes", tc.size, len(body))
				}
			}
		})
	}
}

// Many agents polling one running job with Prefer: wait all get its
// result once it finishes, the same bytes each, and the upstream runs it
// once.
func TestCooldown10_JobPolledByManyAgents(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	release := make(chan struct{})
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"answer":"`+strings.Repeat("x", 8<<10)+`"}`)
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}]
`, up))
	loc := cd10Job(t, b, "/j", "Authorization", "Bearer team")
	waitFor(t, func() bool { return calls.Load() == 1 })
	waiters := clock.Waiters()
	const n = 40
	polls := make([]<-chan raResult, n)
	for i := range polls {
		polls[i] = raSend(t, "GET", b.base+loc, "", "Authorization", "Bearer team", "Prefer", "wait=20")
	}
	// Every poller waits on the job (its wait=20 is a timer on the clock).
	waitFor(t, func() bool { return clock.Waiters() == waiters+n })
	close(release)
	want := `{"answer":"` + strings.Repeat("x", 8<<10) + `"}`
	wrongBody := false
	for _, ch := range polls {
		r := raAnswer(t, ch)
		if r.resp.StatusCode != 200 || r.resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
			t.Errorf("a poller: %d %q", r.resp.StatusCode, r.resp.Header.Get("X-Ballast-Job-State"))
		}
		if r.body != want && !wrongBody {
			t.Errorf("a poller got %d bytes, not the job's answer", len(r.body))
			wrongBody = true
		}
	}
	if calls.Load() != 1 {
		t.Errorf("the upstream ran the job %d times", calls.Load())
	}
}

// A job that is running when a reload removes its route finishes on the
// route it was accepted by, and its result stays readable; a new async
// request to the removed path finds no route.
func TestCooldown10_JobSurvivesReloadThatRemovesItsRoute(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/jobs/j" {
			arrived <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "done "+r.URL.Path)
	})
	cfg := func(jobsRoute bool) string {
		s := fmt.Sprintf("routes:\n  - {name: other, match: {path_prefix: /other/}, upstream: %q}\n", up)
		if jobsRoute {
			s += fmt.Sprintf("  - {name: jobs, match: {path_prefix: /jobs/}, upstream: %q, async: {enabled: true, ttl: 1h}}\n", up)
		}
		return s
	}
	b := startBallast(t, cfg(true))
	loc := cd10Job(t, b, "/jobs/j", "Authorization", "Bearer a")
	<-arrived
	if err := os.WriteFile(b.file, []byte(cfg(false)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	close(release)
	resp, body := do(t, "GET", b.base+loc, "", "Authorization", "Bearer a", "Prefer", "wait=10")
	if resp.StatusCode != 200 || body != "done /jobs/j" || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Errorf("the job after its route was removed: %d %q %s", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if resp, body := do(t, "GET", b.base+loc, "", "Authorization", "Bearer a"); resp.StatusCode != 200 || body != "done /jobs/j" {
		t.Errorf("the job read again: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", b.base+"/jobs/j", "{}", "Prefer", "respond-async")
	if p := decodeProblem(t, resp, body); resp.StatusCode != 404 || p.Reason != "no_route" {
		t.Errorf("a new job on the removed route: %d %s", resp.StatusCode, body)
	}
}

// Prefer: wait on a poll is bounded at ten minutes (on the server's
// clock), however large the number, and says so in Preference-Applied; a
// job that finishes meanwhile ends the wait at once.
func TestCooldown10_JobWaitBounded(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, release := cd10Held(t, "finally")
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, timeouts: {per_try: 2h, total: 2h}}]
`, up))
	defer close(release)
	loc := cd10Job(t, b, "/j")
	waiters := clock.Waiters()
	done := raSend(t, "GET", b.base+loc, "", "Prefer", "wait=99999999999999999999")
	waitFor(t, func() bool { return clock.Waiters() > waiters })
	clock.Advance(10*time.Minute - time.Second)
	if clock.Waiters() <= waiters {
		r := raAnswer(t, done)
		t.Fatalf("the poll stopped waiting before ten minutes: %d Preference-Applied %q", r.resp.StatusCode, r.resp.Header.Get("Preference-Applied"))
	}
	clock.Advance(time.Second)
	if r := raAnswer(t, done); r.resp.StatusCode != 202 || r.resp.Header.Get("Preference-Applied") != "wait=600" {
		t.Errorf("the poll after ten minutes: %d Preference-Applied %q, want 202 with Preference-Applied wait=600", r.resp.StatusCode, r.resp.Header.Get("Preference-Applied"))
	}
}

// A keyed job is kept as long as its key names it: repeated after
// async.ttl has passed since it finished, but within the key's hold
// (timeouts.total + async.ttl from its start), the keyed request is
// answered with the job's result, not with 404 no_route (a POST to a
// route that exists), and the call does not run again. Once the key lets
// go, both are gone and the key starts a new job.
func TestCooldown10_KeyedJobKeptWhileItsKeyHoldsIt(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.WriteString(w, "ran")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true, ttl: 1m}, idempotency: {mode: header, ttl: 24h}, timeouts: {per_try: 1h, total: 1h}}]
`, up))
	loc := cd10Job(t, b, "/j", "Idempotency-Key", "k")
	if resp, _ := do(t, "GET", b.base+loc, "", "Prefer", "wait=5"); resp.StatusCode != 200 {
		t.Fatalf("the job: %d", resp.StatusCode)
	}
	clock.Advance(30 * time.Minute) // long past async.ttl, within the key's 1h1m
	resp, body := do(t, "POST", b.base+"/j", "{}", "Prefer", "respond-async", "Idempotency-Key", "k")
	if resp.StatusCode != 200 || body != "ran" || resp.Header.Get("Idempotent-Replayed") != "true" || calls.Load() != 1 {
		t.Errorf("the keyed repeat while its key holds the job: %d Replayed %q %s (calls %d); want the job's result, replayed",
			resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body, calls.Load())
	}
	if resp, _ := do(t, "GET", b.base+loc, ""); resp.StatusCode != 200 {
		t.Errorf("the job its key still names: %d, want 200", resp.StatusCode)
	}
	clock.Advance(31*time.Minute + time.Second) // the key's 1h1m are over
	if resp, _ := do(t, "GET", b.base+loc, ""); resp.StatusCode != 404 {
		t.Errorf("the job after its key let go: %d, want 404", resp.StatusCode)
	}
	if again := cd10Job(t, b, "/j", "Idempotency-Key", "k"); again == loc {
		t.Errorf("the key after it expired still names the old job %s", loc)
	}
}

// Prefer: respond-async, wait=N on the request that starts a job is a
// wait of that request: it never outlasts the request's deadline (here an
// X-Ballast-Timeout of 1s, under a wait of 30), which answers 202 with
// the job's status when it is over, and Preference-Applied says the wait
// that was applied.
func TestCooldown10_AsyncWaitBoundedByTheDeadline(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up, release := cd10Held(t, "late")
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, idempotency: {mode: header}}]
`, up))
	defer close(release)
	for _, key := range []string{"", "k", "k"} { // unkeyed, keyed, and the keyed repeat (replayed)
		waiters := clock.Waiters()
		done := raSend(t, "POST", b.base+"/j", "{}", "Prefer", "respond-async, wait=30", "X-Ballast-Timeout", "1s", "Idempotency-Key", key)
		waitFor(t, func() bool { return clock.Waiters() > waiters })
		clock.Advance(time.Second)
		r := raWithin(t, done, 10*time.Second, fmt.Sprintf("key %q: the request's wait outlasted its 1s deadline (X-Ballast-Timeout)", key))
		if applied := r.resp.Header.Get("Preference-Applied"); r.resp.StatusCode != 202 || applied != "respond-async, wait=1" {
			t.Errorf("key %q: %d Preference-Applied %q, want 202 with Preference-Applied respond-async, wait=1", key, r.resp.StatusCode, applied)
		}
	}
}
