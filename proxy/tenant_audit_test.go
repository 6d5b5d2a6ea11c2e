package proxy_test

// Tenant isolation, from an adversarial audit: two agents A and B that
// differ only in their credentials never share a cached or replayed
// answer, a job, an in-flight call, a cool-down or a keyed limit, however
// the credential is carried. security_test.go, sharedcache_test.go and
// fleet_audit_test.go cover one credential header at a time; these probes
// cover duplicates, combinations, query parameters, stale modes, the
// in-flight paths, route-injected credentials and what is logged.

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

// tenantEcho is an upstream that answers with every credential the request
// carried (all values of each header, and the query), counting requests;
// while down it answers 503.
type tenantEcho struct {
	hits atomic.Int64
	down atomic.Bool
	// block, when set, holds each request until it is closed.
	block chan struct{}
	// arrived gets a value as each request arrives (when non-nil).
	arrived chan struct{}
}

func (e *tenantEcho) handler(w http.ResponseWriter, r *http.Request) {
	n := e.hits.Add(1)
	if e.arrived != nil {
		e.arrived <- struct{}{}
	}
	if e.block != nil {
		<-e.block
	}
	if e.down.Load() {
		w.WriteHeader(503)
		return
	}
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"n":%d,"auth":%q,"xkey":%q,"akey":%q,"gkey":%q,"cookie":%q,"query":%q,"body":%q}`, n,
		r.Header.Values("Authorization"), r.Header.Values("X-Api-Key"), r.Header.Values("Api-Key"),
		r.Header.Values("X-Goog-Api-Key"), r.Header.Values("Cookie"), r.URL.RawQuery, body)
}

// tenantDo sends one request with headers as name, value pairs; a name
// given twice is sent twice (Header.Add), as an agent may.
func tenantDo(t *testing.T, method, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header[headers[i]] = append(req.Header[headers[i]], headers[i+1])
	}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// tenantCreds are pairs of credential sets that differ only in who they
// name: each carries its credential in one of the ways providers and tools
// take them.
var tenantCreds = []struct {
	name  string
	a, b  []string // headers
	qa    string   // query suffix for A
	qb    string   // and for B
	wantB string   // in B's answer when it went upstream
}{
	{name: "Bearer", a: []string{"Authorization", "Bearer alice"}, b: []string{"Authorization", "Bearer bob"}, wantB: "bob"},
	{name: "Basic", a: []string{"Authorization", "Basic YWxpY2U6cA=="}, b: []string{"Authorization", "Basic Ym9iOnA="}, wantB: "Ym9iOnA="},
	{name: "X-Api-Key", a: []string{"X-Api-Key", "alice"}, b: []string{"X-Api-Key", "bob"}, wantB: "bob"},
	{name: "anthropic x-api-key", a: []string{"x-api-key", "alice"}, b: []string{"x-api-key", "bob"}, wantB: "bob"},
	{name: "Api-Key", a: []string{"Api-Key", "alice"}, b: []string{"Api-Key", "bob"}, wantB: "bob"},
	{name: "X-Goog-Api-Key", a: []string{"X-Goog-Api-Key", "alice"}, b: []string{"X-Goog-Api-Key", "bob"}, wantB: "bob"},
	{name: "Cookie", a: []string{"Cookie", "s=alice"}, b: []string{"Cookie", "s=bob"}, wantB: "s=bob"},
	{name: "query key", qa: "key=alice", qb: "key=bob", wantB: "key=bob"},
	{name: "query api_key", qa: "api_key=alice", qb: "api_key=bob", wantB: "api_key=bob"},
	{name: "query access_token", qa: "access_token=alice", qb: "access_token=bob", wantB: "access_token=bob"},
	{name: "several headers, one differs", a: []string{"Authorization", "Bearer org", "X-Api-Key", "alice", "Cookie", "s=1"},
		b: []string{"Authorization", "Bearer org", "X-Api-Key", "bob", "Cookie", "s=1"}, wantB: "bob"},
	{name: "Authorization twice, the second differs", a: []string{"Authorization", "Bearer org", "Authorization", "Bearer alice"},
		b: []string{"Authorization", "Bearer org", "Authorization", "Bearer bob"}, wantB: "bob"},
	{name: "X-Api-Key twice, the second differs", a: []string{"X-Api-Key", "org", "X-Api-Key", "alice"},
		b: []string{"X-Api-Key", "org", "X-Api-Key", "bob"}, wantB: "bob"},
	{name: "Cookie twice, the second differs", a: []string{"Cookie", "org=1", "Cookie", "s=alice"},
		b: []string{"Cookie", "org=1", "Cookie", "s=bob"}, wantB: "s=bob"},
	{name: "Bearer with one space or two", a: []string{"Authorization", "Bearer  alice"}, b: []string{"Authorization", "Bearer alice"}, wantB: `"Bearer alice"`},
}

func withQuery(path, q string) string {
	if q == "" {
		return path
	}
	return path + "?" + q
}

// TestTenantAuditCacheEveryCredential: in fresh mode, and in fallback mode
// while the upstream is down (stale-if-error), B never gets the answer A's
// credentials fetched, whichever way the credential travels.
func TestTenantAuditCacheEveryCredential(t *testing.T) {
	up := &tenantEcho{}
	url, _ := upstream(t, up.handler)
	b := startBallast(t, "routes:\n"+
		stripRoute("fresh", url, "cache: {mode: fresh, ttl: 1h}")+
		stripRoute("stale", url, "retry: {attempts: 1}", "breaker: {enabled: false}", "cache: {mode: fallback, ttl: 1m, stale: 1h}"))
	for i, c := range tenantCreds {
		t.Run(c.name, func(t *testing.T) {
			up.down.Store(false)
			for _, method := range []string{"GET", "POST"} {
				path := withQuery(fmt.Sprintf("/fresh/%s%d", method, i), c.qa)
				if r, body := tenantDo(t, method, b.base+path, "same", c.a...); r.StatusCode != 200 {
					t.Fatalf("A: %d %s", r.StatusCode, body)
				}
				if r, _ := tenantDo(t, method, b.base+path, "same", c.a...); !strings.HasPrefix(r.Header.Get("Cache-Status"), "ballast; hit") {
					t.Fatalf("A's own repeat is not a hit (%q): the probe proves nothing", r.Header.Get("Cache-Status"))
				}
				pathB := withQuery(fmt.Sprintf("/fresh/%s%d", method, i), c.qb)
				r, body := tenantDo(t, method, b.base+pathB, "same", c.b...)
				if strings.HasPrefix(r.Header.Get("Cache-Status"), "ballast; hit") || !strings.Contains(body, c.wantB) {
					t.Errorf("%s fresh: B got A's answer: %s (Cache-Status %q)", method, body, r.Header.Get("Cache-Status"))
				}
			}
			// Fallback mode: A stores, the upstream dies, B must not get
			// A's stale answer.
			path := withQuery(fmt.Sprintf("/stale/s%d", i), c.qa)
			if r, body := tenantDo(t, "GET", b.base+path, "", c.a...); r.StatusCode != 200 {
				t.Fatalf("A: %d %s", r.StatusCode, body)
			}
			up.down.Store(true)
			if r, _ := tenantDo(t, "GET", b.base+path, "", c.a...); r.StatusCode != 200 {
				t.Fatalf("A's own stale answer is not served (%d): the probe proves nothing", r.StatusCode)
			}
			r, body := tenantDo(t, "GET", b.base+withQuery(fmt.Sprintf("/stale/s%d", i), c.qb), "", c.b...)
			if r.StatusCode == 200 {
				t.Errorf("fallback: B got A's stale answer: %s (Cache-Status %q)", body, r.Header.Get("Cache-Status"))
			}
		})
	}
}

// TestTenantAuditSharedTierEveryCredential: through the Redis tier, an
// answer replica 1 stored for A is never served by replica 2 to B, fresh
// or stale.
func TestTenantAuditSharedTierEveryCredential(t *testing.T) {
	rs := redistest.Start(t)
	up := &tenantEcho{}
	url, _ := upstream(t, up.handler)
	r1, r2 := sharedPair(t, rs, nil, url, "mode: fallback, ttl: 1m, stale: 1h", "    retry: {attempts: 1}\n    breaker: {enabled: false}", "fail_open")
	for i, c := range tenantCreds {
		t.Run(c.name, func(t *testing.T) {
			up.down.Store(false)
			before := sharedEntries(t, rs)
			path := withQuery(fmt.Sprintf("/shared%d", i), c.qa)
			if r, body := tenantDo(t, "GET", r1.base+path, "", append([]string{"Host", agentHost}, c.a...)...); r.StatusCode != 200 {
				t.Fatalf("A: %d %s", r.StatusCode, body)
			}
			waitFor(t, func() bool { return sharedEntries(t, rs) == before+1 })
			up.down.Store(true)
			if r, _ := tenantDo(t, "GET", r2.base+path, "", append([]string{"Host", agentHost}, c.a...)...); r.StatusCode != 200 {
				t.Fatalf("A's own entry is not served by the other replica (%d): the probe proves nothing", r.StatusCode)
			}
			pathB := withQuery(fmt.Sprintf("/shared%d", i), c.qb)
			for _, rep := range []*ballast{r1, r2} {
				r, body := tenantDo(t, "GET", rep.base+pathB, "", append([]string{"Host", agentHost}, c.b...)...)
				if r.StatusCode == 200 {
					t.Errorf("B got A's shared stale answer: %s (Cache-Status %q)", body, r.Header.Get("Cache-Status"))
				}
			}
		})
	}
}

// TestTenantAuditIdempotencyAndJobsEveryCredential: with A's
// Idempotency-Key B neither replays A's stored answer nor attaches to A's
// call in flight, and B cannot read A's job with A's id, on the memory
// and the Redis store.
func TestTenantAuditIdempotencyAndJobsEveryCredential(t *testing.T) {
	rs := redistest.Start(t)
	for _, backend := range []string{"memory", "redis"} {
		t.Run(backend, func(t *testing.T) {
			up := &tenantEcho{}
			url, _ := upstream(t, up.handler)
			state := "state: {backend: memory}"
			if backend == "redis" {
				state = fmt.Sprintf("state: {backend: redis, redis: {address: %q, key_prefix: \"ta%d:\"}}", rs.Addr(), time.Now().UnixNano()%1e6)
			}
			b := startBallast(t, state+"\nroutes:\n"+
				stripRoute("idem", url, "idempotency: {mode: header}")+
				stripRoute("jobs", url, "async: {enabled: true}"))
			for i, c := range tenantCreds {
				t.Run(c.name, func(t *testing.T) {
					key := fmt.Sprintf("k-%s-%d", backend, i)
					hA := append([]string{"Idempotency-Key", key}, c.a...)
					hB := append([]string{"Idempotency-Key", key}, c.b...)
					path := fmt.Sprintf("/idem/i%d", i)
					if r, body := tenantDo(t, "POST", b.base+withQuery(path, c.qa), "same", hA...); r.StatusCode != 200 {
						t.Fatalf("A: %d %s", r.StatusCode, body)
					}
					if r, _ := tenantDo(t, "POST", b.base+withQuery(path, c.qa), "same", hA...); r.Header.Get("Idempotent-Replayed") != "true" {
						t.Fatal("A's own repeat is not replayed: the probe proves nothing")
					}
					r, body := tenantDo(t, "POST", b.base+withQuery(path, c.qb), "same", hB...)
					if r.Header.Get("Idempotent-Replayed") != "" || (r.StatusCode == 200 && !strings.Contains(body, c.wantB)) {
						t.Errorf("B replayed A's answer: %d %s", r.StatusCode, body)
					}

					resp, body := tenantDo(t, "POST", b.base+withQuery(fmt.Sprintf("/jobs/j%d", i), c.qa), "x",
						append([]string{"Prefer", "respond-async"}, c.a...)...)
					if resp.StatusCode != 202 || resp.Header.Get("Location") == "" {
						t.Fatalf("A's job: %d %s", resp.StatusCode, body)
					}
					loc := resp.Header.Get("Location")
					if r, _ := tenantDo(t, "GET", b.base+withQuery(loc, c.qa), "", append([]string{"Prefer", "wait=5"}, c.a...)...); r.StatusCode != 200 {
						t.Fatalf("A cannot read its own job (%d): the probe proves nothing", r.StatusCode)
					}
					if c.qa != "" {
						// A query parameter is no identity (docs/config.md,
						// async): the job id alone is the capability.
						return
					}
					if r, body := tenantDo(t, "GET", b.base+withQuery(loc, c.qb), "", c.b...); r.StatusCode != 404 {
						t.Errorf("B read A's job %s: %d %s", loc, r.StatusCode, body)
					}
				})
			}
		})
	}
}

// TestTenantAuditNoAttachAcrossTenants: while A's call is in flight, B's
// identical request never waits on it and never gets its answer: neither
// the collapsing of concurrent cache misses (fresh mode) nor an
// idempotency attach (same Idempotency-Key).
func TestTenantAuditNoAttachAcrossTenants(t *testing.T) {
	for _, path := range []string{"/fresh/x", "/idem/x"} {
		t.Run(path, func(t *testing.T) {
			up := &tenantEcho{block: make(chan struct{}), arrived: make(chan struct{}, 8)}
			url, _ := upstream(t, up.handler)
			b := startBallast(t, "routes:\n"+
				stripRoute("fresh", url, "cache: {mode: fresh, ttl: 1h}")+
				stripRoute("idem", url, "idempotency: {mode: header}"))
			aDone := raSend(t, "POST", b.base+path, "same", "Idempotency-Key", "k1", "X-Api-Key", "alice")
			<-up.arrived
			// B's request must reach the upstream on its own while A's is
			// still held there.
			bDone := raSend(t, "POST", b.base+path, "same", "Idempotency-Key", "k1", "X-Api-Key", "bob")
			select {
			case <-up.arrived:
			case r := <-bDone:
				if r.err != nil {
					t.Fatalf("B's request: %v", r.err)
				}
				t.Fatalf("B was answered while A's call was in flight, without its own call: %s", r.body)
			case <-time.After(5 * time.Second):
				t.Fatal("B attached to A's call in flight")
			}
			close(up.block)
			bodies := []string{raAnswer(t, aDone).body, raAnswer(t, bDone).body}
			if !(strings.Contains(bodies[0], "alice") && strings.Contains(bodies[1], "bob") ||
				strings.Contains(bodies[0], "bob") && strings.Contains(bodies[1], "alice")) {
				t.Errorf("answers %q: each caller must get its own", bodies)
			}
		})
	}
}

// TestTenantAuditHeaderSpelling: the spelling of a header name is not an
// identity (authorization and Authorization are the same caller), and
// whitespace games never merge two credentials.
func TestTenantAuditHeaderSpelling(t *testing.T) {
	up := &tenantEcho{}
	url, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: fresh
    match: {path_prefix: /}
    upstream: %s
    cache: {mode: fresh, ttl: 1h}
`, url))
	if r, _ := tenantDo(t, "GET", b.base+"/case", "", "Authorization", "Bearer alice"); r.StatusCode != 200 {
		t.Fatalf("A: %d", r.StatusCode)
	}
	r, _ := tenantDo(t, "GET", b.base+"/case", "", "authorization", "Bearer alice")
	if !strings.HasPrefix(r.Header.Get("Cache-Status"), "ballast; hit") {
		t.Errorf("lower-case authorization with the same value: Cache-Status %q, want a hit (same caller)", r.Header.Get("Cache-Status"))
	}
	// Trailing whitespace is not part of a field value (RFC 9110 §5.5):
	// the upstream sees "Bearer alice", alice. Whether ballast counts it
	// as her key or as another is only a hit or a miss; either way the
	// answer is alice's.
	for _, v := range []string{"Bearer alice\t", "Bearer alice  "} {
		_, body := secRawExchange(t, b.addr, "GET /case HTTP/1.1\r\nHost: x\r\nAuthorization: "+v+"\r\nConnection: close\r\n\r\n")
		if !strings.Contains(body, `"Bearer alice"`) {
			t.Errorf("%q: %s, want alice's answer", v, body)
		}
	}
	for _, v := range []string{"Bearer  alice", "Bearer alic", "Bearer alice2", "bearer alice"} {
		r, body := tenantDo(t, "GET", b.base+"/case", "", "Authorization", v)
		if strings.HasPrefix(r.Header.Get("Cache-Status"), "ballast; hit") || !strings.Contains(body, fmt.Sprintf("%q", v)) {
			t.Errorf("%q got alice's answer: %s (Cache-Status %q)", v, body, r.Header.Get("Cache-Status"))
		}
	}
}

