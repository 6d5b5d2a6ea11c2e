package proxy_test

// Follow-ups of the admin-surface audit (admin9_audit_test.go): guessing
// the admin token, the status page's session lifetime, and what
// problem+json details tell agents about ballast's own infrastructure.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

const a9bToken = "adm-9b-t0ken"

// a9bStart is a ballast with admin.token on a fake clock.
func a9bStart(t *testing.T) (*ballast, *policy.FakeClock) {
	t.Helper()
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, "admin: {token: \"${ADMIN_TOKEN}\"}\n"+routeYAML("r", opsOK(t)), "ADMIN_TOKEN="+a9bToken)
	return b, clock
}

// a9bNoRedirect is a client that shows redirects instead of following.
func a9bNoRedirect(t *testing.T) *http.Client {
	c := client(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// a9bSignIn signs in with the token and returns the session cookie.
func a9bSignIn(t *testing.T, b *ballast) *http.Cookie {
	t.Helper()
	resp, _ := get(t, a9bNoRedirect(t), b.admin+"/?token="+a9bToken)
	for _, c := range resp.Cookies() {
		if c.Name == "ballast_admin" {
			return c
		}
	}
	t.Fatalf("the sign-in set no session cookie: %d", resp.StatusCode)
	return nil
}

// TestAdmin9bAuditWrongTokensAreLimited: a client that reaches the admin
// listener (a DNS-rebinding page, or the network when admin.listen is
// beyond loopback) may try 10 wrong tokens at once, then one a second:
// beyond that every presented token, right or wrong (a guess must learn
// nothing), is answered 429 with Retry-After — at /config, /status and
// the sign-in form alike. A request with no token, a signed-in session
// and /healthz are not limited, and the right token works again at most
// a second after the wrong ones stop. Right tokens never fill the bucket.
func TestAdmin9bAuditWrongTokensAreLimited(t *testing.T) {
	b, clock := a9bStart(t)
	c := a9bNoRedirect(t)
	session := a9bSignIn(t, b)
	for i := range 50 { // right tokens cost nothing
		if resp, _ := get(t, c, b.admin+"/config", "Authorization", "Bearer "+a9bToken); resp.StatusCode != 200 {
			t.Fatalf("right token %d: %d", i, resp.StatusCode)
		}
	}
	wrong := []struct{ name, path, auth string }{
		{"another token", "/config", "Bearer wrong-1"},
		{"a prefix of the token", "/metrics", "Bearer " + a9bToken[:5]},
		{"the token and more", "/config", "Bearer " + a9bToken + "x"},
		{"another scheme", "/config", "Basic " + a9bToken},
		{"no scheme", "/config", a9bToken},
		{"empty bearer", "/status", "Bearer "},
		{"at /status", "/status", "Bearer wrong-2"},
		{"at /reload", "/reload", "Bearer wrong-3"},
		{"at /", "/", "Bearer wrong-4"},
	}
	for _, w := range wrong {
		resp, body := get(t, c, b.admin+w.path, "Authorization", w.auth)
		if resp.StatusCode != 401 {
			t.Errorf("%s: %d %.100s, want 401", w.name, resp.StatusCode, body)
		}
	}
	if resp, _ := get(t, c, b.admin+"/?token=wrong-5"); resp.StatusCode != 401 { // the tenth
		t.Errorf("a wrong sign-in: %d, want 401", resp.StatusCode)
	}
	// The bucket is full: no token is checked now.
	for _, tt := range []struct{ name, path, auth string }{
		{"a wrong token", "/config", "Bearer wrong-6"},
		{"the right token", "/config", "Bearer " + a9bToken},
		{"the right token at /status", "/status", "Bearer " + a9bToken},
	} {
		resp, body := get(t, c, b.admin+tt.path, "Authorization", tt.auth)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
			t.Errorf("%s over the limit: %d Retry-After %q %.120s, want 429 Retry-After 1", tt.name, resp.StatusCode, resp.Header.Get("Retry-After"), body)
			continue
		}
		if resp.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(body, `"reason":"rate_limited"`) {
			t.Errorf("%s over the limit: %q %s, want a rate_limited problem", tt.name, resp.Header.Get("Content-Type"), body)
		}
	}
	resp, body := do(t, "POST", b.admin+"/", "token="+a9bToken, "Content-Type", "application/x-www-form-urlencoded")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" || !strings.Contains(body, "<form") {
		t.Errorf("the sign-in form over the limit: %d Retry-After %q, want 429 with the form", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp, body := get(t, c, b.admin+"/"); resp.StatusCode != 401 || !strings.Contains(body, "<form") {
		t.Errorf("GET / without a token over the limit: %d, want the sign-in form (401)", resp.StatusCode)
	}
	if resp, _ := get(t, c, b.admin+"/status", "Cookie", session.Name+"="+session.Value); resp.StatusCode != 200 {
		t.Errorf("a signed-in session over the limit: %d, want 200", resp.StatusCode)
	}
	if resp, _ := get(t, c, b.admin+"/healthz"); resp.StatusCode != 200 {
		t.Errorf("/healthz over the limit: %d", resp.StatusCode)
	}
	if n := strings.Count(b.logs.String(), "too many wrong admin tokens"); n != 1 {
		t.Errorf("the limit was logged %d times, want once per episode", n)
	}
	// A second on, there is room for one check: the right token gets it
	// (and gives it back), one wrong token takes it.
	clock.Advance(time.Second)
	if resp, _ := get(t, c, b.admin+"/config", "Authorization", "Bearer "+a9bToken); resp.StatusCode != 200 {
		t.Errorf("the right token a second after the wrong ones stopped: %d, want 200", resp.StatusCode)
	}
	if resp, _ := get(t, c, b.admin+"/config", "Authorization", "Bearer wrong-7"); resp.StatusCode != 401 {
		t.Errorf("a wrong token with room for one: %d, want 401", resp.StatusCode)
	}
	if resp, _ := get(t, c, b.admin+"/config", "Authorization", "Bearer wrong-8"); resp.StatusCode != 429 {
		t.Errorf("the next wrong token: %d, want 429", resp.StatusCode)
	}
	// Ten seconds on, the bucket is empty again.
	clock.Advance(10 * time.Second)
	for i := range 10 {
		if resp, _ := get(t, c, b.admin+"/config", "Authorization", "Bearer wrong-again-"+strconv.Itoa(i)); resp.StatusCode != 401 {
			t.Errorf("wrong token %d after the bucket drained: %d, want 401", i, resp.StatusCode)
		}
	}
}

// TestAdmin9bAuditBearerSchemeIsCaseInsensitive: the authentication
// scheme is case-insensitive (RFC 9110 §11.1): "bearer <token>" is the
// token, as Envoy's and Grafana's checks take it.
func TestAdmin9bAuditBearerSchemeIsCaseInsensitive(t *testing.T) {
	b, _ := a9bStart(t)
	for _, auth := range []string{"Bearer " + a9bToken, "bearer " + a9bToken, "BEARER " + a9bToken} {
		if resp, body := get(t, client(t), b.admin+"/config", "Authorization", auth); resp.StatusCode != 200 {
			t.Errorf("%q: %d %.100s, want 200", auth, resp.StatusCode, body)
		}
	}
}

// TestAdmin9bAuditSessionExpires: the status page's session lasts 12
// hours from the sign-in (Max-Age, and checked by ballast: a cookie kept
// past it is refused), is HttpOnly and SameSite=Strict, and is refused
// once any byte of it is changed, once admin.token changes, and in the
// never-expiring form earlier versions issued. A refused session shows
// the sign-in form.
func TestAdmin9bAuditSessionExpires(t *testing.T) {
	b, clock := a9bStart(t)
	c := a9bNoRedirect(t)
	session := a9bSignIn(t, b)
	if !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Path != "/" || session.Secure {
		t.Errorf("cookie attributes: HttpOnly %v SameSite %v Path %q Secure %v, want HttpOnly, Strict, /, not Secure over plain HTTP",
			session.HttpOnly, session.SameSite, session.Path, session.Secure)
	}
	if session.MaxAge != int((12 * time.Hour).Seconds()) {
		t.Errorf("cookie Max-Age %d, want %d (12h)", session.MaxAge, int((12 * time.Hour).Seconds()))
	}
	status := func(value string) int {
		resp, _ := get(t, c, b.admin+"/status", "Cookie", "ballast_admin="+value)
		return resp.StatusCode
	}
	page := func(value string) (int, string) {
		resp, body := get(t, c, b.admin+"/", "Cookie", "ballast_admin="+value)
		return resp.StatusCode, body
	}
	if got := status(session.Value); got != 200 {
		t.Fatalf("a fresh session: /status %d", got)
	}
	// Altered: the issue time moved on (to last longer), a MAC byte.
	ts, mac, ok := strings.Cut(session.Value, ".")
	if !ok {
		t.Fatalf("session %q has no issue time", session.Value)
	}
	issued, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		t.Fatalf("session %q: %v", session.Value, err)
	}
	flip := "0"
	if mac[len(mac)-1] == '0' {
		flip = "1"
	}
	v1 := hmac.New(sha256.New, []byte(a9bToken))
	v1.Write([]byte("ballast admin session v1"))
	for _, tt := range []struct{ name, value string }{
		{"a later issue time", strconv.FormatInt(issued+3600, 10) + "." + mac},
		{"a MAC byte", ts + "." + mac[:len(mac)-1] + flip},
		{"no MAC", ts + "."},
		{"only a MAC", mac},
		{"the earlier never-expiring session", hex.EncodeToString(v1.Sum(nil))},
	} {
		if got := status(tt.value); got != 401 {
			t.Errorf("a session with %s: /status %d, want 401", tt.name, got)
		}
		if got, body := page(tt.value); got != 401 || !strings.Contains(body, "<form") {
			t.Errorf("a session with %s: / %d, want the sign-in form", tt.name, got)
		}
	}
	clock.Advance(12*time.Hour - time.Second)
	if got := status(session.Value); got != 200 {
		t.Errorf("a session a second before 12h: /status %d, want 200", got)
	}
	clock.Advance(time.Second)
	if got := status(session.Value); got != 401 {
		t.Errorf("a session 12h old: /status %d, want 401", got)
	}
	if got, body := page(session.Value); got != 401 || !strings.Contains(body, "<form") {
		t.Errorf("a session 12h old: / %d, want the sign-in form", got)
	}
	// A new token ends every session.
	fresh := a9bSignIn(t, b)
	if got := status(fresh.Value); got != 200 {
		t.Fatalf("a new session: /status %d", got)
	}
	code, body := opsReloadAuth(t, b, "admin: {token: other-token}\n"+routeYAML("r", opsOK(t)), a9bToken)
	if code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if got := status(fresh.Value); got != 401 {
		t.Errorf("a session after admin.token changed: /status %d, want 401", got)
	}
}

// opsReloadAuth writes yaml and reloads it with the admin token.
func opsReloadAuth(t *testing.T, b *ballast, yaml, token string) (int, string) {
	t.Helper()
	if err := os.WriteFile(b.file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, body := do(t, "POST", b.admin+"/reload", "", "Authorization", "Bearer "+token)
	return resp.StatusCode, body
}

// TestAdmin9bAuditSessionSecureOverTLS: an admin listener served over TLS
// sets the session cookie Secure, so the browser never sends it over
// plain HTTP.
func TestAdmin9bAuditSessionSecureOverTLS(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})) // for its certificate and client
	t.Cleanup(ts.Close)
	cfg, err := config.Parse([]byte("admin: {token: \"${ADMIN_TOKEN}\"}\n"+routeYAML("r", "http://127.0.0.1:1")),
		config.Source{Environ: []string{"ADMIN_TOKEN=" + a9bToken}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.ServeAdmin(tls.NewListener(ln, ts.TLS)); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	c := ts.Client()
	c.Timeout = 10 * time.Second
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	t.Cleanup(c.CloseIdleConnections)
	resp, err := c.Get("https://" + ln.Addr().String() + "/?token=" + url.QueryEscape(a9bToken))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var got *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "ballast_admin" {
			got = ck
		}
	}
	if got == nil || !got.Secure || !got.HttpOnly || got.SameSite != http.SameSiteStrictMode {
		t.Errorf("the session cookie over TLS: %+v, want Secure, HttpOnly, SameSite=Strict", got)
	}
}

