package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// Audit probes: forward-proxy mode (HTTP_PROXY clients), reloads under
// load, and the file state store as ballast opens it.

// auditSeen records what a plain HTTP tool received, raw.
type auditSeen struct {
	mu   sync.Mutex
	reqs []*http.Request
	name string
}

func (u *auditSeen) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	u.reqs = append(u.reqs, r)
	u.mu.Unlock()
	fmt.Fprintf(w, "%s %s", u.name, r.RequestURI)
}

func (u *auditSeen) all() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.reqs...)
}

// auditRaw sends one raw request to addr and returns the status line,
// headers and body of the answer.
func auditRaw(t *testing.T, addr, req string) (int, http.Header, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: strings.Fields(req)[0]})
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", req, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header, string(b)
}

// TestFwdHostsPortsAndExactURI: a Go client with Proxy set reaches a
// match.host route whatever port and case the URL spells; the tool gets
// the path (escaped slash included) and query exactly, and never the
// proxy's credentials or hop-by-hop headers.
func TestFwdHostsPortsAndExactURI(t *testing.T) {
	t.Parallel()
	t.Run("raw client hop-by-hop", auditHopByHop)
	tool := &auditSeen{name: "tool"}
	b := startBallast(t, nil, fmt.Sprintf(`
routes:
  - name: lookup
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    timeouts: {per_try: 5s, total: 10s}
`, serve(t, tool)))
	proxyURL, _ := url.Parse(b.base)
	proxyURL.User = url.UserPassword("agent", "s3cret") // → Proxy-Authorization
	c := httpClient(t)
	c.Transport.(*http.Transport).Proxy = http.ProxyURL(proxyURL)

	const uri = "/a/b%2Fc/d?x=1&x=2&y=%20+z&empty=&flag&enc=%2F%3F%26&u=%E2%9C%93"
	for _, host := range []string{"tool.internal", "tool.internal:80", "tool.internal:8000", "TOOL.Internal:8000"} {
		req, _ := http.NewRequest("GET", "http://"+host+uri, nil)
		req.Header.Set("X-Agent", "kept")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != 200 || body != "tool "+uri {
			t.Errorf("GET http://%s%s through ballast: %d %q; want 200 with the URI unchanged", host, uri, resp.StatusCode, body)
		}
	}
	reqs := tool.all()
	if len(reqs) != 4 {
		t.Fatalf("the tool saw %d requests, want 4", len(reqs))
	}
	for _, r := range reqs {
		for _, h := range []string{"Proxy-Authorization", "Proxy-Connection"} {
			if v := r.Header.Get(h); v != "" {
				t.Errorf("%s forwarded to the tool: %q", h, v)
			}
		}
		if r.Header.Get("X-Agent") != "kept" {
			t.Errorf("an end-to-end header was dropped: %v", r.Header)
		}
	}
}

// TestFwdUnlistedTargetsNeverForwarded: hosts no route lists (IPv6
// and IPv4 literals, a user-info trick, a Host header that disagrees with
// the absolute URL) get 404 no_route and reach nothing; CONNECT gets a 405
// that says why.
func TestFwdUnlistedTargetsNeverForwarded(t *testing.T) {
	t.Parallel()
	tool := &auditSeen{name: "tool"}
	stray := &auditSeen{name: "stray"}
	strayURL := serve(t, stray)
	strayHost := strings.TrimPrefix(strayURL, "http://")
	b := startBallast(t, nil, fmt.Sprintf(`
routes:
  - name: lookup
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
`, serve(t, tool)))
	c := proxyClient(t, b)

	targets := []string{
		strayURL + "/x",
		"http://[::1]:8000/x",
		"http://[::1]/x",
		"http://[fe80::1%25eth0]:80/x",
		"http://tool.internal.evil:8000/x",
		"http://evil.tool.internal/x",
	}
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil { // a real IPv6 server too
		s6 := &http.Server{Handler: stray, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = s6.Serve(ln) }()
		t.Cleanup(func() { _ = s6.Close() })
		targets = append(targets, "http://"+ln.Addr().String()+"/x")
	}
	for _, target := range targets {
		resp, err := c.Get(target)
		if err != nil {
			t.Errorf("GET %s: %v", target, err)
			continue
		}
		body := readAll(t, resp)
		if resp.StatusCode != 404 || !strings.Contains(body, `"reason":"no_route"`) {
			t.Errorf("GET %s through ballast: %d %s; want 404 no_route", target, resp.StatusCode, body)
		}
	}
	// Raw absolute-form requests a real client would not send.
	for _, req := range []string{
		"GET http://tool.internal@" + strayHost + "/x HTTP/1.1\r\nHost: " + strayHost + "\r\n\r\n",
		"GET http://" + strayHost + "/x HTTP/1.1\r\nHost: tool.internal\r\n\r\n",
		"GET http://[::1]:80/x HTTP/1.1\r\nHost: tool.internal\r\n\r\n",
	} {
		code, _, body := auditRaw(t, b.addr, req)
		if code != 404 || !strings.Contains(body, "no_route") {
			t.Errorf("%q: %d %s; want 404 no_route (the absolute URL's host decides)", req, code, body)
		}
	}
	code, h, body := auditRaw(t, b.addr, "CONNECT tool.internal:443 HTTP/1.1\r\nHost: tool.internal:443\r\n\r\n")
	if code != 405 || !strings.Contains(body, "does not tunnel CONNECT") || h.Get("Allow") == "" {
		t.Errorf("CONNECT: %d Allow=%q %s; want 405 explaining that ballast does not tunnel", code, h.Get("Allow"), body)
	}
	if n := len(stray.all()) + len(tool.all()); n != 0 {
		t.Fatalf("%d requests reached an upstream; want none", n)
	}
}

