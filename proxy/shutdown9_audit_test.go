package proxy_test

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
)

// The shutdown audit, round 9: connections fasthttp's own drain does not
// count as idle, async jobs and prefetching streams at the grace's end.

// s9Dial opens a raw agent connection to addr, closed with the test.
func s9Dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, bufio.NewReader(c)
}

// s9Shutdown runs Shutdown with a drain of d and reports how long it took.
func s9Shutdown(t *testing.T, b *ballast, d time.Duration) (error, time.Duration) {
	t.Helper()
	start := time.Now()
	select {
	case err := <-saShutdown(b, d):
		return err, time.Since(start)
	case <-time.After(d + 5*time.Second):
		t.Fatalf("Shutdown did not return within %v of a %v drain", d+5*time.Second, d)
		return nil, 0
	}
}

// s9Ends reports how a raw connection ends: nil for a clean close (EOF).
func s9Ends(c net.Conn, br *bufio.Reader, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := br.ReadByte()
	if err == nil {
		return fmt.Errorf("unexpected byte %q", b)
	}
	if strings.Contains(err.Error(), "EOF") {
		return nil
	}
	return err
}

// An agent connection that was accepted but has sent nothing yet (an
// HTTP client's spare connection, dialled while another became free and
// parked unused in its pool; or one accepted just before the listener
// closed) does not hold the drain up: fasthttp counts a new connection as
// idle only 5s after it opened, so Shutdown with nothing in flight waited
// up to 5s for it. Like nginx, ballast closes it at once.
func TestShutdown9Audit_UnusedConnectionDoesNotHoldTheDrain(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	used, ubr := s9Dial(t, b.addr)
	fmt.Fprint(used, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(ubr, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("warm-up: %v %v", resp, err)
	}
	resp.Body.Close()
	spare, sbr := s9Dial(t, b.addr)
	// The spare connection must have reached fasthttp's bookkeeping: a
	// request on another connection after it was accepted proves the
	// accept loop took it.
	other, obr := s9Dial(t, b.addr)
	fmt.Fprint(other, "GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if resp, err := http.ReadResponse(obr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("second connection: %v %v", resp, err)
	}
	err, took := s9Shutdown(t, b, 20*time.Second)
	if err != nil || took > time.Second {
		t.Errorf("Shutdown with an unused connection open: %v after %v, want nil at once", err, took)
	}
	if err := s9Ends(spare, sbr, 2*time.Second); err != nil {
		t.Errorf("the unused connection: %v, want a clean close", err)
	}
	if err := s9Ends(used, ubr, 2*time.Second); err != nil {
		t.Errorf("the idle keep-alive connection: %v, want a clean close", err)
	}
}

// The admin listener likewise: a scraper's or probe's unused spare
// connection does not hold Shutdown up.
func TestShutdown9Audit_UnusedAdminConnectionDoesNotHoldTheDrain(t *testing.T) {
	b := startBallast(t, "routes: [{name: r, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1'}]\n")
	admin := strings.TrimPrefix(b.admin, "http://")
	spare, sbr := s9Dial(t, admin)
	other, obr := s9Dial(t, admin)
	fmt.Fprint(other, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(obr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("admin: %v %v", resp, err)
	}
	err, took := s9Shutdown(t, b, 20*time.Second)
	if err != nil || took > time.Second {
		t.Errorf("Shutdown with an unused admin connection open: %v after %v, want nil at once", err, took)
	}
	if err := s9Ends(spare, sbr, 2*time.Second); err != nil {
		t.Errorf("the unused admin connection: %v, want a clean close", err)
	}
}

// A request half sent when the drain begins, on a new connection or on a
// keep-alive one, is in flight: Shutdown does not close its connection
// under it, and when the rest arrives it is answered, with Connection:
// close, and the drain then ends at once.
func TestShutdown9Audit_HalfSentRequestIsAnswered(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok "+r.URL.Path) })
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	fresh, fbr := s9Dial(t, b.addr)
	fmt.Fprint(fresh, "GET /fresh HT")
	kept, kbr := s9Dial(t, b.addr)
	fmt.Fprint(kept, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(kbr, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	resp.Body.Close()
	fmt.Fprint(kept, "GET /second HTTP/1.1\r\nHo")

	done := saShutdown(b, 20*time.Second)
	// The drain has begun when /readyz fails.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Second)
	for {
		resp, err := http.Get(b.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		if err != nil || resp.StatusCode == 503 {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("/readyz never failed")
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with two requests half sent", err)
	default:
	}
	finished := time.Now()
	fmt.Fprint(fresh, "TP/1.1\r\nHost: x\r\n\r\n")
	fmt.Fprint(kept, "st: x\r\n\r\n")
	for _, c := range []struct {
		name string
		conn net.Conn
		br   *bufio.Reader
	}{{"/fresh", fresh, fbr}, {"/second", kept, kbr}} {
		_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Errorf("%s, half sent at the drain: %v, want its answer\n%s", c.name, err, b.logs.String())
			continue
		}
		body := make([]byte, 64)
		n, _ := resp.Body.Read(body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body[:n]) != "ok "+c.name || !resp.Close {
			t.Errorf("%s, half sent at the drain: %d %q close=%v, want 200 with Connection: close", c.name, resp.StatusCode, body[:n], resp.Close)
		}
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if took := time.Since(finished); took > time.Second {
			t.Errorf("the drain ended %v after the last answer, want at once", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the half-sent requests were answered")
	}
}

// s9HangingUpstream is a raw loopback upstream that reads a request and
// answers with head (nothing when empty), then says nothing more until
// ballast closes the connection; closed receives the request's path then.
func s9HangingUpstream(t *testing.T, head string) (url string, arrived, closed <-chan string) {
	t.Helper()
	in, out := make(chan string, 8), make(chan string, 8)
	addr := serveConns(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		in <- req.URL.Path
		if head != "" {
			_, _ = io.WriteString(c, head)
		}
		_, _ = io.Copy(io.Discard, c) // silent until ballast hangs up
		out <- req.URL.Path
	})
	return "http://" + addr, in, out
}

func s9Recv(t *testing.T, ch <-chan string, d time.Duration, what string) string {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: not within %v", what, d)
		return ""
	}
}

// An async job whose upstream never answers, still running when the
// drain runs out of time, is called off: its upstream connection is
// closed, Shutdown returns about a second after its deadline at most, and
// the job's failure is logged, saying why, before Shutdown returns — not
// left running past it (and past the state store's close) until its
// route's total deadline.
func TestShutdown9Audit_RunningJobCalledOffAtDeadline(t *testing.T) {
	up, arrived, closed := s9HangingUpstream(t, "")
	b := startBallast(t, fmt.Sprintf(`routes:
  - name: job
    match: {path_prefix: /}
    upstream: %q
    async: {enabled: true}
    retry: {attempts: 1}
    timeouts: {per_try: 60s, total: 120s}
`, up))
	req, _ := http.NewRequest("POST", b.base+"/work", strings.NewReader("{}"))
	req.Header.Set("Prefer", "respond-async")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("submit: %d", resp.StatusCode)
	}
	s9Recv(t, arrived, 5*time.Second, "the job reaching the upstream")
	err, took := s9Shutdown(t, b, 300*time.Millisecond)
	if err == nil || took > 2*time.Second {
		t.Errorf("Shutdown with a job that never ends: %v after %v, want the deadline's error within about a second of it", err, took)
	}
	s9Recv(t, closed, 2*time.Second, "the job's upstream connection closed")
	logs := b.logs.String()
	if !strings.Contains(logs, `"msg":"async job failed"`) || !strings.Contains(logs, "shut down") {
		t.Errorf("the job called off at shutdown was not logged as failed, saying why:\n%s", logs)
	}
}

// A keyed request whose upstream answered its headers and then hangs
// while ballast reads the answer ahead to store it (bufferGuarded's
// prefetch) is called off when the drain runs out of time, like a
// stream: the agent gets a whole answer of its own (503 shutting_down,
// Connection: close), not a cut connection; the request's line says
// "stopped":"shutting_down"; the upstream connection is closed; and
// Shutdown returns about a second after its deadline at most.
func TestShutdown9Audit_KeyedPrefetchCalledOffAtDeadline(t *testing.T) {
	up, arrived, closed := s9HangingUpstream(t, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n")
	b := startBallast(t, fmt.Sprintf(`routes:
  - name: pay
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: header}
    timeouts: {per_try: 60s, idle: 60s, total: 120s}
`, up))
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "POST /charge HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	s9Recv(t, arrived, 5*time.Second, "the call reaching the upstream")
	err, took := s9Shutdown(t, b, 300*time.Millisecond)
	if err == nil || took > 2*time.Second {
		t.Errorf("Shutdown with a prefetch that never ends: %v after %v, want the deadline's error within about a second of it", err, took)
	}
	s9Recv(t, closed, 2*time.Second, "the call's upstream connection closed")
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the agent of a keyed call cut at shutdown: %v, want an answer", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || !strings.Contains(string(body), "shutting_down") || !resp.Close {
		t.Errorf("the agent of a keyed call cut at shutdown: %d %s close=%v, want 503 shutting_down with Connection: close", resp.StatusCode, body, resp.Close)
	}
	var line string
	for _, l := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(l, `"msg":"request"`) && strings.Contains(l, `"path":"/charge"`) {
			line = l
		}
	}
	if !strings.Contains(line, `"stopped":"shutting_down"`) {
		t.Errorf("the keyed call's line: %q, want \"stopped\":\"shutting_down\"\n%s", line, b.logs.String())
	}
}

// A plain call whose upstream has not answered when the drain runs out of
// time is called off like a stream: the agent is answered 503
// shutting_down with Connection: close (not left to a connection cut by
// the exit), its line says "stopped":"shutting_down", the upstream
// connection is closed, and Shutdown returns about a second after its
// deadline at most.
func TestShutdown9Audit_PlainCallCalledOffAtDeadline(t *testing.T) {
	up, arrived, closed := s9HangingUpstream(t, "")
	b := startBallast(t, fmt.Sprintf(`routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    timeouts: {per_try: 60s, total: 120s}
`, up))
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	s9Recv(t, arrived, 5*time.Second, "the call reaching the upstream")
	err, took := s9Shutdown(t, b, 300*time.Millisecond)
	if err == nil || took > 2*time.Second {
		t.Errorf("Shutdown with a call that never ends: %v after %v, want the deadline's error within about a second of it", err, took)
	}
	s9Recv(t, closed, 2*time.Second, "the call's upstream connection closed")
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the agent of a call cut at shutdown: %v, want an answer", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || !strings.Contains(string(body), "shutting_down") || !resp.Close {
		t.Errorf("the agent of a call cut at shutdown: %d %s close=%v, want 503 shutting_down with Connection: close", resp.StatusCode, body, resp.Close)
	}
	logs := b.logs.String()
	if !strings.Contains(logs, `"path":"/slow"`) || !strings.Contains(logs, `"stopped":"shutting_down"`) {
		t.Errorf("the call's line, written before Shutdown returned, should say \"stopped\":\"shutting_down\":\n%s", logs)
	}
}

// An async job waiting out an upstream's Retry-After when the drain runs
// out of time is called off too: its wait ends, it sends no retry, and
// its failure is logged before Shutdown returns.
func TestShutdown9Audit_JobInBackoffCalledOffAtDeadline(t *testing.T) {
	var calls atomic.Int32
	first := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Retry-After", "100")
		w.WriteHeader(http.StatusServiceUnavailable)
		select {
		case first <- struct{}{}:
		default:
		}
	})
	b := startBallast(t, fmt.Sprintf(`routes:
  - name: job
    match: {path_prefix: /}
    upstream: %q
    async: {enabled: true}
    retry: {attempts: 3, on: [503], max_retry_after: 200s, unsafe_methods: true}
    timeouts: {total: 300s}
`, up))
	req, _ := http.NewRequest("POST", b.base+"/work", strings.NewReader("{}"))
	req.Header.Set("Prefer", "respond-async")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("the job never reached the upstream")
	}
	err, took := s9Shutdown(t, b, 300*time.Millisecond)
	if err == nil || took > 2*time.Second {
		t.Errorf("Shutdown with a job waiting 100s: %v after %v, want the deadline's error within about a second of it", err, took)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("the job called off sent %d attempts, want 1", n)
	}
	if logs := b.logs.String(); !strings.Contains(logs, `"msg":"async job failed"`) || !strings.Contains(logs, "shut down") {
		t.Errorf("the job called off in its wait was not logged as failed, saying why:\n%s", logs)
	}
}
