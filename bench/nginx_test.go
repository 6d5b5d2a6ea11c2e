package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// nginx takes as many agent connections at once as the load driver may
// open (--connections), each with its own upstream connection. It had
// worker_connections 4096, two per proxied request, so past about 2,000
// concurrent requests (streams held open, say) it refused the rest.
func TestNginxHoldsEveryConnectionTheDriverOpens(t *testing.T) {
	exe := NginxPath()
	if exe == "" {
		t.Fatal("nginx is not on PATH: scripts/test-deps.sh installs nginx-light")
	}
	const conns = 2200
	// The upstream holds every request until all have arrived.
	var arrived atomic.Int64
	all := make(chan struct{})
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/items/") {
			return // startNginx's readiness probe
		}
		if arrived.Add(1) == conns {
			close(all)
		}
		select {
		case <-all:
		case <-r.Context().Done():
			return
		}
		w.Write([]byte(`{"ok":true}`))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go up.Serve(ln)
	t.Cleanup(func() { up.Close() })

	dir := t.TempDir()
	p, err := startNginx(context.Background(), exe, dir, ln.Addr().String(), 1, conns, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)

	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr atomic.Value
	for i := range conns {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			defer c.Close()
			_ = c.SetDeadline(deadline)
			fmt.Fprintf(c, "GET /v1/items/%d HTTP/1.1\r\nHost: bench\r\n\r\n", i)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprint(err, resp != nil && resp.StatusCode != 200))
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Errorf("%d of %d concurrent requests through nginx failed (first: %v; %d reached the upstream)\n%s",
			n, conns, firstErr.Load(), arrived.Load(), tail(string(log), 600))
	}
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[strings.IndexByte(s[len(s)-n:], '\n')+len(s)-n:]
}