// auditHopByHop: Proxy-Connection and headers the
// agent's Connection header names stay with ballast.
func auditHopByHop(t *testing.T) {
	t.Parallel()
	tool := &auditSeen{name: "tool"}
	b := startBallast(t, nil, fmt.Sprintf(`
routes:
  - name: lookup
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
`, serve(t, tool)))
	code, _, body := auditRaw(t, b.addr, "GET http://tool.internal:8000/p?q=1 HTTP/1.1\r\n"+
		"Host: tool.internal:8000\r\nProxy-Connection: keep-alive\r\nConnection: close, X-Hop\r\n"+
		"X-Hop: secret\r\nProxy-Authorization: Basic YTpi\r\n\r\n")
	if code != 200 || body != "tool /p?q=1" {
		t.Fatalf("%d %q", code, body)
	}
	r := tool.all()[0]
	for _, h := range []string{"Proxy-Connection", "X-Hop", "Proxy-Authorization"} {
		if v := r.Header.Get(h); v != "" {
			t.Errorf("%s forwarded: %q", h, v)
		}
	}
}

// reloadable is a ballast whose config file the test rewrites.
type reloadable struct {
	*ballast
	srv  *proxy.Server
	file string
}

func startReloadable(t *testing.T, yaml string) *reloadable {
	t.Helper()
	src, cfg := loadConfig(t, yaml)
	logs := &syncBuffer{}
	srv, err := proxy.New(cfg, proxy.Options{
		Logger:    slog.New(slog.NewJSONHandler(logs, nil)),
		Registry:  prometheus.NewRegistry(),
		Source:    &src,
		AccessLog: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	done := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
		if t.Failed() {
			t.Logf("ballast logs:\n%s", logs.String())
		}
	})
	return &reloadable{ballast: &ballast{base: "http://" + ln.Addr().String(), addr: ln.Addr().String(), logs: logs}, srv: srv, file: src.File}
}