// TestTenantAuditRouteInjectedCredential: when the route sets the upstream
// credential itself, agents that bring their own distinguishing
// credentials still have their own entries; agents that bring none share
// (documented in docs/config.md, "Caching a public tool").
func TestTenantAuditRouteInjectedCredential(t *testing.T) {
	up := &tenantEcho{}
	url, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %s
    cache: {mode: fresh, ttl: 1h}
    idempotency: {mode: header}
    headers: {set: {Authorization: "Bearer ROUTEKEY"}}
`, url))
	for _, tt := range []struct{ name, header string }{
		{"Authorization replaced by the route's", "Authorization"},
		{"X-Api-Key beside the route's Authorization", "X-Api-Key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := "/" + strings.ReplaceAll(tt.header, "-", "")
			ra, ba := tenantDo(t, "GET", b.base+path, "", tt.header, "alice")
			rb, bb := tenantDo(t, "GET", b.base+path, "", tt.header, "bob")
			if ra.StatusCode != 200 || rb.StatusCode != 200 {
				t.Fatalf("statuses %d %d", ra.StatusCode, rb.StatusCode)
			}
			if ba == bb || strings.HasPrefix(rb.Header.Get("Cache-Status"), "ballast; hit") {
				t.Errorf("B got A's entry: %s (Cache-Status %q)", bb, rb.Header.Get("Cache-Status"))
			}
			// Idempotency: B with A's key does not replay A's answer.
			_, _ = tenantDo(t, "POST", b.base+path, "x", tt.header, "alice", "Idempotency-Key", "inj-"+tt.header)
			r, _ := tenantDo(t, "POST", b.base+path, "x", tt.header, "bob", "Idempotency-Key", "inj-"+tt.header)
			if r.Header.Get("Idempotent-Replayed") != "" {
				t.Errorf("B replayed A's idempotent answer")
			}
		})
	}
	t.Run("the route's Authorization replaces every line of the agent's", func(t *testing.T) {
		_, body := tenantDo(t, "GET", b.base+"/twolines", "", "Authorization", "Bearer alice", "Authorization", "Bearer alice2")
		if !strings.Contains(body, `"auth":["Bearer ROUTEKEY"]`) {
			t.Errorf("the upstream saw %s, want only the route's Authorization", body)
		}
	})
	t.Run("no agent credential: shared, as documented", func(t *testing.T) {
		if r, _ := tenantDo(t, "GET", b.base+"/none", ""); r.StatusCode != 200 {
			t.Fatalf("first: %d", r.StatusCode)
		}
		r, body := tenantDo(t, "GET", b.base+"/none", "")
		if !strings.HasPrefix(r.Header.Get("Cache-Status"), "ballast; hit") || !strings.Contains(body, "ROUTEKEY") {
			t.Errorf("agents without credentials on an injected-key route: %s (Cache-Status %q), want the shared hit",
				body, r.Header.Get("Cache-Status"))
		}
	})
}

// TestTenantAuditUpstreamVary: an upstream's Vary: * is never stored, and
// Vary naming a credential header in any spelling keeps tenants apart on
// a public route.
func TestTenantAuditUpstreamVary(t *testing.T) {
	up := &tenantEcho{}
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", r.URL.Query().Get("vary"))
		up.handler(w, r)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: pub
    match: {path_prefix: /}
    upstream: %s
    cache: {mode: fresh, ttl: 1h, public: true}
`, url))
	for _, tt := range []struct{ vary, header string }{
		{"*", "X-Api-Key"},
		{"x-api-key", "X-Api-Key"},
		{"Accept, COOKIE", "Cookie"},
		{"X-Goog-Api-Key", "x-goog-api-key"},
	} {
		t.Run(tt.vary, func(t *testing.T) {
			path := "/v?vary=" + strings.NewReplacer(" ", "%20", ",", "%2C", "*", "%2A").Replace(tt.vary)
			if r, body := tenantDo(t, "GET", b.base+path, "", tt.header, "s=alice"); r.StatusCode != 200 {
				t.Fatalf("A: %d %s", r.StatusCode, body)
			}
			r, body := tenantDo(t, "GET", b.base+path, "", tt.header, "s=bob")
			if strings.HasPrefix(r.Header.Get("Cache-Status"), "ballast; hit") || !strings.Contains(body, "s=bob") {
				t.Errorf("Vary: %s: B got A's answer: %s (Cache-Status %q)", tt.vary, body, r.Header.Get("Cache-Status"))
			}
		})
	}
}

