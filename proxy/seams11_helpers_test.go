package proxy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// Upstreams and routes that several of the feature-seam probes
// (interplay11, alertseams11, security11) set up alike.

// refundUpstream is the upstream of the refunded-retry probes: /a/x
// answers 503 every time; /b/x answers 503 once, then ok. aHits and bHits
// count the calls of each.
func refundUpstream(t *testing.T) (url string, aHits, bHits *atomic.Int64) {
	t.Helper()
	aHits, bHits = new(atomic.Int64), new(atomic.Int64)
	url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/a/x":
			aHits.Add(1)
			w.WriteHeader(503)
		case "/b/x":
			if bHits.Add(1) == 1 {
				w.WriteHeader(503)
				return
			}
			_, _ = io.WriteString(w, "ok")
		}
	})
	return url, aHits, bHits
}

// refundRoutes is the config of the refunded-retry probes on up (see
// refundUpstream): a retry budget of one retry shared by route a (/a/),
// whose rate limit has no token for its retry, and route b (/b/).
func refundRoutes(up string) string {
	return fmt.Sprintf(`
defaults:
  retry: {attempts: 2, budget: {ratio: 0, min_per_second: 0.1}, backoff: {base: 1ms, max: 1ms}}
routes:
  - name: a
    match: {path_prefix: /a/}
    upstream: %[1]q
    rate_limit: {rps: 0.001, burst: 1, max_wait: 0s}
  - name: b
    match: {path_prefix: /b/}
    upstream: %[1]q
`, up)
}

// hintOnce answers its first call status with Retry-After: retryAfter,
// and every later one body; hits counts the calls.
func hintOnce(hits *atomic.Int64, status int, retryAfter, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", retryAfter)
			w.WriteHeader(status)
			return
		}
		_, _ = io.WriteString(w, body)
	}
}

// jobRoutesLimitedByIP is a config of two async routes on up: jobs (/j/),
// and limited (/l/), whose rate limit of one call is keyed by ip, so that
// an agent's second call there, run directly or as a job, finds none.
func jobRoutesLimitedByIP(up string) string {
	return fmt.Sprintf(`
routes:
  - name: jobs
    match: {path_prefix: /j/}
    upstream: %q
    async: {enabled: true}
  - name: limited
    match: {path_prefix: /l/}
    upstream: %[1]q
    async: {enabled: true}
    rate_limit: {rps: 0.001, burst: 1, key: ip, max_wait: 0s}
`, up)
}

// dialBounded dials addr with every read and write on the connection
// bounded by wait; the caller closes it.
func dialBounded(t *testing.T, addr string, wait time.Duration) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(wait))
	return c
}