func (r *reloadable) reload(t *testing.T, yaml string) {
	t.Helper()
	if err := os.WriteFile(r.file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.srv.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// holder is an upstream whose requests wait until the test releases them
// by the name in their ?hold= query.
type holder struct {
	name    string
	arrived chan string
	mu      sync.Mutex
	gates   map[string]chan struct{}
}

func newHolder(name string) *holder {
	return &holder{name: name, arrived: make(chan string, 64), gates: map[string]chan struct{}{}}
}

func (h *holder) gate(n string) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	g, ok := h.gates[n]
	if !ok {
		g = make(chan struct{})
		h.gates[n] = g
	}
	return g
}

func (h *holder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := r.URL.Query().Get("hold")
	if n != "" {
		g := h.gate(n)
		h.arrived <- n
		select {
		case <-g:
		case <-r.Context().Done():
			return
		}
	}
	fmt.Fprintf(w, "%s", h.name)
}

type auditResult struct {
	code int
	body string
	err  error
}

func auditGet(c *http.Client, u string) auditResult {
	resp, err := c.Get(u)
	if err != nil {
		return auditResult{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return auditResult{code: resp.StatusCode, body: string(b), err: err}
}

// TestFwdReloadInFlight: requests running when their route is removed
// or re-pointed finish on the config they started with; new requests see
// the new one at once, including through HTTP_PROXY.
func TestFwdReloadInFlight(t *testing.T) {
	t.Parallel()
	t.Run("mid-stream", auditReloadMidStream)
	a, bUp := newHolder("A"), newHolder("B")
	aURL, bURL := serve(t, a), serve(t, bUp)
	toolAt := func(upstream string) string {
		return fmt.Sprintf(`
routes:
  - name: tool
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    timeouts: {per_try: 10s, total: 15s}
`, upstream)
	}
	cfgA, cfgB := toolAt(aURL), toolAt(bURL)
	cfgNone := fmt.Sprintf(`
routes:
  - name: other
    match: {host: other.internal, path_prefix: /}
    upstream: %s/
`, bURL)
	r := startReloadable(t, cfgA)
	c := proxyClient(t, r.ballast)

	const n = 5
	results := make(chan auditResult, n)
	for i := range n {
		go func() { results <- auditGet(c, fmt.Sprintf("http://tool.internal/x?hold=old%d", i)) }()
	}
	for range n {
		<-a.arrived
	}
	r.reload(t, cfgNone) // the route is gone
	if got := auditGet(c, "http://tool.internal/new"); got.code != 404 {
		t.Errorf("a new request after the route was removed: %+v; want 404", got)
	}
	r.reload(t, cfgB) // back, pointing elsewhere
	if got := auditGet(c, "http://tool.internal/new"); got.code != 200 || got.body != "B" {
		t.Errorf("a new request after the route moved: %+v; want 200 from B", got)
	}
	for i := range n {
		close(a.gate(fmt.Sprintf("old%d", i)))
	}
	for range n {
		if got := <-results; got.err != nil || got.code != 200 || got.body != "A" {
			t.Errorf("an in-flight request across reloads: %+v; want 200 from A", got)
		}
	}
}

// TestFwdReloadBulkhead: a request admitted by the old bulkhead gives
// its slot back to that bulkhead, never to the new one a reload that
// changes concurrency builds; an unchanged bulkhead survives a reload.
func TestFwdReloadBulkhead(t *testing.T) {
	t.Parallel()
	a := newHolder("A")
	aURL := serve(t, a)
	cfg := func(max int, tag string) string {
		return fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %s/
    timeouts: {per_try: 10s, total: 15s}
    concurrency: {max: %d, queue: 0}
    headers: {set: {X-Tag: %s}}
    retry: {attempts: 1}
`, aURL, max, tag)
	}
	r := startReloadable(t, cfg(1, "one"))
	c := httpClient(t)
	get := func(hold string) chan auditResult {
		ch := make(chan auditResult, 1)
		go func() { ch <- auditGet(c, r.base+"/x?hold="+hold) }()
		return ch
	}
	shed := func(what string) {
		t.Helper()
		if got := <-get("never"); got.code != 503 || !strings.Contains(got.body, "overloaded") {
			t.Errorf("%s: %+v; want 503 overloaded", what, got)
		}
	}
	r1 := get("r1")
	<-a.arrived
	r.reload(t, cfg(1, "two")) // same concurrency: the bulkhead survives
	shed("the surviving bulkhead, full")

	r.reload(t, cfg(2, "two")) // a new bulkhead of 2
	r3, r4 := get("r3"), get("r4")
	<-a.arrived
	<-a.arrived
	shed("the new bulkhead, full")
	close(a.gate("r1")) // r1 returns its slot to the old bulkhead
	if got := <-r1; got.code != 200 {
		t.Errorf("r1: %+v", got)
	}
	shed("the new bulkhead after an old request finished")
	close(a.gate("r3"))
	close(a.gate("r4"))
	for _, ch := range []chan auditResult{r3, r4} {
		if got := <-ch; got.code != 200 {
			t.Errorf("%+v", got)
		}
	}
}

// TestFwdRapidReloadsUnderLoad: dozens of reloads, alternating the
// upstream, the rate limit and header rules, while agents keep calling:
// every request is answered by one of the two upstreams.
func TestFwdRapidReloadsUnderLoad(t *testing.T) {
	t.Parallel()
	a, bUp := newHolder("A"), newHolder("B")
	urls := []string{serve(t, a), serve(t, bUp)}
	cfg := func(i int) string {
		return fmt.Sprintf(`
routes:
  - name: tool
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    rate_limit: {rps: %d, burst: %d, max_wait: 5s}
    concurrency: {max: %d}
    headers: {set: {X-Gen: "%d"}}
`, urls[i%2], 100000+i, 1000+i, 8+i%3, i)
	}
	r := startReloadable(t, cfg(0))
	c := proxyClient(t, r.ballast)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	var bad []auditResult
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got := auditGet(c, "http://tool.internal:8000/q?x=1")
				mu.Lock()
				if got.err != nil || got.code != 200 || (got.body != "A" && got.body != "B") {
					bad = append(bad, got)
				} else {
					counts[got.body]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := 1; i <= 60; i++ {
		r.reload(t, cfg(i))
	}
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("%d requests failed across reloads, first %+v", len(bad), bad[0])
	}
	if got := auditGet(c, "http://tool.internal/after"); got.body != "A" {
		t.Errorf("after the last reload (upstream A): %+v", got)
	}
	t.Logf("answered: %v", counts)
}

// auditBuildWithState builds (does not serve) a ballast whose state file
// is at path.
func auditBuildWithState(t *testing.T, path string) (*proxy.Server, error) {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
state: {backend: file, path: %s}
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: http://127.0.0.1:1/
`, path)), config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	return proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry: prometheus.NewRegistry(), AccessLog: io.Discard})
}

