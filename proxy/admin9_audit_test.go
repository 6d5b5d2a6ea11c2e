package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// admin9Echo is a loopback "upstream" that is no HTTP server: it sends
// back, as its answer, the request bytes it read (a route pointed at an
// echo or debugging service, or at a port speaking another protocol that
// reflects its input). Whatever ballast quotes of that answer quotes the
// request ballast built, with the credentials the route injected.
func admin9Echo(t *testing.T) string {
	t.Helper()
	return serveConns(t, func(c net.Conn, br *bufio.Reader) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var req strings.Builder
		for {
			line, err := br.ReadString('\n')
			req.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		// A status line fasthttp cannot parse, then the request
		// as the rest of the "header block".
		_, _ = io.WriteString(c, "HTTP/1.1 2OO OK\r\n"+req.String())
	})
}

// TestAdmin9AuditUpstreamGarbageQuotesNoInjectedSecret: when an upstream's
// answer does not parse, the 502 problem's detail, the debug trail and the
// log say so without quoting the answer's bytes. Those bytes may be the
// request ballast sent (an echoing or misdirected upstream), with the
// Authorization the route set from ${ENV}: the agent must never see the
// key the route keeps from it, nor the log hold it.
func TestAdmin9AuditUpstreamGarbageQuotesNoInjectedSecret(t *testing.T) {
	addr := admin9Echo(t)
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: echo
    match: {path_prefix: /echo/}
    upstream: "http://%s"
    retry: {attempts: 1}
    headers: {set: {Authorization: "Bearer ${UP_KEY}"}}
`, addr), "UP_KEY=sk-ROUTEKEY-77")
	resp, body := do(t, "GET", b.base+"/echo/x", "", "X-Ballast-Debug", "1")
	if resp.StatusCode != 502 || !strings.Contains(body, "upstream_unavailable") {
		t.Fatalf("a garbage answer: %d %s, want 502 upstream_unavailable", resp.StatusCode, body)
	}
	if !strings.Contains(body, "invalid response status code") {
		t.Errorf("the detail no longer says what was wrong: %s", body)
	}
	b.srv.FlushAccessLog()
	all := body + resp.Header.Get("X-Ballast-Trail") + b.logs.String()
	if i := strings.Index(all, "ROUTEKEY"); i >= 0 {
		t.Errorf("the route's injected key leaked: ...%s...", all[max(0, i-160):min(len(all), i+40)])
	}
	_, st := statusJSON(t, b)
	if strings.Contains(st, "ROUTEKEY") {
		t.Error("/status shows the route's injected key")
	}
}

// TestAdmin9AuditConfigErrorsQuoteNoUserinfo: an upstream written with
// user:password is refused (config.md: "No user:password"); whatever else
// is wrong with it, the refusal — in the 422 of POST /reload and in the
// log — must not quote the password.
func TestAdmin9AuditConfigErrorsQuoteNoUserinfo(t *testing.T) {
	b := startBallast(t, routeYAML("r", opsOK(t)))
	for _, tt := range []struct{ name, upstream string }{
		{"not http", "ftp://user:PWSECRET1@files.example/"},
		{"no host", "http://user:PWSECRET2@"},
		{"not a URL", "https://user:PW%zzSECRET3@api.example/"},
		{"fine otherwise", "https://user:PWSECRET4@api.example/"},
		{"in a fallback", "ftp://u:PWSECRET5@backup.example/"},
		{"no scheme", "user:PWSECRET7@api.example/"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			yaml := fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", tt.upstream)
			if tt.name == "in a fallback" {
				yaml = fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: \"https://api.example/\", fallbacks: [{upstream: %q}]}]\n", tt.upstream)
			}
			logged := len(b.logs.String())
			code, body := opsReload(t, b, yaml)
			if code != 422 || !strings.Contains(body, "upstream") {
				t.Fatalf("reload: %d %s, want 422 naming the upstream", code, body)
			}
			all := body + b.logs.String()[logged:]
			if i := strings.Index(all, "SECRET"); i >= 0 {
				t.Errorf("the refusal quoted the password: ...%s...", all[max(0, i-80):min(len(all), i+40)])
			}
		})
	}
	if _, err := config.Parse([]byte("routes: [{name: r, match: {path_prefix: /}, upstream: \"ftp://u:PWSECRET6@h/\"}]\n"),
		config.Source{Environ: []string{}}); err == nil || strings.Contains(err.Error(), "PWSECRET6") {
		t.Errorf("ballast validate's message: %v", err)
	}
}

// TestAdmin9AuditReloadRefusesOtherLoopbackOrigins: without admin.token
// the admin listener trusts requests from its own web origin only. A page
// served from another port of the same host — ballast's own agent
// listener relays whatever HTML an upstream answers, under the origin
// http://127.0.0.1:8080 — is another origin, and must not be able to drive
// POST /reload (CSRF) or read the admin endpoints.
func TestAdmin9AuditReloadRefusesOtherLoopbackOrigins(t *testing.T) {
	b := startBallast(t, routeYAML("r", opsOK(t)))
	adminAddr := strings.TrimPrefix(b.admin, "http://")
	_, port, _ := net.SplitHostPort(adminAddr)
	for _, tt := range []struct {
		name, host, origin string
		status             int
	}{
		{"the agent listener's origin", adminAddr, "http://" + b.addr, 403},
		{"another local port", adminAddr, "http://localhost:3000", 403},
		{"own origin", adminAddr, "http://" + adminAddr, 200},
		{"own origin by name", "localhost:" + port, "http://localhost:" + port, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw := "POST /reload HTTP/1.1\r\nHost: " + tt.host + "\r\nOrigin: " + tt.origin +
				"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"
			resp, body := secRawExchange(t, adminAddr, raw)
			if resp.StatusCode != tt.status {
				t.Errorf("POST /reload from %s: %d %.200s, want %d", tt.origin, resp.StatusCode, body, tt.status)
			}
		})
	}
}

// TestAdmin9AuditServeAdminBeyondLoopbackNeedsToken: config validation
// refuses an admin.listen beyond localhost without admin.token, but what
// counts is the address bound. A Server handed a listener on all
// interfaces (an embedder, or "localhost" resolving elsewhere) without a
// token must not serve /config and /reload to the network: ServeAdmin
// refuses it. The Host check guards browsers only; a remote client
// writes Host: 127.0.0.1.
func TestAdmin9AuditServeAdminBeyondLoopbackNeedsToken(t *testing.T) {
	cfg, err := config.Parse([]byte(routeYAML("r", opsOK(t))), config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeAdmin(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	select {
	case err := <-done:
		if !errors.Is(err, proxy.ErrAdminExposed) {
			t.Errorf("ServeAdmin on %s without a token: %v, want an error naming admin.token", ln.Addr(), err)
		}
	case <-time.After(5 * time.Second):
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + port + "/config")
		if err == nil {
			resp.Body.Close()
		}
		t.Fatalf("ServeAdmin serves a listener on all interfaces without admin.token (GET /config: %v %v)", resp, err)
	}
	if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
		conn.Close()
		t.Error("the refused listener still accepts connections")
	}
}

// TestAdmin9AuditStatusPageInjectionInABrowser renders the status page in
// headless chromium with strings an agent controls in every table the
// page builds — a request id in the failure list, and an async job that
// failed for good — and checks that they show as text: no element they
// spell is created, and no script they carry runs (it would retitle the
// page). The page has no token here, as an operator's laptop would.
func TestAdmin9AuditStatusPageInjectionInABrowser(t *testing.T) {
	bin := chromium(t)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tools
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    async: {enabled: true}
`, up))
	// No spaces: a request id is one visible-ASCII token.
	const hostile = `<img/src=x/onerror=document.title=/PWNED/.source><b/id=injected>bold</b>`
	if resp, body := do(t, "GET", b.base+"/x", "", "X-Request-Id", hostile); resp.StatusCode != 503 {
		t.Fatalf("the failing call: %d %s", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", b.base+"/job", "{}", "Prefer", "respond-async", "X-Request-Id", hostile); resp.StatusCode != 202 {
		t.Fatalf("the async call: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool {
		_, s := statusJSON(t, b)
		return strings.Contains(s, `"failed":[{`)
	})
	dom := runChromium(t, bin, "--dump-dom", b.admin+"/")
	for _, c := range []struct{ name, re string }{
		{"the page rendered /status", `id="state" class="state state-live"`},
		{"the request id, as text", `<td class="rid">&lt;img/src=x/onerror=document.title=/PWNED/.source&gt;&lt;b/id=injected&gt;bold&lt;/b&gt;</td>`},
		{"the failed job", `<td>failed</td><td>[0-9a-f]{8}</td><td>tools</td>`},
	} {
		if !regexp.MustCompile(c.re).MatchString(dom) {
			t.Errorf("the rendered page lacks %s (%s)", c.name, c.re)
		}
	}
	if strings.Contains(dom, "PWNED</title>") || strings.Contains(dom, `id="injected"`) || strings.Contains(dom, "<img") {
		t.Errorf("an agent's string became markup or ran on the status page")
	}
	if t.Failed() {
		t.Logf("rendered DOM:\n%s", dom)
	}
}

