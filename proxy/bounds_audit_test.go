package proxy_test

// Resource-bounds and denial-of-service audit. Every structure that grows
// with outside input must have a bound, and reaching it must give a clear
// answer (problem+json, a metric, a log line), never unbounded memory, a
// stuck goroutine, a panic or a silent drop. Each probe asserts the correct
// behaviour; the four bugs the audit found are fixed.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// baEventually polls cond until it holds or d passes, and reports whether
// it held. It waits on a short timer between polls: the condition, not the
// timer, decides.
func baEventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		tm := time.NewTimer(2 * time.Millisecond)
		<-tm.C
	}
	return true
}

// baStacks returns the stacks of the goroutines that do work, leaving out
// fasthttp's idle workers: its worker pool keeps a goroutine per recently
// served connection for reuse (MaxIdleWorkerDuration, 10s), a bounded
// pool, not something a request left behind.
func baStacks() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		head, rest, _ := strings.Cut(g, "\n")
		if strings.Contains(head, "[chan receive") && strings.HasPrefix(rest, "github.com/valyala/fasthttp.(*workerPool).workerFunc") {
			continue
		}
		out = append(out, g)
	}
	return out
}

// baGoroutines counts baStacks once the count has stopped falling for a
// moment (goroutines of earlier tests may still be ending).
func baGoroutines() int {
	n := len(baStacks())
	for range 50 {
		tm := time.NewTimer(2 * time.Millisecond)
		<-tm.C
		m := len(baStacks())
		if m >= n {
			return m
		}
		n = m
	}
	return n
}

// baSettle fails t when the goroutine count (baStacks) does not come back
// to at most base+slack within 2s: something was left behind.
func baSettle(t *testing.T, what string, base, slack int) {
	t.Helper()
	if baEventually(2*time.Second, func() bool { return len(baStacks()) <= base+slack }) {
		return
	}
	all := baStacks()
	var ours []string
	for _, g := range all {
		if (strings.Contains(g, "ballast-proxy/ballast/") || strings.Contains(g, "valyala/fasthttp")) && !strings.Contains(g, "_test.go") {
			ours = append(ours, g)
		}
	}
	if len(ours) > 8 {
		ours = ours[len(ours)-8:]
	}
	t.Errorf("%s: %d goroutines remain, want at most %d (baseline %d + %d); some of ballast's:\n%s",
		what, len(all), base+slack, base, slack, strings.Join(ours, "\n\n"))
}

// baHeapInuse is HeapInuse after a collection.
func baHeapInuse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// baNoKeepAlive is an agent client that leaves no idle connection (and so
// no goroutine on either side) behind.
func baNoKeepAlive(timeout time.Duration) *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}, Timeout: timeout}
}

// baDo sends one request with c and returns the response and body, or the
// error.
func baDo(c *http.Client, method, url, body string, headers ...string) (*http.Response, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return nil, "", err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// baProblem checks that resp is ballast's problem+json with status and
// reason.
func baProblem(t *testing.T, resp *http.Response, body string, status int, reason string) {
	t.Helper()
	if resp.StatusCode != status || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("got %d %q %s; want %d problem+json (%s)", resp.StatusCode, resp.Header.Get("Content-Type"), body, status, reason)
	}
	var p struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(body), &p); err != nil || p.Reason != reason {
		t.Fatalf("problem reason %q (%v) in %s; want %q", p.Reason, err, body, reason)
	}
}

// baEndless is an upstream handler that writes chunk (as Content-Type ct)
// until the connection breaks, counting what it wrote; gone is closed when
// it stops.
type baEndless struct {
	sent atomic.Int64
	gone chan struct{}
	once sync.Once
}

func baEndlessUpstream(t *testing.T, ct string, chunk []byte) (*baEndless, string) {
	e := &baEndless{gone: make(chan struct{})}
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		defer e.once.Do(func() { close(e.gone) })
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Connection", "close")
		f := w.(http.Flusher)
		for {
			n, err := w.Write(chunk)
			e.sent.Add(int64(n))
			if err != nil {
				return
			}
			f.Flush()
			select {
			case <-r.Context().Done():
				return
			default:
			}
		}
	})
	return e, up
}

func (e *baEndless) stopped(d time.Duration) bool {
	select {
	case <-e.gone:
		return true
	case <-time.After(d):
		return false
	}
}

// --- slow agents --------------------------------------------------------------

