package proxy_test

// Adversarial audit (round 7) of the agent watch, the strict JSON-RPC
// reading, the HTTP/1.1 conformance fixes, the health pool sweep and
// max_retry_after: 0, with real loopback upstreams and raw agent sockets.
// Each probe asserts the correct behaviour; the bugs it found are fixed.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// nc7Dial opens a raw agent connection, closed with the test.
func nc7Dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// nc7Started waits for the upstream to get one request.
func nc7Started(t *testing.T, started <-chan struct{}) {
	t.Helper()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never got the request")
	}
}

// nc7ReadResponse reads one answer from br within 5s.
func nc7ReadResponse(t *testing.T, c net.Conn, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

// nc7Sentinel sends a call that hangs on h and leaves; once the watch has
// called it off (the upstream saw ballast hang up, want in total), every
// call older than it has been looked at by a scan (oldest first).
func nc7Sentinel(t *testing.T, b *ballast, h *hangUntilClientLeaves, path string, want int64) {
	t.Helper()
	sendAndLeave(t, b.addr, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n", h.started)
	waitFor(t, func() bool { return h.hungUp.Load() >= want })
}

// A hedged call whose first copy failed while the hedge still runs: when
// the agent hangs up then, the hedge must be called off like any attempt,
// not held to per_try.
func TestNewCode7_HedgeCalledOffAfterTheFirstCopyFailed(t *testing.T) {
	var n atomic.Int64
	hedgeIn := make(chan struct{})
	firstDone := make(chan struct{})
	var hungUp atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			select { // the first copy fails once the hedge is out
			case <-hedgeIn:
			case <-time.After(5 * time.Second):
			}
			w.WriteHeader(http.StatusInternalServerError)
			close(firstDone)
			return
		}
		close(hedgeIn)
		<-r.Context().Done() // the hedge hangs until ballast hangs up
		hungUp.Add(1)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 10ms
    retry: {attempts: 1}
    timeouts: {per_try: 60s, total: 120s}
`, up))
	c := nc7Dial(t, b.addr)
	fmt.Fprint(c, "GET /search HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case <-firstDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the first copy never answered")
	}
	c.Close()
	// Within a few scans (20ms each), not per_try (60s).
	waitFor(t, func() bool { return hungUp.Load() == 1 })
}

// An agent that leaves while its call waits for the route's rate limit
// must give its place in line back: the call never went out, and the next
// caller must not wait (or be refused) for it.
func TestNewCode7_RateLimitWaitOfAGoneAgentGivesItsTurnBack(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    rate_limit: {rps: 1, burst: 1, max_wait: 1500ms}
    timeouts: {total: 60s}
`, up))
	if resp, body := do(t, "GET", b.base+"/a", ""); resp.StatusCode != 200 {
		t.Fatalf("first call: %d %s", resp.StatusCode, body)
	}
	// The second call waits a second for its turn; its agent leaves.
	c := nc7Dial(t, b.addr)
	fmt.Fprint(c, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, func() bool { return clock.Waiters() > 0 })
	c.Close()
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), `"stopped":"agent_gone"`) })
	waitFor(t, func() bool { return clock.Waiters() == 0 })
	// The third call takes the turn the second gave back: a one-second
	// wait, within max_wait.
	done := raSend(t, "GET", b.base+"/c", "")
	giveUp := time.Now().Add(5 * time.Second)
	for clock.Waiters() == 0 {
		if time.Now().After(giveUp) {
			t.Fatal("the third call neither waited nor answered")
		}
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("the third call: %v", r.err)
			}
			t.Fatalf("the third call got %d %s at once; the gone agent's turn was kept", r.resp.StatusCode, r.body)
		case <-time.After(5 * time.Millisecond):
		}
	}
	clock.Advance(time.Second)
	if r := raAnswer(t, done); r.resp.StatusCode != 200 {
		t.Fatalf("the third call: %d %s", r.resp.StatusCode, r.body)
	}
	if hits.Load() != 2 {
		t.Errorf("upstream hits %d, want 2", hits.Load())
	}
}

