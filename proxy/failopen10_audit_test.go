package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// fo10Route is the config of a replica on Redis at addr (key prefix fo10:,
// fail_open), with one keyed route pay to u whose records live ttl.
func fo10Config(addr, u string, ttl time.Duration) string {
	return fo9State(addr, 300*time.Millisecond) + fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /pay}, upstream: %q, idempotency: {mode: header, ttl: %s}, timeouts: {total: 20s}, retry: {attempts: 1}}
  - {name: job, match: {path_prefix: /job}, upstream: %q, idempotency: {mode: header, ttl: %s}, async: {enabled: true}}
`, u, ttl, u, ttl)
}

func fo10Reconciled(b *ballast, result string) float64 {
	return b.metric("ballast_state_reconciled_total", map[string]string{"result": result})
}

// fo10Replayed checks that resp is the replay of body.
func fo10Replayed(t *testing.T, what string, resp *http.Response, got, want string) {
	t.Helper()
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" || got != want {
		t.Errorf("%s: %d replayed=%q %s, want the replay of %s", what, resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), got, want)
	}
}

// fo10Replicas starts replicas A and B of fo10Config on Redis at addr,
// both sending to up, and waits until both see Redis up.
func fo10Replicas(t *testing.T, addr string, up *asUpstream) (a, b *ballast) {
	t.Helper()
	u, _ := upstream(t, up.handler)
	cfg := fo10Config(addr, u, time.Hour)
	a, b = startBallast(t, cfg), startBallast(t, cfg)
	fo9Up(t, a, b)
	return a, b
}

// fo10Fleet is Redis behind a gate, to cut replicas A and B off from it
// and let them back.
type fo10Fleet struct {
	rs   *redistest.Server
	gate *fo9Gate
	a, b *ballast
}

// startFo10Fleet starts Redis, its gate and fo10Replicas on it.
func startFo10Fleet(t *testing.T, up *asUpstream) *fo10Fleet {
	t.Helper()
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	a, b := fo10Replicas(t, g.addr, up)
	return &fo10Fleet{rs: rs, gate: g, a: a, b: b}
}

// outage cuts both replicas off from Redis and waits until both see it down.
func (f *fo10Fleet) outage(t *testing.T) {
	t.Helper()
	f.gate.cutOff()
	fo9Down(t, f.a, f.b)
}

// back lets both replicas reach Redis again and waits until both see it up.
func (f *fo10Fleet) back(t *testing.T) {
	t.Helper()
	f.gate.open()
	fo9Up(t, f.a, f.b)
}

// TestFailOpen10AuditOutageAnswerReplayedOnOtherReplica: the end-to-end
// promise of reconciliation. Redis goes away; replica A answers a keyed
// POST from its local store. Redis comes back; A writes the record to
// Redis (ballast_state_reconciled_total{result="published"}), keeping its
// remaining ttl, and drops its local copy. The agent's retry of the key
// sent to replica B is then replayed from Redis, not run a second time.
func TestFailOpen10AuditOutageAnswerReplayedOnOtherReplica(t *testing.T) {
	up := &asUpstream{}
	f := startFo10Fleet(t, up)
	a, b := f.a, f.b
	f.outage(t)

	resp, first := do(t, "POST", a.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "outage-1")
	if resp.StatusCode != 200 || up.calls.Load() != 1 {
		t.Fatalf("the call on A during the outage: %d %s (calls %d)", resp.StatusCode, first, up.calls.Load())
	}
	if n := fo10Reconciled(a, "published"); n != 0 {
		t.Fatalf("published %v records while Redis was down", n)
	}
	f.back(t)
	waitFor(t, func() bool { return fo10Reconciled(a, "published") == 1 })

	resp, body := do(t, "POST", b.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "outage-1")
	fo10Replayed(t, "the retry on B once Redis is back", resp, body, first)
	resp, body = do(t, "POST", a.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "outage-1")
	fo10Replayed(t, "the retry on A", resp, body, first)
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times for one key across the fleet, want 1", n)
	}
	if n := fo10Reconciled(a, "conflict") + fo10Reconciled(b, "conflict"); n != 0 {
		t.Errorf("%v conflicts, want none", n)
	}

	// The record kept its remaining time to live: it expires in Redis
	// within the hour it was given, not never, and not a day later.
	c := redis.NewClient(&redis.Options{Addr: f.rs.Addr()})
	defer c.Close()
	ctx := context.Background()
	keys, err := c.Keys(ctx, "fo9:idem:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("records in Redis: %v %v, want one", keys, err)
	}
	if ttl, err := c.PTTL(ctx, keys[0]).Result(); err != nil || ttl <= 0 || ttl > time.Hour {
		t.Errorf("the published record's PTTL is %v (%v), want its remaining ttl, at most 1h", ttl, err)
	}
}

// TestFailOpen10AuditConflictKeepsRedisRecord: a key Redis holds a record
// of that this replica never saw (another replica answered it before the
// outage) runs locally during the outage, as config.md says. Once Redis
// is back, that is a conflict: Redis's record stays (it is not
// overwritten), the local one is dropped, so this replica stops answering
// from its own copy and replays Redis's; the conflict is counted, and one
// WARN line gives the count, never the key.
func TestFailOpen10AuditConflictKeepsRedisRecord(t *testing.T) {
	up := &asUpstream{}
	f := startFo10Fleet(t, up)
	a, b := f.a, f.b
	resp, onB := do(t, "POST", b.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "secret-key-7")
	if resp.StatusCode != 200 {
		t.Fatalf("the call on B: %d %s", resp.StatusCode, onB)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "complete"}) >= 1 })
	f.outage(t)
	resp, onA := do(t, "POST", a.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "secret-key-7")
	if resp.StatusCode != 200 || onA == onB {
		t.Fatalf("the key on A during the outage: %d %s, want it run locally (A never saw it)", resp.StatusCode, onA)
	}
	f.back(t)
	waitFor(t, func() bool { return fo10Reconciled(a, "conflict") == 1 })

	for name, r := range map[string]*ballast{"A": a, "B": b} {
		resp, body := do(t, "POST", r.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "secret-key-7")
		fo10Replayed(t, "the key on "+name+" after reconciliation", resp, body, onB)
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times, want 2 (once before, once during the outage)", n)
	}
	if n := fo10Reconciled(a, "published"); n != 0 {
		t.Errorf("published %v: Redis's record was overwritten", n)
	}
	logs := a.logs.String()
	var warns []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"level":"WARN"`) && strings.Contains(line, "conflicts") {
			warns = append(warns, line)
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], `"conflicts":1`) {
		t.Errorf("WARN lines about conflicts: %q, want one with the count 1", warns)
	}
	if strings.Contains(logs, "secret-key-7") {
		t.Errorf("the logs name the idempotency key")
	}
}

