package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// reloadTo writes yaml over b's config file and POSTs /reload.
func opsReload(t *testing.T, b *ballast, yaml string) (int, string) {
	t.Helper()
	if err := os.WriteFile(b.file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, body := do(t, "POST", b.admin+"/reload", "")
	return resp.StatusCode, body
}

func opsOK(t *testing.T) string {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	return up
}

// A route listing [PROPPATCH, PATCH] (or [UNLOCK, LOCK]) must take PATCH
// (LOCK) requests: methods match exactly.
func TestMethodsMatchEveryListedMethod(t *testing.T) {
	up := opsOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: dav, match: {path_prefix: /dav/, methods: [PROPPATCH, PATCH, UNLOCK, LOCK]}, upstream: %q}
`, up))
	for _, m := range []string{"PROPPATCH", "PATCH", "UNLOCK", "LOCK"} {
		resp, body := do(t, m, b.base+"/dav/x", "")
		if resp.StatusCode != 200 {
			t.Errorf("%s /dav/x: %d %s; want 200 (the route lists %s)", m, resp.StatusCode, body, m)
		}
	}
	if resp, _ := do(t, "GET", b.base+"/dav/x", ""); resp.StatusCode != 404 {
		t.Errorf("GET /dav/x: %d, want 404 (not listed)", resp.StatusCode)
	}
}

// ballast_ratelimit_rate must show the limiter in force after a reload
// that returns to earlier settings.
func TestRateGaugeAfterReloadBack(t *testing.T) {
	up := opsOK(t)
	cfg := func(rps int) string {
		return fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: %d}, concurrency: {max: %d}}]\n", up, rps, rps)
	}
	b := startBallast(t, cfg(5))
	if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "r"}); got != 5 {
		t.Fatalf("rate %v, want 5", got)
	}
	for _, rps := range []int{7, 5} {
		if code, body := opsReload(t, b, cfg(rps)); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
		if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "r"}); got != float64(rps) {
			t.Errorf("after reloading to rps %d, ballast_ratelimit_rate{limiter=r} = %v", rps, got)
		}
	}
}

// A request ballast's own rate limit refused is a failure: it is logged
// (at WARN) even when success_sample drops every success.
func TestRateLimitRefusalIsLoggedAsFailure(t *testing.T) {
	up := opsOK(t)
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 0}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 1, burst: 1, max_wait: 0s}}
`, up))
	do(t, "GET", b.base+"/a", "")
	resp, _ := do(t, "GET", b.base+"/b", "")
	if resp.StatusCode != 429 {
		t.Fatalf("second request %d, want 429", resp.StatusCode)
	}
	lines := trails(t, b)
	var found bool
	for _, l := range lines {
		if l.Status == 429 {
			found = true
			if l.Level != "WARN" {
				t.Errorf("the 429 refusal was logged at %s, want WARN", l.Level)
			}
		}
	}
	if !found {
		t.Errorf("the rate-limit refusal (429) was not logged; lines: %+v", lines)
	}
}