// An agent that asks for a large streamed answer and never reads it must
// not hold the upstream connection and the route's concurrency slot
// beyond timeouts.total ("total bounds the whole request ... until the
// last byte of the response body has been relayed").
func TestBoundsAudit_AgentNeverReadsStreamedAnswer(t *testing.T) {
	e, up := baEndlessUpstream(t, "application/octet-stream", make([]byte, 64<<10))
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: big
    match: {path_prefix: /}
    upstream: %q
    timeouts: {connect: 100ms, per_try: 500ms, idle: 300ms, total: 500ms}
    concurrency: {max: 1, queue: 0}
`, up))
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	if _, err := io.WriteString(conn, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// The agent reads nothing. After total (500ms), ballast must have let
	// go of the upstream and of the slot.
	start := time.Now()
	released := e.stopped(2500 * time.Millisecond)
	// The slot is freed just after the upstream connection is closed.
	inflight := b.metric("ballast_concurrency_inflight", map[string]string{"route": "big"})
	for limit := time.Now().Add(time.Second); inflight != 0 && time.Now().Before(limit); {
		runtime.Gosched()
		inflight = b.metric("ballast_concurrency_inflight", map[string]string{"route": "big"})
	}
	if !released || inflight != 0 {
		t.Errorf("%v after the request's 500ms total: upstream still held=%v (%d bytes sent), concurrency inflight=%v; want the stream cut at the deadline and the slot free",
			time.Since(start).Round(time.Millisecond), !released, e.sent.Load(), inflight)
	}
}

// A request body trickling in is bounded: the request line, headers and
// the first 8KiB of body (read before routing) by server.read_timeout,
// the rest by the request's own deadline (timeouts.total). Either way the
// agent gets 408 soon after, not the old 5-minute read timeout, and
// nothing is forwarded.
func TestBoundsAudit_TricklingRequestBodyBoundedByTotal(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); _, _ = io.WriteString(w, "ok") })
	for _, tc := range []struct {
		name, server  string
		contentLength int
		sendAtOnce    int
	}{
		{name: "small body, bounded by server.read_timeout", server: "server: {read_timeout: 300ms}", contentLength: 1000},
		{name: "large body, bounded by timeouts.total", contentLength: 20000, sendAtOnce: 9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBallast(t, fmt.Sprintf(`
%s
routes:
  - {name: slow, match: {path_prefix: /}, upstream: %q, timeouts: {connect: 100ms, per_try: 300ms, total: 300ms}}
`, tc.server, up))
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			head := fmt.Sprintf("POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", tc.contentLength)
			if _, err := io.WriteString(conn, head+strings.Repeat("x", tc.sendAtOnce)); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for range tc.contentLength - tc.sendAtOnce {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if _, err := conn.Write([]byte{'x'}); err != nil {
						return
					}
				}
			}()
			start := time.Now()
			_ = conn.SetReadDeadline(start.Add(2 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer %v after the request's 300ms while its body trickles in: %v", time.Since(start).Round(time.Millisecond), err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 408 {
				t.Errorf("status %d after a trickling body; want 408", resp.StatusCode)
			}
			if hits.Load() != 0 {
				t.Errorf("a request whose body never arrived was forwarded %d times", hits.Load())
			}
		})
	}
}

// Many idle keep-alive connections and slowloris connections (a header
// block that never ends) cost a bounded amount each, do not starve other
// agents, and leave nothing behind once closed.
func TestBoundsAudit_IdleAndSlowlorisConnections(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	c := baNoKeepAlive(5 * time.Second)
	if resp, body, err := baDo(c, "GET", b.base+"/warm", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("warm-up: %v %v %s", resp, err, body)
	}
	base := baGoroutines()
	heap0 := baHeapInuse()
	const n = 200
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i := range n {
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if i%2 == 1 { // slowloris: a header block that never ends
			if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "+strings.Repeat("a", 1000)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !baEventually(2*time.Second, func() bool { return len(baStacks()) >= base+n }) {
		t.Logf("only %d goroutines for %d connections", len(baStacks())-base, n)
	}
	perConn := (baHeapInuse() - heap0) / n
	if perConn > 64<<10 {
		t.Errorf("each idle or slowloris connection holds %d bytes of heap; want at most 64KiB", perConn)
	}
	if resp, body, err := baDo(c, "GET", b.base+"/x", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("with %d idle and slowloris connections open, a normal request got %v %v %s", n, resp, err, body)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	conns = conns[:0]
	baSettle(t, "after the idle and slowloris connections closed", base, 5)
}

// --- the decision trail when its writer blocks ---------------------------------

// baBlockingWriter blocks every Write until release is closed: a stderr
// pipe nobody drains (a stopped log shipper, a full container log pipe).
type baBlockingWriter struct {
	release chan struct{}
	calls   atomic.Int64
}

func (w *baBlockingWriter) Write(p []byte) (int, error) {
	w.calls.Add(1)
	<-w.release
	return len(p), nil
}

// A stalled log writer must not stall requests: the decision trail is
// bounded (64KiB), and lines beyond it must be dropped (and counted), not
// written under the request's feet.
func TestBoundsAudit_StalledAccessLogDoesNotStallRequests(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval string
		requests int
	}{
		{name: "unbuffered", interval: "0s", requests: 5},
		{name: "default 1s batching", interval: "1s", requests: 600}, // > 64KiB of lines
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
			w := &baBlockingWriter{release: make(chan struct{})}
			b := startBallastWith(t, nil, w, fmt.Sprintf(`
log: {flush_interval: %s}
routes: [{name: r, match: {path_prefix: /}, upstream: %q}]
`, tc.interval, up))
			t.Cleanup(func() { close(w.release) }) // before ballast's shutdown
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: time.Second}
			defer c.CloseIdleConnections()
			for i := range tc.requests {
				resp, _, err := baDo(c, "GET", b.base+"/x", "")
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("request %d with the log writer blocked (%d writes waiting): %v; want 200 at once", i, w.calls.Load(), err)
				}
			}
			if got := b.metric("ballast_log_dropped_lines_total", nil); got < 0 {
				t.Error("no ballast_log_dropped_lines_total series: drops would go unseen")
			}
		})
	}
}

// --- state: idempotency records, claims and waiters ----------------------------

// Claims in flight are bounded by state.max_records: one more gets 503
// state_unavailable with Retry-After (visible, never a silent drop), and
// completed records are evicted least recently used, so a key forgotten
// that way runs again (docs/config.md, state.max_records).
func TestBoundsAudit_IdempotencyRecordsBounded(t *testing.T) {
	release := make(chan struct{})
	var hits, inflight atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/hold" {
			inflight.Add(1)
			defer inflight.Add(-1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "done "+r.Header.Get("Idempotency-Key"))
	})
	b := startBallast(t, fmt.Sprintf(`
state: {max_records: 2}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, up))
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	c := baNoKeepAlive(5 * time.Second)
	var wg sync.WaitGroup
	for _, k := range []string{"k1", "k2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = baDo(c, "POST", b.base+"/hold", "x", "Idempotency-Key", k)
		}()
	}
	if !baEventually(2*time.Second, func() bool { return inflight.Load() == 2 }) {
		t.Fatalf("%d keyed calls in flight, want 2", inflight.Load())
	}
	resp, body, err := baDo(c, "POST", b.base+"/hold", "x", "Idempotency-Key", "k3")
	if err != nil {
		t.Fatal(err)
	}
	baProblem(t, resp, body, 503, "state_unavailable")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("the refusal at max_records has no Retry-After")
	}
	close(release)
	released = true
	wg.Wait()

	// Completed records: an LRU of max_records.
	for _, k := range []string{"a", "b", "c"} {
		if resp, body, err := baDo(c, "POST", b.base+"/done", "x", "Idempotency-Key", k); err != nil || resp.StatusCode != 200 {
			t.Fatalf("key %s: %v %v %s", k, resp, err, body)
		}
	}
	before := hits.Load()
	resp, _, err = baDo(c, "POST", b.base+"/done", "x", "Idempotency-Key", "c")
	if err != nil || resp.Header.Get("Idempotent-Replayed") != "true" || hits.Load() != before {
		t.Fatalf("the most recent key was not replayed: %v %v", resp, err)
	}
	resp, _, err = baDo(c, "POST", b.base+"/done", "x", "Idempotency-Key", "a")
	if err != nil || resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") == "true" || hits.Load() != before+1 {
		t.Fatalf("the evicted key a: %v %v, hits %d→%d; want it to run again", resp, err, before, hits.Load())
	}
}