// An agent that half-closes (shutdown(SHUT_WR)) after its request is taken
// as gone, as nginx (recv → 0: "client prematurely closed connection",
// 499) and Envoy (HTTP/1 has no half-close; the stream is reset) do: the
// upstream call is called off. The agent, still reading, gets the 499 and
// the connection's end, not a hang.
func TestNewCode7_HalfCloseIsTakenAsGone(t *testing.T) {
	h, b := startHanging(t, "model", "retry: {attempts: 3, unsafe_methods: true, backoff: {base: 1ms, max: 1ms}}")
	c := nc7Dial(t, b.addr)
	fmt.Fprint(c, "POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	nc7Started(t, h.started)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return h.hungUp.Load() == 1 })
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the half-closed agent was left hanging: %v (%q)", err, out)
	}
	if !strings.HasPrefix(string(out), "HTTP/1.1 499 ") {
		t.Errorf("the half-closed agent read %.120q, want the 499", out)
	}
	if h.hits.Load() != 1 {
		t.Errorf("upstream hits %d, want 1", h.hits.Load())
	}
}

// The watched call is the second on a keep-alive connection: the watch
// sees that agent leave too; and a present agent's first call, scanned
// while it ran, leaves no signal that would end its second one.
func TestNewCode7_KeepAliveSecondCall(t *testing.T) {
	h, b := startHanging(t, "model", "retry: {attempts: 2}")
	c := nc7Dial(t, b.addr)
	br := bufio.NewReader(c)
	for i := range 2 {
		fmt.Fprintf(c, "GET /call%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		nc7Started(t, h.started)
		// A later agent leaves: once it is called off, the scan has looked
		// at this call (present) too.
		nc7Sentinel(t, b, h, "/sentinel", int64(i+1))
		h.release <- struct{}{}
		if resp, body := nc7ReadResponse(t, c, br); resp.StatusCode != 200 || !strings.Contains(body, `"ok":true`) {
			t.Fatalf("call %d of a present agent: %d %q", i, resp.StatusCode, body)
		}
	}
	// Now the third call on the connection, and the agent leaves.
	fmt.Fprint(c, "GET /call2 HTTP/1.1\r\nHost: x\r\n\r\n")
	nc7Started(t, h.started)
	c.Close()
	waitFor(t, func() bool { return h.hungUp.Load() == 3 })
	if n := h.hits.Load(); n != 5 {
		t.Errorf("upstream hits %d, want 5 (3 calls, 2 sentinels; nothing retried)", n)
	}
}

// A pipelining agent that keeps its connection open is present: its first
// call runs to its answer and the pipelined one follows, in order.
func TestNewCode7_PipelinedCallsAreNotCalledOff(t *testing.T) {
	h, b := startHanging(t, "model")
	c := nc7Dial(t, b.addr)
	br := bufio.NewReader(c)
	fmt.Fprint(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
	nc7Started(t, h.started)
	nc7Sentinel(t, b, h, "/sentinel", 1)
	h.release <- struct{}{}
	// fasthttp holds a pipelined call's answer until the calls queued
	// behind it are answered too: both are read at the end.
	nc7Started(t, h.started)
	h.release <- struct{}{}
	for _, name := range []string{"first", "second"} {
		if resp, body := nc7ReadResponse(t, c, br); resp.StatusCode != 200 || !strings.Contains(body, `"ok":true`) {
			t.Fatalf("%s pipelined call: %d %q", name, resp.StatusCode, body)
		}
	}
	if h.hungUp.Load() != 1 {
		t.Errorf("%d calls called off, want 1 (the sentinel)", h.hungUp.Load())
	}
}

// Many agents at once, some leaving mid-call, some staying, on pooled
// registrations: every agent that stays gets its answer (no stale signal
// of a reused registration), and every one that leaves is called off.
func TestNewCode7_ManyAgentsLeavingAndStaying(t *testing.T) {
	h := &hangUntilClientLeaves{started: make(chan struct{}, 64), release: make(chan struct{})}
	t.Cleanup(func() { close(h.release) })
	up, _ := upstream(t, h.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: model
    match: {path_prefix: /}
    upstream: %q
    timeouts: {per_try: 60s, total: 120s}
`, up))
	const rounds, per = 3, 8
	for round := range rounds {
		stay := make([]net.Conn, 0, per)
		for i := range per {
			c := nc7Dial(t, b.addr)
			fmt.Fprintf(c, "GET /r%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", round, i)
			nc7Started(t, h.started)
			if i%2 == 0 {
				c.Close()
			} else {
				stay = append(stay, c)
			}
		}
		want := int64((round + 1) * per / 2)
		waitFor(t, func() bool { return h.hungUp.Load() == want })
		for range stay {
			h.release <- struct{}{}
		}
		for _, c := range stay {
			if resp, body := nc7ReadResponse(t, c, bufio.NewReader(c)); resp.StatusCode != 200 {
				t.Fatalf("round %d: an agent that stayed got %d %q", round, resp.StatusCode, body)
			}
		}
	}
	if got := b.metric("ballast_upstream_attempts_total", map[string]string{"route": "model", "outcome": policy.Canceled.String()}); got != rounds*per/2 {
		t.Errorf("canceled attempts %v, want %d", got, rounds*per/2)
	}
}

// An agent that leaves while ballast waits out the upstream's shared
// cool-down ends the wait: no call goes out for it.
func TestNewCode7_CooldownWaitEndsWhenTheAgentLeaves(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    timeouts: {total: 300s}
`, up))
	// The 429 sets a 30s cool-down for everyone.
	if resp, _ := do(t, "GET", b.base+"/a", ""); resp.StatusCode != 429 {
		t.Fatalf("first call: %d", resp.StatusCode)
	}
	c := nc7Dial(t, b.addr)
	fmt.Fprint(c, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, func() bool { return clock.Waiters() > 0 })
	c.Close()
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), `"stopped":"agent_gone"`) })
	clock.Advance(time.Minute)
	if hits.Load() != 1 {
		t.Errorf("upstream hits %d, want 1: a call went out for an agent that left", hits.Load())
	}
	if resp, body := do(t, "GET", b.base+"/c", ""); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("after the cool-down: %d %q", resp.StatusCode, body)
	}
}

