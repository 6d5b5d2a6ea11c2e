package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
)

// fo9Gate is a loopback proxy in front of a real redis-server that can
// cut Redis off (every connection closed, new ones closed at once: a
// network cut that keeps Redis's data), black-hole it (every command,
// PING included, held: a hung Redis), and hold back the reply to one
// chosen command. Redis keeps its data throughout, so what it held
// before the outage is there again once the gate opens.
type fo9Gate struct {
	addr string

	mu    sync.Mutex
	cut   bool
	hole  chan struct{} // not nil: black-holed until closed
	conns map[net.Conn]bool
	// marker: the next command containing it has its reply held until
	// replyGate is closed; matched is closed once it was seen.
	marker    []byte
	replyGate chan struct{}
	matched   chan struct{}
}

func fo9StartGate(t *testing.T, target string) *fo9Gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fo9Gate{addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			cut := g.cut
			g.mu.Unlock()
			if cut {
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			g.mu.Lock()
			g.conns[c], g.conns[s] = true, true
			g.mu.Unlock()
			var replyHold atomic.Pointer[chan struct{}]
			wg.Add(2)
			go func() { // replies
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 {
						if h := replyHold.Swap(nil); h != nil {
							<-*h
						}
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() { // commands
				defer wg.Done()
				defer s.Close()
				r := bufio.NewReader(c)
				for {
					_, raw, err := sfReadCommand(r)
					if err != nil {
						return
					}
					g.mu.Lock()
					hole := g.hole
					var matched chan struct{}
					if g.marker != nil && bytes.Contains(raw, g.marker) {
						h := g.replyGate
						replyHold.Store(&h)
						g.marker, matched = nil, g.matched
					}
					g.mu.Unlock()
					if hole != nil {
						<-hole
					}
					_, err = s.Write(raw)
					if matched != nil {
						close(matched) // once the command is on its way to Redis
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		g.open()
		g.releaseReply()
		ln.Close()
		g.closeAll()
		wg.Wait()
	})
	return g
}

func (g *fo9Gate) closeAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		c.Close()
		delete(g.conns, c)
	}
}

// cutOff closes every connection to Redis and refuses new ones.
func (g *fo9Gate) cutOff() {
	g.mu.Lock()
	g.cut = true
	g.mu.Unlock()
	g.closeAll()
}

// blackHole holds every command from now on, PING included.
func (g *fo9Gate) blackHole() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hole == nil {
		g.hole = make(chan struct{})
	}
}

// open lets everything through again.
func (g *fo9Gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cut = false
	if g.hole != nil {
		close(g.hole)
		g.hole = nil
	}
}

// delayReply holds the reply to the next command containing marker until
// releaseReply; the returned channel is closed once that command passed.
func (g *fo9Gate) delayReply(marker string) <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.marker, g.replyGate, g.matched = []byte(marker), make(chan struct{}), make(chan struct{})
	return g.matched
}

func (g *fo9Gate) releaseReply() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.replyGate != nil {
		close(g.replyGate)
		g.replyGate = nil
	}
}

// fo9State is the state block of a replica on Redis at addr, sharing the
// key prefix fo9 with every other replica of the test.
func fo9State(addr string, opTimeout time.Duration) string {
	return fmt.Sprintf(`state:
  backend: redis
  redis: {address: %q, key_prefix: "fo9:", on_error: fail_open, op_timeout: %s, read_timeout: %s, write_timeout: %s, dial_timeout: 300ms}
`, addr, opTimeout, opTimeout, opTimeout)
}

func fo9Down(t *testing.T, bs ...*ballast) {
	t.Helper()
	for _, b := range bs {
		waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	}
}

func fo9Up(t *testing.T, bs ...*ballast) {
	t.Helper()
	for _, b := range bs {
		waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })
	}
}

// fo9Refused checks the answer to a duplicate whose record Redis holds
// while it cannot be reached: not run, but a precise 503
// state_unavailable that says so, with Retry-After (it will replay once
// Redis answers).
func fo9Refused(t *testing.T, what string, resp *http.Response, body string) {
	t.Helper()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("%s: %d Retry-After %q %s, want 503 with Retry-After: 1", what, resp.StatusCode, resp.Header.Get("Retry-After"), body)
		return
	}
	if p := decodeProblem(t, resp, body); p.Reason != "state_unavailable" || !strings.Contains(p.Detail, "redis holds the record of this key") {
		t.Errorf("%s: reason %q detail %q, want state_unavailable saying that Redis holds the key's record", what, p.Reason, p.Detail)
	}
}