// Many duplicates attached to one call in flight: each waits within its
// own deadline, all get the one answer, and no waiter is left behind.
func TestBoundsAudit_ManyAttachedWaiters(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Connection", "close")
		if r.URL.Path != "/warm" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "the one answer")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {per_try: 5s, total: 5s}}
`, up))
	c := baNoKeepAlive(5 * time.Second)
	if resp, _, err := baDo(c, "POST", b.base+"/warm", "x"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("warm-up: %v %v", resp, err)
	}
	base := baGoroutines()
	const n = 64
	type result struct {
		status   int
		body     string
		replayed bool
		err      error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			resp, body, err := baDo(c, "POST", b.base+"/k", "same", "Idempotency-Key", "one-key")
			if err != nil {
				results <- result{err: err}
				return
			}
			results <- result{status: resp.StatusCode, body: body, replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
		}()
	}
	attached := func() float64 {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "r", "result": "attached"})
	}
	ok := baEventually(3*time.Second, func() bool { return attached() >= n-1 })
	close(release)
	if !ok {
		t.Fatalf("attached = %v, want %d", attached(), n-1)
	}
	replays := 0
	for range n {
		r := <-results
		if r.err != nil || r.status != 200 || r.body != "the one answer" {
			t.Fatalf("a duplicate got %d %q %v", r.status, r.body, r.err)
		}
		if r.replayed {
			replays++
		}
	}
	if hits.Load() != 2 || replays != n-1 { // the warm-up and the one call
		t.Errorf("upstream hits %d (want 2), replays %d (want %d)", hits.Load(), replays, n-1)
	}
	baSettle(t, "after 64 attached waiters", base, 5)
}

// --- async jobs -----------------------------------------------------------------

// Async jobs are bounded by state.max_records: one more gets 503
// state_unavailable at once (problem+json, Retry-After); finished jobs
// occupy their place until async.ttl, and running ones leave no goroutine
// behind.
func TestBoundsAudit_AsyncJobsBounded(t *testing.T) {
	release := make(chan struct{})
	var inflight atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		defer inflight.Add(-1)
		w.Header().Set("Connection", "close")
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = io.WriteString(w, "job done")
	})
	b := startBallast(t, fmt.Sprintf(`
