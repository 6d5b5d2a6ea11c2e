package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// auditSSEUpstream serves a GET event stream that sends one event and then
// stays silent until ballast closes the connection; gone is closed then.
func auditSSEUpstream(t *testing.T) (url string, gone chan struct{}) {
	gone = make(chan struct{})
	var once sync.Once
	url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "data: hello\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		once.Do(func() { close(gone) })
	})
	return url, gone
}

// auditOpenStream opens a GET event stream through ballast on a raw TCP
// connection and reads until the first event has arrived.
func auditOpenStream(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := io.WriteString(c, "GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got strings.Builder
	buf := make([]byte, 4096)
	for !strings.Contains(got.String(), "data: hello") {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("reading the stream: %v (got %q)", err, got.String())
		}
	}
	return c
}

const auditSSEYAML = `
routes:
  - name: sse
    match: {path_prefix: /}
    upstream: %s
    timeouts: {idle: 150ms, total: 2s}
`

// TestPatientStreamEndsWhenAgentLeaves: a quiet GET event stream
// outlives total while its agent listens, and its upstream connection is
// released within a few idle intervals once the agent closes.
func TestPatientStreamEndsWhenAgentLeaves(t *testing.T) {
	up, gone := auditSSEUpstream(t)
	b := startBallast(t, fmt.Sprintf(auditSSEYAML, up))
	c := auditOpenStream(t, b.addr)
	// Still open after total (2s) + several idles: patient.
	select {
	case <-gone:
		t.Fatal("the quiet stream was cut while the agent listened")
	case <-time.After(2500 * time.Millisecond):
	}
	_ = c.Close()
	select {
	case <-gone:
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream stream was not released after the agent left")
	}
}

// TestPatientStreamNotPinnedByPipelinedBytes: an agent that sends
// anything after its GET (a pipelined request, a stray byte) and then
// closes its connection must not pin a silent stream: data pending ahead
// of the FIN hides the FIN from PeerHungUp, so a standing stream ends
// when the agent sends anything at all.
func TestPatientStreamNotPinnedByPipelinedBytes(t *testing.T) {
	up, gone := auditSSEUpstream(t)
	b := startBallast(t, fmt.Sprintf(auditSSEYAML, up))
	c := auditOpenStream(t, b.addr)
	if _, err := io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	select {
	case <-gone:
	case <-time.After(3 * time.Second):
		t.Fatal("the agent closed its connection (after a pipelined request) but the silent upstream stream is still held after 20 idle intervals")
	}
}

// TestPipelinedRequestIsNotAgentGone: an agent that pipelines its
// next request while the first is being retried has not left: the first
// is retried and answered, then the second.
func TestPipelinedRequestIsNotAgentGone(t *testing.T) {
	var hits atomic.Int64
	arrived := make(chan struct{}, 4)
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		if n == 1 {
			arrived <- struct{}{}
			<-release
			w.WriteHeader(503)
			return
		}
		_, _ = io.WriteString(w, "ok"+r.URL.Path)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %s
    retry: {attempts: 3, backoff: {base: 1ms, max: 2ms}}
`, up))
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
	<-arrived
	_, _ = io.WriteString(c, "GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
	close(release)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for _, want := range []string{"ok/one", "ok/two"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading answer %s: %v", want, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("want 200 %s, got %d %q", want, resp.StatusCode, body)
		}
	}
}

// TestVaryLearnedMidFlightIsNotStoredUnderTheOldKey: an answer is judged
// against the key options its request was keyed with. A request in flight
// while another one teaches the route a Vary header must not store its
// answer under a key without that header, where a request keyed before
// the learning would find it in fallback mode: bob must never receive
// alice's answer.
func TestVaryLearnedMidFlightIsNotStoredUnderTheOldKey(t *testing.T) {
	arrived := make(chan string, 4)
	gateA, gateD := make(chan struct{}), make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		who := r.Header.Get("X-Who")
		switch r.Header.Get("X-Mode") {
		case "slow":
			arrived <- who
			<-gateA
		case "fail":
			arrived <- who
			<-gateD
			w.WriteHeader(500)
			return
		}
		w.Header().Set("Vary", "X-Who")
		w.Header().Set("Cache-Control", "max-age=3600")
		_, _ = io.WriteString(w, "who="+who)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %s
    retry: {attempts: 1}
    cache: {mode: fallback, ttl: 1h}
`, up))
	type res struct {
		code int
		body string
	}
	run := func(who, mode string) chan res {
		ch := make(chan res, 1)
		go func() {
			req, _ := http.NewRequest("GET", b.base+"/v", nil)
			req.Header.Set("X-Who", who)
			req.Header.Set("X-Mode", mode)
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				ch <- res{0, err.Error()}
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- res{resp.StatusCode, string(body)}
		}()
		return ch
	}
	a := run("alice", "slow")
	<-arrived
	d := run("bob", "fail")
	<-arrived
	// carol's answer teaches the route X-Who.
	if r := <-run("carol", "fast"); r.code != 200 || r.body != "who=carol" {
		t.Fatalf("carol: %d %s", r.code, r.body)
	}
	close(gateA)
	if r := <-a; r.code != 200 || r.body != "who=alice" {
		t.Fatalf("alice: %d %s", r.code, r.body)
	}
	close(gateD)
	r := <-d
	if strings.Contains(r.body, "alice") {
		t.Fatalf("bob (X-Who: bob) was served alice's stored answer %q (status %d): it was stored under a key built without X-Who", r.body, r.code)
	}
}

