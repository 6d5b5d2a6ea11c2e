package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
)

// After a burst opened several upstream connections, requests one at a
// time reuse the most recently used connection (LIFO, as nginx's
// keep-alive cache does): one warm socket, and the burst's extra
// connections go idle until they are closed. FIFO would cycle through all
// of them.
func TestUpstreamPoolReusesTheMostRecentConnection(t *testing.T) {
	const burst = 4
	var mu sync.Mutex
	var arrived sync.WaitGroup
	arrived.Add(burst)
	release := make(chan struct{})
	seen := map[string]int{} // upstream connection (agent-side address) → requests
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/burst" {
			arrived.Done()
			<-release
		} else {
			mu.Lock()
			seen[r.RemoteAddr]++
			mu.Unlock()
		}
		io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
`, up))
	answers := make([]<-chan raResult, burst)
	for i := range answers {
		answers[i] = raSend(t, "GET", b.base+"/burst", "")
	}
	arrived.Wait() // four requests in flight: four upstream connections
	close(release)
	for _, ch := range answers {
		raAnswer(t, ch)
	}
	for range 10 {
		if resp, _ := do(t, "GET", b.base+"/one", ""); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	if len(seen) != 1 {
		t.Errorf("10 sequential requests used %d upstream connections (%v), want 1: the most recently used", len(seen), seen)
	}
}
