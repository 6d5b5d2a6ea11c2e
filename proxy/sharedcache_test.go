package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/redis/go-redis/v9"
)

// agentHost is the Host every request of these tests names. The cache key
// includes the host the agent addressed; sidecars reached by one name (as
// they are in a fleet) share entries, replicas on different test ports do
// only when the agent sends the same Host.
const agentHost = "tools.internal"

// sharedPair starts two replicas sharing rs, one clock and one key prefix,
// with a single route "tool" to up whose cache block is cacheYAML plus
// shared: true.
func sharedPair(t *testing.T, rs *redistest.Server, clock policy.Clock, up, cacheYAML, extra, onError string) (a, b *ballast) {
	t.Helper()
	prefix := fmt.Sprintf("sc%d:", time.Now().UnixNano()%1e6)
	var reps []*ballast
	for range 2 {
		reps = append(reps, startBallastClock(t, clock, fmt.Sprintf(`
state:
  backend: redis
  redis: {address: %q, key_prefix: %q, on_error: %s, op_timeout: 200ms, read_timeout: 200ms, write_timeout: 200ms, dial_timeout: 200ms}
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    cache: {%s, shared: true}
%s`, rs.Addr(), prefix, onError, up, cacheYAML, extra)))
	}
	return reps[0], reps[1]
}

// hostDo sends a request naming agentHost (net/http takes the Host from
// Request.Host, never from Header).
func hostDo(t *testing.T, method, url string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = agentHost
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, string(body)
}

// sharedEntries counts the route's entries in Redis.
func sharedEntries(t *testing.T, rs *redistest.Server) int {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), "*cache:{tool}:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// whoAmI answers with the caller's Authorization, counting requests, or
// 503 while down.
type whoAmI struct {
	hits atomic.Int64
	down atomic.Bool
}

func (w *whoAmI) handler(rw http.ResponseWriter, r *http.Request) {
	w.hits.Add(1)
	if w.down.Load() {
		rw.WriteHeader(503)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(rw, `{"user":%q,"path":%q}`, r.Header.Get("Authorization"), r.URL.Path)
}

func TestSharedCacheFreshHitOnAnotherReplica(t *testing.T) {
	rs := redistest.Start(t)
	who := &whoAmI{}
	up, _ := upstream(t, who.handler)
	clock := policy.NewFakeClock(time.Now())
	a, b := sharedPair(t, rs, clock, up, "mode: fresh, ttl: 1m", "", "fail_open")

	resp, first := hostDo(t, "GET", a.base+"/weather?city=x", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("through A: %d Cache-Status %q", resp.StatusCode, resp.Header.Get("Cache-Status"))
	}
	waitFor(t, func() bool { return sharedEntries(t, rs) == 1 }) // the write is asynchronous
	clock.Advance(30 * time.Second)

	resp, body := hostDo(t, "GET", b.base+"/weather?city=x", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || body != first {
		t.Fatalf("through B: %d %q, want A's answer %q", resp.StatusCode, body, first)
	}
	if cs := resp.Header.Get("Cache-Status"); !strings.HasPrefix(cs, "ballast; hit") {
		t.Errorf("B's Cache-Status %q, want a hit", cs)
	}
	if age := resp.Header.Get("Age"); age != "30" {
		t.Errorf("B's Age %q, want 30 (measured from when A stored it)", age)
	}
	if resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("stored headers not replayed: Content-Type %q", resp.Header.Get("Content-Type"))
	}
	if who.hits.Load() != 1 {
		t.Errorf("the upstream saw %d requests across the fleet, want 1", who.hits.Load())
	}
	if got := b.metric("ballast_cache_requests_total", map[string]string{"route": "tool", "result": "hit"}); got != 1 {
		t.Errorf("B counted %v hits", got)
	}
	// B now holds the entry itself: Redis is the second tier, not the only one.
	rs.Kill()
	resp, body = hostDo(t, "GET", b.base+"/weather?city=x", "Authorization", "Bearer alice")
	if !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") || body != first || who.hits.Load() != 1 {
		t.Errorf("B's local tier after Redis went away: Cache-Status %q body %q upstream hits %d",
			resp.Header.Get("Cache-Status"), body, who.hits.Load())
	}
}