// a9bAddress matches an IPv4 address, or a bracketed or colon-rich IPv6 one.
var a9bAddress = regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b|\[?[0-9a-f]*:[0-9a-f]*:[0-9a-f:]*\]?`)

// TestAdmin9bAuditTransportDetailsNameNoInfrastructure: a route that
// names its upstream by host name answers an agent, when that upstream
// fails, with the name it addressed and what went wrong, but not the IP
// the name resolved to, ballast's own address or the DNS resolver's:
// those are the operator's network, kept for the debug log.
func TestAdmin9bAuditTransportDetailsNameNoInfrastructure(t *testing.T) {
	_, refusedPort, _ := net.SplitHostPort(deadAddr(t))
	// An upstream that answers part of a body, then resets the connection.
	cut, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cut.Close() })
	go func() {
		for {
			conn, err := cut.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 4096)
				_, _ = conn.Read(buf)
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"partial\":")
				time.AfterFunc(50*time.Millisecond, func() {
					_ = conn.(*net.TCPConn).SetLinger(0)
					conn.Close()
				})
			}()
		}
	}()
	_, cutPort, _ := net.SplitHostPort(cut.Addr().String())
	for _, tt := range []struct {
		name, upstream, header, want string
	}{
		{"connection refused", "http://localhost:" + refusedPort, "", "connection refused"},
		{"name does not resolve", "http://nonexistent-upstream.invalid", "", "nonexistent-upstream.invalid"},
		{"reset while the answer is read", "http://localhost:" + cutPort, "Idempotency-Key", "connection reset"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    timeouts: {connect: 2s, total: 5s}
    retry: {attempts: 1}
    idempotency: {mode: header}
`, tt.upstream))
			headers := []string{}
			if tt.header != "" {
				headers = []string{tt.header, "a9b-transport-key"}
			}
			resp, body := do(t, "POST", b.base+"/x", "{}", headers...)
			p := decodeProblem(t, resp, body)
			if p.Reason == "timeout" { // no resolver reachable here: the 504's detail must still name no address
				if m := a9bAddress.FindString(p.Detail); m != "" {
					t.Errorf("the detail names the address %s: %s", m, p.Detail)
				}
				return
			}
			if resp.StatusCode != 502 || !strings.Contains(p.Detail, tt.want) {
				t.Fatalf("%d %s, want 502 saying %q", resp.StatusCode, body, tt.want)
			}
			if m := a9bAddress.FindString(p.Detail); m != "" {
				t.Errorf("the detail names the address %s: %s", m, p.Detail)
			}
		})
	}
}

