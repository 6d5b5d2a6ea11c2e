package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/supervise"
)

// statusTraffic starts ballast with two routes — "tools" to a scripted
// upstream, "flaky" to a closed port whose breaker opens — and sends known
// traffic through them.
func statusTraffic(t *testing.T) (b *ballast, toolsAddr string) {
	t.Helper()
	up, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(503)
		case "/missing":
			w.WriteHeader(404)
		default:
			_, _ = io.WriteString(w, "ok")
		}
	})
	b = startBallast(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token: "${ADMIN_TOKEN}"}
routes:
  - name: tools
    match: {path_prefix: /tools/}
    upstream: %q
    strip_prefix: true
    headers: {set: {Authorization: "Bearer ${UP_KEY}", X-Api-Key: literal-secret-value}}
    retry: {attempts: 2, backoff: {base: 1ms, max: 1ms}}
    breaker: {failures: 50}
  - name: flaky
    match: {path_prefix: /flaky/}
    upstream: "http://%s"
    retry: {attempts: 1}
    breaker: {failures: 2, open_for: 1m}
`, up, deadAddr(t)), "ADMIN_TOKEN=adm-s3cret", "UP_KEY=sk-live-999")
	c := client(t)
	for range 5 {
		get(t, c, b.base+"/tools/ok")
	}
	for i := range 2 {
		get(t, c, b.base+"/tools/fail", "X-Request-Id", fmt.Sprint("agent-req-", i))
	}
	get(t, c, b.base+"/tools/missing")
	for range 3 {
		get(t, c, b.base+"/flaky/x")
	}
	return b, addr
}

// fetchStatus reads /status with the bearer token.
func fetchStatus(t *testing.T, b *ballast) (supervise.Snapshot, string) {
	t.Helper()
	resp, body := get(t, client(t), b.admin+"/status", "Authorization", "Bearer adm-s3cret")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/status: %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var snap supervise.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatalf("/status is not a snapshot: %v\n%s", err, body)
	}
	return snap, body
}

func TestStatusReportsRoutesUpstreamsAndFailures(t *testing.T) {
	b, toolsAddr := statusTraffic(t)
	snap, _ := fetchStatus(t, b)

	if snap.WindowSeconds != 60 || len(snap.Routes) != 2 || snap.Routes[0].Name != "flaky" || snap.Routes[1].Name != "tools" {
		t.Fatalf("routes %+v, want flaky and tools by name", snap.Routes)
	}
	tools, flaky := snap.Routes[1], snap.Routes[0]

	// tools: 5 ok, 2 × 503 twice (retried once each), 1 × 404 (the
	// caller's fault: it does not count against the route).
	if tools.Requests != 8 || tools.Failures != 2 || tools.Retries != 2 || tools.TotalRequests != 8 {
		t.Errorf("tools counts: requests %d failures %d retries %d total %d; want 8 2 2 8",
			tools.Requests, tools.Failures, tools.Retries, tools.TotalRequests)
	}
	if tools.SuccessRatio == nil || *tools.SuccessRatio != 0.75 {
		t.Errorf("tools success ratio %v, want 0.75", tools.SuccessRatio)
	}
	if tools.P50MS == nil || tools.P99MS == nil || *tools.P50MS <= 0 || *tools.P99MS < *tools.P50MS {
		t.Errorf("tools latency p50 %v p99 %v", tools.P50MS, tools.P99MS)
	}
	if tools.RatePerSecond <= 0 || tools.InFlight != 0 || tools.Health != supervise.HealthFailing && tools.Health != supervise.HealthDegraded {
		t.Errorf("tools rate %v in flight %d health %s", tools.RatePerSecond, tools.InFlight, tools.Health)
	}
	if len(tools.Series.Requests) != 60 || tools.Series.Requests[59]+tools.Series.Requests[58] == 0 {
		t.Errorf("tools series %v: the newest seconds must hold the traffic", tools.Series.Requests)
	}
	if tools.Limiter != nil || tools.Cache != nil {
		t.Errorf("tools has no limiter or cache, so those sections must be omitted: %+v %+v", tools.Limiter, tools.Cache)
	}
	if len(tools.Upstreams) != 1 {
		t.Fatalf("tools upstreams %+v", tools.Upstreams)
	}
	u := tools.Upstreams[0]
	if u.Name != toolsAddr || u.Role != "primary" || u.Breaker != "closed" || u.CooldownRemainingS != 0 || u.InFlight != 0 {
		t.Errorf("tools upstream %+v", u)
	}
	if u.Requests != 10 || u.Failures != 4 || u.Retries != 2 {
		t.Errorf("tools upstream attempts %d failures %d retries %d, want 10 4 2", u.Requests, u.Failures, u.Retries)
	}

	if flaky.Health != supervise.HealthFailing || flaky.Upstreams[0].Breaker != "open" || flaky.Failures != 3 {
		t.Errorf("flaky: health %s breaker %s failures %d; want failing, open, 3", flaky.Health, flaky.Upstreams[0].Breaker, flaky.Failures)
	}

	// Failures, newest first: flaky's three (the last refused by the open
	// breaker), then tools' 404 and its two 503s.
	if len(snap.Failures) != 6 {
		t.Fatalf("failures %+v, want 6", snap.Failures)
	}
	open := snap.Failures[0]
	if open.Route != "flaky" || open.Reason != "breaker_open" || open.Class != "breaker_open" || open.Status != 503 || open.Attempts != 0 {
		t.Errorf("newest failure %+v, want flaky refused by its open breaker", open)
	}
	refused := snap.Failures[1]
	if refused.Class != "transient" || refused.Cause != "connect-failure" || refused.Reason != "upstream_unavailable" ||
		refused.Status != 502 || refused.Upstream == "" {
		t.Errorf("flaky connect failure %+v", refused)
	}
	if f := snap.Failures[3]; f.Route != "tools" || f.Status != 404 || f.Class != "caller_fault" {
		t.Errorf("tools 404 %+v", f)
	}
	want := supervise.Failure{Time: snap.Failures[4].Time, Route: "tools", Upstream: toolsAddr, Status: 503,
		Class: "transient", Cause: "status", Reason: "transient", Attempts: 2, RequestID: "agent-req-1"}
	if snap.Failures[4] != want {
		t.Errorf("tools 503\n got %+v\nwant %+v", snap.Failures[4], want)
	}
	if time.Since(want.Time) > time.Minute {
		t.Errorf("failure time %v", want.Time)
	}
	if snap.Jobs != nil || snap.Alerts != nil {
		t.Errorf("jobs %v alerts %v: both must be omitted when not configured", snap.Jobs, snap.Alerts)
	}
}

// Secrets never appear in /status or on the page: no header values, no
// admin token, no upstream keys.
func TestStatusAndPageNeverShowSecrets(t *testing.T) {
	b, _ := statusTraffic(t)
	_, body := fetchStatus(t, b)
	resp, page := get(t, client(t), b.admin+"/", "Authorization", "Bearer adm-s3cret")
	if resp.StatusCode != 200 || !strings.Contains(page, "<title>ballast status</title>") {
		t.Fatalf("page: %d", resp.StatusCode)
	}
	for name, text := range map[string]string{"/status": body, "/": page, "logs": b.logs.String()} {
		for _, secret := range []string{"adm-s3cret", "sk-live-999", "literal-secret-value", "Bearer "} {
			if name == "/" && secret == "Bearer " {
				continue // the sign-in hint names the header, not a value
			}
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %q", name, secret)
			}
		}
	}
	for _, c := range resp.Cookies() {
		if strings.Contains(c.Value, "adm-s3cret") {
			t.Error("the session cookie carries the token itself")
		}
	}
}

func TestStatusPageAuthorization(t *testing.T) {
	b, _ := statusTraffic(t)
	noRedirect := client(t)
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	// Without credentials: /status is refused, / shows the sign-in form.
	if r, _ := get(t, noRedirect, b.admin+"/status"); r.StatusCode != 401 {
		t.Errorf("/status without credentials: %d", r.StatusCode)
	}
	r, body := get(t, noRedirect, b.admin+"/")
	if r.StatusCode != 401 || !strings.Contains(body, `name="token"`) || strings.Contains(body, "tools") {
		t.Errorf("/ without credentials: %d, want the sign-in form and no data:\n%s", r.StatusCode, body)
	}
	if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
	if r, _ := get(t, noRedirect, b.admin+"/?token=wrong"); r.StatusCode != 401 || len(r.Cookies()) != 0 {
		t.Errorf("a wrong token: %d, cookies %v", r.StatusCode, r.Cookies())
	}

	// ?token= sets the session cookie and redirects to a clean URL.
	r, _ = get(t, noRedirect, b.admin+"/?token=adm-s3cret")
	if r.StatusCode != 303 || r.Header.Get("Location") != "/" {
		t.Fatalf("?token=: %d to %q, want 303 to /", r.StatusCode, r.Header.Get("Location"))
	}
	var session *http.Cookie
	for _, c := range r.Cookies() {
		if c.Name == "ballast_admin" {
			session = c
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Path != "/" {
		t.Fatalf("session cookie %+v, want HttpOnly, SameSite=Strict, Path=/", session)
	}
	cookie := []string{"Cookie", "ballast_admin=" + session.Value}
	if r, body := get(t, noRedirect, b.admin+"/", cookie...); r.StatusCode != 200 || !strings.Contains(body, "fetch('/status'") {
		t.Errorf("/ with the cookie: %d", r.StatusCode)
	}
	if r, body := get(t, noRedirect, b.admin+"/status", cookie...); r.StatusCode != 200 || !strings.Contains(body, `"name":"tools"`) {
		t.Errorf("/status with the cookie: %d", r.StatusCode)
	}
	// The cookie opens the read-only status views only.
	for _, path := range []string{"/metrics", "/config"} {
		if r, _ := get(t, noRedirect, b.admin+path, cookie...); r.StatusCode != 401 {
			t.Errorf("%s with only the cookie: %d, want 401", path, r.StatusCode)
		}
	}
	if r, _ := get(t, noRedirect, b.admin+"/status", "Cookie", "ballast_admin=forged"); r.StatusCode != 401 {
		t.Errorf("/status with a forged cookie: %d", r.StatusCode)
	}

	// The sign-in form posts the token.
	resp, err := noRedirect.PostForm(b.admin+"/", url.Values{"token": {"adm-s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 303 || len(resp.Cookies()) != 1 {
		t.Errorf("sign-in: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	req, _ := http.NewRequest(http.MethodDelete, b.admin+"/status", nil)
	req.Header.Set("Authorization", "Bearer adm-s3cret")
	if resp, err := noRedirect.Do(req); err != nil || resp.StatusCode != 405 {
		t.Errorf("DELETE /status: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// Without admin.token the page and /status are open, like every admin
// endpoint, and set no cookie.
func TestStatusPageWithoutToken(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: open, match: {path_prefix: /}, upstream: %q}
`, up))
	get(t, client(t), b.base+"/x")
	for _, path := range []string{"/", "/?token=anything"} {
		r, body := get(t, client(t), b.admin+path)
		if r.StatusCode != 200 || !strings.Contains(body, "fetch('/status'") || len(r.Cookies()) != 0 {
			t.Errorf("%s: %d, cookies %v", path, r.StatusCode, r.Cookies())
		}
	}
	snap, _ := fetchStatusOpen(t, b)
	if len(snap.Routes) != 1 || snap.Routes[0].Requests != 1 || snap.Routes[0].Health != "ok" || len(snap.Failures) != 0 {
		t.Errorf("snapshot %+v", snap)
	}
}
