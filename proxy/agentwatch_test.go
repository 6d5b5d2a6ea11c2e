package proxy_test

import (
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

// hangUntilClientLeaves answers only when released; it records whether
// its client (ballast) closed the connection first.
type hangUntilClientLeaves struct {
	hits    atomic.Int64
	started chan struct{} // gets a value per request
	release chan struct{}
	hungUp  atomic.Int64
}

func newHanging(t *testing.T) *hangUntilClientLeaves {
	h := &hangUntilClientLeaves{started: make(chan struct{}, 8), release: make(chan struct{})}
	t.Cleanup(func() { close(h.release) })
	return h
}

// startHanging serves one route, name, on / to a new hangUntilClientLeaves
// upstream, with timeouts {per_try: 60s, total: 120s} and the extra route
// keys given (each "key: value").
func startHanging(t *testing.T, name string, extra ...string) (*hangUntilClientLeaves, *ballast) {
	t.Helper()
	h := newHanging(t)
	up, _ := upstream(t, h.handler)
	y := fmt.Sprintf(`
routes:
  - name: %s
    match: {path_prefix: /}
    upstream: %q
    timeouts: {per_try: 60s, total: 120s}
`, name, up)
	for _, kv := range extra {
		y += "    " + kv + "\n"
	}
	return h, startBallast(t, y)
}

func (h *hangUntilClientLeaves) handler(w http.ResponseWriter, r *http.Request) {
	h.hits.Add(1)
	_, _ = io.Copy(io.Discard, r.Body) // net/http watches the connection only once the body is read
	h.started <- struct{}{}
	select {
	case <-r.Context().Done(): // net/http: the client closed the connection
		h.hungUp.Add(1)
	case <-h.release:
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}
}

// sendAndLeave sends a request on a raw connection, waits until the
// upstream has it, and hangs up, as an agent's client does at its own
// timeout.
func sendAndLeave(t *testing.T, addr, request string, started <-chan struct{}) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprint(conn, request); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream never got the request")
	}
	conn.Close()
}

// An agent that hangs up while the upstream works on its call: ballast
// closes the upstream connection too (Envoy and nginx do), instead of
// waiting for an answer nobody reads until per_try — holding the slot and
// spending the provider's tokens. The attempt is no fault of the
// upstream's and is not retried.
func TestAgentHangUpCallsTheUpstreamOff(t *testing.T) {
	h, b := startHanging(t, "model", "retry: {attempts: 3, unsafe_methods: true, backoff: {base: 1ms, max: 1ms}}", "breaker: {failures: 1, failure_ratio: 0}")
	sendAndLeave(t, b.addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", h.started)
	waitFor(t, func() bool { return h.hungUp.Load() == 1 })
	waitFor(t, func() bool {
		b.srv.FlushAccessLog()
		return strings.Contains(b.logs.String(), `"msg":"request"`)
	})
	logs := b.logs.String()
	if !strings.Contains(logs, `"status":499`) || !strings.Contains(logs, `"stopped":"agent_gone"`) {
		t.Errorf("the trail does not say the agent left: %s", logs)
	}
	if n := h.hits.Load(); n != 1 {
		t.Errorf("upstream hits %d, want 1: a call for an agent that left was retried", n)
	}
	if got := b.metric("ballast_upstream_attempts_total", map[string]string{"route": "model", "outcome": policy.Canceled.String()}); got != 1 {
		t.Errorf("attempts counted as canceled: %v, want 1", got)
	}
	// The breaker (one failure opens it) did not count the called-off
	// attempt: the next call goes through.
	go func() {
		<-h.started
		h.release <- struct{}{}
	}()
	if resp, body := do(t, "POST", b.base+"/v1/chat/completions", "{}", "Content-Type", "application/json"); resp.StatusCode != 200 {
		t.Fatalf("after a called-off attempt: %d %s", resp.StatusCode, body)
	}
}

// A call guarded by an idempotency key is detached from its agent: it runs
// on, so that the agent's retry attaches to it or replays its answer.
func TestAgentHangUpLeavesKeyedCallsRunning(t *testing.T) {
	h, b := startHanging(t, "model", "idempotency: {mode: header}")
	sendAndLeave(t, b.addr, "POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Length: 2\r\n\r\n{}", h.started)
	// An unkeyed call, made later, whose agent also leaves: once it is
	// called off, the watch has looked at the keyed one too (calls are
	// scanned oldest first).
	sendAndLeave(t, b.addr, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", h.started)
	waitFor(t, func() bool { return h.hungUp.Load() == 1 })
	h.release <- struct{}{} // the keyed call's answer
	resp, body := do(t, "POST", b.base+"/orders", "{}", "Idempotency-Key", "k1")
	if resp.StatusCode != 200 || !strings.Contains(body, `"ok":true`) || h.hits.Load() != 2 {
		t.Fatalf("the agent's retry of the keyed call got %d %q after %d upstream hits; want the first call's answer, replayed",
			resp.StatusCode, body, h.hits.Load())
	}
}

// An agent that hangs up while ballast waits to retry (here a Retry-After
// of a minute) ends the wait: the request ends at once, not a minute on.
func TestAgentHangUpEndsTheWaitForARetry(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	first := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(503)
		first <- struct{}{}
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 2, max_retry_after: 120s}
    timeouts: {total: 300s}
`, up))
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	<-first
	waitFor(t, func() bool { return clock.Waiters() > 0 }) // ballast waits for the retry
	conn.Close()
	waitFor(t, func() bool {
		b.srv.FlushAccessLog()
		return strings.Contains(b.logs.String(), `"msg":"request"`)
	})
	if logs := b.logs.String(); !strings.Contains(logs, `"stopped":"agent_gone"`) || hits.Load() != 1 {
		t.Errorf("after %d upstream hits, the trail: %s", hits.Load(), logs)
	}
}

// A hedged call whose agent hangs up has both copies called off.
func TestAgentHangUpCallsHedgesOff(t *testing.T) {
	h, b := startHanging(t, "tool", "hedge_after: 10ms")
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "GET /search HTTP/1.1\r\nHost: x\r\n\r\n")
	for range 2 { // the first copy, then the hedge
		select {
		case <-h.started:
		case <-time.After(5 * time.Second):
			t.Fatal("the upstream did not get both copies")
		}
	}
	conn.Close()
	waitFor(t, func() bool { return h.hungUp.Load() == 2 })
	waitFor(t, func() bool {
		b.srv.FlushAccessLog()
		return strings.Contains(b.logs.String(), `"stopped":"agent_gone"`)
	})
}

// An agent that hangs up while its call waits for the route's rate limit
// ends the wait; the request counts in the route's /status window like
// any other answered one.
func TestAgentHangUpDuringARateLimitWaitIsRecorded(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }
	upURL, _ := upstream(t, up)
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    rate_limit: {rps: 1, burst: 1, max_wait: 30s}
`, upURL))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("first call: %d", resp.StatusCode)
	}
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	waitFor(t, func() bool { return clock.Waiters() > 0 }) // waiting for its turn
	conn.Close()
	waitFor(t, func() bool {
		b.srv.FlushAccessLog()
		return strings.Contains(b.logs.String(), `"stopped":"agent_gone"`)
	})
	_, body := do(t, "GET", b.admin+"/status", "")
	if !strings.Contains(body, `"total_requests":2`) {
		t.Errorf("the route's window does not count the abandoned request: %s", body)
	}
}
