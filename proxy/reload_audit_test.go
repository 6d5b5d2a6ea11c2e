package proxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// connCounting is a loopback upstream that counts its open connections;
// requests to /slow wait for release.
type connCounting struct {
	url     string
	open    atomic.Int64
	dialed  atomic.Int64 // connections ever opened
	release chan struct{}
	once    sync.Once
	started chan struct{}
}

// unblock lets the requests to /slow finish.
func (u *connCounting) unblock() { u.once.Do(func() { close(u.release) }) }

func startConnCounting(t *testing.T, name string) *connCounting {
	t.Helper()
	u := &connCounting{release: make(chan struct{}), started: make(chan struct{}, 16)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				u.started <- struct{}{}
				<-u.release
			}
			_, _ = io.WriteString(w, name)
		}),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				u.open.Add(1)
				u.dialed.Add(1)
			case http.StateClosed, http.StateHijacked:
				u.open.Add(-1)
			}
		},
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() {
		u.unblock()
		_ = s.Close()
	})
	u.url = "http://" + ln.Addr().String()
	return u
}

// TestReloadAuditChangedUpstreamClosesOldConnections: a reload that moves a
// route to another upstream drains the old one's pool, as Envoy drains a
// removed cluster: its idle keep-alive connections close at the swap, and
// a connection still serving a request when the swap happened closes as
// soon as that request ends, instead of idling in a pool nothing uses
// until the 90s idle timeout.
func TestReloadAuditChangedUpstreamClosesOldConnections(t *testing.T) {
	old := startConnCounting(t, "old")
	next := startConnCounting(t, "new")
	b := startBallast(t, routeYAML("r", old.url))
	c := client(t)
	if resp, body := get(t, c, b.base+"/x"); resp.StatusCode != 200 || body != "old" {
		t.Fatalf("before the reload: %d %q", resp.StatusCode, body)
	}
	slow := raSend(t, "GET", b.base+"/slow", "") // on a connection of its own
	<-old.started
	if code, body := opsReload(t, b, routeYAML("r", next.url)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if resp, body := get(t, c, b.base+"/x"); resp.StatusCode != 200 || body != "new" {
		t.Fatalf("after the reload: %d %q", resp.StatusCode, body)
	}
	// The idle connection closed at the swap; the busy one still serves.
	waitFor(t, func() bool { return old.open.Load() == 1 })
	old.unblock()
	if a := raAnswer(t, slow); a.resp.StatusCode != 200 || a.body != "old" {
		t.Fatalf("the request in flight across the reload: %d %q, want 200 from the old upstream", a.resp.StatusCode, a.body)
	}
	// Every connection to the upstream the reload removed closes once its
	// last request ended (not after fasthttp's 90s idle timeout).
	waitFor(t, func() bool { return old.open.Load() == 0 })
}

// TestReloadAuditRefusedReloadQuotesNoSecret: a reload refused because a
// value written as a ${NAME} reference is wrong must not quote the
// secret in the 422 body or the log. Bot APIs carry their token in the
// URL path (https://api.telegram.org/bot<token>/), so an upstream from
// the environment is a secret as much as a header is.
func TestReloadAuditRefusedReloadQuotesNoSecret(t *testing.T) {
	up := opsOK(t)
	b := startBallast(t, routeYAML("r", up),
		"BOT_URL=api.telegram.org/botSECRETBOTTOKEN/", "BAD_URL=https://h/%zzSECRETESCAPE", "METHOD=getSECRETMETHOD",
		"MODE=SECRETMODE\n")
	for _, tt := range []struct{ name, yaml, path, ref string }{
		{"upstream without a scheme", "routes: [{name: r, match: {path_prefix: /}, upstream: \"${BOT_URL}\"}]\n",
			"routes[0].upstream", "${BOT_URL}"},
		{"upstream that is no URL", "routes: [{name: r, match: {path_prefix: /}, upstream: \"${BAD_URL}\"}]\n",
			"routes[0].upstream", "${BAD_URL}"},
		{"method", fmt.Sprintf("routes: [{name: r, match: {path_prefix: /, methods: [\"${METHOD}\"]}, upstream: %q}]\n", up),
			"routes[0].match.methods[0]", "${METHOD}"},
		{"a defaults leaf", fmt.Sprintf("defaults: {idempotency: {mode: \"${MODE}\"}}\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up),
			"idempotency.mode", "${MODE}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, body := opsReload(t, b, tt.yaml)
			if code != 422 || !strings.Contains(body, tt.path) || !strings.Contains(body, tt.ref) {
				t.Errorf("reload: %d %s; want 422 naming %s and quoting %s as written", code, body, tt.path, tt.ref)
			}
			if logs := b.logs.String(); !strings.Contains(logs, "config reload refused") || !strings.Contains(logs, tt.path+": ") {
				t.Errorf("the refusal's log line does not name %s", tt.path)
			}
			if i := strings.Index(body+b.logs.String(), "SECRET"); i >= 0 {
				all := body + b.logs.String()
				t.Errorf("the refused reload quoted the secret: ...%s...", all[max(0, i-80):min(len(all), i+40)])
			}
		})
	}
	if resp, body := get(t, client(t), b.base+"/x"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("after the refused reloads: %d %q, want the old route", resp.StatusCode, body)
	}
}

// TestReloadAuditHungRedisKnownDownCostsKeyedRequestsNoOpTimeout: once the
// health check knows Redis is down, config.md promises that requests no
// longer try it ("no op_timeout to wait out per request"). A keyed
// request under fail_open claims in the local store, and must also
// complete there, and a job started during the outage must be readable
// without a Redis round trip: a hung (black-holed) Redis may not add
// op_timeout to each of them.
func TestReloadAuditHungRedisKnownDownCostsKeyedRequestsNoOpTimeout(t *testing.T) {
	addr := redistest.Hung(t)
	up, _ := upstream(t, auditOK)
	b := startBallast(t, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, on_error: fail_open, op_timeout: 600ms, read_timeout: 600ms, write_timeout: 600ms, dial_timeout: 600ms}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, async: {enabled: true}}
`, addr, up))
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	for i := range 3 {
		start := time.Now()
		resp, body := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", fmt.Sprintf("k%d", i))
		took := time.Since(start)
		if resp.StatusCode != 200 {
			t.Fatalf("keyed request %d: %d %s, want 200 (fail_open)", i, resp.StatusCode, body)
		}
		if took > 450*time.Millisecond { // below op_timeout (600ms), with room for a loaded machine
			t.Errorf("keyed request %d took %v with Redis known to be down: completing its record waited on Redis", i, took.Round(time.Millisecond))
		}
	}
	resp, body := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "k0")
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("a repeat during the outage: %d %q %s, want a replay from the local store", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	resp, body = do(t, "POST", b.base+"/x", `{}`, "Prefer", "respond-async")
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("async during the outage: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool {
		start := time.Now()
		resp, body := do(t, "GET", b.base+loc, "")
		if took := time.Since(start); took > 450*time.Millisecond {
			t.Fatalf("GET %s took %v with Redis known to be down (%d %s)", loc, took.Round(time.Millisecond), resp.StatusCode, body)
		}
		return resp.StatusCode == 200
	})
}

// TestReloadAuditSharedLimitFailClosedAnswers: with on_error fail_closed,
// a rate-limited route whose shared limit cannot be read answers 503
// state_unavailable with Retry-After: 1 (errors.md), promptly; the
// request is never forwarded; and the route recovers when redis-server
// comes back on the same port.
func TestReloadAuditSharedLimitFailClosedAnswers(t *testing.T) {
	rs := redistest.Start(t)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); auditOK(w, r) })
	b := fleet(t, rs.Addr(), 1, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 1000}}
`, up), "fail_closed")[0]
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("with Redis up: %d", resp.StatusCode)
	}
	rs.Kill()
	for i := range 3 {
		start := time.Now()
		resp, body := do(t, "GET", b.base+"/x", "")
		if took := time.Since(start); took > time.Second {
			t.Errorf("request %d took %v with Redis dead", i, took.Round(time.Millisecond))
		}
		if resp.StatusCode != 503 || decodeProblem(t, resp, body).Reason != "state_unavailable" || resp.Header.Get("Retry-After") != "1" {
			t.Errorf("request %d with Redis dead (fail_closed): %d %q %s", i, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("the upstream saw %d requests; fail_closed must forward none while the limit cannot be read", hits.Load())
	}
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		resp, _ := do(t, "GET", b.base+"/x", "")
		return resp.StatusCode == 200
	})
}

