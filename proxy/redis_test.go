package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// fleet starts n ballast replicas sharing one Redis.
func fleet(t *testing.T, redisAddr string, n int, routes string, onError string) []*ballast {
	var out []*ballast
	prefix := time.Now().UnixNano() % 1e6 // one prefix: the replicas share state
	for range n {
		out = append(out, startBallast(t, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, key_prefix: "t%d:", on_error: %s, op_timeout: 200ms, read_timeout: 200ms, write_timeout: 200ms, dial_timeout: 200ms}
%s`, redisAddr, prefix, onError, routes)))
	}
	// Ready once its start-up work is done (resuming the fleet's
	// orphaned jobs among it), which would otherwise run beside the
	// test's first requests.
	for _, b := range out {
		waitFor(t, func() bool {
			resp, _ := do(t, "GET", b.admin+"/readyz", "")
			return resp.StatusCode == 200
		})
	}
	return out
}

// TestFleetSharesOneQuota alternates requests between two replicas under
// one limiter of burst 4 that refills one request per 1,000 seconds (on
// the Redis server's clock, which the fleet shares): the fleet admits the
// burst once, 4 requests, where two local buckets would admit 8.
func TestFleetSharesOneQuota(t *testing.T) {
	rs := redistest.Start(t)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	prefix := fmt.Sprintf("q%d:", time.Now().UnixNano()%1e6)
	var replicas []*ballast
	for range 2 {
		replicas = append(replicas, startBallast(t, fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: %q}}
limiters: {provider: {rps: 0.001, burst: 4}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, rate_limit: {limiter: provider, max_wait: 0s}}
`, rs.Addr(), prefix, up)))
	}
	admitted := make([]int, len(replicas))
	for i := range 16 {
		resp, _ := do(t, "GET", replicas[i%2].base+"/x", "")
		switch resp.StatusCode {
		case 200:
			admitted[i%2]++
		case 429:
		default:
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	if hits.Load() != 4 || admitted[0] != 2 || admitted[1] != 2 {
		t.Errorf("the upstream saw %d requests, admitted %v per replica; want 4, 2 by each: one quota for the fleet", hits.Load(), admitted)
	}
}

func TestFleetIdempotency(t *testing.T) {
	rs := redistest.Start(t)
	se := &sideEffects{delay: 400 * time.Millisecond}
	up, _ := upstream(t, se.handler)
	prefix := fmt.Sprintf("i%d:", time.Now().UnixNano()%1e6)
	var a, b *ballast
	for i := range 2 {
		bl := startBallast(t, fmt.Sprintf(`
state: {backend: redis, redis: {address: %q, key_prefix: %q}}
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, rs.Addr(), prefix, up))
		if i == 0 {
			a = bl
		} else {
			b = bl
		}
	}
	// An agent attached on B receives the result of the call running on A.
	done := raSend(t, "POST", a.base+"/charge", `{"n":1}`, "Idempotency-Key", "k1")
	waitFor(t, func() bool { return se.calls.Load() == 1 })
	resp, body := do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "k1")
	if resp.StatusCode != 200 || !strings.Contains(body, `"charge":1`) {
		t.Fatalf("attached on B: %d %q", resp.StatusCode, body)
	}
	if first := raAnswer(t, done).body; first != body {
		t.Errorf("A answered %q, B %q", first, body)
	}
	// A key claimed through A replays through B.
	resp, body = do(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "k1")
	if resp.Header.Get("Idempotent-Replayed") != "true" || !strings.Contains(body, `"charge":1`) {
		t.Errorf("replay through B: %q %q", resp.Header.Get("Idempotent-Replayed"), body)
	}
	if se.calls.Load() != 1 {
		t.Errorf("the upstream ran %d times across the fleet", se.calls.Load())
	}
}

func TestFleetSharesCooldown(t *testing.T) {
	rs := redistest.Start(t)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
			return
		}
		io.WriteString(w, "ok")
	})
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up), "fail_open")
	if resp, _ := do(t, "GET", reps[0].base+"/x", "", "X-Ballast-Timeout", "2s"); resp.StatusCode != 429 {
		t.Fatalf("replica A: %d", resp.StatusCode)
	}
	// Replica B learns of the pause from Redis and does not send.
	waitFor(t, func() bool { return reps[1].metric("ballast_cooldown_seconds", nil) > 25 })
	resp, _ := do(t, "GET", reps[1].base+"/x", "", "X-Ballast-Timeout", "2s")
	if resp.StatusCode != 429 || hits.Load() != 1 {
		t.Errorf("replica B during the fleet's cool-down: %d, upstream hits %d", resp.StatusCode, hits.Load())
	}
}

func TestRedisOutage(t *testing.T) {
	for _, mode := range []string{"fail_open", "fail_closed"} {
		t.Run(mode, func(t *testing.T) {
			rs := redistest.Start(t)
			se := &sideEffects{}
			up, _ := upstream(t, se.handler)
			b := fleet(t, rs.Addr(), 1, fmt.Sprintf(`
routes:
  - {name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}, rate_limit: {rps: 1000}}
`, up), mode)[0]
			if resp, _ := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "before"); resp.StatusCode != 200 {
				t.Fatalf("with Redis up: %d", resp.StatusCode)
			}
			rs.Kill()
			failed := 0
			for i := range 10 {
				resp, body := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", fmt.Sprintf("during-%d", i))
				if resp.StatusCode != 200 {
					failed++
					if mode == "fail_closed" && (resp.StatusCode != 503 || !strings.Contains(body, "state_unavailable")) {
						t.Errorf("fail_closed answered %d %s", resp.StatusCode, body)
					}
				}
			}
			if mode == "fail_open" && failed > 0 {
				t.Errorf("%d agent requests failed during the outage with fail_open", failed)
			}
			if mode == "fail_closed" && failed != 10 {
				t.Errorf("fail_closed let %d of 10 requests through without Redis", 10-failed)
			}
			waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 0 })
			if err := rs.Restart(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return b.metric("ballast_state_backend_up", nil) == 1 })
			if resp, _ := do(t, "POST", b.base+"/x", "{}", "Idempotency-Key", "after"); resp.StatusCode != 200 {
				t.Errorf("after Redis came back: %d", resp.StatusCode)
			}
		})
	}
}
