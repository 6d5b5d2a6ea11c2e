package proxy_test

// Probes of the last hour's changes (path forwarding kept escaped, resent
// accounting, close-delimited HTTP/1.0 streams, upstream freshness), from
// an adversarial audit with raw sockets and loopback upstreams.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// laRoutes adds, to raRoutes's table, a route with an escaped base path
// and no strip, and one whose fallback has another base path.
func laRoutes(up string) string {
	return fmt.Sprintf(`
routes:
  - name: enc
    match: {path_prefix: /enc/}
    upstream: %[1]s/b%%20x/
  - name: fb
    match: {path_prefix: /fb/}
    upstream: http://%[2]s/primary/
    strip_prefix: true
    retry: {backoff: {base: 1ms, max: 2ms}}
    fallbacks: [{upstream: %[1]s/second%%2Fary/}]
`, up, "127.0.0.1:1") + strings.TrimPrefix(raRoutes(up), "\nroutes:\n")
}

// TestLastHourAudit_PathsAsSent: the upstream gets the agent's path with
// its escapes as sent, bytes a path may not hold escaped, and never a path
// outside the route's base.
func TestLastHourAudit_PathsAsSent(t *testing.T) {
	b := startBallast(t, laRoutes(raUpstream(t)))
	long := strings.Repeat("a", 3000)
	raRun(t, b.addr, []raCase{
		{name: "plus kept", target: "/tool/a+b", want: "/base/a+b"},
		{name: "escaped plus kept", target: "/tool/a%2Bb", want: "/base/a%2Bb"},
		{name: "raw utf-8 escaped", target: "/tool/caf\xc3\xa9", want: "/base/caf%C3%A9"},
		{name: "escaped utf-8 kept", target: "/tool/caf%c3%a9", want: "/base/caf%c3%a9"},
		{name: "escaped question mark kept", target: "/tool/a%3Fb=1?q=2", want: "/base/a%3Fb=1?q=2"},
		{name: "escaped hash kept", target: "/tool/a%23b", want: "/base/a%23b"},
		{name: "percent then non-hex escaped", target: "/tool/100%zz", want: "/base/100%25zz"},
		{name: "trailing percent escaped", target: "/tool/100%", want: "/base/100%25"},
		{name: "percent-2 then non-hex", target: "/tool/%2g", want: "/base/%252g"},
		{name: "escaped percent kept", target: "/tool/%25", want: "/base/%25"},
		{name: "double-escaped dots stay data", target: "/tool/%252e%252e/x", want: "/base/%252e%252e/x"},
		{name: "escaped dot-dot resolved", target: "/tool/%2e%2e/x", want: "/catch/x"},
		{name: "escaped slash dot-dot resolved", target: "/tool/a%2F..%2F..%2Fx", want: "/catch/x"},
		// "/tool/..%5Cx" would climb out on IIS: refused (parsing9_audit_test.go).
		{name: "escaped backslash kept", target: "/tool/a%5C..%5Cx", want: "/base/a%5C..%5Cx"},
		{name: "escaped NUL kept", target: "/tool/a%00b", want: "/base/a%00b"},
		{name: "escaped space kept", target: "/tool/a%20b", want: "/base/a%20b"},
		{name: "long path", target: "/tool/" + long, want: "/base/" + long},
		{name: "escaped prefix spelled", target: "/%74ool/x", want: "/base/x"},
		{name: "escaped slash after prefix", target: "/s%2Fx", want: "/sb/x"},
		{name: "no strip, escaped base", target: "/enc/a%2Fb", want: "/b%20x/enc/a%2Fb"},
		{name: "no strip, escaped base, plain", target: "/enc/caf\xc3\xa9", want: "/b%20x/enc/caf%C3%A9"},
		{name: "escaped slash dot-dot to root", target: "/keep/x%2F..%2F..", want: "/catch/"},
		{name: "fallback base", target: "/fb/a%2Fb", want: "/second%2Fary/a%2Fb"},
		{name: "fallback base, dot-dot", target: "/fb/x/../y", want: "/second%2Fary/y"},
		{name: "absolute form keeps escapes", target: "http://tool.internal/h/a%2Fb", want: "/hosted/a%2Fb"},
		{name: "absolute form, escaped dot-dot", target: "http://tool.internal/h/%2e%2e/x", want: "/catch/x"},
		{name: "absolute form, plus", target: "http://tool.internal/h/a+b%2B", want: "/hosted/a+b%2B"},
	})
}

// laStreamUp is an upstream of streamed answers of unknown length.
type laStreamUp struct {
	url     string
	payload string
	gate    chan struct{} // /sse's second event waits for it
	ended   chan struct{} // /endless's handler returned (its writes failed)
	once    sync.Once
}

