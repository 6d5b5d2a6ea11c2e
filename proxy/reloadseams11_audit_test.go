package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// A config hot reload landing while state is in flight: keyed calls and
// streams, held concurrency slots and queued waiters, rate-limit waits,
// open breakers and cool-downs, stored cache entries. The calls running
// finish on the table they started with and settle there; /status,
// /metrics and the decision trail then tell the truth about the config in
// force.

// rs11Answer is what a request sent in the background got.
type rs11Answer struct {
	status   int
	body     string
	replayed string
	err      error
}

// rs11Send sends a request in the background.
func rs11Send(t *testing.T, method, url, body string, headers ...string) <-chan rs11Answer {
	t.Helper()
	out := make(chan rs11Answer, 1)
	c := client(t)
	go func() {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			out <- rs11Answer{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- rs11Answer{resp.StatusCode, string(b), resp.Header.Get("Idempotent-Replayed"), err}
	}()
	return out
}

// rs11Wait reads an answer, failing the test after a bound.
func rs11Wait(t *testing.T, ch <-chan rs11Answer) rs11Answer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10s")
		return rs11Answer{}
	}
}

// rs11Held is a loopback upstream whose calls to /hold/... announce
// themselves on arrived and wait for release; it counts every call. With
// stream set, a held call sends its first event at once and the rest
// after release.
type rs11Held struct {
	url     string
	calls   atomic.Int64
	arrived chan string
	release chan struct{}
	once    sync.Once
}

func rs11Upstream(t *testing.T, stream bool) *rs11Held {
	u := &rs11Held{arrived: make(chan string, 16), release: make(chan struct{})}
	t.Cleanup(u.unblock)
	u.url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := u.calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		held := strings.HasPrefix(r.URL.Path, "/hold/")
		if stream {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(200)
			fmt.Fprintf(w, "data: first %d\n\n", n)
			w.(http.Flusher).Flush()
		}
		if held {
			u.arrived <- r.URL.Path
			select {
			case <-u.release:
			case <-r.Context().Done():
				return
			}
		}
		if stream {
			fmt.Fprintf(w, "data: last %d\n\n", n)
			return
		}
		fmt.Fprintf(w, "call %d", n)
	})
	return u
}

// unblock lets the held calls finish.
func (u *rs11Held) unblock() { u.once.Do(func() { close(u.release) }) }

func (u *rs11Held) waitArrived(t *testing.T) {
	t.Helper()
	select {
	case <-u.arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the held call never reached the upstream")
	}
}

func rs11Reload(t *testing.T, b *ballast, yaml string) {
	t.Helper()
	if code, body := opsReload(t, b, yaml); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
}