// TestAdmin9AuditAdminNeverThroughAgentListener: an agent that names the
// admin listener in an absolute-form request line (as an HTTP_PROXY client
// does) or in Host reaches the route's configured upstream, never the
// admin endpoints: ballast is no open proxy, not even to itself.
func TestAdmin9AuditAdminNeverThroughAgentListener(t *testing.T) {
	b := startBallast(t, routeYAML("r", opsOK(t)))
	adminAddr := strings.TrimPrefix(b.admin, "http://")
	for _, raw := range []string{
		"GET http://" + adminAddr + "/config HTTP/1.1\r\nHost: " + adminAddr + "\r\n\r\n",
		"POST http://" + adminAddr + "/reload HTTP/1.1\r\nHost: " + adminAddr + "\r\nContent-Length: 0\r\n\r\n",
		"GET /status HTTP/1.1\r\nHost: " + adminAddr + "\r\n\r\n",
	} {
		resp, body := secRawExchange(t, b.addr, raw)
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("%q: %d %.120s, want the route's upstream's ok", strings.SplitN(raw, "\r\n", 2)[0], resp.StatusCode, body)
		}
	}
	if n := strings.Count(b.logs.String(), "config reloaded"); n != 0 {
		t.Errorf("the agent listener reloaded the config %d times", n)
	}
}

