package proxy_test

// HTTP caching semantics audit (RFC 9111, RFC 9211) of the per-route
// response cache, with real loopback upstreams and a fake clock for
// freshness. Each probe asserts what a user of a caching proxy should get;
// where ballast deviates on purpose and docs/config.md says so, the probe
// pins the documented behaviour instead. The bugs it found are fixed.

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// cacheAuditUp is a loopback upstream that counts its calls and answers
// with serve (n is the 1-based call number).
type cacheAuditUp struct {
	url   string
	calls atomic.Int64
}

func newCacheAuditUp(t *testing.T, serve func(n int64, w http.ResponseWriter, r *http.Request)) *cacheAuditUp {
	t.Helper()
	u := &cacheAuditUp{}
	u.url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		serve(u.calls.Add(1), w, r)
	})
	return u
}

// cacheAuditStart serves one route "c" on / to up with the given cache
// block (a YAML flow mapping) and extra route keys.
func cacheAuditStart(t *testing.T, clock *policy.FakeClock, up, cacheBlock, extra string) *ballast {
	t.Helper()
	return startBallastClock(t, clock, cacheAuditYAML(up, cacheBlock, extra))
}

func cacheAuditYAML(up, cacheBlock, extra string) string {
	y := fmt.Sprintf(`
routes:
  - name: c
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    cache: %s
`, up, cacheBlock)
	if extra != "" {
		y += "    " + extra + "\n"
	}
	return y
}

// cacheStatusRE is one RFC 9211 Cache-Status list member named ballast:
// the name, then parameters from the registry of §2 (hit, fwd, fwd-status,
// ttl, stored, collapsed, key, detail).
var cacheStatusRE = regexp.MustCompile(`^ballast(; (hit|fwd=(bypass|method|uri-miss|vary-miss|miss|request|stale|partial)|fwd-status=[1-5][0-9][0-9]|ttl=-?[0-9]+|stored|collapsed|key="[^"]*"|detail=[A-Za-z*][A-Za-z0-9!#$%&'*+.^_` + "`" + `|~:/-]*))*$`)

// ballastCacheStatus returns ballast's Cache-Status member (the last one:
// RFC 9211 members are appended by each cache on the way to the client),
// checking its syntax.
func ballastCacheStatus(t *testing.T, resp *http.Response) string {
	t.Helper()
	var last string
	for _, v := range resp.Header.Values("Cache-Status") {
		for _, m := range strings.Split(v, ",") {
			last = strings.TrimSpace(m)
		}
	}
	if last != "" && !cacheStatusRE.MatchString(last) {
		t.Errorf("Cache-Status member %q is not RFC 9211 syntax", last)
	}
	return last
}

func wantCalls(t *testing.T, u *cacheAuditUp, want int64, why string) {
	t.Helper()
	if got := u.calls.Load(); got != want {
		t.Errorf("%s: upstream called %d times, want %d", why, got, want)
	}
}

