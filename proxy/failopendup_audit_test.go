package proxy_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// TestFailOpenDupAuditClaimHeldInRedis: docs/config.md (state.redis)
// promises that under fail_open "runs once" holds per replica during an
// outage. A keyed call this replica claimed in Redis before the outage,
// still running, must not run again for a duplicate sent to the same
// replica while Redis is down (the local store has never seen the key), nor
// once Redis is back (it restarted empty, so it has lost the claim): the
// duplicate attaches to the running call and replays its answer, and so
// does a retry after the call ended.
func TestFailOpenDupAuditClaimHeldInRedis(t *testing.T) {
	tests := []struct {
		name string
		// dupDown: the duplicate is sent while Redis is down (else only
		// once it is back); backBeforeEnd: Redis is back before the call
		// ends (else it ends during the outage).
		dupDown, backBeforeEnd bool
	}{
		{name: "duplicate and answer during the outage", dupDown: true},
		{name: "duplicate during the outage, answer after it", dupDown: true, backBeforeEnd: true},
		{name: "duplicate and answer after the outage", backBeforeEnd: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := redistest.Start(t)
			up, release := heldUpstream(t, 0)
			u, _ := upstream(t, up.handler)
			b := startBallast(t, sfRedisState(rs.Addr(), "fail_open", 200*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}}
`, u))
			send := func() <-chan raResult {
				return raSend(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "dup-1")
			}
			// answer is how the request on ch was answered, read on the
			// test's goroutine.
			answer := func(ch <-chan raResult) string {
				r := raAnswer(t, ch)
				return fmt.Sprint(r.resp.StatusCode, " replayed=", r.resp.Header.Get("Idempotent-Replayed"), " ", r.body)
			}
			first := send()
			waitFor(t, func() bool { return up.calls.Load() == 1 })
			if n := b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "claimed"}); n != 1 {
				t.Fatalf("claimed %v, want the first call claimed (in Redis)", n)
			}
			rs.Kill()
			waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
			comeBack := func() {
				if err := rs.Restart(); err != nil {
					t.Fatal(err)
				}
				waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })
			}
			if !tc.dupDown {
				comeBack()
			}
			dup := send()
			waitFor(t, func() bool {
				return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1 ||
					up.calls.Load() > 1
			})
			if tc.dupDown && tc.backBeforeEnd {
				comeBack()
			}
			release()
			a, d := answer(first), answer(dup)
			if want := `200 replayed= {"call":1}`; a != want {
				t.Errorf("the first call answered %q, want %q", a, want)
			}
			if want := `200 replayed=true {"call":1}`; d != want {
				t.Errorf("its duplicate answered %q, want the replay %q", d, want)
			}
			if !tc.backBeforeEnd {
				comeBack()
			}
			if r, body := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "dup-1"); r.StatusCode != 200 ||
				r.Header.Get("Idempotent-Replayed") != "true" || body != `{"call":1}` {
				t.Errorf("a retry once Redis is back: %d replayed=%q %s, want the replay of call 1", r.StatusCode, r.Header.Get("Idempotent-Replayed"), body)
			}
			if n := up.calls.Load(); n != 1 {
				t.Errorf("the upstream ran %d times for one key on one replica, want 1", n)
			}
		})
	}
}

// TestFailOpenDupAuditReleasedClaimFreesTheKey: a claim this replica held
// in Redis that ends without an answer to keep (the upstream failed with a
// 5xx, which is not stored by default) frees the key for the duplicate
// that attached to it during the outage: the duplicate runs the call
// itself rather than waiting for the lease to end.
func TestFailOpenDupAuditReleasedClaimFreesTheKey(t *testing.T) {
	rs := redistest.Start(t)
	up, release := heldUpstream(t, http.StatusBadGateway)
	u, _ := upstream(t, up.handler)
	b := startBallast(t, sfRedisState(rs.Addr(), "fail_open", 200*time.Millisecond)+fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, timeouts: {total: 20s}, retry: {attempts: 1}}
`, u))
	send := func() <-chan raResult {
		return raSend(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "dup-2")
	}
	first := send()
	waitFor(t, func() bool { return up.calls.Load() == 1 })
	rs.Kill()
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
	dup := send()
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "attached"}) >= 1 ||
			up.calls.Load() > 1
	})
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("the duplicate ran the call (%d calls) while the first was running", n)
	}
	release()
	if a, d := raAnswer(t, first).resp.StatusCode, raAnswer(t, dup).resp.StatusCode; a != http.StatusBadGateway || d != http.StatusBadGateway {
		t.Errorf("statuses %d and %d, want the upstream's 502 twice", a, d)
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times, want 2: the released key runs again for the duplicate", n)
	}
	if err := rs.Restart(); err != nil { // the Redis client stops redialling
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })
}