state: {max_records: 3}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, up))
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	c := baNoKeepAlive(5 * time.Second)
	base := baGoroutines()
	var ids []string
	for range 3 {
		resp, body, err := baDo(c, "POST", b.base+"/j", "x", "Prefer", "respond-async")
		if err != nil || resp.StatusCode != 202 {
			t.Fatalf("job: %v %v %s", resp, err, body)
		}
		var js struct{ ID string }
		_ = json.Unmarshal([]byte(body), &js)
		ids = append(ids, js.ID)
	}
	resp, body, err := baDo(c, "POST", b.base+"/j", "x", "Prefer", "respond-async")
	if err != nil {
		t.Fatal(err)
	}
	baProblem(t, resp, body, 503, "state_unavailable")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("the refusal at max_records has no Retry-After")
	}
	if !baEventually(2*time.Second, func() bool { return inflight.Load() == 3 }) {
		t.Fatalf("%d jobs running upstream, want 3", inflight.Load())
	}
	close(release)
	released = true
	for _, id := range ids {
		ok := baEventually(2*time.Second, func() bool {
			resp, _, err := baDo(c, "GET", b.base+"/_ballast/jobs/"+id, "")
			return err == nil && resp.Header.Get("X-Ballast-Job-State") == "succeeded"
		})
		if !ok {
			t.Fatalf("job %s did not succeed", id)
		}
	}
	baSettle(t, "after the jobs finished", base, 3)
}