// TestReloadSeams11_KeyedCallSettlesAcrossIdempotencyReload: a keyed call
// running while a reload changes its route's idempotency block (ttl,
// on_conflict) settles its claim on the table it started with: a
// duplicate sent after the reload replays its answer, the upstream ran
// once. A reload to mode off forwards the duplicate (nothing guards it),
// and one back to header finds the stored answer again.
func TestReloadSeams11_KeyedCallSettlesAcrossIdempotencyReload(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			up := rs11Upstream(t, stream)
			cfg := func(idem string) string {
				return fmt.Sprintf("routes: [{name: pay, match: {path_prefix: /}, upstream: %q, idempotency: %s}]\n", up.url, idem)
			}
			b := startBallast(t, cfg("{mode: header, ttl: 1h}"))
			first := rs11Send(t, "POST", b.base+"/hold/charge", `{"n":1}`, "Idempotency-Key", "k1")
			up.waitArrived(t)
			rs11Reload(t, b, cfg("{mode: header, ttl: 10m, on_conflict: reject}"))
			up.unblock()
			a := rs11Wait(t, first)
			want := "call 1"
			if stream {
				want = "data: first 1\n\ndata: last 1\n\n"
			}
			if a.err != nil || a.status != 200 || a.body != want {
				t.Fatalf("the keyed call across the reload: %+v", a)
			}
			waitFor(t, func() bool {
				return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": "claimed"}) == 1
			})
			var dup rs11Answer
			waitFor(t, func() bool { // a stream's record is written as it ends
				dup = rs11Wait(t, rs11Send(t, "POST", b.base+"/hold/charge", `{"n":1}`, "Idempotency-Key", "k1"))
				return dup.status != 409
			})
			if dup.status != 200 || dup.body != want || dup.replayed != "true" || up.calls.Load() != 1 {
				t.Errorf("the duplicate after the reload: %+v, upstream calls %d; want a replay of the first answer", dup, up.calls.Load())
			}
			rs11Reload(t, b, cfg("{mode: off}"))
			if a := rs11Wait(t, rs11Send(t, "POST", b.base+"/charge", `{"n":1}`, "Idempotency-Key", "k1")); a.status != 200 || a.replayed != "" || up.calls.Load() != 2 {
				t.Errorf("with idempotency off: %+v, upstream calls %d; want it forwarded", a, up.calls.Load())
			}
			rs11Reload(t, b, cfg("{mode: header, ttl: 10m}"))
			dup = rs11Wait(t, rs11Send(t, "POST", b.base+"/hold/charge", `{"n":1}`, "Idempotency-Key", "k1"))
			if dup.status != 200 || dup.body != want || dup.replayed != "true" || up.calls.Load() != 2 {
				t.Errorf("after idempotency came back: %+v, upstream calls %d; want the stored answer", dup, up.calls.Load())
			}
		})
	}
}

// TestReloadSeams11_ConcurrencyReloadWithHeldSlotAndWaiter: a reload that
// changes a route's concurrency block while one call holds its only slot
// and another waits in its queue starts a fresh bulkhead for new calls
// (config.md); the held slot and the waiter finish on the old one, the
// waiter gets its answer, and once all have ended
// ballast_concurrency_inflight and _queue_depth read 0 and /status's
// limiter names the route with an empty queue.
func TestReloadSeams11_ConcurrencyReloadWithHeldSlotAndWaiter(t *testing.T) {
	up := rs11Upstream(t, false)
	cfg := func(max int) string {
		return fmt.Sprintf("routes: [{name: c, match: {path_prefix: /}, upstream: %q, concurrency: {max: %d, queue: 4, max_wait: 20s}, timeouts: {total: 30s}}]\n", up.url, max)
	}
	b := startBallast(t, cfg(1))
	labels := map[string]string{"route": "c"}
	holder := rs11Send(t, "GET", b.base+"/hold/1", "")
	up.waitArrived(t)
	waiter := rs11Send(t, "GET", b.base+"/hold/2", "")
	waitFor(t, func() bool { return b.metric("ballast_concurrency_queue_depth", labels) == 1 })
	rs11Reload(t, b, cfg(2))
	if got := b.metric("ballast_concurrency_inflight", labels); got != 0 {
		t.Errorf("the fresh bulkhead's inflight gauge right after the reload: %v, want 0", got)
	}
	third := rs11Send(t, "GET", b.base+"/x", "")
	if a := rs11Wait(t, third); a.status != 200 {
		t.Errorf("a new call after the reload: %+v, want it through the new bulkhead", a)
	}
	up.unblock()
	for i, ch := range []<-chan rs11Answer{holder, waiter} {
		if a := rs11Wait(t, ch); a.err != nil || a.status != 200 {
			t.Errorf("call %d across the reload: %+v", i+1, a)
		}
	}
	waitFor(t, func() bool {
		return b.metric("ballast_concurrency_inflight", labels) == 0 && b.metric("ballast_inflight_requests", labels) == 0
	})
	if got := b.metric("ballast_concurrency_queue_depth", labels); got != 0 {
		t.Errorf("queue depth after everything ended: %v", got)
	}
	st, body := statusJSON(t, b)
	routes, _ := st["routes"].([]any)
	if len(routes) != 1 || !strings.Contains(body, `"limiter":{"name":"c"`) {
		t.Errorf("/status after the reload: %s", body)
	}
	rs11Reload(t, b, fmt.Sprintf("routes: [{name: c, match: {path_prefix: /}, upstream: %q}]\n", up.url))
	if got := b.metric("ballast_concurrency_inflight", labels); got != -1 {
		t.Errorf("ballast_concurrency_inflight of a route whose concurrency limit was removed: %v, want no series", got)
	}
}