// A fresh-mode miss is forwarded and stored; a hit carries Age (whole
// seconds since the answer was received, RFC 9111 §5.1), Cache-Status
// "hit; ttl=<freshness left>" (RFC 9211 §2.1, §2.5), X-Ballast-Attempts: 0
// and no X-Ballast-Upstream; once ttl has passed the entry is not served
// fresh again.
func TestCacheAudit_FreshHitAgeAndCacheStatus(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"v":%d}`, n)
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 60s}", "")

	resp, body := do(t, "GET", b.base+"/doc", "")
	if cs := ballastCacheStatus(t, resp); resp.StatusCode != 200 || body != `{"v":1}` || cs != "ballast; fwd=uri-miss; stored" {
		t.Fatalf("miss: %d %q Cache-Status %q", resp.StatusCode, body, cs)
	}
	if resp.Header.Get("Age") != "" {
		t.Errorf("a forwarded answer carries Age %q", resp.Header.Get("Age"))
	}

	clock.Advance(10*time.Second + 500*time.Millisecond)
	resp, body = do(t, "GET", b.base+"/doc", "")
	if cs := ballastCacheStatus(t, resp); body != `{"v":1}` || cs != "ballast; hit; ttl=49" {
		t.Errorf("hit: %q Cache-Status %q, want the stored answer with ttl=49", body, cs)
	}
	if got := resp.Header.Get("Age"); got != "10" {
		t.Errorf("hit Age = %q, want 10 (whole seconds, rounded down)", got)
	}
	if resp.Header.Get("X-Ballast-Attempts") != "0" || resp.Header.Get("X-Ballast-Upstream") != "" {
		t.Errorf("hit: X-Ballast-Attempts %q X-Ballast-Upstream %q, want 0 and none",
			resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("X-Ballast-Upstream"))
	}
	if resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Date") == "" {
		t.Errorf("hit: Content-Type %q Date %q; want the stored type and a Date of its own",
			resp.Header.Get("Content-Type"), resp.Header.Get("Date"))
	}
	wantCalls(t, up, 1, "a fresh hit")

	clock.Advance(50 * time.Second) // age 60.5s: ttl 60s has passed
	resp, body = do(t, "GET", b.base+"/doc", "")
	// docs/config.md: "fwd=uri-miss; stored" also covers "nothing fresh
	// was stored" (RFC 9211 would say fwd=stale when a stale entry was
	// selected; a documented simplification).
	if cs := ballastCacheStatus(t, resp); body != `{"v":2}` || !strings.HasPrefix(cs, "ballast; fwd=") || !strings.HasSuffix(cs, "; stored") {
		t.Errorf("after ttl: %q Cache-Status %q, want a forwarded, stored answer", body, cs)
	}
	wantCalls(t, up, 2, "after ttl")
}

// RFC 9111 §4.2.1: a shared cache's freshness lifetime is s-maxage, else
// max-age, else Expires − Date; §5.2.2.4 "no-cache": a stored response
// MUST NOT be used without revalidation. nginx (Cache-Control/Expires
// "have higher priority" than proxy_cache_valid), Varnish (beresp.ttl from
// s-maxage/max-age/Expires) and Envoy's cache filter all honour them; a
// route's ttl is a default/cap, not a licence to serve an answer its
// origin said expires sooner. docs/config.md does not say upstream
// freshness is ignored.
func TestCacheAudit_UpstreamFreshnessLimitsFreshHits(t *testing.T) {
	tests := []struct {
		name    string
		headers func(now time.Time) map[string]string
		advance time.Duration
		wantHit bool
		was     string // what ballast did before its fix, if it was wrong
	}{
		{"no directives: route ttl", func(time.Time) map[string]string { return nil }, 30 * time.Second, true, ""},
		{"max-age above ttl: route ttl still caps", func(time.Time) map[string]string {
			return map[string]string{"Cache-Control": "max-age=86400"}
		}, 30 * time.Second, true, ""},
		{"s-maxage wins over max-age=0 for a shared cache", func(time.Time) map[string]string {
			return map[string]string{"Cache-Control": "max-age=0, s-maxage=600"}
		}, 30 * time.Second, true, ""},
		{"response no-cache", func(time.Time) map[string]string {
			return map[string]string{"Cache-Control": "no-cache"}
		}, time.Second, false, "a response's Cache-Control: no-cache is served as a fresh hit for the route's ttl"},
		{"max-age=0", func(time.Time) map[string]string {
			return map[string]string{"Cache-Control": "max-age=0"}
		}, time.Second, false, "an upstream max-age=0 answer is served as a fresh hit for the route's ttl"},
		{"max-age=5 after 10s", func(time.Time) map[string]string {
			return map[string]string{"Cache-Control": "max-age=5"}
		}, 10 * time.Second, false, "an upstream max-age=5 answer is still served fresh after 10s (route ttl 1h)"},
		{"s-maxage=5 after 10s", func(time.Time) map[string]string {
			return map[string]string{"Cache-Control": "max-age=600, s-maxage=5"}
		}, 10 * time.Second, false, "s-maxage (the shared-cache lifetime) is ignored"},
		{"Expires 5s ahead, after 10s", func(now time.Time) map[string]string {
			return map[string]string{"Expires": now.Add(5 * time.Second).UTC().Format(http.TimeFormat)}
		}, 10 * time.Second, false, "Expires is ignored: an expired answer is served as a fresh hit"},
		{"Expires: 0 (already expired)", func(time.Time) map[string]string {
			return map[string]string{"Expires": "0"}
		}, time.Second, false, "Expires: 0 (RFC 9111 §5.3: in the past) is served as a fresh hit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			clock := policy.NewFakeClock(start)
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.headers(start) {
					w.Header().Set(k, v)
				}
				fmt.Fprintf(w, "v%d", n)
			})
			b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
			do(t, "GET", b.base+"/x", "")
			clock.Advance(tt.advance)
			resp, body := do(t, "GET", b.base+"/x", "")
			cs := ballastCacheStatus(t, resp)
			if hit := strings.Contains(cs, "; hit"); hit != tt.wantHit {
				t.Errorf("second GET: %q Cache-Status %q; want hit=%v", body, cs, tt.wantHit)
			}
		})
	}
}

// RFC 9111 §4.2.3: Age is the cache's estimate of the response's age,
// which includes the age it already had when received (the upstream's own
// Age, an upstream CDN's). A hit that reports less than the forwarded
// answer did makes Age run backwards.
func TestCacheAudit_HitAgeIncludesUpstreamAge(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Age", "100")
		io.WriteString(w, "cdn")
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
	if resp, _ := do(t, "GET", b.base+"/x", ""); resp.Header.Get("Age") != "100" {
		t.Fatalf("miss Age %q, want the upstream's 100 relayed", resp.Header.Get("Age"))
	}
	clock.Advance(10 * time.Second)
	resp, _ := do(t, "GET", b.base+"/x", "")
	if age, _ := strconv.Atoi(resp.Header.Get("Age")); age < 110 {
		t.Errorf("hit Age %q, want >= 110 (100 on arrival + 10 resident)", resp.Header.Get("Age"))
	}
}

// Answers that must never be stored (RFC 9111 §3, §5.2.2): no-store;
// private in a shared cache unless allow_private (documented); Set-Cookie
// (documented: it would hand one caller's session to others); Vary: *
// (§4.1: it never matches). Directive names are case-insensitive and may
// come in several Cache-Control field lines.
func TestCacheAudit_ResponseDirectivesThatForbidStoring(t *testing.T) {
	tests := []struct {
		name       string
		headers    [][2]string
		cacheBlock string
		wantStored bool
	}{
		{"plain answer", nil, "{mode: fresh, ttl: 1h}", true},
		{"no-store", [][2]string{{"Cache-Control", "no-store"}}, "{mode: fresh, ttl: 1h}", false},
		{"NO-STORE upper case", [][2]string{{"Cache-Control", "max-age=60, NO-STORE"}}, "{mode: fresh, ttl: 1h}", false},
		{"no-store on a second field line", [][2]string{{"Cache-Control", "max-age=60"}, {"Cache-Control", "no-store"}}, "{mode: fresh, ttl: 1h}", false},
		{"private", [][2]string{{"Cache-Control", "private, max-age=60"}}, "{mode: fresh, ttl: 1h}", false},
		{"private=\"X-Tenant\" (qualified)", [][2]string{{"Cache-Control", `private="X-Tenant"`}}, "{mode: fresh, ttl: 1h}", false},
		{"private with allow_private", [][2]string{{"Cache-Control", "private"}}, "{mode: fresh, ttl: 1h, allow_private: true}", true},
		{"Set-Cookie", [][2]string{{"Set-Cookie", "sid=tenant-a; HttpOnly"}}, "{mode: fresh, ttl: 1h}", false},
		{"Set-Cookie with allow_private and public", [][2]string{{"Set-Cookie", "sid=a"}}, "{mode: fresh, ttl: 1h, allow_private: true, public: true}", false},
		{"Vary: *", [][2]string{{"Vary", "*"}}, "{mode: fresh, ttl: 1h}", false},
		{"Vary: Accept, *", [][2]string{{"Vary", "Accept, *"}}, "{mode: fresh, ttl: 1h, vary: [Accept]}", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				for _, kv := range tt.headers {
					w.Header().Add(kv[0], kv[1])
				}
				fmt.Fprintf(w, "v%d", n)
			})
			b := cacheAuditStart(t, clock, up.url, tt.cacheBlock, "")
			resp, _ := do(t, "GET", b.base+"/x", "")
			if stored := strings.HasSuffix(ballastCacheStatus(t, resp), "; stored"); stored != tt.wantStored {
				t.Errorf("Cache-Status %q, want stored=%v", resp.Header.Get("Cache-Status"), tt.wantStored)
			}
			resp, body := do(t, "GET", b.base+"/x", "")
			want := "v1"
			if !tt.wantStored {
				want = "v2"
			}
			if body != want {
				t.Errorf("second GET: %q (Cache-Status %q), want %q", body, resp.Header.Get("Cache-Status"), want)
			}
			for _, c := range resp.Header.Values("Set-Cookie") {
				if body == "v1" {
					t.Errorf("a stored answer carried Set-Cookie %q to another request", c)
				}
			}
		})
	}
}

// Which statuses are stored. docs/config.md: 200, 203, 204, 300, 301 and
// 308 (good answers); never 206 (a part is not the whole, RFC 9111 §3.3),
// 304, 302/307 (temporary), 404 (no negative caching: documented), 5xx.
func TestCacheAudit_StatusesStored(t *testing.T) {
	tests := []struct {
		status     int
		wantStored bool
	}{
		{200, true}, {203, true}, {204, true}, {300, true}, {301, true}, {308, true},
		{206, false}, {302, false}, {304, false}, {307, false},
		{404, false}, {410, false}, {500, false}, {503, false},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				switch tt.status {
				case 301, 302, 307, 308, 300:
					w.Header().Set("Location", "/elsewhere")
				case 206:
					w.Header().Set("Content-Range", "bytes 0-1/10")
				}
				w.WriteHeader(tt.status)
				if tt.status != 204 && tt.status != 304 {
					fmt.Fprintf(w, "v%d", n)
				}
			})
			b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
			noRedirect(t, b.base+"/x")
			resp := noRedirect(t, b.base+"/x")
			want := int64(2)
			if tt.wantStored {
				want = 1
			}
			if resp.StatusCode != tt.status {
				t.Errorf("status %d relayed as %d", tt.status, resp.StatusCode)
			}
			wantCalls(t, up, want, fmt.Sprintf("two GETs answered %d (Cache-Status %q)", tt.status, resp.Header.Get("Cache-Status")))
		})
	}
}

// A Range request's 206 is never stored, and never served to a request
// for the whole resource (RFC 9111 §3.3-3.4).
func TestCacheAudit_PartialContentNeverServedAsWhole(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			w.Header().Set("Content-Range", "bytes 0-3/10")
			w.WriteHeader(206)
			io.WriteString(w, "0123")
			return
		}
		io.WriteString(w, "0123456789")
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fallback, ttl: 1h}", "")
	if resp, body := do(t, "GET", b.base+"/f", "", "Range", "bytes=0-3"); resp.StatusCode != 206 || body != "0123" {
		t.Fatalf("range: %d %q", resp.StatusCode, body)
	}
	resp, body := do(t, "GET", b.base+"/f", "")
	if resp.StatusCode != 200 || body != "0123456789" {
		t.Errorf("whole after a range: %d %q, want 200 with the whole body", resp.StatusCode, body)
	}
	// And in fresh mode, a stored whole answer may serve a later Range
	// request in full (RFC 9110 §14.2: a server may ignore Range).
	clock2 := policy.NewFakeClock(time.Now())
	b2 := cacheAuditStart(t, clock2, up.url, "{mode: fresh, ttl: 1h}", "")
	do(t, "GET", b2.base+"/f", "")
	resp, body = do(t, "GET", b2.base+"/f", "", "Range", "bytes=0-3")
	if resp.StatusCode == 206 && body != "0123" || resp.StatusCode == 200 && body != "0123456789" {
		t.Errorf("range after a stored whole: %d %q: status and body disagree", resp.StatusCode, body)
	}
}

// The agent's request directives (docs/config.md, "Cache-Control"):
// no-cache, no-store, max-age=0 and Pragma: no-cache (only without a
// Cache-Control field, RFC 9111 §5.4) skip a fresh entry with
// "fwd=request". Other request directives (max-stale, min-fresh,
// only-if-cached, max-age=N) are optional for a cache to honour (RFC 9111
// §5.2.1: "prefers"; only-if-cached: "caches that honor") and are ignored:
// they must at least not break a hit.
func TestCacheAudit_RequestDirectives(t *testing.T) {
	tests := []struct {
		name    string
		headers []string
		wantHit bool
	}{
		{"none", nil, true},
		{"no-cache", []string{"Cache-Control", "no-cache"}, false},
		{"No-Cache mixed case", []string{"Cache-Control", "No-Cache"}, false},
		{"no-store", []string{"Cache-Control", "no-store"}, false},
		{"max-age=0", []string{"Cache-Control", "max-age=0"}, false},
		{`max-age="0"`, []string{"Cache-Control", `max-age="0"`}, false},
		{"Pragma: no-cache", []string{"Pragma", "no-cache"}, false},
		{"Pragma ignored beside Cache-Control", []string{"Pragma", "no-cache", "Cache-Control", "max-stale"}, true},
		{"max-stale", []string{"Cache-Control", "max-stale=60"}, true},
		{"only-if-cached on a stored entry", []string{"Cache-Control", "only-if-cached"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "v%d", n) })
			b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
			do(t, "GET", b.base+"/x", "")
			resp, body := do(t, "GET", b.base+"/x", "", tt.headers...)
			cs := ballastCacheStatus(t, resp)
			if tt.wantHit {
				if body != "v1" || cs != "ballast; hit; ttl=3600" {
					t.Errorf("%q Cache-Status %q, want the fresh entry", body, cs)
				}
				return
			}
			if body != "v2" || !strings.HasPrefix(cs, "ballast; fwd=request") {
				t.Errorf("%q Cache-Status %q, want a forward with fwd=request", body, cs)
			}
		})
	}
}

// RFC 9111 §5.2.1.5: "The no-store request directive indicates that a
// cache MUST NOT store any part of either this request or any response to
// it." ballast skips the lookup for it, then stores the answer anyway
// (fresh mode), and in fallback mode stores it as always; that answer then
// serves other requests (fresh) or is replayed stale when the upstream
// fails.
func TestCacheAudit_RequestNoStoreIsNotStored(t *testing.T) {
	for _, mode := range []string{"fresh", "fallback"} {
		t.Run(mode, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			var down atomic.Bool
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				if down.Load() {
					w.WriteHeader(503)
					return
				}
				fmt.Fprintf(w, "secret-%d", n)
			})
			b := cacheAuditStart(t, clock, up.url, fmt.Sprintf("{mode: %s, ttl: 1h}", mode), "")
			resp, _ := do(t, "GET", b.base+"/x", "", "Cache-Control", "no-store")
			if cs := ballastCacheStatus(t, resp); strings.Contains(cs, "stored") {
				t.Errorf("no-store request: Cache-Status %q claims the answer was stored", cs)
			}
			down.Store(mode == "fallback")
			resp, body := do(t, "GET", b.base+"/x", "")
			if body == "secret-1" {
				t.Errorf("the answer to a no-store request served another request: %d %q Cache-Status %q",
					resp.StatusCode, body, resp.Header.Get("Cache-Status"))
			}
		})
	}
}

// RFC 9111 §4.2.4 / §5.2.2.2, §5.2.2.8: "must-revalidate" (and
// "proxy-revalidate" for shared caches) forbid serving the response stale.
// ballast's fallback mode serves it as stale-if-error all the same, by
// design and documented (docs/config.md, like nginx's
// proxy_cache_use_stale): the route chose stale-on-error explicitly.
func TestCacheAudit_MustRevalidateServedStaleByChoice(t *testing.T) {
	for _, cc := range []string{"must-revalidate", "proxy-revalidate", "max-age=60, must-revalidate"} {
		t.Run(cc, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			var down atomic.Bool
			up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				if down.Load() {
					w.WriteHeader(503)
					return
				}
				w.Header().Set("Cache-Control", cc)
				io.WriteString(w, "balance: 100")
			})
			b := cacheAuditStart(t, clock, up.url, "{mode: fallback, stale: 24h}", "")
			do(t, "GET", b.base+"/acct", "")
			down.Store(true)
			clock.Advance(2 * time.Hour)
			resp, body := do(t, "GET", b.base+"/acct", "")
			if body != "balance: 100" || !strings.Contains(resp.Header.Get("Cache-Status"), "detail=stale-if-error") {
				t.Errorf("not served stale-if-error as documented: %d %q Cache-Status %q", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
			}
		})
	}
}

// Stale-if-error in fallback mode: Cache-Status "fwd=stale; fwd-status=N;
// ttl=<negative>; detail=stale-if-error" and an Age; the entry is usable
// for ttl+stale and not a second more.
func TestCacheAudit_StaleIfErrorWindowAndStatus(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var down atomic.Bool
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			w.WriteHeader(502)
			return
		}
		io.WriteString(w, "good")
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fallback, ttl: 10s, stale: 1m}", "")
	resp, _ := do(t, "GET", b.base+"/x", "")
	if cs := ballastCacheStatus(t, resp); cs != "ballast; fwd=bypass; stored" {
		t.Errorf("fallback-mode forward: Cache-Status %q", cs)
	}
	down.Store(true)
	clock.Advance(30 * time.Second)
	resp, body := do(t, "GET", b.base+"/x", "")
	if cs := ballastCacheStatus(t, resp); body != "good" || cs != "ballast; fwd=stale; fwd-status=502; ttl=-20; detail=stale-if-error" {
		t.Errorf("stale-if-error: %d %q Cache-Status %q", resp.StatusCode, body, cs)
	}
	if resp.Header.Get("Age") != "30" {
		t.Errorf("stale-if-error Age %q, want 30", resp.Header.Get("Age"))
	}
	clock.Advance(40 * time.Second) // age 70s = ttl+stale: gone
	if resp, body := do(t, "GET", b.base+"/x", ""); body == "good" || resp.StatusCode < 500 {
		t.Errorf("past ttl+stale: %d %q, want the upstream's failure", resp.StatusCode, body)
	}
}

// RFC 9111 §3.5: a shared cache must not serve a response to a request
// with Authorization to other callers. ballast keys by the caller's
// identity headers instead (documented), and `public` opts out.
func TestCacheAudit_AuthorizationSeparatesEntries(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s#%d", r.Header.Get("Authorization"), n)
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
	_, a := do(t, "GET", b.base+"/me", "", "Authorization", "Bearer A")
	_, bb := do(t, "GET", b.base+"/me", "", "Authorization", "Bearer B")
	_, anon := do(t, "GET", b.base+"/me", "")
	_, a2 := do(t, "GET", b.base+"/me", "", "Authorization", "Bearer A")
	if a != "Bearer A#1" || bb != "Bearer B#2" || anon != "#3" || a2 != a {
		t.Errorf("per-caller entries: A %q, B %q, anonymous %q, A again %q", a, bb, anon, a2)
	}
	// Cookie and the MCP session are identity too.
	_, c1 := do(t, "GET", b.base+"/me", "", "Cookie", "sid=1")
	_, c2 := do(t, "GET", b.base+"/me", "", "Cookie", "sid=2")
	if c1 == c2 {
		t.Errorf("two cookies shared an entry: %q", c1)
	}
}

// POST answers are stored (documented: model and tool calls), keyed by the
// body; other unsafe methods are never stored and carry no Cache-Status
// claiming a store.
func TestCacheAudit_MethodsAndBodiesInKey(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s #%d", r.Method, body, n)
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
	_, p1 := do(t, "POST", b.base+"/v1/chat", `{"q":"a"}`, "Content-Type", "application/json")
	_, p2 := do(t, "POST", b.base+"/v1/chat", `{"q":"b"}`, "Content-Type", "application/json")
	_, p3 := do(t, "POST", b.base+"/v1/chat", `{"q":"a"}`, "Content-Type", "application/json")
	if p1 == p2 || p3 != p1 {
		t.Errorf("POST bodies: a %q, b %q, a again %q; want b apart and a served from its entry", p1, p2, p3)
	}
	_, g := do(t, "GET", b.base+"/v1/chat", "")
	if g == p1 {
		t.Errorf("a GET was served the POST's entry: %q", g)
	}
	for _, m := range []string{"PUT", "PATCH", "DELETE"} {
		_, x1 := do(t, m, b.base+"/v1/chat", `{"q":"a"}`)
		resp, x2 := do(t, m, b.base+"/v1/chat", `{"q":"a"}`)
		if x1 == x2 || strings.Contains(resp.Header.Get("Cache-Status"), "stored") || strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
			t.Errorf("%s: %q then %q, Cache-Status %q: an unsafe method's answer was reused", m, x1, x2, resp.Header.Get("Cache-Status"))
		}
	}
}

// HEAD and GET have separate entries (the method is in the key): a stored
// HEAD (empty body) never answers a GET. A HEAD hit must not claim a
// Content-Length the resource does not have (RFC 9110 §8.6, §9.3.2: the
// same as a GET's, or none).
func TestCacheAudit_HeadAndGetEntries(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "11")
		w.Header().Set("ETag", `"v1"`)
		if r.Method != http.MethodHead {
			io.WriteString(w, "hello world")
		}
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
	c := client(t)
	head := func() *http.Response {
		req, _ := http.NewRequest(http.MethodHead, b.base+"/r", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	h1 := head()
	h2 := head()
	if h1.ContentLength != 11 {
		t.Errorf("forwarded HEAD Content-Length %d, want the upstream's 11", h1.ContentLength)
	}
	if cs := ballastCacheStatus(t, h2); strings.Contains(cs, "hit") && h2.ContentLength != 11 && h2.ContentLength != -1 {
		t.Errorf("HEAD hit Content-Length %d, want 11 or none (Cache-Status %q)", h2.ContentLength, cs)
	}
	resp, body := get(t, c, b.base+"/r")
	if body != "hello world" {
		t.Errorf("GET after a stored HEAD: %d %q, want the whole body", resp.StatusCode, body)
	}
}

// Conditional requests against a stored answer: never a 304 the agent's
// validators do not match; a 304 the upstream sent for one agent's
// conditional request is not stored and never reaches an unconditional
// request.
func TestCacheAudit_ConditionalRequests(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	lastMod := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Last-Modified", lastMod)
		if r.Header.Get("If-None-Match") == `"v1"` || r.Header.Get("If-Modified-Since") == lastMod {
			w.WriteHeader(304)
			return
		}
		io.WriteString(w, "body-v1")
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")

	// The first request is conditional: the upstream's 304 goes to that
	// agent, and is not stored.
	resp, _ := do(t, "GET", b.base+"/r", "", "If-None-Match", `"v1"`)
	if resp.StatusCode != 304 {
		t.Fatalf("conditional miss: %d, want the upstream's 304", resp.StatusCode)
	}
	resp, body := do(t, "GET", b.base+"/r", "")
	if resp.StatusCode != 200 || body != "body-v1" {
		t.Fatalf("unconditional after a 304: %d %q, want the whole answer", resp.StatusCode, body)
	}
	// Now stored: a non-matching validator gets the whole answer.
	for _, h := range [][]string{
		{"If-None-Match", `"v0"`},
		{"If-None-Match", `W/"other", "v2"`},
		{"If-Modified-Since", time.Now().Add(-48 * time.Hour).UTC().Format(http.TimeFormat)},
	} {
		resp, body := do(t, "GET", b.base+"/r", "", h...)
		if resp.StatusCode != 200 || body != "body-v1" {
			t.Errorf("%s: %s: %d %q, want 200 with the body", h[0], h[1], resp.StatusCode, body)
		}
	}
	// A matching validator may get 304 or the whole answer, but a 304
	// must carry the validator and no body.
	resp, body = do(t, "GET", b.base+"/r", "", "If-None-Match", `"v1"`)
	switch {
	case resp.StatusCode == 304 && body == "" && resp.Header.Get("ETag") == `"v1"`:
	case resp.StatusCode == 200 && body == "body-v1":
	default:
		t.Errorf("matching If-None-Match: %d %q ETag %q", resp.StatusCode, body, resp.Header.Get("ETag"))
	}
}

// cacheAuditGate holds an upstream's first call, the leader of collapsed
// misses, until open; entered has a value for every call as it arrives.
type cacheAuditGate struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

// newCacheAuditGate returns a gate that opens, at the latest, when the
// test ends.
func newCacheAuditGate(t *testing.T) *cacheAuditGate {
	g := &cacheAuditGate{entered: make(chan struct{}, 16), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

// hold is the first thing an upstream call n does.
func (g *cacheAuditGate) hold(n int64) {
	g.entered <- struct{}{}
	if n == 1 {
		<-g.release
	}
}

func (g *cacheAuditGate) open() { g.once.Do(func() { close(g.release) }) }

// A collapsed follower never inherits a response it did not ask for: a
// conditional leader's 304 (not stored) leaves the unconditional follower
// to ask the upstream itself.
func TestCacheAudit_CollapsedFollowerOfConditionalLeader(t *testing.T) {
	gate := newCacheAuditGate(t)
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		gate.hold(n)
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.WriteHeader(304)
			return
		}
		io.WriteString(w, "body-v1")
	})
	b := startBallast(t, cacheAuditYAML(up.url, "{mode: fresh, ttl: 1h}", ""))
	leader := raSend(t, "GET", b.base+"/r", "", "If-None-Match", `"v1"`)
	<-gate.entered
	follower := raSend(t, "GET", b.base+"/r", "")
	waitInflight(t, b, 2)
	gate.open()
	if s := raAnswer(t, leader).resp.StatusCode; s != 304 {
		t.Errorf("leader: %d, want 304", s)
	}
	if f := raAnswer(t, follower); f.resp.StatusCode != 200 || f.body != "body-v1" {
		t.Errorf("follower: %d %q, want 200 with the body", f.resp.StatusCode, f.body)
	}
}

// waitInflight waits until route c has n requests in flight (the
// followers have reached ballast), polling the gauge.
func waitInflight(t *testing.T, b *ballast, n float64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for b.metric("ballast_inflight_requests", map[string]string{"route": "c"}) < n {
		if time.Now().After(deadline) {
			t.Fatalf("never %v requests in flight", n)
		}
		runtime.Gosched()
	}
}

// When the leader of collapsed misses fails, followers do not all get its
// error: each asks the upstream itself.
func TestCacheAudit_CollapsedLeaderFailureFollowersRetry(t *testing.T) {
	gate := newCacheAuditGate(t)
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		gate.hold(n)
		if n == 1 {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, "ok")
	})
	b := startBallast(t, cacheAuditYAML(up.url, "{mode: fresh, ttl: 1h}", ""))
	leader := raSend(t, "GET", b.base+"/r", "")
	<-gate.entered
	const followers = 3
	var got []<-chan raResult
	for range followers {
		got = append(got, raSend(t, "GET", b.base+"/r", ""))
	}
	waitInflight(t, b, 1+followers)
	gate.open()
	if s := raAnswer(t, leader).resp.StatusCode; s != 503 {
		t.Errorf("leader: %d, want the upstream's 503 (attempts: 1, nothing stored)", s)
	}
	for _, ch := range got {
		if g := raAnswer(t, ch); g.resp.StatusCode != 200 || g.body != "ok" {
			t.Errorf("follower: %d %q, want its own call's 200", g.resp.StatusCode, g.body)
		}
	}
}

// A collapsed follower's own deadline (X-Ballast-Timeout) holds while it
// waits for the leader: "the deadline is law" (exchange.go). It must not
// wait for a leader whose upstream hangs far past it.
func TestCacheAudit_CollapsedFollowerKeepsItsDeadline(t *testing.T) {
	gate := newCacheAuditGate(t)
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		gate.hold(n)
		io.WriteString(w, "ok")
	})
	b := startBallast(t, cacheAuditYAML(up.url, "{mode: fresh, ttl: 1h}", "timeouts: {per_try: 30s, total: 30s}"))
	raSend(t, "GET", b.base+"/r", "")
	<-gate.entered
	start := time.Now()
	done := raSend(t, "GET", b.base+"/r", "", "X-Ballast-Timeout", "200ms")
	select {
	case a := <-done:
		if a.err != nil {
			t.Fatalf("follower: %v", a.err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("follower answered %d after %v", a.resp.StatusCode, took)
		}
	case <-time.After(3 * time.Second): // a guard, not a wait for behaviour
		t.Errorf("follower with X-Ballast-Timeout: 200ms still waiting after 3s behind a hanging leader")
		gate.open()
		<-done
	}
	gate.open()
}

// Hop-by-hop headers (RFC 9110 §7.6.1), including those the upstream's
// Connection field names, are neither relayed nor stored (RFC 9111 §3.1:
// a cache MUST NOT store them): a hit must not replay them.
func TestCacheAudit_HopByHopNotStored(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Hop, keep-alive")
		w.Header().Set("X-Hop", "per-connection-secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Proxy-Authenticate", `Basic realm="up"`)
		w.Header().Set("X-End", "kept")
		fmt.Fprintf(w, "v%d", n)
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
	for i, what := range []string{"forwarded", "hit"} {
		resp, body := do(t, "GET", b.base+"/x", "")
		if body != "v1" {
			t.Fatalf("%s: %q", what, body)
		}
		if i == 1 && !strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
			t.Fatalf("second GET not a hit: %q", resp.Header.Get("Cache-Status"))
		}
		for _, h := range []string{"X-Hop", "Keep-Alive", "Proxy-Authenticate"} {
			if v := resp.Header.Get(h); v != "" {
				t.Errorf("%s answer carries hop-by-hop %s: %q", what, h, v)
			}
		}
		if resp.Header.Get("X-End") != "kept" {
			t.Errorf("%s answer lost an end-to-end header", what)
		}
	}
}

// An upstream's Vary: Accept-Encoding is learned: a gzip answer for one
// agent never reaches an agent that did not accept gzip (documented).
func TestCacheAudit_CompressedAnswerNeverReachesNonGzipAgent(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	io.WriteString(zw, "plain text")
	zw.Close()
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Encoding")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			w.Write(gz.Bytes())
			return
		}
		io.WriteString(w, "plain text")
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "")
	for range 3 {
		do(t, "GET", b.base+"/x", "", "Accept-Encoding", "gzip")
	}
	for _, ae := range []string{"", "identity", "br"} {
		var h []string
		if ae != "" {
			h = []string{"Accept-Encoding", ae}
		}
		resp, body := do(t, "GET", b.base+"/x", "", h...)
		if resp.Header.Get("Content-Encoding") != "" || body != "plain text" {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q body %q (Cache-Status %q)",
				ae, resp.Header.Get("Content-Encoding"), body, resp.Header.Get("Cache-Status"))
		}
	}
	resp, body := do(t, "GET", b.base+"/x", "", "Accept-Encoding", "gzip")
	if !strings.Contains(resp.Header.Get("Cache-Status"), "hit") || body != gz.String() {
		t.Errorf("gzip agent after learning: Cache-Status %q, want a hit with the gzip body", resp.Header.Get("Cache-Status"))
	}
}

// An answer that failed validation is never stored, so it can never be
// served later, fresh or stale.
func TestCacheAudit_InvalidAnswerNeverStored(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var phase atomic.Int32
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		switch phase.Load() {
		case 0:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"truncated":`)
		default:
			w.WriteHeader(503)
		}
	})
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "validate: {json: true}")
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode == 200 || strings.Contains(resp.Header.Get("Cache-Status"), "stored") {
		t.Fatalf("invalid answer: %d %q Cache-Status %q", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
	phase.Store(1)
	resp, body = do(t, "GET", b.base+"/x", "")
	if strings.Contains(body, "truncated") {
		t.Errorf("the invalid answer was served from the cache: %d %q Cache-Status %q", resp.StatusCode, body, resp.Header.Get("Cache-Status"))
	}
}

// Idempotency and the cache: a replay answers from the record without
// asking the upstream; a new key with the same POST body is a cache hit
// (POST bodies are keys), and that hit, which never reached the upstream,
// is not recorded.
func TestCacheAudit_IdempotentReplayAndCache(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "run-%d", n) })
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "idempotency: {mode: header, ttl: 1h}")
	_, b1 := do(t, "POST", b.base+"/pay", `{"amount":1}`, "Idempotency-Key", "k1")
	r2, b2 := do(t, "POST", b.base+"/pay", `{"amount":1}`, "Idempotency-Key", "k1")
	if b1 != "run-1" || b2 != "run-1" || r2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay: %q then %q (replayed %q)", b1, b2, r2.Header.Get("Idempotent-Replayed"))
	}
	r3, b3 := do(t, "POST", b.base+"/pay", `{"amount":1}`, "Idempotency-Key", "k2")
	if b3 != "run-1" || !strings.Contains(r3.Header.Get("Cache-Status"), "hit") {
		t.Errorf("new key, same body: %q Cache-Status %q", b3, r3.Header.Get("Cache-Status"))
	}
	wantCalls(t, up, 1, "one key replayed, one cache hit")
}

