package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
)

// shutdown_delay: ballast as a sidecar gets its SIGTERM with the agent
// beside it, and the agent finishes its task during its own grace period,
// through ballast. For the delay /readyz fails, yet ballast accepts and
// serves as usual; then the drain begins as without a delay. The delay
// runs on the server's clock: these tests step it.

// sdRoute is a one-route config with shutdown_delay delay and the route's
// extra YAML policy.
func sdRoute(up, delay, extra string) string {
	return fmt.Sprintf("shutdown_delay: %s\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q%s}]\n", delay, up, extra)
}

// sdShutdown begins Shutdown(ctx) and waits until it is in its delay:
// /readyz fails and the delay's timer is armed on clk (one more timer than
// before), so that clk.Advance ends it.
func sdShutdown(t *testing.T, b *ballast, clk *policy.FakeClock, ctx context.Context) <-chan error {
	t.Helper()
	timers := clk.Waiters()
	done := make(chan error, 1)
	go func() { done <- b.srv.Shutdown(ctx) }()
	waitFor(t, func() bool { return clk.Waiters() > timers })
	if code := sdReadyz(t, b); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during the shutdown delay: %d, want 503", code)
	}
	return done
}

// sdReadyz is the admin listener's /readyz status.
func sdReadyz(t *testing.T, b *ballast) int {
	t.Helper()
	resp, err := client(t).Get(b.admin + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// sdRefused reports whether a dial to addr is refused now.
func sdRefused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}

// sdRunning fails the test when Shutdown (done) has returned already.
func sdRunning(t *testing.T, done <-chan error, when string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v %s, want it still running", err, when)
	default:
	}
}

// sdReturns waits for Shutdown (done) to return nil within d.
func sdReturns(t *testing.T, done <-chan error, d time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown: %v, want nil", err)
		}
	case <-time.After(d):
		t.Fatalf("Shutdown did not return within %v", d)
	}
}

// During the delay a new connection is accepted and its request served
// (200, not refused), an async job is taken, and a call held at its
// upstream runs on; /readyz fails throughout. No agent connection is open
// when the delay begins, and it does not end for that (an agent between
// two calls holds none). When the delay is over the listener refuses at
// once, while the held call still drains and is answered.
func TestShutdownDelay_ServesDuringTheDelayThenRefuses(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	release, arrived := make(chan struct{}), make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/hold") {
			arrived <- struct{}{}
			<-release
		}
		fmt.Fprint(w, "ok "+r.URL.Path)
	})
	b := startBallastClock(t, clk, sdRoute(up, "10s", ", async: {enabled: true}"))
	done := sdShutdown(t, b, clk, context.Background())

	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "POST /during HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	status, body, closing, err := s10Answer(c, br, 5*time.Second)
	if err != nil || status != 200 || body != "ok /during" || !closing {
		t.Errorf("a request on a connection dialled during the delay: %d %q close=%v %v, want 200 with Connection: close", status, body, closing, err)
	}
	if resp, body := do(t, "POST", b.base+"/job", "{}", "Prefer", "respond-async"); resp.StatusCode != 202 {
		t.Errorf("an async job during the delay: %d %s, want 202", resp.StatusCode, body)
	}
	held, hbr := s9Dial(t, b.addr)
	fmt.Fprint(held, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
	<-arrived
	if code := sdReadyz(t, b); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz later in the delay: %d, want 503", code)
	}
	if !strings.Contains(b.logs.String(), `"msg":"shutdown delay: still serving, /readyz failing"`) {
		t.Errorf("the delay is not logged:\n%s", b.logs.String())
	}
	sdRunning(t, done, "during the delay")

	clk.Advance(10 * time.Second)
	waitFor(t, func() bool { return sdRefused(b.addr) })
	sdRunning(t, done, "with a call in flight")
	close(release)
	status, body, closing, err = s10Answer(held, hbr, 5*time.Second)
	if err != nil || status != 200 || body != "ok /hold" || !closing {
		t.Errorf("the call in flight when the delay ended: %d %q close=%v %v, want 200 with Connection: close", status, body, closing, err)
	}
	sdReturns(t, done, 5*time.Second)
	if !strings.Contains(b.logs.String(), `"msg":"shutdown delay over: draining"`) {
		t.Errorf("the end of the delay is not logged:\n%s", b.logs.String())
	}
}

// A connection kept alive from before the shutdown serves a request
// during the delay, answered with Connection: close and then closed: the
// agent's next call dials anew, and is refused once the delay is over
// rather than sent on a connection the drain is closing.
func TestShutdownDelay_KeptAliveConnectionServedThenClosed(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, _ := s10Upstream(t)
	b := startBallastClock(t, clk, sdRoute(up, "10s", ""))
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "GET /before HTTP/1.1\r\nHost: x\r\n\r\n")
	if status, _, closing, err := s10Answer(c, br, 5*time.Second); err != nil || status != 200 || closing {
		t.Fatalf("before the shutdown: %d close=%v %v, want 200 kept alive", status, closing, err)
	}
	done := sdShutdown(t, b, clk, context.Background())
	fmt.Fprint(c, "GET /during HTTP/1.1\r\nHost: x\r\n\r\n")
	status, body, closing, err := s10Answer(c, br, 5*time.Second)
	if err != nil || status != 200 || body != "ok /during" || !closing {
		t.Errorf("on a kept-alive connection during the delay: %d %q close=%v %v, want 200 with Connection: close", status, body, closing, err)
	}
	if end := s9Ends(c, br, 5*time.Second); end != nil {
		t.Errorf("after that answer the connection %v, want it closed", end)
	}
	sdRunning(t, done, "during the delay")
	clk.Advance(10 * time.Second)
	sdReturns(t, done, 5*time.Second)
	if !sdRefused(b.addr) {
		t.Error("a dial after the shutdown was accepted, want it refused")
	}
}