// TestReloadSeams11_RateLimitWaiterAcrossReload: a request waiting (on the
// fake clock) for a token when a reload changes the rate starts the new
// limit with a full bucket for new requests, while the waiter keeps the
// place it reserved in the old one: it goes when that token is due, not
// before, and is not refused.
func TestReloadSeams11_RateLimitWaiterAcrossReload(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	clock := policy.NewFakeClock(time.Now())
	cfg := func(rps string) string {
		return fmt.Sprintf("routes: [{name: l, match: {path_prefix: /}, upstream: %q, rate_limit: {rps: %s, burst: 1, max_wait: 10s}, timeouts: {total: 60s}}]\n", up, rps)
	}
	b := startBallastClock(t, clock, cfg("0.5"))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Fatalf("the bucket's token: %d", resp.StatusCode)
	}
	waiters := clock.Waiters()
	waiter := rs11Send(t, "GET", b.base+"/w", "")
	waitFor(t, func() bool { return clock.Waiters() > waiters })
	rs11Reload(t, b, cfg("0.25"))
	if got := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "l"}); got != 0.25 {
		t.Errorf("ballast_ratelimit_rate after the reload: %v, want 0.25", got)
	}
	if resp, _ := do(t, "GET", b.base+"/y", ""); resp.StatusCode != 200 {
		t.Errorf("a new request after the reload: %d, want the new bucket's token", resp.StatusCode)
	}
	clock.Advance(time.Second)
	select {
	case a := <-waiter:
		t.Fatalf("the waiter went before its token was due: %+v", a)
	default:
	}
	clock.Advance(time.Second)
	if a := rs11Wait(t, waiter); a.status != 200 || hits.Load() != 3 {
		t.Errorf("the waiter: %+v, upstream hits %d; want 200 and 3", a, hits.Load())
	}
}

// TestReloadSeams11_RemovedRouteCallsEndAfterReload: a stream and a
// buffered call running on routes a reload removes run to their end on
// the old table; their trail lines name their routes, and their ending
// leaves nothing of the removed routes behind: the status board keeps
// only the route in force (Board.Retain: requests still running may
// record into forgotten windows, never bring them back), /status names
// only it, and no series of a removed route reads a call in flight.
func TestReloadSeams11_RemovedRouteCallsEndAfterReload(t *testing.T) {
	streams, plain := rs11Upstream(t, true), rs11Upstream(t, false)
	keepOnly := fmt.Sprintf("routes:\n  - {name: keep, match: {path_prefix: /keep/}, upstream: %q}\n", plain.url)
	b := startBallast(t, keepOnly+fmt.Sprintf(`  - {name: gone, match: {path_prefix: /hold/s}, upstream: %q}
  - {name: gone2, match: {path_prefix: /hold/p}, upstream: %q}
`, streams.url, plain.url))
	if resp, _ := do(t, "GET", b.base+"/keep/x", ""); resp.StatusCode != 200 {
		t.Fatalf("the kept route: %d", resp.StatusCode)
	}
	stream := rs11Send(t, "GET", b.base+"/hold/s", "")
	streams.waitArrived(t)
	call := rs11Send(t, "GET", b.base+"/hold/p", "")
	plain.waitArrived(t)
	rs11Reload(t, b, keepOnly)
	streams.unblock()
	plain.unblock()
	if a := rs11Wait(t, stream); a.status != 200 || !strings.Contains(a.body, "last 1") {
		t.Fatalf("the stream across the reload: %+v", a)
	}
	if a := rs11Wait(t, call); a.status != 200 {
		t.Fatalf("the call across the reload: %+v", a)
	}
	waitFor(t, func() bool {
		l := b.logs.String()
		return strings.Contains(l, `"route":"gone"`) && strings.Contains(l, `"route":"gone2"`)
	})
	if n := b.srv.BoardRoutes(); n != 1 {
		t.Errorf("the status board keeps %d routes after the removed routes' calls ended, want 1", n)
	}
	if _, body := statusJSON(t, b); strings.Contains(body, `"gone`) {
		t.Errorf("/status names a removed route: %s", body)
	}
	for _, r := range []string{"gone", "gone2"} {
		if got := b.metric("ballast_inflight_requests", map[string]string{"route": r}); got > 0 {
			t.Errorf("ballast_inflight_requests{route=%s} %v after its call ended", r, got)
		}
	}
}

