package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
)

// newcode11 audit: shutdown_delay (405c03c) against what docs/config.md
// promises for it. The delay runs on the server's fake clock (see
// shutdowndelay_test.go's sdShutdown).

// A Shutdown whose context has already ended does not wait for the delay
// at all: the drain begins at once, the listener refuses, and Shutdown
// returns, with an hour of delay configured.
func TestNewcode11CancelledContextSkipsTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, _ := s10Upstream(t)
	b := startBallastClock(t, clk, sdRoute(up, "1h\nshutdown_timeout: 2h", ""))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- b.srv.Shutdown(ctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown with an ended context waited for the delay")
	}
	if !sdRefused(b.addr) {
		t.Error("a dial after Shutdown returned was accepted, want it refused")
	}
	if !strings.Contains(b.logs.String(), `"msg":"shutdown delay cut short: draining"`) {
		t.Errorf("the delay cut short is not logged:\n%s", b.logs.String())
	}
}

// An async job taken during the delay runs, and when the delay is over
// the drain waits for it like any job: Shutdown returns only once the
// job's call has been answered, and the job is not failed as cut off.
func TestNewcode11JobTakenDuringTheDelayIsDrained(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	release, arrived := make(chan struct{}), make(chan struct{}, 1)
	var answered atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		fmt.Fprint(w, `{"done":true}`)
		answered.Store(true)
	})
	b := startBallastClock(t, clk, sdRoute(up, "10s", ", async: {enabled: true}"))
	done := sdShutdown(t, b, clk, context.Background())
	resp, body := do(t, "POST", b.base+"/job", "{}", "Prefer", "respond-async")
	if resp.StatusCode != 202 || resp.Header.Get("Location") == "" {
		t.Fatalf("an async job during the delay: %d %s, want 202 with a Location", resp.StatusCode, body)
	}
	<-arrived
	clk.Advance(10 * time.Second)
	waitFor(t, func() bool { return sdRefused(b.addr) })
	sdRunning(t, done, "with a job taken during the delay still running")
	close(release)
	sdReturns(t, done, 5*time.Second)
	if !answered.Load() {
		t.Error("Shutdown returned before the job's call was answered")
	}
	if strings.Contains(b.logs.String(), "ballast shut down before the call finished") {
		t.Errorf("the job taken during the delay was failed as cut off:\n%s", b.logs.String())
	}
}

// Two requests pipelined on a connection during the delay: the first is
// answered with Connection: close, and the second is then never read, so
// never sent upstream (the agent may send it again: RFC 9112 §9.6). A
// second request read, sent upstream and then dropped with the
// connection would be lost work the agent cannot tell from a refusal.
func TestNewcode11PipelinedDuringTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, seen := s10Upstream(t)
	b := startBallastClock(t, clk, sdRoute(up, "10s", ""))
	done := sdShutdown(t, b, clk, context.Background())
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n")
	status, body, closing, err := s10Answer(c, br, 5*time.Second)
	if err != nil || status != 200 || body != "ok /p1" || !closing {
		t.Fatalf("the first pipelined request during the delay: %d %q close=%v %v, want 200 with Connection: close", status, body, closing, err)
	}
	if end := s9Ends(c, br, 5*time.Second); end != nil {
		t.Errorf("after the Connection: close answer the connection %v, want it closed", end)
	}
	if seen.saw("/p2") {
		t.Error("the request pipelined behind the Connection: close answer was sent upstream, and its answer dropped")
	}
	clk.Advance(10 * time.Second)
	sdReturns(t, done, 5*time.Second)
}