// TestAdmin9bAuditStateDetailNamesNoInfrastructure: when the shared state
// store fails, the agent learns that it did and what kind of failure it
// was (503 state_unavailable), not the Redis address (here written as a
// host name, so the IP it resolved to would be the leak) or the text of
// the client's error; ballast's log keeps the whole error.
func TestAdmin9bAuditStateDetailNamesNoInfrastructure(t *testing.T) {
	rs := redistest.Start(t)
	_, port, _ := net.SplitHostPort(rs.Addr())
	b := startBallast(t, sfRedisState("localhost:"+port, "fail_closed", 300*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, opsOK(t)))
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), "redis is reachable") })
	rs.Kill() // the next claim dials Redis again, before the health check can tell
	resp, body := do(t, "POST", b.base+"/charge", "{}", "Idempotency-Key", "a9b-state")
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != 503 || p.Reason != "state_unavailable" || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("%d %s, want 503 state_unavailable", resp.StatusCode, body)
	}
	if !strings.Contains(p.Detail, "redis") {
		t.Errorf("the detail does not say what failed: %s", p.Detail)
	}
	if m := a9bAddress.FindString(p.Detail); m != "" || strings.Contains(p.Detail, port) || strings.Contains(p.Detail, "localhost") {
		t.Errorf("the detail names Redis's address: %s", p.Detail)
	}
	logs := b.logs.String()
	if !strings.Contains(logs, `"msg":"state store failed"`) {
		t.Errorf("the log lacks the error")
	}
	if !strings.Contains(logs, "dial tcp") { // the error the agent once read, with the resolved address
		t.Logf("the health check saw Redis down before the claim did: %s", logs)
	}
}