// TestTenantAuditCooldownPerKey: A's 429 with a hint pauses A's key only;
// B, whose credential differs in any header (a second line included), is
// not paused.
func TestTenantAuditCooldownPerKey(t *testing.T) {
	for _, c := range tenantCreds {
		if c.qa != "" || len(c.a) == 2 && c.a[0] == "Cookie" || strings.HasPrefix(c.name, "Cookie") {
			continue // the key is a header's (docs/retries.md, the shared cool-down)
		}
		if c.name == "several headers, one differs" || c.name == "Bearer with one space or two" {
			continue // Cookie is not a key; B's "Bearer alice" names alice to the upstream
		}
		t.Run(c.name, func(t *testing.T) {
			var hits atomic.Int64
			url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				for _, vs := range r.Header {
					for _, v := range vs {
						if strings.Contains(v, "alice") || v == "Basic YWxpY2U6cA==" {
							w.Header().Set("Retry-After", "60")
							w.WriteHeader(429)
							return
						}
					}
				}
				w.WriteHeader(200)
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %s
    retry: {attempts: 1}
    timeouts: {total: 2s}
`, url))
			if r, _ := tenantDo(t, "GET", b.base+"/x", "", c.a...); r.StatusCode != 429 {
				t.Fatalf("A: %d, want the upstream's 429", r.StatusCode)
			}
			if r, _ := tenantDo(t, "GET", b.base+"/x", "", c.a...); r.StatusCode != 429 || hits.Load() != 1 {
				t.Fatalf("A again: %d after %d upstream hits: A's key is not paused, the probe proves nothing", r.StatusCode, hits.Load())
			}
			if r, body := tenantDo(t, "GET", b.base+"/x", "", c.b...); r.StatusCode != 200 || hits.Load() != 2 {
				t.Errorf("B: %d %s after %d upstream hits: A's cool-down paused B", r.StatusCode, body, hits.Load())
			}
		})
	}
}

// TestTenantAuditKeyedLimitPerKey: with key: header:X-Api-Key, B spending
// its bucket (in any header spelling) leaves A's untouched.
func TestTenantAuditKeyedLimitPerKey(t *testing.T) {
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %s
    rate_limit: {rps: 0.001, burst: 1, max_wait: 0s, key: "header:X-Api-Key"}
`, url))
	for _, name := range []string{"X-Api-Key", "x-api-key", "X-API-KEY"} {
		r, _ := tenantDo(t, "GET", b.base+"/x", "", name, "bob")
		if want := 200; name != "X-Api-Key" {
			want = 429
			if r.StatusCode != want {
				t.Errorf("B (%s) after its bucket is spent: %d, want %d", name, r.StatusCode, want)
			}
		} else if r.StatusCode != want {
			t.Fatalf("B's first: %d", r.StatusCode)
		}
	}
	if r, body := tenantDo(t, "GET", b.base+"/x", "", "X-Api-Key", "alice"); r.StatusCode != 200 {
		t.Errorf("A after B spent its bucket: %d %s", r.StatusCode, body)
	}
}

// TestTenantAuditNoCredentialInStatusOrLogs: credentials agents send, in
// headers and query parameters, never appear on /status, the status
// page, /metrics or the log, with a cool-down active for one of them.
func TestTenantAuditNoCredentialInStatusOrLogs(t *testing.T) {
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Authorization"), "SECRETA") {
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(429)
			return
		}
		w.WriteHeader(200)
	})
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %s
    retry: {attempts: 1}
    cache: {mode: fallback, ttl: 1m}
    idempotency: {mode: header}