// max_retry_after: 0 answers a hinted 429 or 503 at once, but the
// degradation order still runs: the next fallback, the stale cache, the
// static fallback.
func TestNewCode7_MaxRetryAfterZeroDegrades(t *testing.T) {
	var primaryHits, fallbackHits atomic.Int64
	var fail atomic.Bool
	primary, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		primaryHits.Add(1)
		if fail.Load() {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"fresh":true}`)
	})
	fallback, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		fallbackHits.Add(1)
		_, _ = io.WriteString(w, "from-fallback")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: withfallback
    match: {path_prefix: /fb/}
    upstream: %q
    fallbacks: [{upstream: %q}]
    retry: {attempts: 3, max_retry_after: 0s}
  - name: cached
    match: {path_prefix: /cache/}
    upstream: %q
    retry: {attempts: 3, max_retry_after: 0s}
    cache: {mode: fallback, stale: 1h}
  - name: static
    match: {path_prefix: /static/}
    upstream: %q
    retry: {attempts: 3, max_retry_after: 0s}
    static_fallback: {status: 200, body: '{"static":true}'}
  - name: bare
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 3, max_retry_after: 0s}
`, primary, fallback, primary, primary, primary))
	if resp, body := do(t, "GET", b.base+"/cache/x", ""); resp.StatusCode != 200 || body != `{"fresh":true}` {
		t.Fatalf("filling the cache: %d %q", resp.StatusCode, body)
	}
	fail.Store(true)
	for _, tt := range []struct {
		name, path string
		status     int
		body       string
		hits       int64
	}{
		{"next fallback at once", "/fb/x", 200, "from-fallback", 1},
		{"stale cache", "/cache/x", 200, `{"fresh":true}`, 1},
		{"static fallback", "/static/x", 200, `{"static":true}`, 1},
		{"error with Retry-After", "/x", 503, "", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := primaryHits.Load()
			resp, body := do(t, "GET", b.base+tt.path, "")
			if resp.StatusCode != tt.status || (tt.body != "" && body != tt.body) {
				t.Errorf("%d %q, want %d %q", resp.StatusCode, body, tt.status, tt.body)
			}
			if got := primaryHits.Load() - before; got != tt.hits {
				t.Errorf("primary hit %d times, want %d (a 1s hint is not waited for)", got, tt.hits)
			}
			if tt.status == 503 && resp.Header.Get("Retry-After") != "1" {
				t.Errorf("Retry-After %q, want the upstream's 1", resp.Header.Get("Retry-After"))
			}
		})
	}
}

