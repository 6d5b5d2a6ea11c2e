package proxy_test

import (
	"bufio"
	"context"
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

// saResult is what an agent got for one request.
type saResult struct {
	status int
	body   string
	err    error
	at     time.Time
}

// saSend sends a request from a goroutine; the result arrives on the
// returned channel.
func saSend(c *http.Client, method, url string, headers ...string) <-chan saResult {
	out := make(chan saResult, 1)
	go func() {
		req, err := http.NewRequest(method, url, strings.NewReader(`{"n":1}`))
		if err != nil {
			out <- saResult{err: err, at: time.Now()}
			return
		}
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			out <- saResult{err: err, at: time.Now()}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- saResult{status: resp.StatusCode, body: string(b), err: err, at: time.Now()}
	}()
	return out
}

// saWithin waits for a result for at most d.
func saWithin(t *testing.T, ch <-chan saResult, d time.Duration, what string) saResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(d):
		t.Fatalf("%s: no answer within %v", what, d)
		return saResult{}
	}
}

// saShutdown starts b's Shutdown with timeout and returns when it ended.
func saShutdown(b *ballast, timeout time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		done <- b.srv.Shutdown(ctx)
	}()
	return done
}

// A request that waits — for a backoff, an upstream's Retry-After, its
// rate-limit turn or a concurrency slot — when the drain begins has sent
// nothing upstream for this attempt: it is answered 503 shutting_down at
// once (docs/errors.md#shutting_down), so the agent can send it elsewhere,
// and it does not hold the drain up. The clock is fake: the waits would
// last minutes.
func TestShutdownAudit_WaitsAnsweredAtDrain(t *testing.T) {
	tests := []struct {
		name string
		// route is the route's YAML policy (after upstream), up the
		// upstream's behaviour.
		route string
		up    func(w http.ResponseWriter, r *http.Request, release <-chan struct{})
		// holder: a first request must hold the slot or the token first.
		holder bool
	}{
		{
			name:  "backoff",
			route: "retry: {attempts: 3, on: [503], backoff: {base: 60s, max: 60s}}, timeouts: {total: 300s}",
			up: func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				w.WriteHeader(http.StatusServiceUnavailable)
			},
		},
		{
			name:  "retry-after",
			route: "retry: {attempts: 3, on: [429], max_retry_after: 120s}, timeouts: {total: 300s}",
			up: func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				w.Header().Set("Retry-After", "90")
				w.WriteHeader(http.StatusTooManyRequests)
			},
		},
		{
			name:   "rate-limit turn",
			route:  "rate_limit: {rps: 0.01, burst: 1, max_wait: 200s}, timeouts: {total: 300s}",
			holder: true,
			up: func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				io.WriteString(w, "ok")
			},
		},
		{
			name:   "bulkhead slot",
			route:  "concurrency: {max: 1, queue: 4, max_wait: 200s}, timeouts: {total: 300s}",
			holder: true,
			up: func(w http.ResponseWriter, r *http.Request, release <-chan struct{}) {
				if r.URL.Path == "/hold" {
					<-release
				}
				io.WriteString(w, "ok")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			var released atomic.Bool
			free := func() {
				if released.CompareAndSwap(false, true) {
					close(release)
				}
			}
			defer free()
			var calls atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				tt.up(w, r, release)
			})
			clock := policy.NewFakeClock(time.Now())
			b := startBallastClock(t, clock, fmt.Sprintf("routes: [{name: w, match: {path_prefix: /}, upstream: %q, %s}]\n", up, tt.route))
			c := client(t)
			var hold <-chan saResult
			if tt.holder {
				hold = saSend(c, http.MethodGet, b.base+"/hold")
				if tt.name == "rate-limit turn" {
					if r := saWithin(t, hold, 5*time.Second, "the request that takes the token"); r.status != 200 {
						t.Fatalf("holder: %d %s %v", r.status, r.body, r.err)
					}
					hold = nil
				} else {
					waitFor(t, func() bool { return calls.Load() == 1 })
				}
			}
			before := clock.Waiters()
			waiting := saSend(c, http.MethodGet, b.base+"/wait")
			switch tt.name {
			case "bulkhead slot":
				waitFor(t, func() bool {
					return b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "w"}) == 1
				})
			default:
				waitFor(t, func() bool { return clock.Waiters() > before })
			}
			start := time.Now()
			shut := saShutdown(b, 10*time.Second)
			r := saWithin(t, waiting, 5*time.Second, "the waiting request after the drain began")
			if r.err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, `"shutting_down"`) {
				t.Errorf("waiting request at drain: %d %q %v, want 503 shutting_down", r.status, r.body, r.err)
			}
			if d := r.at.Sub(start); d > 2*time.Second {
				t.Errorf("the waiting request was answered %v after the drain began, want at once", d)
			}
			if hold != nil {
				select {
				case err := <-shut:
					t.Errorf("the drain ended (%v) while a request still held its slot", err)
				default:
				}
				free()
				if hr := saWithin(t, hold, 5*time.Second, "the request holding the slot"); hr.status != 200 || hr.body != "ok" {
					t.Errorf("in-flight request during drain: %d %q %v", hr.status, hr.body, hr.err)
				}
			}
			select {
			case err := <-shut:
				if err != nil {
					t.Errorf("Shutdown: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the drain did not end once nothing was in flight")
			}
		})
	}
}