func (u *laStreamUp) open() { u.once.Do(func() { close(u.gate) }) }

func laStartStreamUp(t *testing.T) *laStreamUp {
	u := &laStreamUp{payload: strings.Repeat("0123456789abcdef", 8<<10/16), gate: make(chan struct{}), ended: make(chan struct{}, 16)}
	u.url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/chunked":
			w.Header().Set("Content-Type", "application/octet-stream")
			for i := 0; i < len(u.payload); i += 1 << 10 {
				_, _ = io.WriteString(w, u.payload[i:i+1<<10])
				w.(http.Flusher).Flush()
			}
		case "/sse":
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: 1\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-u.gate:
			case <-r.Context().Done():
				return
			}
			_, _ = io.WriteString(w, "data: 2\n\n")
		case "/endless":
			defer func() { u.ended <- struct{}{} }()
			w.Header().Set("Content-Type", "text/event-stream")
			chunk := strings.Repeat("x", 4<<10)
			for {
				if _, err := io.WriteString(w, chunk); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				if r.Context().Err() != nil {
					return
				}
			}
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"v1"`)
			if r.Header.Get("If-None-Match") == `"v1"` {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			_, _ = io.WriteString(w, "fresh")
		}
	})
	t.Cleanup(u.open)
	return u
}

func laStreamYAML(up string) string {
	return fmt.Sprintf(`
routes:
  - {name: keyed, match: {path_prefix: /k/}, upstream: %[1]q, strip_prefix: true, idempotency: {mode: header}}
  - {name: s, match: {path_prefix: /}, upstream: %[1]q, concurrency: {max: 1, queue: 0}}
