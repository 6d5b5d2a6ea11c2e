package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
)

// TestFwdCacheKeyedByProxyCredentials: through HTTP_PROXY, the
// caller's identity may be only its proxy credentials. Proxy-Authorization
// is never forwarded, but it is part of the cache key (docs: cache.public),
// so one agent's cached answer is never served to another; the same agent
// is served from the cache.
func TestFwdCacheKeyedByProxyCredentials(t *testing.T) {
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if v := r.Header.Get("Proxy-Authorization"); v != "" {
			t.Errorf("Proxy-Authorization forwarded: %q", v)
		}
		w.Header().Set("Cache-Control", "max-age=60")
		fmt.Fprintf(w, "answer %d", n)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {host: tool.internal, path_prefix: /}
    upstream: %s/
    cache: {mode: fresh, ttl: 1m}
`, up))
	as := func(user string) string {
		t.Helper()
		pu, _ := url.Parse(b.base)
		pu.User = url.UserPassword(user, "pw")
		tr := &http.Transport{Proxy: http.ProxyURL(pu)}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("http://tool.internal:8000/data?q=1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", user, resp.StatusCode, body)
		}
		return string(body)
	}
	first := as("alice")
	if got := as("alice"); got != first {
		t.Errorf("alice again: %q; want her cached %q", got, first)
	}
	if got := as("bob"); got == first {
		t.Errorf("bob was served alice's cached answer %q", got)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("upstream called %d times, want 2 (one per agent)", n)
	}
}