// TestAdmin9AuditGetNeverReloads: a GET or HEAD of /reload (a link, an
// <img>, a prefetch) changes nothing: the new file is not applied, and
// the answer is 405 with Allow: POST.
func TestAdmin9AuditGetNeverReloads(t *testing.T) {
	b := startBallast(t, routeYAML("old", opsOK(t)))
	if err := os.WriteFile(b.file, []byte(routeYAML("new", opsOK(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"GET", "HEAD"} {
		resp, _ := do(t, m, b.admin+"/reload", "")
		if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
			t.Errorf("%s /reload: %d, Allow %q", m, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	if got := b.srv.Config().Routes[0].Name; got != "old" {
		t.Errorf("after GET /reload the route is %q, want the old config still", got)
	}
}

// TestAdmin9AuditEnvSecretsNeverQuoted: secrets set through BALLAST_*
// environment overrides are literal values: /config shows them as
// [redacted], and a mistyped variable (one underscore where two separate
// levels) is refused by its name, without quoting its value in the
// message `ballast run` and `ballast validate` print.
func TestAdmin9AuditEnvSecretsNeverQuoted(t *testing.T) {
	b := startBallast(t, routeYAML("r", opsOK(t)), "BALLAST_ADMIN__TOKEN=ENVTOKENSECRET1",
		"BALLAST_NOTIFY__WEBHOOK=http://127.0.0.1:1/hooks/ENVHOOKSECRET2", "BALLAST_STATE__REDIS__PASSWORD=ENVREDISSECRET3")
	resp, body := get(t, client(t), b.admin+"/config", "Authorization", "Bearer ENVTOKENSECRET1")
	if resp.StatusCode != 200 || !strings.Contains(body, `"token": "[redacted]"`) {
		t.Fatalf("/config: %d %s", resp.StatusCode, body)
	}
	if i := strings.Index(body+b.logs.String(), "SECRET"); i >= 0 {
		all := body + b.logs.String()
		t.Errorf("an environment secret leaked: ...%s...", all[max(0, i-80):min(len(all), i+40)])
	}
	for _, kv := range []string{"BALLAST_ADMIN_TOKEN=ENVTYPOSECRET4", "BALLAST_STATE__REDIS_PASSWORD=ENVTYPOSECRET5",
		"BALLAST_NOTIFY__WEBHOOK=ftp://u:ENVTYPOSECRET6@h/"} {
		_, err := config.Parse([]byte(routeYAML("r", "http://127.0.0.1:1")), config.Source{Environ: []string{kv}})
		if err == nil {
			t.Errorf("%s was accepted", kv)
		} else if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%s: the message quotes the value: %v", kv, err)
		}
	}
}

// TestAdmin9AuditSessionCookieNeverForwarded: cookies are not isolated by
// port (RFC 6265 §8.5), so the browser that signed in to the status page
// on host:9901 sends the ballast_admin session cookie to ballast's agent
// listener on host:8080 too, when the operator tries a route there. The
// session opens /status to whoever holds it: ballast keeps it from the
// upstream, and forwards the agent's other cookies unchanged.
func TestAdmin9AuditSessionCookieNeverForwarded(t *testing.T) {
	seen := make(chan string, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- strings.Join(r.Header.Values("Cookie"), "|")
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, "admin: {token: \"${ADMIN_TOKEN}\"}\n"+routeYAML("r", up), "ADMIN_TOKEN=adm-t0ken")
	c := client(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ := get(t, c, b.admin+"/?token=adm-t0ken")
	var session string
	for _, ck := range resp.Cookies() {
		if ck.Name == "ballast_admin" {
			session = ck.Value
		}
	}
	if session == "" {
		t.Fatalf("no session cookie: %d", resp.StatusCode)
	}
	resp, body := get(t, c, b.base+"/page", "Cookie", "theme=dark; ballast_admin="+session+"; sid=abc")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("through the agent listener: %d %s", resp.StatusCode, body)
	}
	got := <-seen
	if strings.Contains(got, session) || strings.Contains(got, "ballast_admin") {
		t.Errorf("the upstream received the admin session cookie: %q", got)
	}
	if !strings.Contains(got, "theme=dark") || !strings.Contains(got, "sid=abc") {
		t.Errorf("the agent's own cookies were not forwarded: %q", got)
	}
}