func TestSharedCacheStaleIfErrorOnAnotherReplica(t *testing.T) {
	rs := redistest.Start(t)
	who := &whoAmI{}
	up, _ := upstream(t, who.handler)
	clock := policy.NewFakeClock(time.Now())
	a, b := sharedPair(t, rs, clock, up, "mode: fallback, stale: 1h", "    retry: {attempts: 1}", "fail_open")

	resp, first := hostDo(t, "GET", a.base+"/weather?city=x", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("through A: %d Cache-Status %q", resp.StatusCode, resp.Header.Get("Cache-Status"))
	}
	waitFor(t, func() bool { return sharedEntries(t, rs) == 1 })
	who.down.Store(true)
	clock.Advance(90 * time.Second)

	resp, body := hostDo(t, "GET", b.base+"/weather?city=x", "Authorization", "Bearer alice")
	if resp.StatusCode != 200 || body != first {
		t.Fatalf("B with the upstream down: %d %q, want A's stored answer %q", resp.StatusCode, body, first)
	}
	cs := resp.Header.Get("Cache-Status")
	if !strings.Contains(cs, "fwd=stale") || !strings.Contains(cs, "fwd-status=503") || !strings.Contains(cs, "detail=stale-if-error") {
		t.Errorf("B's Cache-Status %q, want stale-if-error marking", cs)
	}
	if age := resp.Header.Get("Age"); age != "90" {
		t.Errorf("B's Age %q, want 90", age)
	}
	if got := b.metric("ballast_cache_requests_total", map[string]string{"route": "tool", "result": "stale"}); got != 1 {
		t.Errorf("B counted %v stale serves", got)
	}
	// Another caller never gets alice's answer, from either tier.
	resp, body = hostDo(t, "GET", b.base+"/weather?city=x", "Authorization", "Bearer bob")
	if resp.StatusCode != 503 || strings.Contains(body, "alice") {
		t.Errorf("bob on B with the upstream down: %d %q; another tenant's entry must never be served", resp.StatusCode, body)
	}
}

func TestSharedCacheKeepsTenantsApart(t *testing.T) {
	rs := redistest.Start(t)
	who := &whoAmI{}
	up, _ := upstream(t, who.handler)
	a, b := sharedPair(t, rs, nil, up, "mode: fresh, ttl: 1m", "", "fail_open")

	if resp, _ := hostDo(t, "GET", a.base+"/x", "Authorization", "Bearer alice"); resp.StatusCode != 200 {
		t.Fatalf("through A: %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return sharedEntries(t, rs) == 1 })
	tests := []struct {
		name    string
		headers []string
		want    string
	}{
		{"another Authorization", []string{"Authorization", "Bearer bob"}, `"user":"Bearer bob"`},
		{"no Authorization", nil, `"user":""`},
		{"an API key beside alice's Authorization", []string{"Authorization", "Bearer alice", "X-Api-Key", "k2"}, `"user":"Bearer alice"`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := hostDo(t, "GET", b.base+"/x", tt.headers...)
			if resp.StatusCode != 200 || !strings.Contains(body, tt.want) {
				t.Errorf("B answered %d %q, want %s", resp.StatusCode, body, tt.want)
			}
			if strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") {
				t.Errorf("B served a hit (%q) to a different caller", resp.Header.Get("Cache-Status"))
			}
			if got, want := who.hits.Load(), int64(2+i); got != want {
				t.Errorf("upstream hits %d, want %d: the request must go upstream", got, want)
			}
		})
	}
	// The same caller still hits.
	resp, _ := hostDo(t, "GET", b.base+"/x", "Authorization", "Bearer alice")
	if !strings.HasPrefix(resp.Header.Get("Cache-Status"), "ballast; hit") {
		t.Errorf("alice on B: Cache-Status %q, want a hit", resp.Header.Get("Cache-Status"))
	}
}

func TestSharedCacheSurvivesRedisOutage(t *testing.T) {
	for _, mode := range []string{"fail_open", "fail_closed"} {
		t.Run(mode, func(t *testing.T) {
			rs := redistest.Start(t)
			who := &whoAmI{}
			up, _ := upstream(t, who.handler)
			a, b := sharedPair(t, rs, nil, up, "mode: fresh, ttl: 1m, stale: 1h",
				"    retry: {attempts: 1}\n    static_fallback: {status: 503, body: '{\"error\":\"static\"}'}", mode)
			if resp, _ := hostDo(t, "GET", a.base+"/before"); resp.StatusCode != 200 {
				t.Fatalf("with Redis up: %d", resp.StatusCode)
			}
			waitFor(t, func() bool { return sharedEntries(t, rs) == 1 })
			rs.Kill()
			// Misses on both replicas, and B asking for what only Redis had:
			// each goes upstream and succeeds.
			for i, req := range []struct {
				rep  *ballast
				path string
			}{{a, "/during"}, {b, "/during"}, {b, "/before"}, {a, "/during"}} {
				resp, body := hostDo(t, "GET", req.rep.base+req.path)
				if resp.StatusCode != 200 || !strings.Contains(body, req.path) {
					t.Errorf("request %d (%s) during the outage: %d %q", i, req.path, resp.StatusCode, body)
				}
			}
			if got := who.hits.Load(); got != 4 {
				t.Errorf("upstream hits %d, want 4 (the first store and three misses; A's second /during is a local hit)", got)
			}
			// With the upstream down too, B degrades past the unreachable
			// tier to its static fallback.
			who.down.Store(true)
			resp, body := hostDo(t, "GET", b.base+"/nowhere")
			if resp.StatusCode != 503 || resp.Header.Get("X-Ballast-Fallback") != "static" || !strings.Contains(body, "static") {
				t.Errorf("B with the upstream and Redis down: %d %q %q", resp.StatusCode, resp.Header.Get("X-Ballast-Fallback"), body)
			}
		})
	}
}