// TestAdmin9bAuditStateFileDetailNamesNoPath: the file state store's
// errors name the file; an agent refused because the store is full is
// told so, with the key that sets the bound, never the path.
func TestAdmin9bAuditStateFileDetailNamesNoPath(t *testing.T) {
	dir := t.TempDir()
	b := startBallast(t, fmt.Sprintf(`
state: {backend: file, path: %q, max_records: 1}
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, dir+"/state.db", opsOK(t)))
	if resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "a9b-first"); resp.StatusCode != 200 {
		t.Fatalf("the first keyed call: %d %s", resp.StatusCode, body)
	}
	resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "a9b-second")
	p := decodeProblem(t, resp, body)
	if resp.StatusCode != 503 || p.Reason != "state_unavailable" {
		t.Fatalf("a second key with max_records 1: %d %s, want 503 state_unavailable", resp.StatusCode, body)
	}
	if !strings.Contains(p.Detail, "state.max_records") {
		t.Errorf("the detail does not say the store is full: %s", p.Detail)
	}
	if strings.Contains(p.Detail, dir) || strings.Contains(p.Detail, "state.db") {
		t.Errorf("the detail names the state file: %s", p.Detail)
	}
	if !strings.Contains(b.logs.String(), "state.db") {
		t.Errorf("the log lacks the whole error")
	}
}
