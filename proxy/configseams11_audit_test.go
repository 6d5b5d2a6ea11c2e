package proxy_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A route that overrides part of the defaults' retry block keeps the rest:
// retry: {attempts: 4} keeps the defaults' on list and backoff; retry:
// {on: [500]} replaces the list as a whole (503 is no longer retried) and
// keeps the attempts. Checked on the wire, and on GET /config, which shows
// each route's merged values and never a literal secret.
func TestConfigSeams11_PartialRetryOverrideOnTheWire(t *testing.T) {
	var calls atomic.Int32
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	})
	b := startBallast(t, `
defaults:
  retry: {attempts: 2, on: [503], backoff: {base: 1ms, max: 2ms}}
  breaker: {enabled: false}
routes:
  - name: more
    match: {path_prefix: /more}
    upstream: `+up+`
    retry: {attempts: 4}
    headers: {set: {Authorization: "Bearer sk-literal-secret", X-Api-Key: "${SEAMS_KEY}"}}
  - name: other
    match: {path_prefix: /other}
    upstream: `+up+`
    retry: {on: [500]}
`, "SEAMS_KEY=sk-from-env")
	c := client(t)
	for _, tc := range []struct {
		path  string
		calls int32
	}{
		{"/more?code=503", 4},  // attempts overridden, on inherited
		{"/more?code=500", 1},  // 500 is not in the inherited list
		{"/other?code=503", 1}, // the route's list replaced the defaults'
		{"/other?code=500", 2}, // and kept the defaults' attempts
	} {
		calls.Store(0)
		resp, _ := get(t, c, b.base+tc.path)
		if calls.Load() != tc.calls || resp.Header.Get("X-Ballast-Attempts") != strconv.Itoa(int(tc.calls)) {
			t.Errorf("%s: %d upstream calls, X-Ballast-Attempts %q; want %d", tc.path, calls.Load(), resp.Header.Get("X-Ballast-Attempts"), tc.calls)
		}
	}
	resp, body := get(t, c, b.admin+"/config")
	if resp.StatusCode != 200 {
		t.Fatalf("/config: %d", resp.StatusCode)
	}
	var cfg struct {
		Routes []struct {
			Name  string `json:"name"`
			Retry struct {
				Attempts int      `json:"attempts"`
				On       []string `json:"on"`
				Backoff  struct {
					Base string `json:"base"`
				} `json:"backoff"`
			} `json:"retry"`
			Headers struct {
				Set map[string]string `json:"set"`
			} `json:"headers"`
		} `json:"routes"`
	}
	if err := json.Unmarshal([]byte(body), &cfg); err != nil || len(cfg.Routes) != 2 {
		t.Fatalf("/config: %v\n%s", err, body)
	}
	more, other := cfg.Routes[0], cfg.Routes[1]
	if more.Retry.Attempts != 4 || strings.Join(more.Retry.On, ",") != "503" || more.Retry.Backoff.Base != "1ms" ||
		other.Retry.Attempts != 2 || strings.Join(other.Retry.On, ",") != "500" || other.Retry.Backoff.Base != "1ms" {
		t.Errorf("/config does not show the merged retry blocks: %+v %+v", more.Retry, other.Retry)
	}
	if more.Headers.Set["Authorization"] != "[redacted]" || more.Headers.Set["X-Api-Key"] != "${SEAMS_KEY}" ||
		strings.Contains(body, "sk-literal-secret") || strings.Contains(body, "sk-from-env") {
		t.Errorf("/config headers %v", more.Headers.Set)
	}
}

// One named limiter used by two routes is one bucket: a request on one
// route spends the token the other would have had. A defaults rate_limit
// the routes inherit is not counted against naming a limiter, and does
// not become a second, private limit.
func TestConfigSeams11_SharedLimiterIsOneBucket(t *testing.T) {
	var calls atomic.Int32
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) })
	b := startBallast(t, `
limiters:
  quota: {rps: 0.001, burst: 1}
defaults:
  rate_limit: {rps: 1000, burst: 1000, max_wait: 0}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: `+up+`, rate_limit: {limiter: quota}}
  - {name: b, match: {path_prefix: /b}, upstream: `+up+`, rate_limit: {limiter: quota}}
  - {name: c, match: {path_prefix: /c}, upstream: `+up+`}
`)
	c := client(t)
	if resp, _ := get(t, c, b.base+"/a"); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	resp, _ := get(t, c, b.base+"/b")
	if resp.StatusCode != 429 || !strings.Contains(resp.Header.Get("RateLimit-Policy"), `"quota"`) {
		t.Errorf("route b after route a spent the shared token: %d %q; want 429 from the quota limiter",
			resp.StatusCode, resp.Header.Get("RateLimit-Policy"))
	}
	// Route c has the inherited inline limit of its own.
	for i := 0; i < 3; i++ {
		if resp, _ := get(t, c, b.base+"/c"); resp.StatusCode != 200 {
			t.Errorf("route c, request %d: %d", i, resp.StatusCode)
		}
	}
	if calls.Load() != 4 {
		t.Errorf("%d upstream calls, want 4", calls.Load())
	}
}