// A job's answer is read at most to state.max_response_bytes (it cannot
// be stored beyond that anyway): a huge or endless answer must not be
// read into memory, 64MiB per job, before the job is failed.
func TestBoundsAudit_AsyncJobAnswerReadOnlyToStateLimit(t *testing.T) {
	const total = 32 << 20
	var sent atomic.Int64
	var finished atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Connection", "close")
		chunk := make([]byte, 64<<10)
		for sent.Load() < total {
			n, err := w.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
		finished.Store(true)
	})
	b := startBallast(t, fmt.Sprintf(`
state: {max_response_bytes: 64KiB}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, retry: {attempts: 1}}
`, up))
	resp, body, err := baDo(baNoKeepAlive(10*time.Second), "POST", b.base+"/j", "x", "Prefer", "respond-async, wait=10")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 502 || resp.Header.Get("X-Ballast-Job-State") != "failed" {
		t.Errorf("a job whose answer is over max_response_bytes: %d %q %.80s; want a failed job with 502", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if finished.Load() || sent.Load() > 8<<20 {
		t.Errorf("ballast read %d bytes of the job's answer (whole: %v) to store at most 64KiB; want it to stop past max_response_bytes",
			sent.Load(), finished.Load())
	}
}

// --- hedges at high concurrency ----------------------------------------------

// Many hedged requests at once: every loser is called off (its upstream
// connection closed), and nothing is left behind.
func TestBoundsAudit_HedgesAtHighConcurrency(t *testing.T) {
	var (
		mu       sync.Mutex
		seen     = map[string]int{}
		inflight atomic.Int64
	)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		id := r.Header.Get("X-Request-Id")
		mu.Lock()
		seen[id]++
		first := seen[id] == 1
		mu.Unlock()
		if first && r.URL.Path != "/warm" {
			inflight.Add(1)
			defer inflight.Add(-1)
			<-r.Context().Done() // the slow copy: only a call-off ends it
			return
		}
		_, _ = io.WriteString(w, "fast copy")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 20ms
    retry: {budget: {ratio: 1, min_per_second: 1000}}
    timeouts: {per_try: 3s, total: 3s}
`, up))
	c := baNoKeepAlive(5 * time.Second)
	if resp, _, err := baDo(c, "GET", b.base+"/warm", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("warm-up: %v %v", resp, err)
	}
	base := baGoroutines()
	const n = 40
	errs := make(chan error, n)
	for i := range n {
		go func() {
			resp, body, err := baDo(c, "GET", b.base+"/h", "", "X-Request-Id", "hedge-"+strconv.Itoa(i))
			if err == nil && (resp.StatusCode != 200 || body != "fast copy") {
				err = fmt.Errorf("%d %q", resp.StatusCode, body)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("a hedged request: %v", err)
		}
	}
	if !baEventually(2*time.Second, func() bool { return inflight.Load() == 0 }) {
		t.Errorf("%d slow copies still held upstream after their hedges won", inflight.Load())
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got != n {
		t.Errorf("ballast_hedges_total = %v, want %d", got, n)
	}
	baSettle(t, "after 40 hedged requests", base, 5)
}

// --- hostile upstreams -------------------------------------------------------------

// A header block larger than any buffer, and an endless run of interim
// 1xx answers, each fail the attempt with 502 at once: nothing grows.
func TestBoundsAudit_HostileUpstreamHeads(t *testing.T) {
	var huge strings.Builder
	huge.WriteString("HTTP/1.1 200 OK\r\n")
	for i := range 2000 {
		fmt.Fprintf(&huge, "X-Junk-%d: %s\r\n", i, strings.Repeat("j", 500))
	}
	huge.WriteString("Content-Length: 2\r\n\r\nok")
	flood := strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", 2000) +
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for _, tc := range []struct {
		name, answer string
	}{
		{name: "1MB header block", answer: huge.String()},
		{name: "2000 interim answers", answer: flood},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := secRawUpstream(t, tc.answer)
			b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, timeouts: {per_try: 2s, total: 2s}}]
`, rec.url))
			heap0 := baHeapInuse()
			start := time.Now()
			resp, body, err := baDo(baNoKeepAlive(5*time.Second), "GET", b.base+"/x", "")
			if err != nil {
				t.Fatal(err)
			}
			baProblem(t, resp, body, 502, "upstream_unavailable")
			if d := time.Since(start); d > time.Second {
				t.Errorf("took %v; want the bad answer refused as soon as it is read", d)
			}
			if grew := baHeapInuse() - heap0; grew > 4<<20 {
				t.Errorf("heap grew by %d bytes", grew)
			}
		})
	}
}

// An endless answer relayed to an agent that reads it: memory stays flat
// whatever the size, for an event stream without a single newline (the
// token-usage window included) and for a plain chunked body.
func TestBoundsAudit_EndlessStreamsKeepMemoryFlat(t *testing.T) {
	for _, tc := range []struct {
		name, ct string
	}{
		{name: "event stream without newlines", ct: "text/event-stream"},
		{name: "chunked octets", ct: "application/octet-stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunk := []byte(strings.Repeat("a", 32<<10))
			e, up := baEndlessUpstream(t, tc.ct, chunk)
			b := startBallast(t, fmt.Sprintf(`
limiters: {tpm: {tokens_per_minute: 100000000}}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    rate_limit: {limiter: tpm}
    timeouts: {per_try: 2s, idle: 1s, total: 10s}
`, up))
			base := baGoroutines()
			req, _ := http.NewRequest("POST", b.base+"/v1/chat/completions", strings.NewReader(`{"model":"m","max_tokens":5,"stream":true}`))
			req.Header.Set("Content-Type", "application/json")
			c := baNoKeepAlive(10 * time.Second)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			read := func(n int64) {
				for got := int64(0); got < n; {
					m, err := resp.Body.Read(buf)
					got += int64(m)
					if err != nil {
						t.Fatalf("after %d bytes: %v", got, err)
					}
				}
			}
			read(4 << 20)
			heap0 := baHeapInuse()
			read(24 << 20)
			grew := baHeapInuse() - heap0
			_ = resp.Body.Close()
			if grew > 8<<20 {
				t.Errorf("heap grew by %d bytes while 24MiB more were relayed; want it flat", grew)
			}
			if !e.stopped(2 * time.Second) {
				t.Errorf("the upstream stream was still held after the agent left")
			}
			baSettle(t, "after the stream ended", base, 3)
		})
	}
}