// TestReloadAuditRemovedRouteAndRestartOnlyKeys: after a reload removes a
// route, its requests get the documented 404 no_route problem; a reload
// that changes listen, admin.listen, server.* or state.* logs the warning
// that they need a restart and keeps serving on the running listeners.
func TestReloadAuditRemovedRouteAndRestartOnlyKeys(t *testing.T) {
	up := opsOK(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: keep, match: {path_prefix: /keep/}, upstream: %q}
  - {name: gone, match: {path_prefix: /gone/}, upstream: %q}
`, up, up))
	c := client(t)
	if resp, _ := get(t, c, b.base+"/gone/x"); resp.StatusCode != 200 {
		t.Fatalf("before the reload: %d", resp.StatusCode)
	}
	for _, tt := range []struct{ name, top, want string }{
		{"listen", "listen: 127.0.0.1:1\n", "listen"},
		{"server", "server: {read_timeout: 7s}\n", "server"},
		{"state", "state: {max_records: 7}\n", "state"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			warning := `"changed":["` + tt.want + `"]`
			before := strings.Count(b.logs.String(), warning)
			code, body := opsReload(t, b, tt.top+fmt.Sprintf("routes: [{name: keep, match: {path_prefix: /keep/}, upstream: %q}]\n", up))
			if code != 200 {
				t.Fatalf("reload: %d %s", code, body)
			}
			if strings.Count(b.logs.String(), warning) <= before {
				t.Errorf("a reload that changes %s logged no warning that it needs a restart", tt.want)
			}
			if resp, body := get(t, c, b.base+"/keep/x"); resp.StatusCode != 200 || body != "ok" {
				t.Errorf("the running listener after the reload: %d %q", resp.StatusCode, body)
			}
			resp, body := get(t, c, b.base+"/gone/x")
			if resp.StatusCode != 404 || decodeProblem(t, resp, body).Reason != "no_route" {
				t.Errorf("the removed route: %d %s, want 404 no_route", resp.StatusCode, body)
			}
			// Back to the start-up values, so the next case changes only its own key.
			if code, body := opsReload(t, b, fmt.Sprintf("routes: [{name: keep, match: {path_prefix: /keep/}, upstream: %q}]\n", up)); code != 200 {
				t.Fatalf("reload back: %d %s", code, body)
			}
		})
	}
}

// statusJSON fetches /status and decodes it loosely.
func statusJSON(t *testing.T, b *ballast) (map[string]any, string) {
	t.Helper()
	resp, body := get(t, client(t), b.admin+"/status")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/status: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("/status is not JSON: %v", err)
	}
	return m, body
}

// TestReloadAuditTokenRotation: admin.token takes effect on reload. After
// a reload that rotates it, the old bearer token and the status page's
// old session cookie are refused everywhere they were accepted, the new
// token is required, and /status and /config keep their JSON content
// types. Neither the old nor the new token appears in /config, /status,
// the status page or the log.
func TestReloadAuditTokenRotation(t *testing.T) {
	up := opsOK(t)
	route := fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up)
	b := startBallast(t, "admin: {token: \"${OLD_TOKEN}\"}\n"+route, "OLD_TOKEN=OLDSECRETTOKEN", "NEW_TOKEN=NEWSECRETTOKEN")
	c := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	t.Cleanup(c.CloseIdleConnections)
	resp, _ := get(t, c, b.admin+"/?token=OLDSECRETTOKEN")
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "ballast_admin" {
			cookie = ck
		}
	}
	if resp.StatusCode != 303 || cookie == nil {
		t.Fatalf("sign-in with the old token: %d, cookie %v", resp.StatusCode, cookie)
	}
	withCookie := func(path string) int {
		req, _ := http.NewRequest("GET", b.admin+path, nil)
		req.AddCookie(cookie)
		r, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		return r.StatusCode
	}
	if got := withCookie("/status"); got != 200 {
		t.Fatalf("/status with the old session: %d", got)
	}
	if err := writeConfig(b, "admin: {token: \"${NEW_TOKEN}\"}\n"+route); err != nil {
		t.Fatal(err)
	}
	if resp, body := do(t, "POST", b.admin+"/reload", "", "Authorization", "Bearer OLDSECRETTOKEN"); resp.StatusCode != 200 {
		t.Fatalf("reload with the old token: %d %s", resp.StatusCode, body)
	}
	for _, p := range []string{"/status", "/"} {
		if got := withCookie(p); got != 401 {
			t.Errorf("%s with the session of the rotated-out token: %d, want 401", p, got)
		}
	}
	for _, p := range []string{"/status", "/config", "/metrics"} {
		if resp, _ := get(t, c, b.admin+p, "Authorization", "Bearer OLDSECRETTOKEN"); resp.StatusCode != 401 {
			t.Errorf("%s with the rotated-out token: %d, want 401", p, resp.StatusCode)
		}
	}
	if resp, _ := do(t, "POST", b.admin+"/reload", "", "Authorization", "Bearer OLDSECRETTOKEN"); resp.StatusCode != 401 {
		t.Errorf("POST /reload with the rotated-out token: %d, want 401", resp.StatusCode)
	}
	var seen strings.Builder
	for _, tt := range []struct{ path, ctype string }{
		{"/status", "application/json"}, {"/config", "application/json"}, {"/", "text/html; charset=utf-8"},
	} {
		resp, body := get(t, c, b.admin+tt.path, "Authorization", "Bearer NEWSECRETTOKEN")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != tt.ctype {
			t.Errorf("%s with the new token: %d %q, want 200 %s", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.ctype)
		}
		seen.WriteString(body)
	}
	seen.WriteString(b.logs.String())
	for _, s := range []string{"OLDSECRET", "NEWSECRET"} {
		if strings.Contains(seen.String(), s) {
			t.Errorf("%s appears in the admin answers or the log", s)
		}
	}
}

// writeConfig replaces b's config file.
func writeConfig(b *ballast, yaml string) error { return os.WriteFile(b.file, []byte(yaml), 0o600) }

// TestReloadAuditDuringRedisOutage: a reload while Redis is dead applies
// at once (building a shared limiter does not contact Redis), its new
// limit serves locally under fail_open, the cache route keeps answering,
// and once redis-server is back on the same port the new limit is the
// fleet's again: two replicas share its one-request burst.
func TestReloadAuditDuringRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	up, _ := upstream(t, auditOK)
	cfg := func(rps string) string {
		return fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /r/}, upstream: %q, rate_limit: {rps: %s, burst: 1, max_wait: 0s}}
  - {name: c, match: {path_prefix: /c/}, upstream: %q, cache: {mode: fresh, ttl: 1m, shared: true}}
`, up, rps, up)
	}
	reps := fleet(t, rs.Addr(), 2, cfg("0.001"), "fail_open")
	a, b := reps[0], reps[1]
	rs.Kill()
	waitFor(t, func() bool { return a.metric("ballast_state_backend_up", nil) == 0 })
	start := time.Now()
	code, body := opsReload(t, a, strings.Replace(a.configText(t), "rps: 0.001", "rps: 0.002", 1))
	if took := time.Since(start); code != 200 || took > time.Second {
		t.Fatalf("reload during the outage: %d %s after %v", code, body, took.Round(time.Millisecond))
	}
	var got []int
	for range 2 {
		resp, _ := do(t, "GET", a.base+"/r/x", "")
		got = append(got, resp.StatusCode)
	}
	if fmt.Sprint(got) != "[200 429]" {
		t.Errorf("the reloaded limit without Redis: %v, want [200 429] (the local bucket of burst 1)", got)
	}
	if resp, body := do(t, "GET", a.base+"/c/x", ""); resp.StatusCode != 200 {
		t.Errorf("the cache route without Redis: %d %s", resp.StatusCode, body)
	}
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return a.metric("ballast_state_backend_up", nil) == 1 })
	code, body = opsReload(t, b, strings.Replace(b.configText(t), "rps: 0.001", "rps: 0.002", 1))
	if code != 200 {
		t.Fatalf("reload of B: %d %s", code, body)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })
	got = got[:0]
	for _, rep := range []*ballast{a, b} {
		resp, _ := do(t, "GET", rep.base+"/r/x", "")
		got = append(got, resp.StatusCode)
	}
	if fmt.Sprint(got) != "[200 429]" {
		t.Errorf("the reloaded limit after Redis came back, A then B: %v, want [200 429]: one bucket for the fleet", got)
	}
	st, _ := statusJSON(t, a)
	if routes, _ := st["routes"].([]any); len(routes) != 2 {
		t.Errorf("/status after the reload lists %d routes, want 2", len(routes))
	}
}