// hedge_after set in the defaults reaches a route that sets nothing: a
// GET whose first attempt is silent is hedged.
func TestConfigSeams11_HedgeInheritedFromDefaults(t *testing.T) {
	var n atomic.Int32
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			// The first copy stays silent until ballast calls it off: an
			// empty answer of its own, sent as the hedge's arrives, could
			// win the race and fail the test.
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		_, _ = w.Write([]byte("hedge"))
	})
	b := startBallast(t, `
defaults:
  hedge_after: 50ms
routes:
  - {name: a, match: {path_prefix: /a}, upstream: `+up+`}
`)
	start := time.Now()
	resp, body := get(t, client(t), b.base+"/a")
	if resp.StatusCode != 200 || body != "hedge" || time.Since(start) > 5*time.Second {
		t.Errorf("%d %q after %v: the inherited hedge_after did not hedge", resp.StatusCode, body, time.Since(start))
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "a"}); got != 1 {
		t.Errorf("ballast_hedges_total %v, want 1", got)
	}
}

// ${ENV} references in an upstream URL and a header rule: a value with
// YAML's special characters reaches the upstream byte for byte, and the
// secret never shows in /config, /status or the logs.
func TestConfigSeams11_EnvReferencesOnTheWire(t *testing.T) {
	const secret = `sk-#: {x} [y] "q" 'z' & *`
	got := make(chan string, 4)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		got <- r.URL.Path + "|" + r.Header.Get("X-Api-Key") + "|" + r.Header.Get("X-Empty")
	})
	b := startBallast(t, `
routes:
  - name: a
    match: {path_prefix: /a/}
    upstream: "${SEAMS_UP}"
    strip_prefix: true
    headers: {set: {X-Api-Key: "${SEAMS_KEY}", X-Empty: "${SEAMS_EMPTY}"}}
`, "SEAMS_UP="+up+"/tok-b4se/", "SEAMS_KEY="+secret, "SEAMS_EMPTY=")
	c := client(t)
	resp, _ := get(t, c, b.base+"/a/v1")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if g := <-got; g != "/tok-b4se/v1|"+secret+"|" {
		t.Errorf("upstream saw %q", g)
	}
	_, cfgBody := get(t, c, b.admin+"/config")
	_, status := get(t, c, b.admin+"/status")
	for what, text := range map[string]string{"/config": cfgBody, "/status": status, "logs": b.logs.String()} {
		if strings.Contains(text, "sk-#") || strings.Contains(text, "tok-b4se") {
			t.Errorf("%s shows the secret:\n%s", what, text)
		}
	}
	if !strings.Contains(cfgBody, "${SEAMS_UP}") || !strings.Contains(cfgBody, "${SEAMS_KEY}") {
		t.Errorf("/config does not show the references as written:\n%s", cfgBody)
	}
}

// A reload reads the BALLAST_* overrides and ${ENV} references again from
// the environment: what changed in it takes effect, and a change that
// makes the config invalid is refused, naming the variable, with the old
// config kept.
func TestConfigSeams11_ReloadRereadsTheEnvironment(t *testing.T) {
	t.Setenv("SEAMS11_KEY", "v1")
	t.Setenv("BALLAST_DEFAULTS__RETRY__ATTEMPTS", "1")
	var calls atomic.Int32
	got := make(chan string, 16)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		got <- r.Header.Get("X-Key")
		w.WriteHeader(503)
	})
	b := startBallast(t, `
defaults:
  retry: {backoff: {base: 1ms, max: 2ms}}
  breaker: {enabled: false}
routes:
  - {name: a, match: {path_prefix: /a}, upstream: `+up+`, headers: {set: {X-Key: "${SEAMS11_KEY}"}}}
`)
	c := client(t)
	send := func() (int32, string) {
		calls.Store(0)
		get(t, c, b.base+"/a")
		n := calls.Load()
		var last string
		for i := int32(0); i < n; i++ {
			last = <-got
		}
		return n, last
	}
	if n, key := send(); n != 1 || key != "v1" {
		t.Fatalf("before the reload: %d calls, key %q", n, key)
	}
	t.Setenv("SEAMS11_KEY", "v2")
	t.Setenv("BALLAST_DEFAULTS__RETRY__ATTEMPTS", "3")
	if err := b.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if n, key := send(); n != 3 || key != "v2" {
		t.Errorf("after the reload: %d calls, key %q; want 3 and v2", n, key)
	}
	t.Setenv("BALLAST_DEFAULTS__RETRY__ATTEMPTS", "11")
	err := b.srv.Reload()
	if err == nil || !strings.Contains(err.Error(), "BALLAST_DEFAULTS__RETRY__ATTEMPTS") {
		t.Errorf("an invalid override on reload: %v, want an error naming the variable", err)
	}
	if n, _ := send(); n != 3 {
		t.Errorf("after the refused reload: %d calls, want the old config's 3", n)
	}
}