`, url))
	var seen strings.Builder
	for _, h := range [][]string{
		{"Authorization", "Bearer SECRETA"}, {"Authorization", "Basic U0VDUkVUQjpw"}, {"X-Api-Key", "SECRETC"},
		{"Api-Key", "SECRETD"}, {"X-Goog-Api-Key", "SECRETE"}, {"Cookie", "s=SECRETF"}, {"Proxy-Authorization", "Bearer SECRETG"},
	} {
		r, body := tenantDo(t, "POST", b.base+"/x?key=SECRETQ1&access_token=SECRETQ2", "b",
			append([]string{"X-Ballast-Debug", "1", "Idempotency-Key", "k" + h[0]}, h...)...)
		seen.WriteString(body + r.Header.Get("X-Ballast-Trail"))
	}
	for _, p := range []string{"/status", "/", "/metrics", "/config"} {
		_, body := tenantDo(t, "GET", b.admin+p, "")
		seen.WriteString(body)
	}
	seen.WriteString(b.logs.String())
	all := seen.String()
	for _, s := range []string{"SECRET", "U0VDUkVUQjpw"} {
		if i := strings.Index(all, s); i >= 0 {
			t.Errorf("%s leaked: ...%s...", s, all[max(0, i-120):min(len(all), i+40)])
		}
	}
}