// TestFailOpen9AuditAnswerHeldInRedisNotRunAgain: a keyed call answered
// before a Redis outage has its answer in Redis only. A duplicate during
// the outage cannot be replayed, and running it again would repeat the
// call's side effect: ballast answers 503 state_unavailable (Retry-After:
// 1) instead, and replays the answer once Redis is back. A new key still
// runs during the outage (fail_open), and the same key sent by another
// caller is another key: it runs too.
func TestFailOpen9AuditAnswerHeldInRedisNotRunAgain(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fo9State(g.addr, 300*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 10s}}
`, u))
	fo9Up(t, b)
	resp, first := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "before", "Authorization", "Bearer a")
	if resp.StatusCode != 200 {
		t.Fatalf("the call before the outage: %d %s", resp.StatusCode, first)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 1 })
	g.cutOff()
	fo9Down(t, b)

	resp, body := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "before", "Authorization", "Bearer a")
	fo9Refused(t, "a duplicate during the outage", resp, body)
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("the upstream ran %d times: the duplicate ran the call again during the outage", n)
	}
	if resp, body := do(t, "POST", b.base+"/charge", `{"n":2}`, "Idempotency-Key", "during", "Authorization", "Bearer a"); resp.StatusCode != 200 {
		t.Errorf("a new key during the outage: %d %s, want it run (fail_open)", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "before", "Authorization", "Bearer b"); resp.StatusCode != 200 ||
		resp.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the same key from another caller during the outage: %d replayed %q %s, want its own call", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	if n := up.calls.Load(); n != 3 {
		t.Errorf("the upstream ran %d times, want 3", n)
	}

	g.open()
	fo9Up(t, b)
	resp, body = do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "before", "Authorization", "Bearer a")
	if resp.StatusCode != 200 || body != first || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("the duplicate once Redis is back: %d %q replayed %q, want the replay of %q", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"), first)
	}
	if n := up.calls.Load(); n != 3 {
		t.Errorf("the upstream ran %d times, want 3", n)
	}
}

// TestFailOpen9AuditOtherReplicasKeysNotRunAgain: what a replica learned
// from Redis counts too. A key another replica answered, which this one
// replayed, and a key another replica is still running, which a duplicate
// on this one was waiting for, are not run again here when Redis goes
// away: the duplicate gets 503 state_unavailable, never a second call.
func TestFailOpen9AuditOtherReplicasKeysNotRunAgain(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	release := make(chan struct{})
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	var calls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.URL.Path == "/slow" {
			<-release
		}
		fmt.Fprintf(w, `{"call":%d}`, n)
	})
	cfg := fo9State(g.addr, 300*time.Millisecond) + fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 10s}}
`, u)
	a, b := startBallast(t, cfg), startBallast(t, cfg)
	fo9Up(t, a, b)
	if resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "done-on-b"); resp.StatusCode != 200 {
		t.Fatalf("the call on B: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 1 })
	if resp, _ := do(t, "POST", a.base+"/charge", `{}`, "Idempotency-Key", "done-on-b"); resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("A did not replay B's answer")
	}
	slowB := raSend(t, "POST", b.base+"/slow", `{}`, "Idempotency-Key", "running-on-b")
	waitFor(t, func() bool { return calls.Load() == 2 })
	dup := raSend(t, "POST", a.base+"/slow", `{}`, "Idempotency-Key", "running-on-b")
	waitFor(t, func() bool {
		return a.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})
	g.cutOff()
	fo9Down(t, a, b)

	d := raAnswer(t, dup)
	fo9Refused(t, "A's duplicate of B's running call, once Redis went away", d.resp, d.body)
	resp, body := do(t, "POST", a.base+"/charge", `{}`, "Idempotency-Key", "done-on-b")
	fo9Refused(t, "a duplicate on A of B's answer, during the outage", resp, body)
	if n := calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times for two keys", n)
	}
	close(release)
	released = true
	if code := raAnswer(t, slowB).resp.StatusCode; code != 200 {
		t.Errorf("B's call: %d", code)
	}
	g.open()
	fo9Up(t, a, b)
	if resp, body := do(t, "POST", a.base+"/charge", `{}`, "Idempotency-Key", "done-on-b"); resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("A's duplicate once Redis is back: %d %s, want the replay", resp.StatusCode, body)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times for two keys", n)
	}
}