// TestFwdStateFileLocked: a second ballast on the same state.path is
// refused, naming the file; once the first has shut down, it opens.
func TestFwdStateFileLocked(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/state.db"
	first, err := auditBuildWithState(t, path)
	if err != nil {
		t.Fatal(err)
	}
	if second, err := auditBuildWithState(t, path); err == nil {
		_ = second.Shutdown(context.Background())
		t.Fatal("a second ballast opened a state file the first holds")
	} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("second ballast: %v; want a lock error naming %s", err, path)
	}
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	third, err := auditBuildWithState(t, path)
	if err != nil {
		t.Fatalf("after the first ballast stopped: %v", err)
	}
	_ = third.Shutdown(context.Background())
}

// TestUnusableStateDirIsNotCalledCorrupt: a state.path whose
// directory cannot hold it (here: a regular file stands where the
// directory should be, as ENOTDIR; EROFS and ENOSPC take the same branch)
// must be refused with an error naming the path and the real cause, not
// one that calls a file that does not exist "corrupt" and tells the
// operator to move it aside.
func TestUnusableStateDirIsNotCalledCorrupt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/notadir", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := dir + "/notadir/state.db"
	s, err := auditBuildWithState(t, bad)
	if err == nil {
		_ = s.Shutdown(context.Background())
		t.Fatal("a state.path under a regular file opened")
	}
	if !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "not a directory") ||
		strings.Contains(err.Error(), "corrupt") || strings.Contains(err.Error(), "move it aside") {
		t.Errorf("state.path %s (its directory is a file):\n%v\nwant an error naming the path and its cause, without calling it corrupt", bad, err)
	}
}

// auditReloadMidStream: a response body still streaming when its
// route is removed and its upstream replaced arrives whole.
func auditReloadMidStream(t *testing.T) {
	t.Parallel()
	half := make(chan struct{})
	rest := make(chan struct{})
	streamURL := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		close(half)
		select {
		case <-rest:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: two\n\n")
	}))
	other := serve(t, &auditSeen{name: "other"})
	r := startReloadable(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    timeouts: {connect: 1s, per_try: 10s, idle: 10s, total: 15s}
`, streamURL))
	c := proxyClient(t, r.ballast)
	resp, err := c.Get("http://tool.internal/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-half
	first := make([]byte, len("data: one\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	r.reload(t, fmt.Sprintf(`
routes:
  - name: tool2
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    timeouts: {connect: 2s}
`, other))
	if got := auditGet(c, "http://tool.internal/new"); got.body != "other /new" {
		t.Errorf("a new request after the reload: %+v", got)
	}
	close(rest)
	tail, err := io.ReadAll(resp.Body)
	if err != nil || string(tail) != "data: two\n\n" {
		t.Fatalf("the stream's rest after a reload: %q, %v", tail, err)
	}
}