// ballast's status line is its own HTTP/1.1 for answers served from the
// cache and replayed for an idempotency key, whatever version the upstream
// answered in; and an answer without Content-Type stays without one.
func TestNewCode7_StoredAnswersSpeakHTTP11(t *testing.T) {
	raw := startCAUpstream(t, func(head string) caReply {
		return caReply{resp: "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nCache-Control: max-age=60\r\n\r\nten", hangUp: true}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: fresh
    match: {path_prefix: /fresh/}
    upstream: %s
    cache: {mode: fresh, ttl: 1m}
  - name: keyed
    match: {path_prefix: /keyed/}
    upstream: %s
    idempotency: {mode: header}
`, raw.url, raw.url))
	for _, tt := range []struct{ name, req string }{
		{"cache fill", "GET /fresh/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"},
		{"cache hit", "GET /fresh/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"},
		{"keyed call", "POST /keyed/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k7\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"},
		{"keyed replay", "POST /keyed/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k7\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := rawAll(t, b.addr, tt.req, caWait)
			head, body, _ := strings.Cut(out, "\r\n\r\n")
			if !strings.HasPrefix(out, "HTTP/1.1 200 ") || body != "ten" {
				t.Errorf("got %.300q, want ballast's HTTP/1.1 200 and the body", out)
			}
			if strings.Contains(strings.ToLower(head), "content-type") {
				t.Errorf("an answer without Content-Type got one: %q", head)
			}
		})
	}
	if n := len(raw.all()); n != 2 {
		t.Errorf("upstream saw %d requests, want 2 (the hit and the replay are served by ballast)", n)
	}
}

// TRACE, OPTIONS * and Max-Forwards: 0 in forward-proxy (absolute-form)
// requests and on routes restricted by methods are answered by ballast
// and never reach the upstream.
func TestNewCode7_LocalAnswersInForwardProxyForm(t *testing.T) {
	raw := startCAUpstream(t, func(head string) caReply { return caTraceEcho(head) })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /, host: tool.example, methods: [POST]}
    upstream: %s
    headers: {set: {Authorization: "Bearer %s"}}
  - name: any
    match: {path_prefix: /}
    upstream: %s
    headers: {set: {Authorization: "Bearer %s"}}
`, raw.url, caSecret, raw.url, caSecret))
	for _, tt := range []struct {
		name, req string
		status    int
	}{
		{"absolute-form TRACE", "TRACE http://tool.example/x HTTP/1.1\r\nHost: tool.example\r\n\r\n", 405},
		{"absolute-form OPTIONS, Max-Forwards 0", "OPTIONS http://tool.example/x HTTP/1.1\r\nHost: tool.example\r\nMax-Forwards: 0\r\n\r\n", 200},
		{"OPTIONS * to a methods-restricted host", "OPTIONS * HTTP/1.1\r\nHost: tool.example\r\n\r\n", 200},
		{"TRACE with Max-Forwards 0", "TRACE /x HTTP/1.1\r\nHost: other\r\nMax-Forwards: 0\r\n\r\n", 405},
		{"HTTP/2.0 absolute-form", "GET http://tool.example/x HTTP/2.0\r\nHost: tool.example\r\n\r\n", 505},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := caExchange(t, b.addr, tt.req)
			if resp.StatusCode != tt.status || strings.Contains(body, caSecret) || resp.Header.Get("X-Ballast-Upstream") != "" {
				t.Errorf("%d %q (upstream %q), want ballast's own %d", resp.StatusCode, body, resp.Header.Get("X-Ballast-Upstream"), tt.status)
			}
			if tt.status == 200 && !strings.Contains(resp.Header.Get("Allow"), "OPTIONS") {
				t.Errorf("Allow %q", resp.Header.Get("Allow"))
			}
		})
	}
	if n := len(raw.all()); n != 0 {
		t.Errorf("the upstream saw %d requests: %q", n, raw.all())
	}
}