// TestFailOpen9AuditExpiredRecordRunsAgain: what this replica remembers
// of Redis's records ends when they do. A key whose record has expired
// (its idempotency ttl is over) is free everywhere: a request with it
// during an outage runs, as it would with Redis up.
func TestFailOpen9AuditExpiredRecordRunsAgain(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	clock := policy.NewFakeClock(time.Now())
	b := startBallastClock(t, clock, fo9State(g.addr, 300*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header, ttl: 1m}, timeouts: {total: 10s}}
`, u))
	fo9Up(t, b)
	if resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "k"); resp.StatusCode != 200 {
		t.Fatalf("the call: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 1 })
	g.cutOff()
	fo9Down(t, b)
	resp, body := do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "k")
	fo9Refused(t, "a duplicate within the ttl", resp, body)
	clock.Advance(2 * time.Minute)
	resp, body = do(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "k")
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "" || up.calls.Load() != 2 {
		t.Errorf("the key past its ttl during the outage: %d replayed %q %s (calls %d), want it run", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body, up.calls.Load())
	}
}

// TestFailOpen9AuditWaiterInRedisWokenByLocalAnswer: a duplicate that
// found this replica's own claim in flight in Redis (it came in while
// the claim's reply was on its way back) waits in Redis. When Redis then
// hangs and the call's answer is kept in the local store, the duplicate
// gets it at once, not after its Redis read times out.
func TestFailOpen9AuditWaiterInRedisWokenByLocalAnswer(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fo9State(g.addr, 8*time.Second)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}
`, u))
	fo9Up(t, b)
	if resp, body := do(t, "POST", b.base+"/warm", `{}`, "Idempotency-Key", "warm"); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 1 })
	matched := g.delayReply("race-key")
	send := func() <-chan raResult {
		return raSend(t, "POST", b.base+"/charge", `{}`, "Idempotency-Key", "race-key")
	}
	first := send()
	<-matched // the first claim is in Redis; its reply is held
	dup := send()
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1
	})
	g.blackHole()
	fo9Down(t, b)
	g.releaseReply()
	a, d := raAnswer(t, first), raAnswer(t, dup)
	if rep := d.resp.Header.Get("Idempotent-Replayed"); a.resp.StatusCode != 200 || d.resp.StatusCode != 200 || d.body != a.body || rep != "true" {
		t.Errorf("first %d %q, duplicate %d %q replayed %q: want the duplicate to replay the first", a.resp.StatusCode, a.body, d.resp.StatusCode, d.body, rep)
	}
	if lag := d.at.Sub(a.at); lag > 1500*time.Millisecond {
		t.Errorf("the duplicate was answered %v after the first call: it waited out its Redis read instead of taking the answer kept locally", lag.Round(time.Millisecond))
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times for two keys", n)
	}
}