// TestFailOpen10AuditInFlightClaimPublished: a call claimed locally during
// the outage and still running when Redis comes back is published to
// Redis as in flight: a duplicate sent to another replica waits for it
// (it does not run the call again) and replays its answer once the call
// ends. When the call ends with nothing to keep (a 502, not stored), its
// claim is released in Redis too, and the waiting duplicate runs the call
// itself, as it would have with Redis up throughout.
func TestFailOpen10AuditInFlightClaimPublished(t *testing.T) {
	for _, tc := range []struct {
		name      string
		status    int
		wantCalls int64
	}{
		{name: "answered", status: 200, wantCalls: 1},
		{name: "released", status: http.StatusBadGateway, wantCalls: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, release := heldUpstream(t, tc.status)
			f := startFo10Fleet(t, up)
			a, b := f.a, f.b
			f.outage(t)
			send := func(r *ballast) <-chan raResult {
				return raSend(t, "POST", r.base+"/pay/charge", `{"n":1}`, "Idempotency-Key", "running")
			}
			first := send(a)
			waitFor(t, func() bool { return up.calls.Load() == 1 })
			f.back(t)
			waitFor(t, func() bool { return fo10Reconciled(a, "published") == 1 })
			claims := b.metric("ballast_state_store_seconds", map[string]string{"op": "claim"})
			dup := send(b)
			waitFor(t, func() bool {
				return b.metric("ballast_state_store_seconds", map[string]string{"op": "claim"}) > claims
			})
			if n := up.calls.Load(); n != 1 {
				t.Fatalf("the duplicate on B ran the call (%d calls) while A runs it", n)
			}
			release()
			fa, d := raAnswer(t, first), raAnswer(t, dup)
			dRep := d.resp.Header.Get("Idempotent-Replayed")
			if fa.resp.StatusCode != tc.status {
				t.Errorf("A answered %d %s, want %d", fa.resp.StatusCode, fa.body, tc.status)
			}
			if tc.status == 200 && (d.resp.StatusCode != 200 || dRep != "true" || d.body != fa.body) {
				t.Errorf("B's duplicate: %d replayed=%q %s, want the replay of %s", d.resp.StatusCode, dRep, d.body, fa.body)
			}
			if tc.status != 200 && (d.resp.StatusCode != tc.status || dRep != "") {
				t.Errorf("B's duplicate of a released claim: %d replayed=%q, want its own call's %d", d.resp.StatusCode, dRep, tc.status)
			}
			if n := up.calls.Load(); n != tc.wantCalls {
				t.Errorf("the upstream ran %d times, want %d", n, tc.wantCalls)
			}
		})
	}
}