`, up)
}

// TestLastHourAudit_HTTP10Answers: every kind of streamed answer reaches an
// HTTP/1.0 agent framed as 1.0 can read it, and the connection then
// closes; bodiless answers carry no body.
func TestLastHourAudit_HTTP10Answers(t *testing.T) {
	u := laStartStreamUp(t)
	b := startBallast(t, laStreamYAML(u.url))
	tests := []struct {
		name, raw, wantStatus, wantBody string
	}{
		{"chunked GET", "GET /chunked HTTP/1.0\r\n\r\n", "200", u.payload},
		{"keep-alive asked, pipelined second dropped", "GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /chunked HTTP/1.0\r\n\r\n", "200", u.payload},
		{"HEAD", "HEAD /chunked HTTP/1.0\r\n\r\n", "200", ""},
		{"204", "GET /204 HTTP/1.0\r\n\r\n", "204", ""},
		{"304", "GET /304 HTTP/1.0\r\nIf-None-Match: \"v1\"\r\n\r\n", "304", ""},
		{"keyed POST streamed", "POST /k/chunked HTTP/1.0\r\nIdempotency-Key: la-1\r\nContent-Length: 2\r\n\r\n{}", "200", u.payload},
		{"keyed GET streamed", "GET /k/chunked HTTP/1.0\r\nIdempotency-Key: la-2\r\n\r\n", "200", u.payload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, timedOut := rawAll(t, b.addr, tt.raw, 5*time.Second)
			if timedOut {
				t.Fatalf("the connection was not closed after the answer: %.300q", out)
			}
			head, body, _ := strings.Cut(out, "\r\n\r\n")
			lower := strings.ToLower(head)
			if !strings.HasPrefix(head, "HTTP/1.1 "+tt.wantStatus+" ") {
				t.Fatalf("head %q, want status %s", head, tt.wantStatus)
			}
			if strings.Contains(lower, "transfer-encoding") {
				t.Errorf("an HTTP/1.0 agent got Transfer-Encoding: %q", head)
			}
			if body != tt.wantBody {
				t.Errorf("body %d bytes %.80q, want %d bytes", len(body), body, len(tt.wantBody))
			}
		})
	}
	waitFor(t, func() bool {
		return b.metric("ballast_concurrency_inflight", map[string]string{"route": "s"}) == 0
	})
}

// laOpen1 sends a 1.0 GET of path and reads until its body holds want.
func laOpen1(t *testing.T, addr, path, want string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\n\r\n", path)
	var got []byte
	buf := make([]byte, 4<<10)
	for !strings.Contains(string(got), want) {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			conn.Close()
			t.Fatalf("before %q arrived: %v (%.200q)", want, err, got)
		}
	}
	return conn
}

// TestLastHourAudit_HTTP10StreamIsLive: an SSE event reaches a 1.0 agent
// as it comes, not when the stream ends.
func TestLastHourAudit_HTTP10StreamIsLive(t *testing.T) {
	u := laStartStreamUp(t)
	b := startBallast(t, laStreamYAML(u.url))
	conn := laOpen1(t, b.addr, "/sse", "data: 1\n\n")
	defer conn.Close()
	u.open()
	rest, err := io.ReadAll(conn)
	if err != nil || string(rest) != "data: 2\n\n" {
		t.Fatalf("after the first event: %q %v", rest, err)
	}
}

// TestLastHourAudit_HTTP10AgentGoneMidStream: a 1.0 agent that hangs up
// mid-stream frees the upstream connection, the concurrency slot and every
// goroutine of the relay.
func TestLastHourAudit_HTTP10AgentGoneMidStream(t *testing.T) {
	u := laStartStreamUp(t)
	b := startBallast(t, laStreamYAML(u.url))
	conn := laOpen1(t, b.addr, "/sse", "data: 1\n\n") // warm up: pools, workers
	u.open()
	_, _ = io.ReadAll(conn)
	conn.Close()
	waitFor(t, func() bool {
		return b.metric("ballast_concurrency_inflight", map[string]string{"route": "s"}) == 0
	})
	before := runtime.NumGoroutine()
	for i := range 3 {
		conn := laOpen1(t, b.addr, "/endless", "xxxx")
		conn.Close()
		select {
		case <-u.ended:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the upstream kept streaming to an agent that left", i)
		}
		waitFor(t, func() bool {
			return b.metric("ballast_concurrency_inflight", map[string]string{"route": "s"}) == 0
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines %d, were %d before the streams", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
	}
}

// TestLastHourAudit_DrainWaitsForHTTP10Stream: Shutdown waits for a stream
// to a 1.0 agent as it waits for one to a 1.1 agent — it is in flight,
// and the process exits when Shutdown returns. (A stream that outlasts the
// drain is called off: TestShutdownStreamsAudit_CalledOffAtDeadline.)
func TestLastHourAudit_DrainWaitsForHTTP10Stream(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			u := laStartStreamUp(t)
			b := startBallast(t, laStreamYAML(u.url))
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(conn, "GET /sse %s\r\nHost: x\r\nConnection: close\r\n\r\n", proto)
			br := bufio.NewReader(conn)
			var got strings.Builder
			for !strings.Contains(got.String(), "data: 1") {
				line, err := br.ReadString('\n')
				got.WriteString(line)
				if err != nil {
					t.Fatalf("%v: %q", err, got.String())
				}
			}
			shut := saShutdown(b, 5*time.Second)
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) while a %s stream was still in flight", err, proto)
			case <-time.After(300 * time.Millisecond):
			}
			u.open()
			rest, _ := io.ReadAll(br)
			if !strings.Contains(string(rest), "data: 2") {
				t.Errorf("the in-flight stream was cut at drain: %q", rest)
			}
			if err := <-shut; err != nil {
				t.Errorf("Shutdown, once the stream ended within the drain: %v", err)
			}
		})
	}
}

// TestLastHourAudit_FallbackStaleDespiteMaxAgeZero: in fallback mode the
// upstream's own freshness (max-age=0, no-cache, a past Expires) makes no
// entry unusable as stale-if-error within the route's ttl+stale.
func TestLastHourAudit_FallbackStaleDespiteMaxAgeZero(t *testing.T) {
	for _, cc := range []string{"max-age=0", "no-cache", "s-maxage=0, max-age=60", "expires"} {
		t.Run(cc, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			var down atomic.Bool
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				if down.Load() {
					w.WriteHeader(503)
					return
				}
				if cc == "expires" {
					w.Header().Set("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")
				} else {
					w.Header().Set("Cache-Control", cc)
				}
				w.Header().Set("Age", "5")
				io.WriteString(w, "good")
			})
			b := cacheAuditStart(t, clock, up.url, "{mode: fallback, ttl: 10s, stale: 1m}", "")
			if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != "good" {
				t.Fatalf("first: %d %q", resp.StatusCode, body)
			}
			down.Store(true)
			clock.Advance(30 * time.Second)
			resp, body := do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != 200 || body != "good" {
				t.Fatalf("upstream down within ttl+stale: %d %q, want the stored answer", resp.StatusCode, body)
			}
			if age := resp.Header.Get("Age"); age != "35" {
				t.Errorf("stale Age %q, want 35 (5 on arrival + 30 resident)", age)
			}
			if cs := ballastCacheStatus(t, resp); !strings.Contains(cs, "fwd=stale") {
				t.Errorf("Cache-Status %q", cs)
			}
		})
	}
}

// TestLastHourAudit_HugeUpstreamAge: an upstream Age too large for a
// Duration makes the answer stale at once; it never wraps around into a
// fresh hit with a negative age.
func TestLastHourAudit_HugeUpstreamAge(t *testing.T) {
	for _, age := range []string{"99999999999", "9223372036", "18446744073709551616"} {
		t.Run(age, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Age", age)
				fmt.Fprintf(w, "call %d", n)
			})
			b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
			do(t, "GET", b.base+"/x", "")
			clock.Advance(time.Second)
			resp, body := do(t, "GET", b.base+"/x", "")
			if body != "call 2" {
				t.Errorf("an answer %ss old on arrival was served as a hit: %q Age %q Cache-Status %q",
					age, body, resp.Header.Get("Age"), resp.Header.Get("Cache-Status"))
			}
		})
	}
}

// TestLastHourAudit_SharedTierKeepsUpstreamAge: a hit from the Redis tier
// on another replica counts the age the answer had on arrival, as a local
// hit does: Age, and freshness, are the same on every replica.
func TestLastHourAudit_SharedTierKeepsUpstreamAge(t *testing.T) {
	rs := redistest.Start(t)
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Age", "50")
		fmt.Fprintf(w, "call %d", n)
	})
	a, b := sharedPair(t, rs, clock, up.url, "mode: fresh, ttl: 1h", "", "fail_open")
	if _, body := hostDo(t, "GET", a.base+"/x"); body != "call 1" {
		t.Fatalf("through A: %q", body)
	}
	waitFor(t, func() bool { return sharedEntries(t, rs) == 1 })
	clock.Advance(5 * time.Second)
	resp, body := hostDo(t, "GET", a.base+"/x")
	if body != "call 1" || resp.Header.Get("Age") != "55" {
		t.Fatalf("A's own hit: %q Age %q, want call 1 at 55", body, resp.Header.Get("Age"))
	}
	resp, body = hostDo(t, "GET", b.base+"/x")
	if body == "call 1" && resp.Header.Get("Age") != "55" {
		t.Errorf("B's hit from Redis: Age %q, want 55 as on A (50 on arrival + 5)", resp.Header.Get("Age"))
	}
	clock.Advance(10 * time.Second) // 65s old: stale by the upstream's max-age=60
	resp, body = hostDo(t, "GET", b.base+"/x")
	if body == "call 1" {
		t.Errorf("B served a 65s-old answer (max-age=60) as fresh: Age %q Cache-Status %q",
			resp.Header.Get("Age"), resp.Header.Get("Cache-Status"))
	}
}

// laCloser is a raw upstream: on a reused connection, /drop closes the
// connection after reading a request, unanswered; every other request (a
// fresh connection's /drop too) is answered 200 with the path and keep-alive.
// /hang on a fresh connection waits until its connection closes.
type laCloser struct {
	url    string
	mu     sync.Mutex
	copies map[string]int // by X-La-Id
	hungUp chan struct{}
}

func (u *laCloser) copiesOf(id string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.copies[id]
}

func laStartCloser(t *testing.T) *laCloser {
	t.Helper()
	u := &laCloser{copies: map[string]int{}, hungUp: make(chan struct{}, 4)}
	u.url = "http://" + serveConns(t, func(c net.Conn, br *bufio.Reader) {
		for served := 0; ; served++ {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			u.mu.Lock()
			u.copies[req.Header.Get("X-La-Id")]++
			u.mu.Unlock()
			switch {
			case served > 0 && (req.URL.Path == "/drop" || req.URL.Path == "/hang"):
				return // closed unanswered, after reading it whole
			case req.URL.Path == "/hang":
				_, _ = br.ReadByte() // until ballast closes the connection
				u.hungUp <- struct{}{}
				return
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		}
	})
	return u
}

// TestLastHourAudit_ResendAccounting: a request sent again after its
// pooled connection closed unanswered is counted once per copy the
// upstream got (X-Ballast-Attempts, the attempts metric); a POST that was
// written whole is never sent again.
func TestLastHourAudit_ResendAccounting(t *testing.T) {
	tests := []struct {
		name, method, retry string
		wantStatus          int
		wantCopies          int
	}{
		{"GET resent", "GET", "{attempts: 1}", 200, 2},
		{"GET resent with retries", "GET", "{attempts: 3, backoff: {base: 1ms, max: 2ms}}", 200, 2},
		{"PUT resent", "PUT", "{attempts: 1}", 200, 2},
		{"POST not resent", "POST", "{attempts: 1}", 502, 1},
		{"POST not retried", "POST", "{attempts: 3, backoff: {base: 1ms, max: 2ms}}", 502, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := laStartCloser(t)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, breaker: {enabled: false}, retry: %s}
`, up.url, tt.retry))
			if resp, body := do(t, "GET", b.base+"/ok", "", "X-La-Id", "warm"); resp.StatusCode != 200 || body != "/ok" {
				t.Fatalf("warm-up: %d %q", resp.StatusCode, body)
			}
			before := b.metricSum("ballast_upstream_attempts_total", nil)
			resp, body := do(t, tt.method, b.base+"/drop", "{}", "X-La-Id", "probe")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("%s /drop: %d %q, want %d", tt.method, resp.StatusCode, body, tt.wantStatus)
			}
			copies := up.copiesOf("probe")
			if copies != tt.wantCopies {
				t.Errorf("the upstream got %d copies, want %d", copies, tt.wantCopies)
			}
			got := resp.Header.Get("X-Ballast-Attempts")
			if resp.StatusCode >= 500 { // a problem: the body's attempts (docs/errors.md)
				var p struct{ Attempts int }
				if err := json.Unmarshal([]byte(body), &p); err != nil {
					t.Fatalf("problem %q: %v", body, err)
				}
				got = fmt.Sprint(p.Attempts)
			}
			if got != fmt.Sprint(copies) {
				t.Errorf("attempts %q, the upstream got %d copies", got, copies)
			}
			if got := b.metricSum("ballast_upstream_attempts_total", nil) - before; got != float64(copies) {
				t.Errorf("ballast_upstream_attempts_total grew by %v, the upstream got %d copies", got, copies)
			}
		})
	}
}