// configText reads b's config file.
func (b *ballast) configText(t *testing.T) string {
	t.Helper()
	y, err := os.ReadFile(b.file)
	if err != nil {
		t.Fatal(err)
	}
	return string(y)
}

// TestReloadAuditStatusEscapesAgentStrings: strings an agent or an
// upstream controls (a request id, a path, an upstream's garbage status
// line) reach /status only JSON-escaped for HTML (no raw '<'), and the
// status page itself is static: it carries no request data to inject
// into, and a script-src CSP without 'unsafe-inline'.
func TestReloadAuditStatusEscapesAgentStrings(t *testing.T) {
	addr := serveConns(t, func(c net.Conn, _ *bufio.Reader) {
		buf := make([]byte, 4096)
		_, _ = c.Read(buf)
		_, _ = io.WriteString(c, "HTTP/1.1 <script>alert(2)</script>\r\n\r\n")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: bad, match: {path_prefix: /bad/}, upstream: "http://%s", retry: {attempts: 1}}
`, addr))
	const id = "<img/src=x/onerror=alert(1)>"
	resp, body := do(t, "GET", b.base+"/bad/<svg/onload=alert(3)>", "", "X-Request-Id", id)
	if resp.StatusCode != 502 {
		t.Fatalf("garbage upstream: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool {
		_, s := statusJSON(t, b)
		return strings.Contains(s, `\u003cimg`)
	})
	_, s := statusJSON(t, b)
	if strings.ContainsAny(s, "<>") {
		t.Errorf("/status carries a raw '<' or '>': %s", s)
	}
	resp, page := get(t, client(t), b.admin+"/")
	if strings.Contains(page, "alert(") || strings.Contains(resp.Header.Get("Content-Security-Policy"), "unsafe-inline") ||
		resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("status page: CSP %q, nosniff %q, request data in the page: %v",
			resp.Header.Get("Content-Security-Policy"), resp.Header.Get("X-Content-Type-Options"), strings.Contains(page, "alert("))
	}
}

// slowReadsRedis is a loopback server that speaks just enough RESP to
// pass go-redis's handshake and the health check's PING, and never
// answers anything else: a Redis whose data commands hang (a big key, a
// blocked shard) while it still looks healthy.
func slowReadsRedis(t *testing.T) string {
	t.Helper()
	return serveConns(t, func(c net.Conn, r *bufio.Reader) {
		for {
			cmd, err := readRESPCommand(r)
			if err != nil {
				return
			}
			switch strings.ToUpper(cmd) {
			case "PING":
				_, err = io.WriteString(c, "+PONG\r\n")
			case "HELLO":
				_, err = io.WriteString(c, "-ERR unknown command 'HELLO'\r\n")
			case "CLIENT", "SELECT", "AUTH":
				_, err = io.WriteString(c, "+OK\r\n")
			default: // hang: the reply never comes
			}
			if err != nil {
				return
			}
		}
	})
}

// readRESPCommand reads one RESP array of bulk strings and returns its
// first element.
func readRESPCommand(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	var n int
	if _, err := fmt.Sscanf(line, "*%d\r\n", &n); err != nil {
		return "", err
	}
	var first string
	for i := range n {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		var size int
		if _, err := fmt.Sscanf(line, "$%d\r\n", &size); err != nil {
			return "", err
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		if i == 0 {
			first = string(buf[:size])
		}
	}
	return first, nil
}

// TestReloadAuditSlowRedisCacheReadKeepsTheDeadline: the deadline is law
// for the shared cache tier too. A fresh-mode miss asks Redis before the
// upstream; while Redis still passes its health check but does not answer
// reads, that read may not hold a request with a 200ms deadline for the
// whole op_timeout (1s here).
func TestReloadAuditSlowRedisCacheReadKeepsTheDeadline(t *testing.T) {
	addr := slowReadsRedis(t)
	up, _ := upstream(t, auditOK)
	b := startBallast(t, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, on_error: fail_open, op_timeout: 1s, read_timeout: 1s, write_timeout: 1s, dial_timeout: 1s}
routes:
  - {name: c, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: 1m, shared: true}}
`, addr, up))
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), "redis is reachable") })
	// Warm up: the first request also waits for start-up's own Redis
	// calls (resuming jobs), which hang here too.
	do(t, "GET", b.base+"/warm-up", "")
	for i := range 3 {
		start := time.Now()
		resp, body := do(t, "GET", b.base+fmt.Sprintf("/miss%d", i), "", "X-Ballast-Timeout", "200ms")
		if took := time.Since(start); took > 600*time.Millisecond {
			t.Errorf("miss %d with a 200ms deadline took %v (%d %s): the Redis cache read ran past the deadline",
				i, took.Round(time.Millisecond), resp.StatusCode, body)
		}
	}
	if got := b.metric("ballast_state_backend_up", nil); got != 1 {
		t.Errorf("backend_up %v: the fake Redis must pass the health check for this probe to mean anything", got)
	}
}