// A keyed call (memory store) running when the drain begins finishes and
// is answered, and a duplicate already attached to it gets the same answer
// as a replay, not a second upstream call. Each answer given during the
// drain carries Connection: close and the server then closes the
// connection cleanly (EOF, not a reset); a keep-alive connection idle when
// the drain begins is closed at once, cleanly too.
func TestShutdownAudit_KeyedCallDrainsOnMemoryStore(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.URL.Path == "/pay" {
			<-release
		}
		fmt.Fprintf(w, `{"call":%d}`, n)
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}]\n", up))

	dial := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn, bufio.NewReader(conn)
	}
	readAnswer := func(br *bufio.Reader) <-chan saResult {
		out := make(chan saResult, 1)
		go func() {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				out <- saResult{err: err}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			out <- saResult{status: resp.StatusCode, body: string(b) + "|close=" + fmt.Sprint(resp.Close) + "|replayed=" + resp.Header.Get("Idempotent-Replayed")}
		}()
		return out
	}
	body := `{"n":1}`
	keyed := "POST /pay HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n" + body

	// A keep-alive connection that is idle when the drain begins.
	idle, ir := dial()
	fmt.Fprintf(idle, "GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
	if r := <-readAnswer(ir); r.status != 200 {
		t.Fatalf("warm-up: %+v", r)
	}

	first, fr := dial()
	io.WriteString(first, keyed)
	firstGot := readAnswer(fr)
	waitFor(t, func() bool { return calls.Load() == 2 })
	dup, dr := dial()
	io.WriteString(dup, keyed)
	dupGot := readAnswer(dr)
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})

	shut := saShutdown(b, 10*time.Second)
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := ir.ReadByte(); err != io.EOF {
		t.Errorf("a keep-alive connection idle at drain: read %v %v, want EOF (closed cleanly)", n, err)
	}
	close(release)
	if r := saWithin(t, firstGot, 5*time.Second, "the keyed call in flight"); r.err != nil || r.status != 200 || r.body != `{"call":2}|close=true|replayed=` {
		t.Errorf("keyed call in flight at drain: %d %q %v, want 200 with Connection: close", r.status, r.body, r.err)
	}
	if r := saWithin(t, dupGot, 5*time.Second, "the attached duplicate"); r.err != nil || r.status != 200 || r.body != `{"call":2}|close=true|replayed=true` {
		t.Errorf("attached duplicate at drain: %d %q %v, want the first call's answer, replayed, with Connection: close", r.status, r.body, r.err)
	}
	for name, br := range map[string]*bufio.Reader{"first": fr, "duplicate": dr} {
		conn := map[string]net.Conn{"first": first, "duplicate": dup}[name]
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := br.ReadByte(); err != io.EOF {
			t.Errorf("%s: after Connection: close the server should close the connection cleanly: read %v %v, want EOF", name, n, err)
		}
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("upstream calls: %d, want 2 (warm-up and one keyed call)", n)
	}
}