// A client that disconnects mid-stream frees its concurrency slot, and the
// upstream sees its client go away.
func TestStreamDisconnectReleasesSlot(t *testing.T) {
	upstreamGone := make(chan struct{}, 4)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/plain" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				upstreamGone <- struct{}{}
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				upstreamGone <- struct{}{}
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: s, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 0}}
`, up))
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "data: 1") {
			break
		}
	}
	if got := b.metric("ballast_concurrency_inflight", map[string]string{"route": "s"}); got != 1 {
		t.Errorf("inflight while streaming %v, want 1", got)
	}
	conn.Close()
	select {
	case <-upstreamGone:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream stream was not called off after the agent disconnected")
	}
	waitFor(t, func() bool { return b.metric("ballast_concurrency_inflight", map[string]string{"route": "s"}) == 0 })
	if resp, _ := do(t, "GET", b.base+"/plain", ""); resp.StatusCode != 200 {
		t.Errorf("after the disconnect the slot was not free: %d", resp.StatusCode)
	}
}

// Retry-After on ballast's own refusal says when the bucket has room:
// rps 0.25 refills one request every 4s.
func TestRateLimitRetryAfterMatchesRefill(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); _, _ = io.WriteString(w, "ok") })
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.25, max_wait: 0s}}
`, up))
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	resp, body := do(t, "GET", b.base+"/", "")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "4" {
		t.Fatalf("second: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	clock.Advance(3 * time.Second)
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("after 3s: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	clock.Advance(time.Second)
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 200 {
		t.Fatalf("after 4s: %d", resp.StatusCode)
	}
	if hits.Load() != 2 {
		t.Errorf("upstream hits %d, want 2", hits.Load())
	}
}

// A reload back to earlier rate-limit settings starts the limiter afresh,
// as a changed block does: it must not resurrect the old bucket.
func TestReloadBackStartsLimiterAfresh(t *testing.T) {
	up := opsOK(t)
	clock := policy.NewFakeClock(time.Now())
	cfg := func(rps int, total string) string {
		return fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, timeouts: {total: %s}, rate_limit: {rps: %d, burst: 1, max_wait: 0s}}]\n", up, total, rps)
	}
	b := startBallastClock(t, clock, cfg(1, "60s"))
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 200 {
		t.Fatalf("first: %d", resp.StatusCode)
	}
	// Unchanged settings (another key changed): the bucket survives.
	if code, body := opsReload(t, b, cfg(1, "61s")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 429 {
		t.Fatalf("after a reload that kept the limit: %d, want 429 (the bucket survives)", resp.StatusCode)
	}
	// Changed settings: a fresh bucket.
	if code, body := opsReload(t, b, cfg(2, "61s")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 200 {
		t.Fatalf("after changing rps: %d, want 200 (a fresh bucket)", resp.StatusCode)
	}
	// Changed back: the docs say a changed block starts afresh.
	if code, body := opsReload(t, b, cfg(1, "61s")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if resp, _ := do(t, "GET", b.base+"/", ""); resp.StatusCode != 200 {
		t.Errorf("after changing rps back to 1: %d, want 200 (a changed rate_limit block starts afresh, not the bucket of two generations ago)", resp.StatusCode)
	}
}

// One request with retries counts once in ballast_requests_total and the
// duration histogram (in seconds), once per attempt in
// ballast_upstream_attempts_total, and each retry in ballast_retries_total.
func TestMetricsCountRequestsOnceAttemptsEach(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503), status(502)}}
	up, addr := upstream(t, s.handler)
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - {name: m, match: {path_prefix: /m/}, upstream: %q, retry: {backoff: {base: 1ms, max: 1ms}}}
`, up))
	done := raSend(t, "GET", b.base+"/m/secret-path-123?k=v", "")
	var resp *http.Response
	for resp == nil {
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("request: %v", r.err)
			}
			resp = r.resp
		case <-time.After(2 * time.Millisecond):
			clock.Advance(time.Millisecond)
		}
	}
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "3" {
		t.Fatalf("status %d attempts %q", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"))
	}
	if got := b.metric("ballast_requests_total", map[string]string{"route": "m", "code": "2xx"}); got != 1 {
		t.Errorf("ballast_requests_total{2xx} %v, want 1", got)
	}
	if got := b.metric("ballast_request_duration_seconds", map[string]string{"route": "m", "code": "2xx"}); got != 1 {
		t.Errorf("duration samples %v, want 1", got)
	}
	if got := b.metric("ballast_upstream_attempts_total", map[string]string{"route": "m", "upstream": addr, "outcome": "transient"}); got != 2 {
		t.Errorf("transient attempts %v, want 2", got)
	}
	if got := b.metric("ballast_upstream_attempts_total", map[string]string{"route": "m", "upstream": addr, "outcome": "ok"}); got != 1 {
		t.Errorf("ok attempts %v, want 1", got)
	}
	if got := b.metric("ballast_retries_total", map[string]string{"route": "m", "reason": "transient"}); got != 2 {
		t.Errorf("retries %v, want 2", got)
	}
	// Seconds, not milliseconds: a loopback request is far below 1s.
	mfs, _ := b.reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.Contains(lp.GetValue(), "secret-path") || strings.Contains(lp.GetValue(), "k=v") {
					t.Errorf("%s has a path or query as a label: %s=%s", mf.GetName(), lp.GetName(), lp.GetValue())
				}
			}
			if mf.GetName() == "ballast_request_duration_seconds" && m.GetHistogram().GetSampleCount() > 0 && m.GetHistogram().GetSampleSum() > 5 {
				t.Errorf("duration sum %v: not seconds", m.GetHistogram().GetSampleSum())
			}
		}
	}
}

// An invalid reload is refused with 422 and every error; the old config
// stays in force and the failure is counted.
func TestInvalidReloadKeepsOldConfig(t *testing.T) {
	up := opsOK(t)
	b := startBallast(t, routeYAML("a", up))
	code, body := opsReload(t, b, fmt.Sprintf(`
routes:
  - {name: a, match: {path_prefix: nope}, upstream: %q, retry: {attemps: 2}}
  - {name: a, match: {path_prefix: /}, upstream: "ftp://x"}
`, up))
	if code != 422 || !strings.Contains(body, "invalid_config") {
		t.Fatalf("reload: %d %s", code, body)
	}
	for _, want := range []string{"routes[0].match.path_prefix", "routes[0].retry.attemps", "routes[1].upstream", "routes[1].name"} {
		if !strings.Contains(body, want) {
			t.Errorf("the refusal does not name %s: %s", want, body)
		}
	}
	if resp, got := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || got != "ok" {
		t.Errorf("after the refused reload: %d %q", resp.StatusCode, got)
	}
	if b.metric("ballast_config_reloads_total", map[string]string{"result": "failure"}) != 1 ||
		b.metric("ballast_config_reloads_total", map[string]string{"result": "success"}) != 0 {
		t.Errorf("reload counters wrong")
	}
}

// Routing: longest prefix at segment boundaries, host wildcards without
// port and case, the query string ignored for matching.
func TestRoutingRules(t *testing.T) {
	mk := func(name string) string {
		u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, name) })
		return u
	}
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: root, match: {path_prefix: /}, upstream: %q}
  - {name: api, match: {path_prefix: /api}, upstream: %q}
  - {name: apiv2, match: {path_prefix: /api/v2/}, upstream: %q}
  - {name: wild, match: {path_prefix: /api, host: "*.example.com"}, upstream: %q}
  - {name: exact, match: {path_prefix: /api, host: example.com}, upstream: %q}
`, mk("root"), mk("api"), mk("apiv2"), mk("wild"), mk("exact")))
	c := client(t)
	for _, tc := range []struct{ host, path, want string }{
		{"", "/api", "api"},
		{"", "/api/x?q=/api/v2/", "api"},
		{"", "/apix", "root"},
		{"", "/api/v2", "api"},
		{"", "/api/v2/models", "apiv2"},
		{"", "/API/x", "root"},
		{"Deep.Sub.EXAMPLE.com:8443", "/api/x", "wild"},
		{"example.com:80", "/api/x", "exact"},
		{"EXAMPLE.COM", "/api", "exact"},
		{"notexample.com", "/api/x", "api"},
		{"", "/x/../api/y", "api"},
		{"", "//api//y", "api"},
	} {
		req, _ := http.NewRequest("GET", b.base+tc.path, nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != tc.want {
			t.Errorf("host %q path %q: routed to %q (%d), want %q", tc.host, tc.path, body, resp.StatusCode, tc.want)
		}
	}
}