// TestLastHourAudit_ResentThenAgentGone: a resent copy still counts when
// the agent hangs up while the second copy runs.
func TestLastHourAudit_ResentThenAgentGone(t *testing.T) {
	up := laStartCloser(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, breaker: {enabled: false}, retry: {attempts: 1}}
`, up.url))
	if resp, body := do(t, "GET", b.base+"/ok", "", "X-La-Id", "warm"); resp.StatusCode != 200 || body != "/ok" {
		t.Fatalf("warm-up: %d %q", resp.StatusCode, body)
	}
	before := b.metricSum("ballast_upstream_attempts_total", nil)
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "GET /hang HTTP/1.1\r\nHost: x\r\nX-La-Id: probe\r\n\r\n")
	waitFor(t, func() bool { return up.copiesOf("probe") == 2 })
	conn.Close()
	select {
	case <-up.hungUp:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream's call was not called off after the agent left")
	}
	waitFor(t, func() bool { return b.metricSum("ballast_upstream_attempts_total", nil)-before >= 1 })
	if got := b.metricSum("ballast_upstream_attempts_total", nil) - before; got != 2 {
		t.Errorf("ballast_upstream_attempts_total grew by %v; the upstream got 2 copies", got)
	}
}

// TestLastHourAudit_CacheKeyPerForwardedPath: two spellings forwarded as
// different upstream paths never share a cache entry.
func TestLastHourAudit_CacheKeyPerForwardedPath(t *testing.T) {
	up := raUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s/base/
    strip_prefix: true
    cache: {mode: fresh, ttl: 1m}
`, up))
	for _, pair := range [][2]string{
		{"/tool/A", "/tool/%41"},
		{"/tool/a+b", "/tool/a%2Bb"},
		{"/tool/a%3Bb", "/tool/a;b"},
		{"/tool/caf%c3%a9", "/tool/caf%C3%A9"},
		{"/tool/%25", "/tool/%2525"},
	} {
		for _, target := range pair {
			s := raDo(t, b.addr, raGet(target, "x"))
			if want := "/base/" + strings.TrimPrefix(target, "/tool/"); s.target != want {
				t.Errorf("GET %s answered with the response for %q, want %q", target, s.target, want)
			}
		}
	}
}

// TestLastHourAudit_HTTP10TruncationIsNotACleanEnd: when the upstream's
// body breaks mid-stream, a 1.0 agent (whose body ends at the close) must
// not see a clean close, which would pass the truncated body off as
// whole: the connection is reset, as the relay aborts a 1.1 stream.
func TestLastHourAudit_HTTP10TruncationIsNotACleanEnd(t *testing.T) {
	addr := serveConns(t, func(c net.Conn, br *bufio.Reader) {
		_, _ = readRequestHead(br)
		// One chunk, then the connection ends without the last chunk.
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: s, match: {path_prefix: /}, upstream: "http://%s", retry: {attempts: 1}}
`, addr))
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(conn, "GET /x %s\r\nHost: x\r\n\r\n", proto)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Errorf("a truncated stream (%q) read as a whole body", body)
			}
		})
	}
}
