package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// sfGate is a loopback proxy in front of a real redis-server that can
// hold every data command (anything but the handshake and PING) until it
// is released: a Redis that still passes its health check but has
// become slow (a big key, a blocked shard, a failover in progress). A
// held command is sent on once released, as a slow server would
// eventually run it.
type sfGate struct {
	addr string
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

// hold makes data commands wait from now on.
func (g *sfGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate == nil {
		g.gate = make(chan struct{})
	}
}

// release lets the held commands (and every later one) through.
func (g *sfGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

func (g *sfGate) wait() {
	g.mu.Lock()
	ch := g.gate
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

func sfStartGate(t *testing.T, target string) *sfGate {
	t.Helper()
	g := &sfGate{}
	g.addr = redisCommandProxy(t, target, func(name string) bool {
		switch strings.ToUpper(name) {
		case "PING", "HELLO", "CLIENT", "SELECT", "AUTH":
		default:
			g.wait()
		}
		return true
	})
	t.Cleanup(g.release) // before the proxy's cleanup: a held command must not outlive it
	return g
}

// redisCommandProxy is a loopback proxy in front of the Redis at target:
// each command a client sends is read whole, shown to forward by its name
// (forward may block to hold it), and sent on unless forward says no;
// replies are relayed as they come. It returns the proxy's host:port.
func redisCommandProxy(t *testing.T, target string, forward func(name string) bool) string {
	t.Helper()
	return serveConns(t, func(c net.Conn, br *bufio.Reader) {
		s, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		replies := make(chan struct{})
		go func() {
			defer close(replies)
			_, _ = io.Copy(c, s)
			c.Close()
		}()
		defer func() { s.Close(); <-replies }()
		for {
			name, raw, err := sfReadCommand(br)
			if err != nil {
				return
			}
			if !forward(name) {
				continue
			}
			if _, err := s.Write(raw); err != nil {
				return
			}
		}
	})
}

// sfReadCommand reads one RESP array of bulk strings: its first element
// and its bytes as sent.
func sfReadCommand(r *bufio.Reader) (name string, raw []byte, err error) {
	var buf bytes.Buffer
	line, err := r.ReadString('\n')
	if err != nil {
		return "", nil, err
	}
	buf.WriteString(line)
	var n int
	if _, err := fmt.Sscanf(line, "*%d\r\n", &n); err != nil {
		return "", nil, err
	}
	for i := range n {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", nil, err
		}
		buf.WriteString(line)
		var size int
		if _, err := fmt.Sscanf(line, "$%d\r\n", &size); err != nil {
			return "", nil, err
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", nil, err
		}
		buf.Write(b)
		if i == 0 {
			name = string(b[:size])
		}
	}
	return name, buf.Bytes(), nil
}

// sfRedisState is the state block of a ballast on Redis at addr.
func sfRedisState(addr, onError string, opTimeout time.Duration) string {
	return fmt.Sprintf(`state:
  backend: redis
  redis: {address: %q, key_prefix: "sf%d:", on_error: %s, op_timeout: %s, read_timeout: %s, write_timeout: %s, dial_timeout: %s}
`, addr, time.Now().UnixNano()%1e9, onError, opTimeout, opTimeout, opTimeout, opTimeout)
}

// TestStateFailAuditLocalRecordOutlivesRedisOutage: the README promises
// that a keyed request "runs once however often the agent sends it". Under
// fail_open a key completed in the local store while Redis was down must
// still replay on that replica once Redis answers again (Redis never saw
// it), and a call claimed locally that is still running when Redis comes
// back must be attached to, not run again, and without a busy loop of
// claims and waits.
func TestStateFailAuditLocalRecordOutlivesRedisOutage(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{}
	release := make(chan struct{})
	var slowCalls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowCalls.Add(1)
			<-release
		}
		up.handler(w, r)
	})
	b := startBallast(t, sfRedisState(rs.Addr(), "fail_open", 200*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}
`, u))
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	rs.Kill()
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	resp, first := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "outage-1")
	if resp.StatusCode != 200 {
		t.Fatalf("keyed request during the outage: %d %s", resp.StatusCode, first)
	}
	// A call claimed locally, still running when Redis comes back.
	slow := raSend(t, "POST", b.base+"/slow", `{}`, "Idempotency-Key", "outage-2")
	waitFor(t, func() bool { return slowCalls.Load() == 1 })
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })

	resp, body := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "outage-1")
	if resp.StatusCode != 200 || body != first || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the agent's retry after Redis came back: %d %q replayed %q, want a replay of %q", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), first)
	}
	if resp, body := do(t, "POST", b.base+"/charge", `{"n":2}`, "Idempotency-Key", "outage-1"); resp.StatusCode != 422 {
		t.Errorf("the same key with another body after Redis came back: %d %s, want 422 idempotency_mismatch", resp.StatusCode, body)
	}

	claims := func() float64 {
		return b.metric("ballast_state_store_seconds", map[string]string{"op": "claim"})
	}
	before := claims()
	dup := raSend(t, "POST", b.base+"/slow", `{}`, "Idempotency-Key", "outage-2")
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})
	close(release)
	released = true
	said := func(r raResult) string { return fmt.Sprint(r.resp.StatusCode, " ", r.body) }
	a, d := said(raAnswer(t, slow)), said(raAnswer(t, dup))
	if !strings.HasPrefix(a, "200 ") || d != a {
		t.Errorf("the call running across Redis's return answered %q; its duplicate %q, want the same answer", a, d)
	}
	if n := claims() - before; n > 3 {
		t.Errorf("the attached duplicate made %v claims while it waited: a busy loop between the local store and Redis", n)
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times for two keys", n)
	}
}

// TestStateFailAuditSlowRedisCompleteKeepsTheDeadline: the deadline is
// law. A keyed call whose upstream answers at once may not be held back
// past the request's deadline (X-Ballast-Timeout) by the bookkeeping
// after it: Redis still passes its health check, but takes longer than
// the deadline to record the answer. And whatever happens to the record,
// the agent's retry never runs the call a second time.
func TestStateFailAuditSlowRedisCompleteKeepsTheDeadline(t *testing.T) {
	rs := redistest.Start(t)
	g := sfStartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Slow-State") != "" {
			g.hold() // Redis turns slow while the call runs
		}
		up.handler(w, r)
	})
	b := startBallast(t, sfRedisState(g.addr, "fail_open", 1500*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, u))
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), "redis is reachable") })
	if resp, body := do(t, "POST", b.base+"/warm", `{}`, "Idempotency-Key", "warm"); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}
	start := time.Now()
	resp, first := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "slow-complete", "X-Ballast-Timeout", "400ms", "X-Slow-State", "1")
	took := time.Since(start)
	if resp.StatusCode != 200 {
		t.Fatalf("keyed call: %d %s", resp.StatusCode, first)
	}
	if took > 900*time.Millisecond {
		t.Errorf("the answer of a keyed call with a 400ms deadline came after %v: recording it waited on a slow Redis (op_timeout 1.5s)", took.Round(time.Millisecond))
	}
	if got := b.metric("ballast_state_backend_up", nil); got != 1 {
		t.Errorf("backend_up %v: Redis must look healthy for this probe to mean anything", got)
	}
	g.release()
	waitFor(t, func() bool {
		return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 2
	})
	resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "slow-complete")
	if resp.StatusCode != 200 || body != first || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the retry once Redis is fast again: %d %q replayed %q, want a replay of %q", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), first)
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times for two keys", n)
	}
}

// TestStateFailAuditSlowRedisJobStartKeepsTheDeadline: starting an async
// job stores it first; with a Redis that still passes its health check
// but is slow, that store may not hold the 202 (or the 503, with
// fail_closed) past the request's own deadline (X-Ballast-Timeout), only
// up to op_timeout. With fail_open the job falls back to the local store
// and runs; with fail_closed the agent is told at once that it did not.
func TestStateFailAuditSlowRedisJobStartKeepsTheDeadline(t *testing.T) {
	for _, tc := range []struct {
		mode   string
		status int
	}{{"fail_open", 202}, {"fail_closed", 503}} {
		t.Run(tc.mode, func(t *testing.T) {
			rs := redistest.Start(t)
			g := sfStartGate(t, rs.Addr())
			up := &asUpstream{}
			u, _ := upstream(t, up.handler)
			b := startBallast(t, sfRedisState(g.addr, tc.mode, 1500*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, u))
			waitFor(t, func() bool { return strings.Contains(b.logs.String(), "redis is reachable") })
			if resp, body := do(t, "POST", b.base+"/warm", `{}`, "Prefer", "respond-async"); resp.StatusCode != 202 {
				t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
			}
			waitFor(t, func() bool { return up.calls.Load() == 1 })
			g.hold()
			start := time.Now()
			resp, body := do(t, "POST", b.base+"/x", `{}`, "Prefer", "respond-async", "X-Ballast-Timeout", "300ms")
			took := time.Since(start)
			if resp.StatusCode != tc.status {
				t.Errorf("job start with a slow Redis: %d %s, want %d", resp.StatusCode, body, tc.status)
			}
			if took > 800*time.Millisecond {
				t.Errorf("job start with a 300ms deadline answered after %v: storing the job waited on a slow Redis (op_timeout 1.5s)", took.Round(time.Millisecond))
			}
			g.release()
			if tc.status == 202 {
				loc := resp.Header.Get("Location")
				resp, body = do(t, "GET", b.base+loc, "", "Prefer", "wait=5")
				if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
					t.Errorf("the job stored locally: %d %q %s (upstream calls %d)", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body, up.calls.Load())
				}
			}
		})
	}
}

// chunkedBody answers with n bytes in chunks (no Content-Length), so the
// transport relays it as a stream that a keyed answer or a job reads whole.
func sfChunked(n int, calls *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		chunk := strings.Repeat("y", 8<<10)
		for sent := 0; sent < n; sent += len(chunk) {
			_, _ = io.WriteString(w, chunk[:min(len(chunk), n-sent)])
			w.(http.Flusher).Flush()
		}
	}
}

// TestStateFailAuditMaxResponseBytesIsTheStores: state.* changes only on
// restart (config.md), so the state.max_response_bytes in force is the
// one the store was opened with. A reload that lowers it in the file
// must not make a keyed answer the store would keep run twice, nor fail a
// job whose answer the store would keep.
func TestStateFailAuditMaxResponseBytesIsTheStores(t *testing.T) {
	var calls atomic.Int64
	u, _ := upstream(t, sfChunked(100<<10, &calls))
	cfg := func(max string) string {
		return fmt.Sprintf(`state: {max_response_bytes: %s}
routes:
  - {name: pay, match: {path_prefix: /pay}, upstream: %q, idempotency: {mode: header}}
  - {name: long, match: {path_prefix: /job}, upstream: %q, async: {enabled: true}}
`, max, u, u)
	}
	b := startBallast(t, cfg("1MiB"))
	if code, body := opsReload(t, b, cfg("16KiB")); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if !strings.Contains(b.logs.String(), "change only on restart") {
		t.Fatalf("the reload did not warn that state changes need a restart: %s", b.logs.String())
	}
	r1, b1 := do(t, "POST", b.base+"/pay", `{}`, "Idempotency-Key", "big")
	r2, b2 := do(t, "POST", b.base+"/pay", `{}`, "Idempotency-Key", "big")
	if r1.StatusCode != 200 || len(b1) != 100<<10 || b2 != b1 || r2.Header.Get("Idempotent-Replayed") != "true" || calls.Load() != 1 {
		t.Errorf("a 100KiB keyed answer (store limit 1MiB, file says 16KiB after a reload): %d/%d, replayed %q, upstream calls %d; want one call and a replay",
			r1.StatusCode, r2.StatusCode, r2.Header.Get("Idempotent-Replayed"), calls.Load())
	}
	resp, body := do(t, "POST", b.base+"/job", `{}`, "Prefer", "respond-async, wait=10")
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" || len(body) != 100<<10 {
		t.Errorf("a job with a 100KiB answer (store limit 1MiB): %d %q, %d bytes", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), len(body))
	}
}

// TestStateFailAuditUnopenableStateFile: a state file the process cannot
// open is a start-up error that names the file and the operating
// system's reason, and does not call an intact file corrupt (which would
// tell the operator to move it aside).
func TestStateFailAuditUnopenableStateFile(t *testing.T) {
	dir := t.TempDir()
	notDir := dir + "/plain"
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	isDir := dir + "/state.db"
	if err := os.Mkdir(isDir, 0o700); err != nil {
		t.Fatal(err)
	}
	journalIsDir := dir + "/j.db"
	if err := os.Mkdir(journalIsDir+".claims", 0o700); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{notDir + "/s.db", isDir, journalIsDir} {
		file := t.TempDir() + "/ballast.yaml"
		if err := os.WriteFile(file, []byte(fmt.Sprintf("state: {path: %s}\nroutes: [{name: r, match: {path_prefix: /}, upstream: http://127.0.0.1:1}]\n", path)), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(config.Source{File: file})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: prometheus.NewRegistry()})
		if err == nil {
			srv.Shutdown(t.Context())
			t.Errorf("state.path %s: started", path)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, path) || strings.Contains(msg, "corrupt") {
			t.Errorf("state.path %s: %q, want the path and the system's reason, not 'corrupt'", path, msg)
		}
	}
}

// TestStateFailAuditMemoryStoreBounds: config.md (state.max_records): when
// full, the memory backend drops the least recently used completed record
// (a later duplicate of it runs again); when every record is a call
// still in flight, a new key cannot be claimed and gets 503
// state_unavailable with Retry-After: 1 (errors.md), while a duplicate of
// a running call still attaches.
func TestStateFailAuditMemoryStoreBounds(t *testing.T) {
	up := &asUpstream{}
	release := make(chan struct{})
	var blocked atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			blocked.Add(1)
			<-release
		}
		up.handler(w, r)
	})
	b := startBallast(t, fmt.Sprintf(`state: {max_records: 2}
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}
`, u))
	for _, k := range []string{"a", "b", "c"} {
		if resp, body := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", k); resp.StatusCode != 200 {
			t.Fatalf("key %s: %d %s", k, resp.StatusCode, body)
		}
	}
	if resp, _ := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "c"); resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the most recent key does not replay")
	}
	if resp, _ := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "a"); resp.Header.Get("Idempotent-Replayed") == "true" || up.calls.Load() != 4 {
		t.Errorf("the least recently used key replayed past max_records (calls %d)", up.calls.Load())
	}
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	var wg sync.WaitGroup
	for _, k := range []string{"p", "q"} {
		wg.Add(1)
		go func() { defer wg.Done(); asPost(b.base+"/block", `{}`, "Idempotency-Key", k) }()
	}
	waitFor(t, func() bool { return blocked.Load() == 2 })
	resp, body := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "r")
	if resp.StatusCode != 503 || decodeProblem(t, resp, body).Reason != "state_unavailable" || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("a new key with every record in flight: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	dup := raSend(t, "POST", b.base+"/block", `{}`, "Idempotency-Key", "p")
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})
	close(release)
	released = true
	wg.Wait()
	if code := raAnswer(t, dup).resp.StatusCode; code != 200 || blocked.Load() != 2 {
		t.Errorf("a duplicate of a running call on a full store: %d, blocked calls %d", code, blocked.Load())
	}
}

// TestStateFailAuditSlowRedisClaimAtTheDeadline: a keyed request whose
// claim Redis (slow, still healthy) does not answer within the request's
// own deadline is not run: the request has no time left, and gets 503
// state_unavailable with Retry-After: 1 (errors.md) at its deadline, not
// after op_timeout, under fail_open too.
func TestStateFailAuditSlowRedisClaimAtTheDeadline(t *testing.T) {
	rs := redistest.Start(t)
	g := sfStartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, sfRedisState(g.addr, "fail_open", 1500*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, u))
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), "redis is reachable") })
	g.hold()
	start := time.Now()
	resp, body := do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "k", "X-Ballast-Timeout", "300ms")
	took := time.Since(start)
	if resp.StatusCode != 503 || decodeProblem(t, resp, body).Reason != "state_unavailable" || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("a claim that ran out of time: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if took > 800*time.Millisecond || up.calls.Load() != 0 {
		t.Errorf("answered after %v with %d upstream calls; want the deadline's answer, the call not run", took.Round(time.Millisecond), up.calls.Load())
	}
}

// TestStateFailAuditUnrecordedAnswerAcrossReplicas: where outcome_unknown
// answers with Redis (errors.md, config.md state.redis). Replica A runs a
// keyed call but cannot record its answer in Redis (too slow, while still
// healthy): A keeps the answer locally and replays it to a retry sent to
// A; replica B sees the claim in flight (409 in_progress within its
// deadline), and once the claim's lease has ended, 409 outcome_unknown
// without Retry-After. The upstream runs once.
func TestStateFailAuditUnrecordedAnswerAcrossReplicas(t *testing.T) {
	rs := redistest.Start(t)
	g := sfStartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		g.hold() // Redis turns slow while the call runs
		up.handler(w, r)
	})
	state := func(addr string) string {
		return fmt.Sprintf(`state:
  backend: redis
  redis: {address: %q, key_prefix: "sfx:", on_error: fail_open, op_timeout: 500ms, read_timeout: 500ms, write_timeout: 500ms, dial_timeout: 500ms}
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 2s}}
`, addr, u)
	}
	a := startBallast(t, state(g.addr))
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, state(rs.Addr()))
	waitFor(t, func() bool { return strings.Contains(a.logs.String(), "redis is reachable") })
	resp, first := do(t, "POST", a.base+"/x", `{}`, "Idempotency-Key", "k")
	if resp.StatusCode != 200 {
		t.Fatalf("the call on A: %d %s", resp.StatusCode, first)
	}
	waitFor(t, func() bool { return a.metric("ballast_state_errors_total", map[string]string{"op": "complete"}) >= 1 })
	resp, body := do(t, "POST", a.base+"/x", `{}`, "Idempotency-Key", "k")
	if resp.StatusCode != 200 || body != first || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the retry on A: %d %q replayed %q, want a replay of %q", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), first)
	}
	resp, body = do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "k", "X-Ballast-Timeout", "300ms")
	if resp.StatusCode != 409 || decodeProblem(t, resp, body).Reason != "in_progress" {
		t.Errorf("the retry on B within the claim's lease: %d %s, want 409 in_progress", resp.StatusCode, body)
	}
	// Past the lease (timeouts.total + 30s from A's claim), which came
	// up to a few seconds after B's clock started.
	clock.Advance(40 * time.Second)
	resp, body = do(t, "POST", b.base+"/x", `{}`, "Idempotency-Key", "k")
	if resp.StatusCode != 409 || decodeProblem(t, resp, body).Reason != "outcome_unknown" || resp.Header.Get("Retry-After") != "" {
		t.Errorf("the retry on B after the lease: %d %q %s, want 409 outcome_unknown without Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times", n)
	}
}

// TestStateFailAuditOutageJobsAreSwept: under fail_open the jobs started
// during a Redis outage live in the replica's local store, bounded by
// state.max_records. Once they expire (async.ttl after they finished) the
// sweeper removes them there as well, so that a later outage can start
// jobs again instead of answering 503 state_unavailable for good.
func TestStateFailAuditOutageJobsAreSwept(t *testing.T) {
	rs := redistest.Start(t)
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fmt.Sprintf(`state:
  backend: redis
  max_records: 1
  sweep_every: 20ms
  redis: {address: %q, on_error: fail_open, op_timeout: 200ms, read_timeout: 200ms, write_timeout: 200ms, dial_timeout: 200ms}
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true, ttl: 1m}}
`, rs.Addr(), u))
	rs.Kill()
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	resp, body := do(t, "POST", b.base+"/a", `{}`, "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("a job during the outage: %d %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	waitFor(t, func() bool {
		r, _ := do(t, "GET", b.base+loc, "")
		return r.StatusCode == 200
	})
	clock.Advance(3 * time.Minute) // past timeouts.total + async.ttl
	waitFor(t, func() bool {
		r, _ := do(t, "POST", b.base+"/b", `{}`, "Prefer", "respond-async")
		return r.StatusCode == 202
	})
	// Redis back before the end: go-redis's pool stops redialling.
	if err := rs.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })
}

// TestStateFailAuditKnownDownJobStartCostsNoOpTimeout: config.md promises
// that once the health check has seen Redis down, requests no longer try
// it. Starting an async job then stores it locally, and must not wait out
// op_timeout on its lease either: a job of the local store is this
// replica's own.
func TestStateFailAuditKnownDownJobStartCostsNoOpTimeout(t *testing.T) {
	addr := redistest.Hung(t)
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, sfRedisState(addr, "fail_open", 800*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, u))
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	for i := range 2 {
		start := time.Now()
		resp, body := do(t, "POST", b.base+"/x", `{}`, "Prefer", "respond-async, wait=5")
		took := time.Since(start)
		if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
			t.Fatalf("job %d during the outage: %d %q %s", i, resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
		}
		if took > 500*time.Millisecond {
			t.Errorf("job %d took %v with Redis known to be down: its start waited on Redis (op_timeout 800ms)", i, took.Round(time.Millisecond))
		}
	}
}