// TestReloadSeams11_RefusedReloadChangesNoGauge: a reload refused because
// one route does not build (a schema file that is not there), while it
// also changed another route's breaker settings and upstream, changes
// nothing: the open breaker stays open in ballast_breaker_state and on
// /status, no series of the upstream it named appears, the failure is
// counted and logged, and /status, the status page, /config and the log
// never show the secret a header rule takes from the environment.
func TestReloadSeams11_RefusedReloadChangesNoGauge(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	a, aAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "a")
	})
	other, otherAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "other") })
	good := fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, headers: {set: {Authorization: "Bearer ${KEY}"}}, retry: {attempts: 1}, breaker: {failures: 1, failure_ratio: 0, open_for: 1h}}
`, a)
	b := startBallast(t, good, "KEY=SECRETKEY11")
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Fatalf("the failing call: %d", resp.StatusCode)
	}
	failing.Store(false)
	open := map[string]string{"upstream": aAddr}
	if got := b.metric("ballast_breaker_state", open); got != float64(policy.StateOpen) {
		t.Fatalf("breaker gauge before the reload: %v", got)
	}
	bad := fmt.Sprintf(`
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q, headers: {set: {Authorization: "Bearer ${KEY}"}}, retry: {attempts: 1}, breaker: {failures: 5, failure_ratio: 0, open_for: 1h}}
  - {name: s, match: {path_prefix: /s/}, upstream: %q, breaker: {failures: 3}, validate: {schema_file: %q}}
