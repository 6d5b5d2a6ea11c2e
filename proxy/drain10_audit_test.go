package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/proxy"
)

// The drain audit, round 10: the shutdown that drains from inside each
// connection (internal/rawio/stop.go), seen from what it may have left
// behind: listeners that are not TCP, the admin listener at the
// deadline, waits that learnt of the drain from fasthttp's own Shutdown,
// and answers being written when the drain begins.

// d10Embedded runs a Server on ln, an embedder's listener, and returns
// it; its Shutdown (5s) runs with the test's cleanup unless the test ran
// it.
func d10Embedded(t *testing.T, yaml string, ln net.Listener) *proxy.Server {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ballast.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	src := config.Source{File: file}
	cfg, err := config.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Source: &src, AccessLog: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = srv.Serve(ln); close(served) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})
	return srv
}

// An embedder's listener that is not TCP (a Unix socket: its connections
// cannot be woken, rawio wraps only TCP) keeps the drain it had: a
// request whose bytes were all in ballast's socket before Shutdown was
// called, on a kept-alive connection, is answered (with Connection:
// close), not dropped with its connection by fasthttp's close of idle
// connections. Many connections are used at once so that some goroutines
// have not yet read their request when the drain looks.
func TestDrain10_UnixListenerKeepsRequestsSentBeforeShutdown(t *testing.T) {
	const conns = 48
	up, seen := s10Upstream(t)
	sock := filepath.Join(t.TempDir(), "b.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := d10Embedded(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up), ln)
	agents := s10WarmAgents(t, conns, func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c, bufio.NewReader(c)
	})
	for i, a := range agents {
		// A Unix socket's write returns once the bytes are in the
		// receiver's buffer: each request is there before Shutdown.
		if _, err := fmt.Fprintf(a.c, "POST /k%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", i); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	lost := 0
	for i, a := range agents {
		path := fmt.Sprintf("/k%d", i)
		status, body, _, err := s10Answer(a.c, a.br, 5*time.Second)
		if err != nil || status != 200 || body != "ok "+path {
			lost++
			t.Errorf("%s, all in ballast's socket before Shutdown: %d %q %v (upstream had it: %v), want its answer",
				path, status, body, err, seen.saw(path))
		}
	}
	if lost > 0 {
		t.Logf("%d of %d requests sent before Shutdown were dropped", lost, conns)
	}
	sdReturns(t, done, 10*time.Second)
}

// An admin request still arriving when the drain runs out of time (a
// scraper's head cut short, a slow client) does not outlive Shutdown: its
// connection is answered then, as the agent listener's are,
// rather than left to the admin listener's 30s read timeout with its
// goroutine running after Shutdown returned (an embedder's leak): 503
// shutting_down, as on the agent listener, not fasthttp's 400.
func TestDrain10_AdminRequestStillArrivingEndsAtTheDeadline(t *testing.T) {
	up, _ := s10Upstream(t)
	b := startBallast(t, s10Route(up, "read_timeout: 60s"))
	aaddr := strings.TrimPrefix(b.admin, "http://")
	c, br := s9Dial(t, aaddr)
	fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if status, _, _, err := s10Answer(c, br, 5*time.Second); err != nil || status != 200 {
		t.Fatalf("admin warm-up: %d %v", status, err)
	}
	fmt.Fprint(c, "GET /metr")
	err, took := s9Shutdown(t, b, 300*time.Millisecond)
	if err == nil || took > 2*time.Second {
		t.Errorf("Shutdown with an admin request still arriving: %v after %v, want the deadline's error at about 300ms", err, took)
	}
	status, body, closing, rerr := s10Answer(c, br, 2*time.Second)
	if rerr != nil || status != 503 || !strings.Contains(body, "shutting_down") || !closing {
		t.Errorf("the admin request still arriving at the deadline, after Shutdown returned: %d %q close=%v %v, want 503 shutting_down with Connection: close",
			status, body, closing, rerr)
	}
}

// A wait for a job that another replica runs (GET /_ballast/jobs/{id}
// with Prefer: wait=N on a shared store) does not hold this replica's
// drain to shutdown_timeout: nothing here depends on it, so it is
// answered (202, the job still pending) when the drain begins, and the
// agent polls another replica. It learnt of the drain from fasthttp's
// Shutdown, which now runs only once every connection has ended.
func TestDrain10_JobWaitOnAnotherReplicaDoesNotHoldTheDrain(t *testing.T) {
	rs := redistest.Start(t)
	release := make(chan struct{})
	defer close(release)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "done")
	})
	reps := fleet(t, rs.Addr(), 2, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q, async: {enabled: true}, timeouts: {total: 60s, per_try: 60s}}]\n", up), "fail_closed")
	resp, body := do(t, "POST", reps[0].base+"/j", "{}", "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("starting the job: %d %s", resp.StatusCode, body)
	}
	var job struct{ ID string }
	if err := json.Unmarshal([]byte(body), &job); err != nil || job.ID == "" {
		t.Fatalf("the job's answer %s: %v", body, err)
	}
	c, br := s9Dial(t, reps[1].addr)
	fmt.Fprintf(c, "GET /_ballast/jobs/%s HTTP/1.1\r\nHost: x\r\nPrefer: wait=30\r\n\r\n", job.ID)
	// The wait has begun once the poll's connection is in a request: a
	// second connection's answer proves the first request was read.
	if resp, _ := do(t, "GET", reps[1].base+"/_ballast/jobs/"+job.ID, ""); resp.StatusCode != 202 {
		t.Fatalf("the job seen from the other replica: %d", resp.StatusCode)
	}
	err, took := s9Shutdown(t, reps[1], 10*time.Second)
	if err != nil || took > 3*time.Second {
		t.Errorf("Shutdown of a replica with only a job wait in flight: %v after %v, want nil at once", err, took)
	}
	status, body, closing, rerr := s10Answer(c, br, 5*time.Second)
	if rerr != nil || status != 202 || !closing {
		t.Errorf("the job wait at the drain: %d %q close=%v %v, want 202 with Connection: close", status, body, closing, rerr)
	}
}

// An answer being written when the drain begins — a large one to an
// agent reading it slowly — is not disturbed by the wake-up of its
// connection: it arrives whole, says Connection: close, and the
// connection then closes.
func TestDrain10_AnswerBeingWrittenArrivesWhole(t *testing.T) {
	const size = 8 << 20
	big := strings.Repeat("0123456789abcdef", size/16)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		_, _ = io.WriteString(w, big)
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 64<<10)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	done := saShutdown(b, 10*time.Second)
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || len(first)+len(rest) != size || string(first)+string(rest) != big {
		t.Fatalf("an answer being written at the drain: %d of %d bytes, %v", len(first)+len(rest), size, err)
	}
	if end := s9Ends(c, br, 5*time.Second); end != nil {
		t.Errorf("after the answer the connection %v, want it closed", end)
	}
	sdReturns(t, done, 5*time.Second)
}
