package proxy_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// TestAsyncRequestTooLargeToKeepIs413: an async job keeps its request in
// the state store; one larger than state.max_response_bytes is refused
// with 413 body_too_large, which the SDKs do not retry (the same request
// is refused the same way every time), not with a retryable 503; the
// upstream never sees it, and the same request sent without Prefer:
// respond-async runs.
func TestAsyncRequestTooLargeToKeepIs413(t *testing.T) {
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	})
	b := startBallast(t, fmt.Sprintf(`
state: {max_response_bytes: 4KiB}
routes:
  - name: gen
    match: {path_prefix: /}
    upstream: %q
    async: {enabled: true}
`, up))
	big := `{"prompt":"` + strings.Repeat("x", 8<<10) + `"}`
	resp, body := do(t, "POST", b.base+"/gen", big, "Prefer", "respond-async", "Content-Type", "application/json")
	if resp.StatusCode != 413 || !strings.Contains(body, `"reason":"body_too_large"`) || !strings.Contains(body, "state.max_response_bytes (4KiB)") {
		t.Fatalf("an async request over max_response_bytes: %d %s; want 413 body_too_large naming the limit", resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		t.Errorf("Retry-After %q on an answer that holds for every retry", ra)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the upstream saw %d calls of a refused job", n)
	}
	if resp, body := do(t, "POST", b.base+"/gen", big, "Content-Type", "application/json"); resp.StatusCode != 200 || calls.Load() != 1 {
		t.Errorf("the same request without respond-async: %d %s, %d upstream calls; want it run", resp.StatusCode, body, calls.Load())
	}
	if resp, body := do(t, "POST", b.base+"/gen", `{"prompt":"small"}`, "Prefer", "respond-async", "Content-Type", "application/json"); resp.StatusCode != 202 {
		t.Errorf("a small async request: %d %s; want 202", resp.StatusCode, body)
	}
}