// A call waiting for its retry (the upstream's Retry-After) during the
// delay waits it out and is retried, as on any other day: the waits that
// the drain ends with 503 shutting_down run on during the delay.
func TestShutdownDelay_RetryWaitRunsOn(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	calls := make(chan int64, 4)
	var n atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		calls <- i
		if i == 1 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	})
	b := startBallastClock(t, clk, sdRoute(up, "1h\nshutdown_timeout: 2h", ", retry: {attempts: 2, backoff: {base: 1s, max: 1s}}"))
	done := sdShutdown(t, b, clk, context.Background())
	timers := clk.Waiters()
	type answer struct {
		status int
		body   string
		err    error
	}
	got := make(chan answer, 1)
	hc := client(t)
	go func() {
		resp, err := hc.Get(b.base + "/x")
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, string(body), err}
	}()
	<-calls
	waitFor(t, func() bool { return clk.Waiters() > timers }) // the retry's wait
	clk.Advance(2 * time.Second)
	select {
	case a := <-got:
		if a.err != nil || a.status != 200 || a.body != "ok" {
			t.Errorf("a call retried during the delay: %d %q %v, want 200 ok after its wait", a.status, a.body, a.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call retried during the delay did not finish")
	}
	sdRunning(t, done, "with an hour of delay left")
	clk.Advance(time.Hour)
	sdReturns(t, done, 5*time.Second)
}

// A route whose concurrency limit is full during the delay answers 503
// overloaded, as on any other day, not shutting_down: nothing is shutting
// down for the agent yet.
func TestShutdownDelay_FullConcurrencyIsOverloaded(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	release, arrived := make(chan struct{}), make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			arrived <- struct{}{}
			<-release
		}
		fmt.Fprint(w, "ok")
	})
	b := startBallastClock(t, clk, sdRoute(up, "10s", ", concurrency: {max: 1, queue: 0}"))
	done := sdShutdown(t, b, clk, context.Background())
	held, hbr := s9Dial(t, b.addr)
	fmt.Fprint(held, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
	<-arrived
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 503 || !strings.Contains(body, `"reason":"overloaded"`) {
		t.Errorf("the concurrency limit full during the delay: %d %s, want 503 overloaded", resp.StatusCode, body)
	}
	close(release)
	if status, _, _, err := s10Answer(held, hbr, 5*time.Second); err != nil || status != 200 {
		t.Errorf("the held call: %d %v, want 200", status, err)
	}
	clk.Advance(10 * time.Second)
	sdReturns(t, done, 5*time.Second)
}

// The delay counts inside the shutdown's deadline: when ctx ends (the
// deadline, or cmd/ballast's second SIGTERM) the delay ends at once and
// the drain begins, here with nothing to drain: the listener refuses and
// Shutdown returns. A later Shutdown does not wait for the delay again.
func TestShutdownDelay_ContextEndEndsTheDelay(t *testing.T) {
	clk := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	up, _ := s10Upstream(t)
	b := startBallastClock(t, clk, sdRoute(up, "1h\nshutdown_timeout: 2h", ""))
	ctx, cancel := context.WithCancel(context.Background())
	done := sdShutdown(t, b, clk, ctx)
	if resp, body := do(t, "GET", b.base+"/x", ""); resp.StatusCode != 200 {
		t.Errorf("during the delay: %d %s, want 200", resp.StatusCode, body)
	}
	sdRunning(t, done, "during the delay")
	cancel()
	select {
	case <-done: // ctx's error or nil: nothing was cut
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after its context ended, with an hour of delay left")
	}
	if !sdRefused(b.addr) {
		t.Error("a dial after the delay was cut short was accepted, want it refused")
	}
	if !strings.Contains(b.logs.String(), `"msg":"shutdown delay cut short: draining"`) {
		t.Errorf("the delay cut short is not logged:\n%s", b.logs.String())
	}
	again := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		again <- b.srv.Shutdown(ctx)
	}()
	sdReturns(t, again, 5*time.Second)
}

// shutdown_delay is a duration, not negative, and less than
// shutdown_timeout, which counts it; each mistake is an error at its path
// that says why.
func TestShutdownDelay_Config(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       time.Duration
		err        string
	}{
		{"default", "", 0, ""},
		{"set", "shutdown_delay: 5s\n", 5 * time.Second, ""},
		{"just under the timeout", "shutdown_timeout: 10s\nshutdown_delay: 9.9s\n", 9900 * time.Millisecond, ""},
		{"zero with a zero timeout", "shutdown_timeout: 0s\nshutdown_delay: 0s\n", 0, ""},
		{"negative", "shutdown_delay: -1s\n", 0, `shutdown_delay: "-1s" is negative`},
		{"equal to the timeout", "shutdown_timeout: 10s\nshutdown_delay: 10s\n", 0,
			"shutdown_delay: 10s must be less than shutdown_timeout (10s), which counts the delay and then the drain"},
		{"beyond the default timeout", "shutdown_delay: 1m\n", 0,
			"shutdown_delay: 1m0s must be less than shutdown_timeout (30s)"},
		{"not a duration", "shutdown_delay: soon\n", 0, "shutdown_delay"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "ballast.yaml")
			yaml := tc.yaml + "routes: [{name: r, match: {path_prefix: /}, upstream: http://127.0.0.1:1}]\n"
			if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(config.Source{File: file})
			if tc.err == "" {
				if err != nil || cfg.ShutdownDelay.D() != tc.want {
					t.Fatalf("got %v, %v; want %v", cfg, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("got %v; want an invalid-config error containing %q", err, tc.err)
			}
		})
	}
}