// TestFailOpen9AuditOutageJobsAreListed: jobs started during an outage
// live in the replica's local store; /status and ballast_jobs show them
// with the others, during the outage and once Redis is back.
func TestFailOpen9AuditOutageJobsAreListed(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	up, release := heldUpstream(t, 0)
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fo9State(g.addr, 300*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: long, match: {path_prefix: /}, upstream: %q, async: {enabled: true}}
`, u))
	fo9Up(t, b)
	g.cutOff()
	fo9Down(t, b)
	resp, body := do(t, "POST", b.base+"/x", `{}`, "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("a job during the outage: %d %s", resp.StatusCode, body)
	}
	id := strings.TrimPrefix(resp.Header.Get("Location"), "/_ballast/jobs/")
	waitFor(t, func() bool { return up.calls.Load() == 1 })
	running := func() []string {
		r, body := get(t, client(t), b.admin+"/status")
		if r.StatusCode != 200 {
			t.Fatalf("/status: %d", r.StatusCode)
		}
		var st struct {
			Jobs *struct {
				Running []struct {
					ID string `json:"id"`
				} `json:"running"`
			} `json:"jobs"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		var ids []string
		if st.Jobs != nil {
			for _, j := range st.Jobs.Running {
				ids = append(ids, j.ID)
			}
		}
		return ids
	}
	if ids := running(); len(ids) != 1 || ids[0] != id[:8] {
		t.Errorf("/status running jobs during the outage: %v, want [%s]", ids, id[:8])
	}
	if n := b.metric("ballast_jobs", map[string]string{"state": "running"}); n != 1 {
		t.Errorf("ballast_jobs{state=running} during the outage: %v, want 1", n)
	}
	g.open()
	fo9Up(t, b)
	if ids := running(); len(ids) != 1 || ids[0] != id[:8] {
		t.Errorf("/status running jobs once Redis is back: %v, want [%s]", ids, id[:8])
	}
	release()
	waitFor(t, func() bool { return b.metric("ballast_jobs", map[string]string{"state": "succeeded"}) == 1 })
	if n := b.metric("ballast_jobs", map[string]string{"state": "running"}); n != 0 {
		t.Errorf("ballast_jobs{state=running} after the job: %v", n)
	}
}

// TestFailOpen9AuditRememberedKeysBoundedAndScoped: what a replica
// remembers of Redis's records is bounded by state.max_records (the
// least recently seen key is forgotten first, and then runs during an
// outage, as config.md says); a route whose calls are safe to repeat
// (idempotency.idempotent) runs a remembered key locally rather than
// refuse it; and a keyed async request whose job Redis recorded does not
// start a second job during the outage.
func TestFailOpen9AuditRememberedKeysBoundedAndScoped(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf(`state:
  backend: redis
  max_records: 3
  redis: {address: %q, key_prefix: "fo9b:", on_error: fail_open, op_timeout: 300ms, read_timeout: 300ms, write_timeout: 300ms, dial_timeout: 300ms}
routes:
  - {name: safe, match: {path_prefix: /safe}, upstream: %q, idempotency: {mode: header, idempotent: true}}
  - {name: job, match: {path_prefix: /job}, upstream: %q, idempotency: {mode: header}, async: {enabled: true}}
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, g.addr, u, u, u))
	fo9Up(t, b)
	completes := 0.0
	send := func(path, key string, headers ...string) {
		t.Helper()
		resp, body := do(t, "POST", b.base+path, `{}`, append([]string{"Idempotency-Key", key}, headers...)...)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %d %s", path, key, resp.StatusCode, body)
		}
		completes++
		waitFor(t, func() bool {
			return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= completes
		})
	}
	send("/pay", "oldest")
	send("/safe", "safe")
	send("/job", "job", "Prefer", "respond-async, wait=5")
	send("/pay", "newest")
	g.cutOff()
	fo9Down(t, b)
	calls := up.calls.Load()

	resp, body := do(t, "POST", b.base+"/pay", `{}`, "Idempotency-Key", "newest")
	fo9Refused(t, "the most recently seen key", resp, body)
	resp, body = do(t, "POST", b.base+"/job", `{}`, "Idempotency-Key", "job", "Prefer", "respond-async")
	fo9Refused(t, "a keyed async request whose job Redis recorded", resp, body)
	if n := up.calls.Load(); n != calls {
		t.Errorf("refused keys ran %d calls", n-calls)
	}
	if resp, body := do(t, "POST", b.base+"/safe", `{}`, "Idempotency-Key", "safe"); resp.StatusCode != 200 || up.calls.Load() != calls+1 {
		t.Errorf("a remembered key on an idempotent route: %d %s, want it run locally", resp.StatusCode, body)
	}
	if resp, body := do(t, "POST", b.base+"/pay", `{}`, "Idempotency-Key", "oldest"); resp.StatusCode != 200 || up.calls.Load() != calls+2 {
		t.Errorf("the key seen before max_records others: %d %s, want it forgotten (run)", resp.StatusCode, body)
	}
	g.open()
	fo9Up(t, b)
}