// A streamed (SSE) answer begun during the delay is relayed as usual, with
// Connection: close, and runs on when the delay is over: the drain waits
// for it, and Shutdown returns once it has ended.
func TestNewcode11StreamDuringTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	next, ended := make(chan string), make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		for ev := range next {
			fmt.Fprintf(w, "data: %s\n\n", ev)
			w.(http.Flusher).Flush()
		}
		close(ended)
	})
	b := startBallastClock(t, clk, sdRoute(up, "10s", ""))
	done := sdShutdown(t, b, clk, context.Background())
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("a stream begun during the delay: %v %v", resp, err)
	}
	defer resp.Body.Close()
	if !resp.Close {
		t.Error("the stream's answer during the delay lacks Connection: close")
	}
	events := bufio.NewReader(resp.Body)
	readEvent := func(want string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := events.ReadString('\n')
		if err != nil || line != "data: "+want+"\n" {
			t.Fatalf("event %q: got %q, %v", want, line, err)
		}
		_, _ = events.ReadString('\n')
	}
	next <- "one"
	readEvent("one")
	clk.Advance(10 * time.Second)
	waitFor(t, func() bool { return sdRefused(b.addr) })
	next <- "two"
	readEvent("two")
	sdRunning(t, done, "with the stream still relayed")
	close(next)
	<-ended
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(events); err != nil || len(rest) != 0 {
		t.Errorf("the stream's end: %q, %v; want a clean end", rest, err)
	}
	sdReturns(t, done, 5*time.Second)
}

// A keyed call during the delay is run once and its answer stored: the
// agent's retry of it, also during the delay, is replayed, not run again.
func TestNewcode11KeyedCallDuringTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	var calls atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "call %d", calls.Add(1))
	})
	b := startBallastClock(t, clk, sdRoute(up, "10s", ", idempotency: {mode: header}"))
	done := sdShutdown(t, b, clk, context.Background())
	var bodies []string
	for range 2 {
		resp, body := do(t, "POST", b.base+"/k", "{}", "Idempotency-Key", "nc11-key")
		if resp.StatusCode != 200 {
			t.Fatalf("a keyed call during the delay: %d %s", resp.StatusCode, body)
		}
		bodies = append(bodies, body)
	}
	if calls.Load() != 1 || bodies[0] != "call 1" || bodies[1] != "call 1" {
		t.Errorf("a keyed call and its retry during the delay: %q, upstream called %d times; want one call, replayed", bodies, calls.Load())
	}
	clk.Advance(10 * time.Second)
	sdReturns(t, done, 5*time.Second)
}