// An endless (chunked) answer that ballast must hold whole — for a body
// check, or to store it under an Idempotency-Key — is read only up to its
// limit: then the body check fails (502 invalid_response) or the answer
// is relayed unstored; either way the upstream is let go.
func TestBoundsAudit_EndlessAnswerHeldWholeIsBounded(t *testing.T) {
	for _, tc := range []struct {
		name, policy string
		method       string
		headers      []string
		wantStatus   int
		reason       string
	}{
		{name: "validate.max_body", policy: "validate: {json: true, max_body: 64KiB}", method: "GET",
			wantStatus: 502, reason: "invalid_response"},
		{name: "keyed buffering", policy: "idempotency: {mode: header}", method: "POST",
			headers: []string{"Idempotency-Key", "k"}, wantStatus: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, up := baEndlessUpstream(t, "application/json", []byte(strings.Repeat("[", 16<<10)))
			b := startBallast(t, fmt.Sprintf(`
state: {max_response_bytes: 256KiB}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    timeouts: {connect: 100ms, per_try: 1s, idle: 1s, total: 1s}
    %s
`, up, tc.policy))
			heap0 := baHeapInuse()
			req, _ := http.NewRequest(tc.method, b.base+"/x", strings.NewReader("{}"))
			for i := 0; i+1 < len(tc.headers); i += 2 {
				req.Header.Set(tc.headers[i], tc.headers[i+1])
			}
			resp, err := baNoKeepAlive(5 * time.Second).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				t.Fatalf("status %d %s; want %d", resp.StatusCode, body, tc.wantStatus)
			}
			if tc.reason != "" {
				body, _ := io.ReadAll(resp.Body)
				baProblem(t, resp, string(body), tc.wantStatus, tc.reason)
			} else {
				// Relayed as a stream and cut at the total deadline.
				n, _ := io.Copy(io.Discard, resp.Body)
				if got := b.metric("ballast_idempotency_total", map[string]string{"route": "r", "result": "too_large"}); got != 1 {
					t.Errorf("too_large = %v after %d bytes relayed, want 1", got, n)
				}
			}
			if grew := baHeapInuse() - heap0; grew > 8<<20 {
				t.Errorf("heap grew by %d bytes", grew)
			}
			if !e.stopped(2 * time.Second) {
				t.Error("the upstream was still held after the answer ended")
			}
		})
	}
}

// Retry-After and reset hints of years, or negative, are not trusted: no
// cool-down comes of them. A long but plausible hint pauses the key, for
// at most retry.max_cooldown, and the paused request is answered at once.
func TestBoundsAudit_AbsurdServerHints(t *testing.T) {
	for _, tc := range []struct {
		name    string
		status  int
		headers map[string]string
		paused  bool
	}{
		{name: "Retry-After of ten years", status: 429, headers: map[string]string{"Retry-After": "315360000"}},
		{name: "negative Retry-After", status: 429, headers: map[string]string{"Retry-After": "-30"}},
		{name: "retry-after-ms overflow", status: 429, headers: map[string]string{"retry-after-ms": "99999999999999999999"}},
		{name: "exhausted with a reset of ten years", status: 200, headers: map[string]string{
			"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "87600h"}},
		{name: "two days (plausible, paused for retry.max_cooldown, 24h)", status: 429, headers: map[string]string{"Retry-After": "172800"}, paused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					for k, v := range tc.headers {
						w.Header().Set(k, v)
					}
					w.WriteHeader(tc.status)
					return
				}
				_, _ = io.WriteString(w, "ok")
			})
			b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, up))
			c := baNoKeepAlive(5 * time.Second)
			if _, _, err := baDo(c, "GET", b.base+"/x", "", "Authorization", "Bearer k"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			resp, body, err := baDo(c, "GET", b.base+"/x", "", "Authorization", "Bearer k")
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > time.Second {
				t.Errorf("the second request took %v", time.Since(start))
			}
			if !tc.paused {
				if resp.StatusCode != 200 || hits.Load() != 2 {
					t.Errorf("after %v the key was paused: %d %s (upstream hits %d); an absurd hint must be ignored", tc.headers, resp.StatusCode, body, hits.Load())
				}
				return
			}
			baProblem(t, resp, body, 429, "rate_limited")
			if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 86000 || ra > 86400 || hits.Load() != 1 {
				t.Errorf("Retry-After %q, upstream hits %d; want about 86400 (the default retry.max_cooldown) and no second call", resp.Header.Get("Retry-After"), hits.Load())
			}
			// Another key is not paused.
			if resp, _, err := baDo(c, "GET", b.base+"/x", "", "Authorization", "Bearer other"); err != nil || resp.StatusCode != 200 {
				t.Errorf("another key: %v %v", resp, err)
			}
		})
	}
}