// An idempotent replay did not consult the cache: it must not present the
// first exchange's Cache-Status ("fwd=uri-miss; stored") as its own (RFC
// 9211 §2: the field is the caches' handling of the request the response
// answers). An upstream cache's member may stay.
func TestCacheAudit_IdempotentReplayCacheStatus(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "run-%d", n) })
	b := cacheAuditStart(t, clock, up.url, "{mode: fresh, ttl: 1h}", "idempotency: {mode: header, ttl: 1h}")
	do(t, "POST", b.base+"/pay", `{"amount":1}`, "Idempotency-Key", "k1")
	r2, _ := do(t, "POST", b.base+"/pay", `{"amount":1}`, "Idempotency-Key", "k1")
	if r2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("not a replay")
	}
	if cs := ballastCacheStatus(t, r2); strings.Contains(cs, "stored") || strings.Contains(cs, "fwd=uri-miss") {
		t.Errorf("replay carries Cache-Status %q, describing another request's exchange", cs)
	}
}

// A leader that times out (its agent's short X-Ballast-Timeout) does not
// take its collapsed followers down with it: a follower with time left
// asks the upstream itself.
func TestCacheAudit_CollapsedLeaderTimeoutFollowerRetries(t *testing.T) {
	gate := newCacheAuditGate(t)
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		gate.hold(n)
		io.WriteString(w, "ok")
	})
	b := startBallast(t, cacheAuditYAML(up.url, "{mode: fresh, ttl: 1h}", "timeouts: {per_try: 10s, total: 10s}"))
	leader := raSend(t, "GET", b.base+"/r", "", "X-Ballast-Timeout", "300ms")
	<-gate.entered
	follower := raSend(t, "GET", b.base+"/r", "")
	waitInflight(t, b, 2)
	if s := raAnswer(t, leader).resp.StatusCode; s != 504 {
		t.Errorf("leader: %d, want 504 at its 300ms deadline", s)
	}
	if f := raAnswer(t, follower); f.resp.StatusCode != 200 || f.body != "ok" {
		t.Errorf("follower: %d %q, want its own call's 200", f.resp.StatusCode, f.body)
	}
	gate.open()
}