// TestShouldRetryOnStreamedServerError: a 5xx relayed as a
// stream (chunked, large) after ballast retried carries x-should-retry:
// false too.
func TestShouldRetryOnStreamedServerError(t *testing.T) {
	var hits atomic.Int64
	big := strings.Repeat("e", 100<<10)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(503)
		w.(http.Flusher).Flush() // chunked
		_, _ = io.WriteString(w, big)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %s
    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}
`, up))
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 || hits.Load() != 2 {
		t.Fatalf("want 503 after 2 attempts, got %d after %d", resp.StatusCode, hits.Load())
	}
	if len(body) != len(big) {
		t.Errorf("the streamed 5xx body was cut: %d of %d bytes", len(body), len(big))
	}
	if got := resp.Header.Get("X-Should-Retry"); got != "false" {
		t.Errorf("x-should-retry = %q, want false on a retried, streamed 5xx", got)
	}
}

// TestKeyedSlowBodyPastIdleIsOutcomeUnknown: a keyed answer whose
// chunked body stalls past idle while it is read ahead is a 502. The call
// ran upstream (it answered), so the agent's retry with the same key reads
// outcome_unknown instead of running it again; on a route whose calls are
// declared idempotent the key is freed and the retry runs.
func TestKeyedSlowBodyPastIdleIsOutcomeUnknown(t *testing.T) {
	for _, idempotent := range []bool{false, true} {
		t.Run(fmt.Sprintf("idempotent=%v", idempotent), func(t *testing.T) {
			var hits atomic.Int64
			stall := make(chan struct{})
			t.Cleanup(func() { close(stall) })
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				n := hits.Add(1)
				w.WriteHeader(200)
				_, _ = io.WriteString(w, strings.Repeat("a", 1000))
				w.(http.Flusher).Flush()
				if n == 1 {
					select {
					case <-stall:
					case <-r.Context().Done():
					}
					return
				}
				_, _ = io.WriteString(w, "end")
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %s
    timeouts: {idle: 200ms, total: 5s}
    retry: {attempts: 1}
    idempotency: {mode: header, idempotent: %v}
`, up, idempotent))
			resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k1")
			if resp.StatusCode != 502 {
				t.Fatalf("a keyed body broken off by idle: want 502, got %d (%d bytes)", resp.StatusCode, len(body))
			}
			resp, body = do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "k1")
			if idempotent {
				if resp.StatusCode != 200 || len(body) != 1003 || hits.Load() != 2 {
					t.Fatalf("retry: want 200 with 1003 bytes after 2 upstream calls, got %d, %d bytes, %d calls", resp.StatusCode, len(body), hits.Load())
				}
				return
			}
			if resp.StatusCode != 409 || !strings.Contains(body, "outcome_unknown") || hits.Load() != 1 {
				t.Fatalf("retry: want 409 outcome_unknown after 1 upstream call, got %d %s, %d calls", resp.StatusCode, body, hits.Load())
			}
		})
	}
}

// TestReloadMidFlightKeepsRequest: a reload that drops the
// upstream of a running request lets that request finish, and the new
// upstream serves the next.
func TestReloadMidFlightKeepsRequest(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	upA, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-release
		}
		w.Header().Set("Content-Length", "1")
		_, _ = io.WriteString(w, "A")
	})
	upB, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "B") })
	b := startBallast(t, routeYAML("a", upA))
	// A warm idle connection to A, then a slow request on another.
	if _, body := do(t, "GET", b.base+"/warm", ""); body != "A" {
		t.Fatalf("warm: %q", body)
	}
	done := make(chan string, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(b.base + "/slow")
		if err != nil {
			done <- err.Error()
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}()
	<-arrived
	if code, body := opsReload(t, b, routeYAML("b", upB)); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	close(release)
	if got := <-done; got != "200 A" {
		t.Fatalf("the request running on the dropped upstream: got %q, want 200 A", got)
	}
	if _, body := do(t, "GET", b.base+"/next", ""); body != "B" {
		t.Fatalf("after reload: %q", body)
	}
}

// TestAllPooledDeadAndDialFails: when every pooled connection
// has died and the upstream no longer listens, a POST gets a prompt 502,
// not a hang or a loop.
func TestAllPooledDeadAndDialFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	var arrivals sync.WaitGroup
	arrivals.Add(3)
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			arrivals.Done()
			<-hold
		}
		_, _ = io.WriteString(w, "ok")
	})}
	go func() { _ = s.Serve(ln) }()
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: http://%s
    retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}
    timeouts: {connect: 500ms, total: 5s}
`, ln.Addr()))
	// Three concurrent requests leave three pooled connections.
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = (&http.Client{}).Get(b.base + "/hold") }()
	}
	arrivals.Wait()
	close(hold)
	wg.Wait()
	_ = s.Close() // closes the listener and every connection: the pool is all dead
	start := time.Now()
	resp, body := do(t, "POST", b.base+"/x", "{}")
	if resp.StatusCode != 502 {
		t.Fatalf("want 502, got %d %s", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the 502 took %v", d)
	}
}