`, a, other, t.TempDir()+"/missing.json")
	code, body := opsReload(t, b, bad)
	if code != 422 || !strings.Contains(body, "routes[1].validate") {
		t.Fatalf("the reload that should be refused: %d %s", code, body)
	}
	if got := b.metric("ballast_config_reloads_total", map[string]string{"result": "failure"}); got != 1 {
		t.Errorf("reload failures counted: %v", got)
	}
	if !strings.Contains(b.logs.String(), "config reload refused") {
		t.Error("the refusal was not logged")
	}
	if got := b.metric("ballast_breaker_state", open); got != float64(policy.StateOpen) {
		t.Errorf("ballast_breaker_state{upstream=%s} after the refused reload: %v, want %d (open): the breaker in force is open", aAddr, got, policy.StateOpen)
	}
	for _, name := range []string{"ballast_breaker_state", "ballast_cooldown_seconds"} {
		if got := b.metric(name, map[string]string{"upstream": otherAddr}); got != -1 {
			t.Errorf("%s{upstream=%s} after a refused reload named it: %v, want no series", name, otherAddr, got)
		}
	}
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Errorf("a call after the refused reload: %d, want 503 from the open breaker", resp.StatusCode)
	}
	st, sbody := statusJSON(t, b)
	if routes, _ := st["routes"].([]any); len(routes) != 1 || !strings.Contains(sbody, `"breaker":"open"`) || strings.Contains(sbody, otherAddr) {
		t.Errorf("/status after the refused reload: %s", sbody)
	}
	_, page := get(t, client(t), b.admin+"/")
	_, conf := get(t, client(t), b.admin+"/config")
	if all := sbody + page + conf + body + b.logs.String(); strings.Contains(all, "SECRETKEY11") {
		t.Error("the header rule's secret appears in /status, the page, /config, the 422 or the log")
	}
	// The next good reload still finds the open breaker it kept.
	rs11Reload(t, b, good+"\n")
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Errorf("after a good reload of the same settings: %d, want the open breaker kept", resp.StatusCode)
	}
}

// TestReloadSeams11_UpstreamChangeDropsOldCooldown: a reload that points a
// route with an open breaker and an active cool-down at another upstream
// starts the new upstream afresh (config.md: breakers and cool-downs are
// the upstream's): the next call goes there at once, /status shows the
// new upstream closed and cool-down free and never the old one, and the
// old upstream's series are gone.
func TestReloadSeams11_UpstreamChangeDropsOldCooldown(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	a, aAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(429)
	})
	bURL, bAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "b") })
	cfg := func(up string) string {
		return fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1, max_retry_after: 1s}, breaker: {failures: 1, failure_ratio: 0, open_for: 1h}}]\n", up)
	}
	b := startBallastClock(t, clock, cfg(a))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 429 {
		t.Fatalf("the 429: %d", resp.StatusCode)
	}
	if got := b.metric("ballast_cooldown_seconds", map[string]string{"upstream": aAddr}); got <= 0 {
		t.Fatalf("no cool-down on %s after its 429 (gauge %v)", aAddr, got)
	}
	rs11Reload(t, b, cfg(bURL))
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != "b" {
		t.Errorf("the first call after the reload: %d %q, want the new upstream at once", resp.StatusCode, body)
	}
	st, sbody := statusJSON(t, b)
	routes, _ := json.Marshal(st["routes"]) // the failures list keeps the 429 A gave, as it happened
	if strings.Contains(string(routes), aAddr) || !strings.Contains(sbody, bAddr) || !strings.Contains(sbody, `"breaker":"closed"`) ||
		!strings.Contains(sbody, `"cooldown_remaining_s":0`) {
		t.Errorf("/status after the upstream changed: %s", sbody)
	}
	for _, name := range []string{"ballast_cooldown_seconds", "ballast_breaker_state"} {
		if got := b.metric(name, map[string]string{"upstream": aAddr}); got != -1 {
			t.Errorf("%s{upstream=%s} after no route uses it: %v", name, aAddr, got)
		}
	}
}

// TestReloadSeams11_StaleAnswerAcrossCacheReload: a stored answer serves a
// failing upstream (cache mode fallback) across a reload that keeps the
// cache block; a reload that changes its ttl starts the cache afresh, so
// the failure is the agent's then; ballast_cache_bytes reads the cache in
// force, and /status's cache section counts the route's stale answer.
func TestReloadSeams11_StaleAnswerAcrossCacheReload(t *testing.T) {
	var failing atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "stored")
	})
	cfg := func(ttl, tag string) string {
		return fmt.Sprintf("routes: [{name: c, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}, headers: {set: {X-Tag: %s}}, cache: {mode: fallback, ttl: %s}}]\n", up, tag, ttl)
	}
	b := startBallast(t, cfg("1h", "one"))
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != "stored" {
		t.Fatalf("the answer to store: %d %q", resp.StatusCode, body)
	}
	failing.Store(true)
	rs11Reload(t, b, cfg("1h", "two"))
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 || body != "stored" {
		t.Errorf("the failing upstream after a reload that kept the cache: %d %q, want the stored answer", resp.StatusCode, body)
	}
	cacheBytes := map[string]string{"route": "c"}
	if got := b.metric("ballast_cache_bytes", cacheBytes); got <= 0 {
		t.Errorf("ballast_cache_bytes with the stored answer kept: %v", got)
	}
	if _, sbody := statusJSON(t, b); !strings.Contains(sbody, `"cache":{"hits":1`) {
		t.Errorf("/status's cache section after the stale answer: %s", sbody)
	}
	rs11Reload(t, b, cfg("2h", "two"))
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 503 {
		t.Errorf("the failing upstream after the cache started afresh: %d, want its 503", resp.StatusCode)
	}
	if got := b.metric("ballast_cache_bytes", cacheBytes); got != 0 {
		t.Errorf("ballast_cache_bytes of the fresh cache: %v, want 0", got)
	}
}