// A reload that keeps the cache block keeps the entries; one that changes
// it starts afresh (documented); turning the cache off stops Cache-Status
// and hits, and turning the same block back on must not resurrect answers
// stored before it was turned off.
func TestCacheAudit_ReloadChangesCacheSettings(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	up := newCacheAuditUp(t, func(n int64, w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "v%d", n) })
	block := "{mode: fresh, ttl: 1h}"
	b := cacheAuditStart(t, clock, up.url, block, "")
	do(t, "GET", b.base+"/x", "")

	reload := func(y string) {
		t.Helper()
		if code, body := opsReload(t, b, y); code != 200 {
			t.Fatalf("reload: %d %s", code, body)
		}
	}
	reload(cacheAuditYAML(up.url, block, "headers: {set: {X-Extra: one}}"))
	if _, body := do(t, "GET", b.base+"/x", ""); body != "v1" {
		t.Errorf("after a reload keeping the cache block: %q, want the stored v1", body)
	}
	reload(cacheAuditYAML(up.url, "{mode: fresh, ttl: 2h}", ""))
	if _, body := do(t, "GET", b.base+"/x", ""); body != "v2" {
		t.Errorf("after a reload changing ttl: %q, want a fresh start (v2)", body)
	}
	reload(cacheAuditYAML(up.url, "{mode: off}", ""))
	resp, body := do(t, "GET", b.base+"/x", "")
	if body != "v3" || resp.Header.Get("Cache-Status") != "" || resp.Header.Get("Age") != "" {
		t.Errorf("cache off: %q Cache-Status %q Age %q", body, resp.Header.Get("Cache-Status"), resp.Header.Get("Age"))
	}
	reload(cacheAuditYAML(up.url, "{mode: fresh, ttl: 2h}", ""))
	if resp, body := do(t, "GET", b.base+"/x", ""); body == "v2" {
		t.Errorf("turning the cache back on served an answer stored before it was turned off: %q Cache-Status %q",
			body, resp.Header.Get("Cache-Status"))
	}
}

// noRedirect GETs url without following redirects.
func noRedirect(t *testing.T, url string) *http.Response {
	t.Helper()
	c := client(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}