// Expect: 100-continue: the 413 comes before the upload only for a route
// that would refuse it. Without a route, with a chunked body, or on a
// route whose methods do not match, the agent is told to continue and is
// answered as usual; and the early 413 is logged like the late one.
func TestNewCode7_ExpectContinueEdges(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: small
    match: {path_prefix: /small/, methods: [POST]}
    upstream: %s
    max_body: 1KiB
`, up))
	firstLine := func(t *testing.T, req string) (string, net.Conn, *bufio.Reader) {
		t.Helper()
		c := nc7Dial(t, b.addr)
		_ = c.SetDeadline(time.Now().Add(caWait))
		fmt.Fprint(c, req)
		br := bufio.NewReader(c)
		line, _ := br.ReadString('\n')
		return line, c, br
	}
	t.Run("no route: continue, then 404", func(t *testing.T) {
		line, c, br := firstLine(t, "POST /other HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
		if !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("first line %q, want 100 Continue", line)
		}
		_, _ = br.ReadString('\n') // the blank line after 100
		fmt.Fprint(c, strings.Repeat("a", 5000))
		resp, _ := nc7ReadResponse(t, c, br)
		if resp.StatusCode != 404 {
			t.Errorf("status %d, want 404", resp.StatusCode)
		}
	})
	t.Run("method the route does not take: not its 413", func(t *testing.T) {
		line, _, _ := firstLine(t, "PUT /small/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
		if !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Errorf("first line %q, want 100 Continue", line)
		}
	})
	t.Run("chunked: continue, then 413 once over", func(t *testing.T) {
		line, c, br := firstLine(t, "POST /small/x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
		if !strings.HasPrefix(line, "HTTP/1.1 100 ") {
			t.Fatalf("first line %q, want 100 Continue", line)
		}
		_, _ = br.ReadString('\n')
		fmt.Fprintf(c, "%x\r\n%s\r\n0\r\n\r\n", 1500, strings.Repeat("a", 1500))
		resp, body := nc7ReadResponse(t, c, br)
		caProblem(t, resp, body, 413)
	})
	t.Run("early 413 is in the access log", func(t *testing.T) {
		line, _, _ := firstLine(t, "POST /small/early HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
		if !strings.HasPrefix(line, "HTTP/1.1 413 ") {
			t.Fatalf("first line %q, want 413", line)
		}
		waitFor(t, func() bool { return strings.Contains(b.logs.String(), `"path":"/small/early","status":413`) })
	})
}

// A reload that changes an upstream's breaker settings while a call is in
// flight on the old table: the old breaker is dropped from the pool, but
// the call still records into it. Its opening must not show as the
// upstream's breaker state (the breaker in force is closed and lets calls
// through), and the next call goes through.
func TestNewCode7_RetiredBreakerDoesNotDriveTheGauge(t *testing.T) {
	hold := make(chan struct{})
	started := make(chan struct{}, 1)
	var n atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			started <- struct{}{}
			<-hold
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	host := strings.TrimPrefix(up, "http://")
	cfg := func(failures int) string {
		return fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, breaker: {failures: %d, failure_ratio: 0, open_for: 1h}}
`, up, failures)
	}
	b := startBallast(t, cfg(1))
	done := raSend(t, "GET", b.base+"/old", "")
	nc7Started(t, started)
	if code, body := opsReload(t, b, cfg(5)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	close(hold)
	if code := raAnswer(t, done).resp.StatusCode; code != http.StatusBadGateway {
		t.Fatalf("the call in flight: %d", code)
	}
	if resp, body := do(t, "GET", b.base+"/new", ""); resp.StatusCode != 200 {
		t.Fatalf("the breaker in force let nothing through: %d %q", resp.StatusCode, body)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": host}); got != float64(policy.StateClosed) {
		t.Errorf("ballast_breaker_state{upstream=%q} = %v, want %d (closed: the breaker in force)", host, got, policy.StateClosed)
	}
	if n := b.srv.HealthEntries(); n != 1 {
		t.Errorf("%d breakers kept, want 1", n)
	}
}