// The concurrency slot is released on every failed path: resets, timeouts
// and refusals before any attempt.
func TestBulkheadReleasedOnFailures(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/reset":
			reset(w, r)
		case "/slow":
			<-r.Context().Done() // hangs until ballast gives up on it
		case "/bad":
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, "{not json")
		default:
			_, _ = io.WriteString(w, `{"ok":true}`)
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: c
    match: {path_prefix: /}
    upstream: %q
    concurrency: {max: 1, queue: 0}
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    timeouts: {per_try: 50ms, total: 2s}
    validate: {json: true}
    max_body: 10
`, up))
	for _, p := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/reset", "", 502},
		{"GET", "/slow", "", 504},
		{"GET", "/bad", "", 502},
		{"POST", "/big", strings.Repeat("x", 100), 413},
		{"GET", "/ok", "", 200},
	} {
		resp, body := do(t, p.method, b.base+p.path, p.body)
		if resp.StatusCode != p.want {
			t.Errorf("%s %s: %d %s, want %d", p.method, p.path, resp.StatusCode, body, p.want)
		}
		if got := b.metric("ballast_concurrency_inflight", map[string]string{"route": "c"}); got != 0 {
			t.Errorf("after %s: %v slots held, want 0", p.path, got)
		}
		if got := b.metric("ballast_inflight_requests", map[string]string{"route": "c"}); got != 0 {
			t.Errorf("after %s: ballast_inflight_requests %v", p.path, got)
		}
	}
}

// /status and the metrics report what blocks a route — an open breaker,
// a cool-down, the rate limit's refusals — and report it gone once it is.
func TestStatusReportsBlockedAndRecovery(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	up, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/cool/x":
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
		case fail.Load():
			w.WriteHeader(503)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	})
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token: "${ADMIN_TOKEN}"}
routes:
  - name: br
    match: {path_prefix: /br/}
    upstream: %[1]q
    retry: {attempts: 1}
    breaker: {failures: 2, open_for: 10s}
    rate_limit: {rps: 100, burst: 100, max_wait: 0s}
  - name: cool
    match: {path_prefix: /cool/}
    upstream: "http://localhost:%[2]s"
    retry: {attempts: 1, max_retry_after: 1s}
`, up, strings.Split(addr, ":")[1]), "ADMIN_TOKEN=adm-s3cret")
	for range 2 {
		if resp, _ := do(t, "GET", b.base+"/br/x", ""); resp.StatusCode != 503 {
			t.Fatalf("failing upstream: %d", resp.StatusCode)
		}
	}
	resp, body := do(t, "GET", b.base+"/br/x", "")
	if p := decodeProblem(t, resp, body); p.Reason != "breaker_open" || resp.Header.Get("Retry-After") != "10" {
		t.Fatalf("with the breaker open: %d %s Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	snap, _ := fetchStatus(t, b)
	route := func(s any, name string) (h string, br string, cool float64) {
		for _, r := range snap.Routes {
			if r.Name == name {
				return string(r.Health), r.Upstreams[0].Breaker, r.Upstreams[0].CooldownRemainingS
			}
		}
		t.Fatalf("no route %s in /status", name)
		return
	}
	if h, br, _ := route(snap, "br"); br != "open" || h == "ok" || h == "idle" {
		t.Errorf("/status with the breaker open: health %s breaker %s", h, br)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": addr}); got != 2 {
		t.Errorf("ballast_breaker_state %v, want 2", got)
	}
	// A 429 asking for 30s starts a cool-down on the other route's upstream.
	do(t, "GET", b.base+"/cool/x", "")
	snap, _ = fetchStatus(t, b)
	if _, _, cool := route(snap, "cool"); cool < 29 || cool > 30 {
		t.Errorf("cool-down remaining %v, want 30", cool)
	}
	fail.Store(false)
	clock.Advance(31 * time.Second)
	if resp, body := do(t, "GET", b.base+"/br/x", ""); resp.StatusCode != 200 {
		t.Fatalf("after open_for the probe: %d %s", resp.StatusCode, body)
	}
	snap, _ = fetchStatus(t, b)
	if _, br, _ := route(snap, "br"); br != "closed" {
		t.Errorf("/status after a good probe: breaker %s, want closed", br)
	}
	if _, _, cool := route(snap, "cool"); cool != 0 {
		t.Errorf("cool-down remaining %v after it ended, want 0", cool)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": addr}); got != 0 {
		t.Errorf("ballast_breaker_state %v after recovery, want 0", got)
	}
	if got := b.metric("ballast_cooldown_seconds", map[string]string{"upstream": "localhost:" + strings.Split(addr, ":")[1]}); got != 0 {
		t.Errorf("ballast_cooldown_seconds %v after it ended, want 0", got)
	}
}

// Breakers and retry budgets belong to the config in force: a reload that
// drops an upstream drops its breaker (and its ballast_breaker_state
// series), and one that changes an upstream's breaker policy keeps one
// breaker for it, not one per generation. A breaker kept across a reload
// keeps its state.
func TestReloadKeepsOnlyTheBreakersInForce(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	a, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(503)
		}
	})
	bURL := opsOK(t)
	aHost, bHost := strings.TrimPrefix(a, "http://"), strings.TrimPrefix(bURL, "http://")
	cfg := func(up string, failures int) string {
		return fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, breaker: {failures: %d, failure_ratio: 0, open_for: 1h}}
