package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// A streamed answer that had already failed when its headers went out (an
// upstream 503 relayed as a stream) and that the upstream then cut is one
// failed request: the /status window counts it once, beside a success in
// the same window, and the failure list shows it once. Window.Fail must
// not turn the success next to it into a second failure.
func TestNewCode8AuditCutFailedStreamCountedOnce(t *testing.T) {
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		panic(http.ErrAbortHandler)
	})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1, flush_interval: 0s}
routes:
  - {name: s, match: {path_prefix: /}, upstream: %q}
`, up))
	c := client(t)
	if resp, body := get(t, c, b.base+"/ok"); resp.StatusCode != 200 {
		t.Fatalf("/ok: %d %s", resp.StatusCode, body)
	}
	resp, err := c.Post(b.base+"/cut", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want the upstream's 503 relayed as a stream", resp.StatusCode)
	}
	buf := make([]byte, 11)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	close(release)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("the cut stream read as whole")
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}) == 1 })
	waitFor(t, func() bool { return len(raRequestLines(t, b)) == 2 })
	snap := aaStatus(t, b)
	rs := snap.Routes[0]
	if rs.Requests != 2 || rs.Failures != 1 {
		t.Errorf("/status window: %d requests, %d failures; want 2 and 1 (the /ok success stays one)", rs.Requests, rs.Failures)
	}
	if len(snap.Failures) != 1 {
		t.Errorf("/status failures %+v, want the one failed request once", snap.Failures)
	}
}

// nc8DropGate is a loopback proxy in front of a real redis-server that,
// once armed, swallows the next data command (no reply: the client times
// out, as with a packet lost on a flaky link) and passes every other.
type nc8DropGate struct {
	addr    string
	armed   atomic.Bool
	dropped atomic.Int64
}

func nc8StartDropGate(t *testing.T, target string) *nc8DropGate {
	t.Helper()
	g := &nc8DropGate{}
	g.addr = redisCommandProxy(t, target, func(name string) bool {
		switch strings.ToUpper(name) {
		case "PING", "HELLO", "CLIENT", "SELECT", "AUTH", "SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE":
		default:
			if g.armed.CompareAndSwap(true, false) {
				g.dropped.Add(1)
				return false
			}
		}
		return true
	})
	return g
}

// A keyed answer the store could not record (fail_closed: Redis lost the
// Complete, then answered again) leaves its claim to end with its lease,
// as settle's contract and the outcome_unknown detail say: the agent's
// retry must not find the key free and run the call a second time.
func TestNewCode8AuditFailedRecordKeepsTheClaim(t *testing.T) {
	rs := redistest.Start(t)
	g := nc8StartDropGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Lose-Record") != "" {
			g.armed.Store(true) // the next Redis command, the Complete, is lost
		}
		up.handler(w, r)
	})
	b := startBallast(t, sfRedisState(g.addr, "fail_closed", 300*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, u))
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), "redis is reachable") })
	if resp, body := do(t, "POST", b.base+"/warm", `{}`, "Idempotency-Key", "warm"); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}
	// The warm-up's answer is recorded in the background: it must land
	// before the gate is armed for the next call's.
	waitFor(t, func() bool {
		return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 1
	})
	if resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "lost", "X-Lose-Record", "1"); resp.StatusCode != 200 {
		t.Fatalf("keyed call: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), "idempotency record not stored") })
	if g.dropped.Load() != 1 {
		t.Fatalf("the gate dropped %d commands, want the Complete", g.dropped.Load())
	}
	resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "lost", "X-Ballast-Timeout", "700ms")
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times for two keys: the retry (%d %s) ran the call again after its record was lost", n, resp.StatusCode, body)
	}
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("the retry: %d %s, want 409 (in progress until the lease ends, then outcome unknown)", resp.StatusCode, body)
	}
}

// A keyed call still running when Shutdown's grace ran out is called off
// then (agentWatch.halt): it does not settle after Shutdown stopped
// waiting for the answers being recorded (a WaitGroup Add from zero
// during a Wait), and the agent still gets an answer, 503 shutting_down,
// rather than a connection cut by the exit.
func TestNewCode8AuditSettleAfterShutdownGaveUp(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{release: make(chan struct{})}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, sfRedisState(rs.Addr(), "fail_open", 300*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, u))
	done := raSend(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "late")
	waitFor(t, func() bool { return up.calls.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_ = b.srv.Shutdown(ctx) // gives up on the call in flight
	close(up.release)
	if code := raAnswer(t, done).resp.StatusCode; code != 503 {
		t.Errorf("the call that outlived Shutdown's grace: %d, want 503 shutting_down", code)
	}
}

// nc8StreamRequest sends a POST for path over a raw connection (HTTP/1.0
// when http10) and reads the answer until its first event; gone closes
// the connection then, else the rest is read to the end. It reports what
// was read.
func nc8StreamRequest(t *testing.T, addr, path string, http10, gone bool) string {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return ""
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	proto := "HTTP/1.1"
	if http10 {
		proto = "HTTP/1.0"
	}
	fmt.Fprintf(conn, "POST %s %s\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", path, proto)
	br := bufio.NewReader(conn)
	var got strings.Builder
	for !strings.Contains(got.String(), "data: one") {
		line, err := br.ReadString('\n')
		got.WriteString(line)
		if err != nil {
			return got.String()
		}
	}
	if gone {
		return got.String()
	}
	rest, _ := io.ReadAll(br)
	return got.String() + string(rest)
}

// Every streamed answer ends exactly once with exactly one trail line,
// whichever way it ends: whole, cut by the upstream, cut by the route's
// total timeout, left by its agent, close-delimited to an HTTP/1.0 agent
// (hijacked). Many at once,
// under -race: a trail written twice, or used after it went back to the
// pool, shows as a second or a foreign line.
func TestNewCode8AuditEveryStreamOneLine(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		switch {
		case strings.Contains(r.URL.Path, "whole"):
			_, _ = io.WriteString(w, "data: two\n\n")
		case strings.Contains(r.URL.Path, "cut"):
			panic(http.ErrAbortHandler)
		default: // slow: silent until ballast lets go
			<-r.Context().Done()
		}
	})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1, flush_interval: 0s}
routes:
  - {name: t, match: {path_prefix: /t/}, upstream: %q, timeouts: {total: 300ms, connect: 100ms}}
  - {name: s, match: {path_prefix: /s/}, upstream: %q}
`, up, up))
	type req struct {
		path         string
		http10, gone bool
	}
	var reqs []req
	for i := range 6 {
		for _, h10 := range []bool{false, true} {
			reqs = append(reqs,
				req{fmt.Sprintf("/s/whole-%d-%v", i, h10), h10, false},
				req{fmt.Sprintf("/s/cut-%d-%v", i, h10), h10, false},
				req{fmt.Sprintf("/t/slow-total-%d-%v", i, h10), h10, false},
				req{fmt.Sprintf("/s/slow-gone-%d-%v", i, h10), h10, true},
			)
		}
	}
	var wg sync.WaitGroup
	for _, q := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := nc8StreamRequest(t, b.addr, q.path, q.http10, q.gone)
			if !strings.Contains(got, "data: one") {
				t.Errorf("%s: the agent got %q", q.path, got)
			}
		}()
	}
	wg.Wait()
	count := func() map[string]int {
		seen := map[string]int{}
		for _, m := range raRequestLines(t, b) {
			p, _ := m["path"].(string)
			seen[p]++
		}
		return seen
	}
	waitFor(t, func() bool { return len(count()) == len(reqs) })
	want := len(reqs)
	waitFor(t, func() bool { return len(count()) == want })
	for p, n := range count() {
		if n != 1 {
			t.Errorf("%s: %d trail lines, want 1", p, n)
		}
	}
	for _, q := range reqs {
		if count()[q.path] != 1 {
			t.Errorf("%s: no trail line", q.path)
		}
	}
}
