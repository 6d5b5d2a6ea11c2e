package main

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingUpstream counts calls per path; paths under /slow/ hang until
// the test ends.
type countingUpstream struct {
	callCounter
	slow chan struct{}
	got  atomic.Int64
}

// callCounter counts a test upstream's calls per path. Its zero value is
// ready to use.
type callCounter struct {
	mu    sync.Mutex
	calls map[string]int
}

// add counts a call to path and returns how many path has had.
func (c *callCounter) add(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[path]++
	return c.calls[path]
}

func (c *callCounter) count(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[path]
}

// snapshot copies the counts, for a failure message written while calls
// may still arrive.
func (c *callCounter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.calls)
}

func startCountingUpstream(t *testing.T) (*countingUpstream, string) {
	u := &countingUpstream{slow: make(chan struct{})}
	srv := fixedHandler(t, func(w http.ResponseWriter, r *http.Request) {
		n := u.add(r.URL.Path)
		u.got.Add(1)
		if strings.Contains(r.URL.Path, "/slow/") && n == 1 {
			select { // the first call hangs: ballast is killed meanwhile
			case <-u.slow:
			case <-r.Context().Done():
			}
			return
		}
		fmt.Fprintf(w, `{"path":%q,"call":%d}`, r.URL.Path, n)
	})
	t.Cleanup(func() { close(u.slow) })
	return u, srv
}

func fixedHandler(t *testing.T, h http.HandlerFunc) string {
	addr := freePort(t)
	s := &http.Server{Addr: addr, Handler: h}
	go s.ListenAndServe()
	t.Cleanup(func() { s.Close() })
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get("http://" + addr + "/ping-ready"); err == nil {
			resp.Body.Close()
			return "http://" + addr
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("upstream did not start")
	return ""
}

func post(t *testing.T, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestKillNineLosesNothingAndRepeatsNothing(t *testing.T) {
	u, up := startCountingUpstream(t)
	dir := t.TempDir()
	listen, admin := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`
listen: %s
admin: {listen: %s}
state: {path: %s}
routes:
  - name: pay
    match: {path_prefix: /pay/}
    upstream: %s
    idempotency: {mode: header}
  - name: report
    match: {path_prefix: /report/}
    upstream: %s
    idempotency: {mode: header, idempotent: true}
    async: {enabled: true}
`, listen, admin, filepath.Join(dir, "state.db"), up, up)
	if err := os.WriteFile(filepath.Join(dir, "ballast.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd, logs := startProcess(t, dir, "run")
	waitHealthy(t, admin)
	base := "http://" + listen

	resp, body := post(t, base+"/pay/fast", `{"amount":1}`, "Idempotency-Key", "order-1")
	if resp.StatusCode != 200 {
		t.Fatalf("completed call: %d %s", resp.StatusCode, body)
	}
	// A call in flight when ballast dies.
	go func() {
		req, _ := http.NewRequest("POST", base+"/pay/slow/charge", strings.NewReader(`{"amount":2}`))
		req.Header.Set("Idempotency-Key", "order-2")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	// An async job in flight when ballast dies, on a route declared idempotent.
	resp, body = post(t, base+"/report/slow/build", `{}`, "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("async: %d %s", resp.StatusCode, body)
	}
	job := resp.Header.Get("Location")
	deadline := time.Now().Add(5 * time.Second)
	for u.count("/pay/slow/charge") == 0 || u.count("/report/slow/build") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the slow calls never reached the upstream: %v", u.snapshot())
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	cmd2, logs2 := startProcess(t, dir, "run")
	waitHealthy(t, admin)
	t.Cleanup(func() { _ = cmd2.Process.Signal(syscall.SIGTERM) })

	resp, body = post(t, base+"/pay/fast", `{"amount":1}`, "Idempotency-Key", "order-1")
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" || !strings.Contains(body, `"call":1`) {
		t.Errorf("completed record after kill -9: %d replayed=%q %s", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	resp, body = post(t, base+"/pay/slow/charge", `{"amount":2}`, "Idempotency-Key", "order-2")
	if resp.StatusCode != 409 || !strings.Contains(body, "outcome_unknown") || !strings.Contains(body, "started at") {
		t.Errorf("in-flight claim after kill -9: %d %s, want 409 outcome_unknown", resp.StatusCode, body)
	}
	if got := u.count("/pay/fast"); got != 1 {
		t.Errorf("the completed call ran %d times", got)
	}
	if got := u.count("/pay/slow/charge"); got != 1 {
		t.Errorf("the non-idempotent call ran %d times: ballast repeated a side effect", got)
	}
	// The pending job resumed on its idempotent route and finished.
	req, _ := http.NewRequest("GET", base+job, nil)
	req.Header.Set("Prefer", "wait=10")
	jr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	jb, _ := io.ReadAll(jr.Body)
	jr.Body.Close()
	if jr.StatusCode != 200 || !strings.Contains(string(jb), `"call":2`) {
		t.Errorf("resumed job: %d %s\nlogs:\n%s\n%s", jr.StatusCode, jb, logs.String(), logs2.String())
	}
	if !strings.Contains(logs2.String(), `"unknown_outcome":1`) || !strings.Contains(logs2.String(), "resuming async job") {
		t.Errorf("the restart did not report what it recovered:\n%s", logs2.String())
	}
}

func TestCorruptStateFileIsAClearStartUpError(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.db")
	os.WriteFile(state, bytes.Repeat([]byte("not a bolt file "), 512), 0o600)
	cfg := fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nstate: {path: %s}\nroutes: [{name: r, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1'}]\n",
		freePort(t), freePort(t), state)
	os.WriteFile(filepath.Join(dir, "ballast.yaml"), []byte(cfg), 0o600)
	out, err := exec.Command(binary, "run", "-c", filepath.Join(dir, "ballast.yaml")).CombinedOutput()
	if err == nil {
		t.Fatal("ballast started on a corrupt state file")
	}
	if !strings.Contains(string(out), state) || !strings.Contains(string(out), "move it aside") {
		t.Errorf("the error must name the file and the choices:\n%s", out)
	}
	if strings.Contains(string(out), "panic") {
		t.Errorf("panicked:\n%s", out)
	}
}
