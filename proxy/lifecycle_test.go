package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/proxy"
)

func routeYAML(name, up string) string {
	return fmt.Sprintf("routes: [{name: %s, match: {path_prefix: /}, upstream: %q}]\n", name, up)
}

func TestReloadUnderTrafficDropsNothing(t *testing.T) {
	upA, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "A") })
	upB, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "B") })
	b := startBallast(t, routeYAML("a", upA))
	c := client(t)

	var failures, served atomic.Int64
	var seenB atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(b.base + "/x")
				if err != nil {
					failures.Add(1)
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || (string(body) != "A" && string(body) != "B") {
					failures.Add(1)
					continue
				}
				if string(body) == "B" {
					seenB.Store(true)
				}
				served.Add(1)
			}
		}()
	}
	for i := range 20 {
		next := routeYAML("a", upA)
		if i%2 == 0 {
			next = routeYAML("b", upB)
		}
		if err := os.WriteFile(b.file, []byte(next), 0o600); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Post(b.admin+"/reload", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("reload %d: %d %s", i, resp.StatusCode, body)
		}
		start := served.Load()
		waitFor(t, func() bool { return served.Load() > start+5 }) // traffic flows on each generation
	}
	close(stop)
	wg.Wait()
	if failures.Load() != 0 {
		t.Errorf("%d of %d requests failed across 20 reloads", failures.Load(), failures.Load()+served.Load())
	}
	if !seenB.Load() {
		t.Error("no request reached the reloaded route")
	}
	if got := b.metric("ballast_config_reloads_total", map[string]string{"result": "success"}); got != 20 {
		t.Errorf("reloads counted: %v", got)
	}
}

func TestInvalidReloadKeepsTheOldConfig(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "old") })
	b := startBallast(t, routeYAML("live", up))
	c := client(t)
	if err := os.WriteFile(b.file, []byte("routes: [{name: broken, match: {path_prefix: nope}, upstream: ftp://x, retyr: 3}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Post(b.admin+"/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 422 {
		t.Fatalf("reload answered %d: %s", resp.StatusCode, body)
	}
	for _, want := range []string{"routes[0].retyr: unknown key", "routes[0].match.path_prefix", "routes[0].upstream"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("reload errors %s lack %q", body, want)
		}
	}
	if r, body := get(t, c, b.base+"/x"); r.StatusCode != 200 || body != "old" {
		t.Errorf("after a refused reload: %d %q, want the old route", r.StatusCode, body)
	}
	if got := b.metric("ballast_config_reloads_total", map[string]string{"result": "failure"}); got != 1 {
		t.Errorf("failures counted: %v", got)
	}
	if !strings.Contains(b.logs.String(), "config reload refused") {
		t.Error("the refusal was not logged")
	}
}

func TestReloadOnFileChange(t *testing.T) {
	upA, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "A") })
	upB, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "B") })
	b := startBallast(t, routeYAML("a", upA))
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() { _ = b.srv.WatchConfig(ctx, 20*time.Millisecond); close(watchDone) }()
	t.Cleanup(func() { cancel(); <-watchDone })
	c := client(t)
	reloaded := func() bool {
		return b.metric("ballast_config_reloads_total", map[string]string{"result": "success"}) >= 1
	}
	// The watcher may start after a write; write again until a reload is
	// counted, leaving the debounce room to fire between writes.
	for attempt := 0; ; attempt++ {
		if err := os.WriteFile(b.file, []byte(routeYAML("b", upB)), 0o600); err != nil {
			t.Fatal(err)
		}
		if baEventually(500*time.Millisecond, reloaded) {
			break
		}
		if attempt == 10 {
			t.Fatal("the file change was never applied")
		}
	}
	if _, body := get(t, c, b.base+"/x"); body != "B" {
		t.Errorf("after the reload: %q, want the new route's upstream B", body)
	}
}

func TestDrainFinishesInFlightRequests(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "finished")
	})
	b := startBallast(t, routeYAML("slow", up))
	c := client(t)
	done := raSend(t, "GET", b.base+"/work", "")
	<-started
	if r, _ := get(t, c, b.admin+"/readyz"); r.StatusCode != 200 {
		t.Fatalf("readyz %d before draining", r.StatusCode)
	}
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdown <- b.srv.Shutdown(ctx)
	}()
	waitFor(t, func() bool {
		resp, err := http.Get(b.admin + "/readyz")
		if err != nil {
			return true // the admin listener already closed: not ready either
		}
		resp.Body.Close()
		return resp.StatusCode == 503
	})
	close(release)
	if r := raAnswer(t, done); r.resp.StatusCode != 200 || r.body != "finished" {
		t.Errorf("in-flight request during drain: %d %q", r.resp.StatusCode, r.body)
	}
	if err := <-shutdown; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if _, err := http.Get(b.base + "/x"); err == nil {
		t.Error("a new request was accepted after shutdown")
	}
}

// A Shutdown that comes before Serve has begun (a test that ends at once,
// a signal during start-up) still ends it: Serve returns at once instead
// of accepting connections forever, and so does ServeAdmin.
func TestShutdownBeforeServeEndsServe(t *testing.T) {
	cfg, err := config.Load(config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for name, serve := range map[string]func(net.Listener) error{"Serve": srv.Serve, "ServeAdmin": srv.ServeAdmin} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- serve(ln) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s after Shutdown: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			_ = ln.Close()
			<-done
			t.Fatalf("%s after Shutdown kept serving", name)
		}
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
			t.Errorf("%s after Shutdown: its listener still accepts", name)
		}
	}
}