// --- caches and keyed limiters -------------------------------------------------------

// The response cache holds at most max_entries and max_bytes, evicting
// (and counting) the least recently used; an answer larger than max_bytes
// is passed through unstored.
func TestBoundsAudit_CacheBounded(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		size := 100
		if r.URL.Path == "/huge" {
			size = 60 << 10
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		_, _ = io.WriteString(w, strings.Repeat("c", size))
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: 1h, max_entries: 5, max_bytes: 8KiB}}
`, up))
	c := baNoKeepAlive(5 * time.Second)
	bytesNow := func() float64 { return b.metric("ballast_cache_bytes", map[string]string{"route": "r"}) }
	if resp, _, err := baDo(c, "GET", b.base+"/p0", ""); err != nil || !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("first answer not stored: %v %v", resp, err)
	}
	one := bytesNow()
	for i := 1; i < 200; i++ {
		if resp, _, err := baDo(c, "GET", b.base+"/p"+strconv.Itoa(i), ""); err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, resp, err)
		}
	}
	if got := bytesNow(); got > 5*one || got > 8<<10 {
		t.Errorf("ballast_cache_bytes = %v after 200 distinct entries of %v bytes each; want at most 5 entries (max_entries) and 8KiB", got, one)
	}
	if ev := b.metric("ballast_cache_evictions_total", map[string]string{"route": "r"}); ev < 195 {
		t.Errorf("ballast_cache_evictions_total = %v, want ≥ 195", ev)
	}
	resp, body, err := baDo(c, "GET", b.base+"/huge", "")
	if err != nil || resp.StatusCode != 200 || len(body) != 60<<10 {
		t.Fatalf("huge: %v %v %d bytes", resp, err, len(body))
	}
	if strings.Contains(resp.Header.Get("Cache-Status"), "stored") || bytesNow() > 8<<10 {
		t.Errorf("an answer over max_bytes: Cache-Status %q, cache bytes %v", resp.Header.Get("Cache-Status"), bytesNow())
	}
}

// An upstream that names a new request header in Vary on every answer
// makes the route learn at most cache.MaxVary (16) of them (one log line
// each), and the route keeps answering.
func TestBoundsAudit_VaryLearningCapped(t *testing.T) {
	var n atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "X-V"+strconv.FormatInt(n.Add(1), 10))
		w.Header().Set("Content-Length", "2")
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: 1h}}]
`, up))
	c := baNoKeepAlive(5 * time.Second)
	for i := range 60 {
		if resp, _, err := baDo(c, "GET", b.base+"/x", ""); err != nil || resp.StatusCode != 200 {
			t.Fatalf("request %d: %v %v", i, resp, err)
		}
	}
	if learned := strings.Count(b.logs.String(), "now include the request headers"); learned < 1 || learned > 16 {
		t.Errorf("the route learned %d Vary headers; want between 1 and 16", learned)
	}
}