`, up, failures)
	}
	b := startBallast(t, cfg(a, 1))
	series := func(host string) bool {
		mfs, err := b.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "ballast_breaker_state" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "upstream" && lp.GetValue() == host {
						return true
					}
				}
			}
		}
		return false
	}
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Fatalf("first call: %d", resp.StatusCode)
	}
	failing.Store(false)
	if code, body := opsReload(t, b, cfg(a, 1)+"\n"); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Fatalf("an unchanged breaker lost its open state across a reload: %d", resp.StatusCode)
	}
	for range 3 { // policy changes, back and forth
		for _, f := range []int{5, 1} {
			if code, body := opsReload(t, b, cfg(a, f)); code != 200 {
				t.Fatalf("reload: %d %s", code, body)
			}
		}
	}
	if n := b.srv.HealthEntries(); n != 1 {
		t.Errorf("%d breakers kept for one upstream after six reloads, want 1", n)
	}
	if code, body := opsReload(t, b, cfg(bURL, 1)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if !series(bHost) || series(aHost) {
		t.Errorf("breaker series after the upstream was replaced: new %v, old %v; want only the new one", series(bHost), series(aHost))
	}
	if n := b.srv.HealthEntries(); n != 1 {
		t.Errorf("%d breakers kept after the upstream was replaced, want 1", n)
	}
}

// The status board keeps windows only for the config in force: a reload
// that removes a route or replaces an upstream frees their state (a
// process reloading generated route names would otherwise grow forever),
// and /status shows neither.
func TestReloadForgetsRemovedRoutesOnStatus(t *testing.T) {
	a, bURL := opsOK(t), opsOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: kept, match: {path_prefix: /k}, upstream: %q}
  - {name: gone, match: {path_prefix: /g}, upstream: %q}
`, a, a))
	for _, p := range []string{"/k", "/g"} {
		if resp, _ := do(t, "GET", b.base+p, ""); resp.StatusCode != 200 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	if code, body := opsReload(t, b, fmt.Sprintf(`
routes:
  - {name: kept, match: {path_prefix: /k}, upstream: %q}
`, bURL)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	_, body := do(t, "GET", b.admin+"/status", "")
	aHost := strings.TrimPrefix(a, "http://")
	if strings.Contains(body, `"gone"`) || strings.Contains(body, aHost) {
		t.Errorf("/status still shows what the reload removed: %s", body)
	}
	if n := b.srv.BoardRoutes(); n != 1 {
		t.Errorf("the status board keeps %d routes, want 1", n)
	}
}

// Among routes with the same prefix, an exact host wins over a wildcard
// one whatever their order in the file (nginx's and Envoy's choice); the
// wildcard still takes the other subdomains.
func TestExactHostBeforeWildcard(t *testing.T) {
	wild, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "wildcard") })
	exact, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "exact") })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: wild, match: {host: "*.example.com", path_prefix: /}, upstream: %q}
  - {name: exact, match: {host: api.example.com, path_prefix: /}, upstream: %q}
`, wild, exact))
	for host, want := range map[string]string{"api.example.com": "exact", "other.example.com": "wildcard"} {
		resp, body := secRawExchange(t, b.addr, "GET /x HTTP/1.1\r\nHost: "+host+"\r\n\r\n")
		if resp.StatusCode != 200 || body != want {
			t.Errorf("Host %s: %d %q, want %q", host, resp.StatusCode, body, want)
		}
	}
}