// TestReloadAuditWarmStateFollowsItsSettings: config.md's hot reload
// rules, both ways. A reload that changes a route's other keys (timeouts,
// headers, rate_limit.max_wait) keeps its rate-limit bucket and its open
// breaker; one that changes the rate limit, or the breaker, starts that
// one afresh.
func TestReloadAuditWarmStateFollowsItsSettings(t *testing.T) {
	var fail atomic.Bool
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if fail.Load() && r.URL.Path == "/b/x" {
			w.WriteHeader(500)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	cfg := func(tag, rps, failures string) string {
		return fmt.Sprintf(`
routes:
  - name: l
    match: {path_prefix: /l/}
    upstream: %[1]q
    timeouts: {total: %[2]s}
    headers: {set: {X-Tag: %[2]s}}
    rate_limit: {rps: %[3]s, burst: 1, max_wait: %[2]s}
  - name: b
    match: {path_prefix: /b/}
    upstream: %[1]q
    timeouts: {total: %[2]s}
    headers: {set: {X-Tag: %[2]s}}
    retry: {attempts: 1}
    breaker: {failures: %[4]s, open_for: 1h}
`, up, tag, rps, failures)
	}
	b := startBallast(t, cfg("30s", "0.001", "2"))
	status := func(path string) int {
		resp, _ := do(t, "GET", b.base+path, "")
		return resp.StatusCode
	}
	if got := status("/l/x"); got != 200 {
		t.Fatalf("the limit's one token: %d", got)
	}
	fail.Store(true)
	for range 2 {
		if got := status("/b/x"); got != 500 {
			t.Fatalf("failing upstream: %d", got)
		}
	}
	if got := status("/b/x"); got != 503 {
		t.Fatalf("after 2 failures the breaker must be open: %d", got)
	}
	fail.Store(false)
	if code, body := opsReload(t, b, cfg("31s", "0.001", "2")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if got := status("/l/x"); got != 429 {
		t.Errorf("a reload of other keys refilled the route's bucket: %d, want 429", got)
	}
	before := hits.Load()
	if got := status("/b/x"); got != 503 || hits.Load() != before {
		t.Errorf("a reload of other keys closed the open breaker: %d, upstream hits +%d", got, hits.Load()-before)
	}
	if code, body := opsReload(t, b, cfg("31s", "0.002", "3")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if got := status("/l/x"); got != 200 {
		t.Errorf("a changed rate limit must start with a full bucket: %d", got)
	}
	if got := status("/b/x"); got != 200 {
		t.Errorf("a changed breaker must start closed: %d", got)
	}
}

// TestReloadAuditUnchangedUpstreamKeepsItsConnection: the other half of
// the pool rule. A reload that keeps a route's upstream (scheme, host,
// ca_file, connect timeout) but changes its header rules keeps the warm
// keep-alive connection: the next request reuses it, and nothing closes.
func TestReloadAuditUnchangedUpstreamKeepsItsConnection(t *testing.T) {
	u := startConnCounting(t, "u")
	cfg := func(tag string) string {
		return fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, headers: {set: {X-Tag: %s}}}]\n", u.url, tag)
	}
	b := startBallast(t, cfg("one"))
	c := client(t)
	for i, tag := range []string{"one", "two", "three"} {
		if i > 0 {
			if code, body := opsReload(t, b, cfg(tag)); code != 200 {
				t.Fatalf("reload: %d %s", code, body)
			}
		}
		if resp, body := get(t, c, b.base+"/x"); resp.StatusCode != 200 || body != "u" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if got, open := u.dialed.Load(), u.open.Load(); got != 1 || open != 1 {
		t.Errorf("across two reloads that kept the upstream: %d connection(s) opened, %d open; want the one warm connection", got, open)
	}
}

// TestReloadAuditFleetAttachAfterRedisRestart: after redis-server was
// killed and came back (empty) on the same port, the fleet is one again
// for keyed requests: a duplicate sent to replica B while the call runs
// on A attaches to it over Redis and gets its answer promptly (the
// waiters' notifications were re-established), and the upstream runs once.
func TestReloadAuditFleetAttachAfterRedisRestart(t *testing.T) {
	rs := redistest.Start(t)
	release := make(chan struct{})
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		<-release
		fmt.Fprintf(w, `{"charge":%d}`, n)
	})
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}
`, up), "fail_open")
	a, b := reps[0], reps[1]
	rs.Kill()
	for _, rep := range reps {
		waitFor(t, func() bool { return rep.metric("ballast_state_backend_up", nil) == 0 })
	}
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, rep := range reps {
		waitFor(t, func() bool { return rep.metric("ballast_state_backend_up", nil) == 1 })
	}
	first := raSend(t, "POST", a.base+"/charge", `{}`, "Idempotency-Key", "after-restart")
	waitFor(t, func() bool { return calls.Load() == 1 })
	start := time.Now()
	second := raSend(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "after-restart")
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})
	releasedAt := time.Now()
	close(release)
	if got := raAnswer(t, first).body; got != `{"charge":1}` {
		t.Errorf("A answered %q", got)
	}
	r := raAnswer(t, second)
	if got := fmt.Sprint(r.resp.StatusCode, " ", r.body); got != `200 {"charge":1}` {
		t.Errorf("B's attached duplicate got %q, want A's answer", got)
	}
	if lag := r.at.Sub(releasedAt); lag > 2*time.Second {
		t.Errorf("B's duplicate was answered %v after A's call ended (it took %v in all): the wake-up was lost", lag, r.at.Sub(start))
	}
	if calls.Load() != 1 {
		t.Errorf("the upstream ran %d times across the fleet", calls.Load())
	}
}