// A keyed rate limit keeps at most max_keys buckets: past it a bucket is
// dropped (and its key starts again full), so memory stays bounded
// whatever the number of distinct keys.
func TestBoundsAudit_KeyedLimiterMaxKeys(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: 0.01, burst: 1, key: "header:X-Tenant", max_keys: 4, max_wait: 0s}}
`, up))
	c := client(t)
	tenant := func(k string) int {
		resp, _, err := baDo(c, "GET", b.base+"/x", "", "X-Tenant", k)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	if tenant("a") != 200 || tenant("a") != 429 {
		t.Fatal("tenant a's bucket of one was not spent")
	}
	heap0 := baHeapInuse()
	for i := range 2000 {
		if got := tenant("t" + strconv.Itoa(i)); got != 200 {
			t.Fatalf("new tenant %d: %d", i, got)
		}
	}
	if grew := baHeapInuse() - heap0; grew > 2<<20 {
		t.Errorf("heap grew by %d bytes for 2000 keys with max_keys 4", grew)
	}
	if got := tenant("a"); got != 200 {
		t.Errorf("tenant a after 2000 other keys: %d; want 200 (its bucket was dropped at max_keys 4)", got)
	}
}

// --- status board and request ids ---------------------------------------------------

// The failure list of /status keeps the last 20 failures, whatever the
// number of failed requests.
func TestBoundsAudit_FailureRingBounded(t *testing.T) {
	dead := "http://" + deadAddr(t)
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, breaker: {enabled: false}}]
`, dead))
	c := baNoKeepAlive(5 * time.Second)
	for i := range 60 {
		if resp, _, err := baDo(c, "GET", b.base+"/x", "", "X-Request-Id", "fail-"+strconv.Itoa(i)); err != nil || resp.StatusCode != 502 {
			t.Fatalf("request %d: %v %v", i, resp, err)
		}
	}
	resp, body := get(t, client(t), b.admin+"/status")
	if resp.StatusCode != 200 {
		t.Fatalf("/status: %d %s", resp.StatusCode, body)
	}
	var snap struct {
		Failures []struct {
			RequestID string `json:"request_id"`
		} `json:"failures"`
	}
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Failures) != 20 || snap.Failures[0].RequestID != "fail-59" {
		t.Errorf("/status failures: %d, newest %+v; want the last 20, newest fail-59", len(snap.Failures), snap.Failures[:min(1, len(snap.Failures))])
	}
}

// An agent's X-Request-Id is adopted only up to 128 characters; a longer
// one is replaced, so neither logs nor the failure ring grow with it.
func TestBoundsAudit_RequestIDBounded(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Id-Len", strconv.Itoa(len(r.Header.Get("X-Request-Id"))))
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	long := strings.Repeat("i", 8000)
	resp, _, err := baDo(baNoKeepAlive(5*time.Second), "GET", b.base+"/x", "", "X-Request-Id", long)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.Header.Get("X-Request-Id")
	if id == "" || len(id) > 128 || resp.Header.Get("X-Seen-Id-Len") != strconv.Itoa(len(id)) {
		t.Errorf("an 8000-byte X-Request-Id became %d bytes to the agent, %s upstream; want a fresh id of at most 128",
			len(id), resp.Header.Get("X-Seen-Id-Len"))
	}
}

// --- the alert webhook ------------------------------------------------------------

// A webhook that never answers: alerts beyond the bounded queue are
// dropped and counted on /status, requests are never held up by them, and
// shutdown calls the hung delivery off at once.
func TestBoundsAudit_HungWebhook(t *testing.T) {
	hung := make(chan struct{})
	var posts atomic.Int64
	hook, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	})
	defer close(hung)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	// One upstream per route (127.0.0.2, .3, ...: all loopback, none
	// listening), so that each has its own breaker and alert.
	const routes = 80
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "notify: {webhook: %q, max_per_minute: 1000}\nroutes:\n", hook)
	for i := range routes {
		fmt.Fprintf(&cfg, "  - {name: r%d, match: {path_prefix: /r%d/}, upstream: \"http://127.0.0.%d:%d\", retry: {attempts: 1}, breaker: {failures: 1}}\n", i, i, i+2, port)
	}
	b := startBallast(t, cfg.String())
	c := baNoKeepAlive(5 * time.Second)
	start := time.Now()
	for i := range routes {
		if resp, _, err := baDo(c, "GET", fmt.Sprintf("%s/r%d/x", b.base, i), ""); err != nil || resp.StatusCode != 502 {
			t.Fatalf("route %d: %v %v", i, resp, err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("%d failing requests took %v with the webhook hung", routes, d)
	}
	if !baEventually(2*time.Second, func() bool { return posts.Load() == 1 }) {
		t.Fatalf("webhook posts: %d, want the first delivery hanging", posts.Load())
	}
	resp, body := get(t, client(t), b.admin+"/status")
	var snap struct {
		Alerts *struct {
			Dropped uint64 `json:"dropped"`
		} `json:"alerts"`
	}
	if err := json.Unmarshal([]byte(body), &snap); err != nil || resp.StatusCode != 200 || snap.Alerts == nil {
		t.Fatalf("/status: %d %v %.200s", resp.StatusCode, err, body)
	}
	if snap.Alerts.Dropped < routes-1-64 {
		t.Errorf("/status alerts.dropped = %d; want the %d alerts beyond the 64-event queue counted", snap.Alerts.Dropped, routes-1-64)
	}
}