// TestFailOpen10AuditRedisClaimRestoredAndCompleted covers this replica's
// own Redis claims. When Redis restarts empty while A still runs a call
// it claimed in Redis, A writes the claim back, so a duplicate on B waits
// for it instead of running it. When Redis kept A's claim but could not
// take its answer (the call ended during a network cut), A completes the
// claim with the answer it kept locally, so B replays it instead of
// reading the claim as in progress, then outcome unknown.
func TestFailOpen10AuditRedisClaimRestoredAndCompleted(t *testing.T) {
	t.Run("restarted empty while the call runs", func(t *testing.T) {
		rs := redistest.Start(t)
		up, release := heldUpstream(t, 0)
		a, b := fo10Replicas(t, rs.Addr(), up)
		first := raSend(t, "POST", a.base+"/pay/charge", `{}`, "Idempotency-Key", "restored")
		waitFor(t, func() bool { return up.calls.Load() == 1 })
		rs.Kill()
		fo9Down(t, a, b)
		if err := rs.Restart(); err != nil {
			t.Fatal(err)
		}
		fo9Up(t, a, b)
		waitFor(t, func() bool { return fo10Reconciled(a, "published") == 1 })
		dup := raSend(t, "POST", b.base+"/pay/charge", `{}`, "Idempotency-Key", "restored")
		waitFor(t, func() bool { return b.metric("ballast_state_store_seconds", map[string]string{"op": "claim"}) >= 1 })
		if n := up.calls.Load(); n != 1 {
			t.Fatalf("B ran the call (%d calls) while A runs it", n)
		}
		release()
		want := raAnswer(t, first).body
		d := raAnswer(t, dup)
		fo10Replayed(t, "B's duplicate", d.resp, d.body, want)
		if n := up.calls.Load(); n != 1 {
			t.Errorf("the upstream ran %d times, want 1", n)
		}
	})
	t.Run("answer Redis did not take", func(t *testing.T) {
		up, release := heldUpstream(t, 0)
		f := startFo10Fleet(t, up)
		a, b := f.a, f.b
		first := raSend(t, "POST", a.base+"/pay/charge", `{}`, "Idempotency-Key", "kept")
		waitFor(t, func() bool { return up.calls.Load() == 1 })
		f.outage(t)
		release()
		want := raAnswer(t, first).body
		f.back(t)
		waitFor(t, func() bool { return fo10Reconciled(a, "published") == 1 })
		resp, body := do(t, "POST", b.base+"/pay/charge", `{}`, "Idempotency-Key", "kept")
		fo10Replayed(t, "the key on B", resp, body, want)
		if n := up.calls.Load(); n != 1 {
			t.Errorf("the upstream ran %d times, want 1", n)
		}
		if n := fo10Reconciled(a, "conflict"); n != 0 {
			t.Errorf("A's own claim counted as %v conflicts", n)
		}
	})
}

// TestFailOpen10AuditOutageJobReachesFleet: a keyed async job started on A
// during the outage runs there; once it has finished and Redis is back,
// the job and its key's record are in Redis: B answers GET
// /_ballast/jobs/{id} with its result, and replays the keyed request with
// the job rather than starting a second one.
func TestFailOpen10AuditOutageJobReachesFleet(t *testing.T) {
	up := &asUpstream{}
	f := startFo10Fleet(t, up)
	a, b := f.a, f.b
	f.outage(t)
	resp, body := do(t, "POST", a.base+"/job/x", `{}`, "Prefer", "respond-async", "Idempotency-Key", "job-1")
	if resp.StatusCode != 202 {
		t.Fatalf("the job on A during the outage: %d %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	waitFor(t, func() bool { return a.metric("ballast_jobs", map[string]string{"state": "succeeded"}) == 1 })
	f.back(t)
	waitFor(t, func() bool { return fo10Reconciled(a, "published") == 2 }) // the record and the job
	resp, body = do(t, "GET", b.base+loc, "")
	if resp.StatusCode != 200 || !strings.Contains(body, `{"call":1}`) {
		t.Errorf("GET %s on B: %d %s, want the job's result", loc, resp.StatusCode, body)
	}
	resp, body = do(t, "POST", b.base+"/job/x", `{}`, "Prefer", "respond-async", "Idempotency-Key", "job-1")
	if resp.Header.Get("Idempotent-Replayed") != "true" || resp.StatusCode/100 != 2 {
		t.Errorf("the keyed request on B: %d replayed=%q %s, want the replay of A's job", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// TestFailOpen10AuditShutdownStopsReconciliation: a reconciliation pass
// waiting on Redis (a reply that does not come) holds Shutdown up for at
// most the Redis operation in flight, bounded by op_timeout (go-redis
// does not abandon a read when its context is cancelled), and its
// goroutine ends (the package's goleak check).
func TestFailOpen10AuditShutdownStopsReconciliation(t *testing.T) {
	rs := redistest.Start(t)
	g := fo9StartGate(t, rs.Addr())
	up := &asUpstream{}
	u, _ := upstream(t, up.handler)
	const opTimeout = 2 * time.Second
	a := startBallast(t, fo9State(g.addr, opTimeout)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, u))
	fo9Up(t, a)
	g.cutOff()
	fo9Down(t, a)
	if resp, body := do(t, "POST", a.base+"/charge", `{}`, "Idempotency-Key", "held-reconcile"); resp.StatusCode != 200 {
		t.Fatalf("the call during the outage: %d %s", resp.StatusCode, body)
	}
	matched := g.delayReply("held-reconcile")
	g.open()
	fo9Up(t, a)
	<-matched // the pass's write is in Redis; its reply is held
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := a.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*opTimeout {
		t.Errorf("Shutdown took %v, want at most the pass's Redis operation in flight (op_timeout %v)", d.Round(time.Millisecond), opTimeout)
	}
	if n := fo10Reconciled(a, "published"); n != 0 {
		t.Errorf("published %v: the pass whose reply never came counted it", n)
	}
}
