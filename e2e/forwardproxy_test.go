package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// toolUpstream records the requests a plain HTTP tool received.
type toolUpstream struct {
	mu   sync.Mutex
	seen []*http.Request
}

func (u *toolUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	u.seen = append(u.seen, r)
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"path":%q,"query":%q}`, r.URL.Path, r.URL.RawQuery)
}

func (u *toolUpstream) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.seen...)
}

// proxyClient uses ballast the way HTTP_PROXY=http://ballast makes every
// Go, Python or curl client use it: absolute-form request lines
// ("GET http://tool.internal/x HTTP/1.1") sent to the proxy.
func proxyClient(t *testing.T, b *ballast) *http.Client {
	proxy, err := url.Parse(b.base)
	if err != nil {
		t.Fatal(err)
	}
	c := httpClient(t)
	c.Transport.(*http.Transport).Proxy = http.ProxyURL(proxy)
	return c
}

// TestForwardProxyForPlainHTTPTools: a route that matches a host by name
// serves clients that reach it through HTTP_PROXY; a host no route lists
// gets 404 and nothing is sent anywhere (ballast is never an open proxy).
func TestForwardProxyForPlainHTTPTools(t *testing.T) {
	t.Parallel()
	tool := &toolUpstream{}
	stray := &toolUpstream{} // what an open proxy would reach
	toolURL := serve(t, tool)
	strayURL := serve(t, stray)
	b := startBallast(t, nil, fmt.Sprintf(`
routes:
  - name: lookup
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    timeouts: {per_try: 5s, total: 10s}
`, toolURL))
	c := proxyClient(t, b)

	resp, err := c.Get("http://tool.internal/x?id=7")
	if err != nil {
		t.Fatalf("GET through HTTP_PROXY: %v", err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 200 || body != `{"path":"/x","query":"id=7"}` {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Ballast-Upstream") == "" {
		t.Error("the answer did not come through ballast (no X-Ballast-Upstream)")
	}
	reqs := tool.requests()
	if len(reqs) != 1 {
		t.Fatalf("the tool saw %d requests, want 1", len(reqs))
	}
	if got := reqs[0].Header.Get("Proxy-Connection"); got != "" {
		t.Errorf("Proxy-Connection forwarded: %q", got)
	}
	if want := strings.TrimPrefix(toolURL, "http://"); reqs[0].Host != want {
		t.Errorf("the tool saw Host %q, want its own %q", reqs[0].Host, want)
	}

	for _, target := range []string{
		strayURL + "/x",             // a real server on this machine
		"http://unlisted.example/x", // a name no route lists
		"http://tool.internal.evil.example/x",
	} {
		resp, err := c.Get(target)
		if err != nil {
			t.Fatalf("GET %s: %v", target, err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 404 || !strings.Contains(body, `"reason":"no_route"`) {
			t.Errorf("GET %s through ballast: %d %s; want 404 no_route", target, resp.StatusCode, body)
		}
	}
	if n := len(stray.requests()); n != 0 {
		t.Fatalf("ballast forwarded %d requests to a host no route lists", n)
	}
	if n := len(tool.requests()); n != 1 {
		t.Fatalf("the tool saw %d requests, want 1", n)
	}
}

// TestForwardProxyCONNECT: https:// URLs through HTTP_PROXY need a CONNECT
// tunnel, which ballast does not offer. The client gets an error either
// way, and a CONNECT to a host no route lists reaches nothing. A CONNECT to
// a listed host is today forwarded to that route's upstream as a CONNECT
// request (the route matches Host tool.internal:443 and path
// "/tool.internal:443"); it never reaches any other host, but ballast
// should refuse it outright (see the report to the lead).
func TestForwardProxyCONNECT(t *testing.T) {
	t.Parallel()
	tool := &toolUpstream{}
	stray := &toolUpstream{}
	strayURL := serve(t, stray)
	b := startBallast(t, nil, fmt.Sprintf(`
routes:
  - name: lookup
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
`, serve(t, tool)))
	c := proxyClient(t, b)

	resp, err := c.Get(strings.Replace(strayURL, "http://", "https://", 1) + "/x")
	if err == nil {
		t.Fatalf("an https request to an unlisted host through ballast succeeded: %d %s", resp.StatusCode, readAll(t, resp))
	}
	if !strings.Contains(err.Error(), "Method Not Allowed") {
		t.Errorf("want ballast's 405 for CONNECT, got: %v", err)
	}
	if n := len(stray.requests()) + len(tool.requests()); n != 0 {
		t.Fatalf("a CONNECT to an unlisted host reached %d upstream(s)", n)
	}

	// Even for a listed host, ballast answers CONNECT itself: it never tunnels.
	resp, err = c.Get("https://tool.internal/x")
	if err == nil {
		t.Fatalf("an https request through ballast as HTTP_PROXY succeeded: %d %s", resp.StatusCode, readAll(t, resp))
	}
	if !strings.Contains(err.Error(), "Method Not Allowed") {
		t.Errorf("want ballast's 405 for CONNECT, got: %v", err)
	}
	if n := len(tool.requests()); n != 0 {
		t.Errorf("the route's upstream received %d CONNECT requests; ballast must answer CONNECT itself", n)
	}
	if n := len(stray.requests()); n != 0 {
		t.Fatalf("a CONNECT reached a host no route lists")
	}
}