// The admin listener during the delay: /readyz says 503 draining, /healthz
// 200, /metrics is served, and POST /reload is refused 503 shutting_down
// (docs/config.md: a reload is refused from the SIGTERM on, the delay
// included).
func TestNewcode11AdminDuringTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, _ := s10Upstream(t)
	b := startBallastClock(t, clk, sdRoute(up, "10s", ""))
	done := sdShutdown(t, b, clk, context.Background())
	hc := client(t)
	for path, want := range map[string]string{"/readyz": "503 draining\n", "/healthz": "200 ok\n"} {
		resp, err := hc.Get(b.admin + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := fmt.Sprintf("%d %s", resp.StatusCode, body); got != want {
			t.Errorf("%s during the delay: %q, want %q", path, got, want)
		}
	}
	if resp, err := hc.Get(b.admin + "/metrics"); err != nil || resp.StatusCode != 200 {
		t.Errorf("/metrics during the delay: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := hc.Post(b.admin+"/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "shutting_down") {
		t.Errorf("POST /reload during the delay: %d %s, want 503 shutting_down", resp.StatusCode, body)
	}
	clk.Advance(10 * time.Second)
	sdReturns(t, done, 5*time.Second)
}

// shutdown_delay is reloadable (docs/config.md lists it among what a
// reload changes): a reload that sets it makes the next shutdown wait it
// out. A reload, or a BALLAST_ environment override, that makes it equal
// to or longer than shutdown_timeout is refused, saying why, and the
// config in force stays.
func TestNewcode11ReloadAndOverrideOfTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, _ := s10Upstream(t)
	route := fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up)
	b := startBallastClock(t, clk, "shutdown_timeout: 20s\n"+route)
	write := func(yaml string) {
		t.Helper()
		if err := os.WriteFile(b.file, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("shutdown_timeout: 20s\nshutdown_delay: 20s\n" + route)
	if err := b.srv.Reload(); err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "shutdown_delay") {
		t.Errorf("a reload to a delay equal to shutdown_timeout: %v, want an invalid shutdown_delay", err)
	}
	if d := b.srv.Config().ShutdownDelay.D(); d != 0 {
		t.Errorf("after the refused reload the delay in force is %v, want 0", d)
	}
	env := []string{"BALLAST_SHUTDOWN_DELAY=25s"}
	if _, err := config.Load(config.Source{File: b.file, Environ: env}); err == nil || !strings.Contains(err.Error(), "shutdown_delay") {
		t.Errorf("BALLAST_SHUTDOWN_DELAY longer than shutdown_timeout: %v, want refused", err)
	}
	write("shutdown_timeout: 20s\nshutdown_delay: 15s\n" + route)
	if err := b.srv.Reload(); err != nil {
		t.Fatalf("a reload to a 15s delay: %v", err)
	}
	done := sdShutdown(t, b, clk, context.Background())
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Errorf("during the reloaded delay: %d %s, want 200", resp.StatusCode, body)
	}
	clk.Advance(14 * time.Second)
	sdRunning(t, done, "1s before the reloaded delay is over")
	if sdRefused(b.addr) {
		t.Error("the listener refused before the reloaded delay was over")
	}
	clk.Advance(time.Second)
	sdReturns(t, done, 5*time.Second)
}

// A Prefer: respond-async, wait=N request sent during the delay, whose
// job is still running when the delay is over, waits on (docs/async: the
// replica running the job waits on, as its drain waits for the job) and
// is answered with the job's result once it finishes within the wait, with
// Connection: close; Shutdown returns after that.
func TestNewcode11PreferWaitSpansTheDelayEnd(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	release, arrived := make(chan struct{}), make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		fmt.Fprint(w, `{"done":true}`)
	})
	b := startBallastClock(t, clk, sdRoute(up, "10s", ", async: {enabled: true}"))
	done := sdShutdown(t, b, clk, context.Background())
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "POST /job HTTP/1.1\r\nHost: x\r\nPrefer: respond-async, wait=30\r\nContent-Length: 2\r\n\r\n{}")
	<-arrived
	clk.Advance(10 * time.Second)
	waitFor(t, func() bool { return sdRefused(b.addr) })
	sdRunning(t, done, "with a Prefer: wait on a running job")
	close(release)
	status, body, closing, err := s10Answer(c, br, 5*time.Second)
	if err != nil || status != 200 || body != `{"done":true}` || !closing {
		t.Errorf("a Prefer: wait across the end of the delay: %d %q close=%v %v, want the job's 200 with Connection: close", status, body, closing, err)
	}
	sdReturns(t, done, 5*time.Second)
}

// Shutdown called again while the first call is in its delay (an
// embedder's second stop, a test's cleanup) ends the delay, and both
// calls return promptly: the first does not sit out the rest of the delay
// (an hour here) on a server the second has stopped, and the two never
// drain at once (each took the other's wake-ups in conns.drain, so one
// hung until its ctx ended).
func TestNewcode11SecondShutdownDuringTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, _ := s10Upstream(t)
	b := startBallastClock(t, clk, sdRoute(up, "1h\nshutdown_timeout: 2h", ""))
	first := sdShutdown(t, b, clk, context.Background())
	second := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		second <- b.srv.Shutdown(ctx)
	}()
	sdReturns(t, second, 5*time.Second)
	if !sdRefused(b.addr) {
		t.Error("a dial after the second Shutdown returned was accepted, want it refused")
	}
	sdReturns(t, first, 5*time.Second)
}
