package e2e

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// ballast is one in-process ballast under test.
type ballast struct {
	base string // http://127.0.0.1:port of the agent listener
	addr string // host:port of the agent listener
	logs *syncBuffer
	srv  *proxy.Server // for a test that shuts it down itself (its cleanup's Shutdown then finds nothing left)
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// loadConfig writes yaml to a fresh file and loads it exactly as `ballast
// run -c` would (config.Load from that file, no environment); src.File
// names the file.
func loadConfig(t *testing.T, yaml string) (src config.Source, cfg *config.Config) {
	t.Helper()
	file := t.TempDir() + "/ballast.yaml"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	src = config.Source{File: file, Environ: []string{}}
	cfg, err := config.Load(src)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return src, cfg
}

// startBallast loads yaml exactly as `ballast run -c` would (config.Load
// from a file) and serves it on loopback listeners until the test ends.
// clock may be nil (the wall clock); a FakeClock must start at the real
// time, as socket deadlines are computed from it.
func startBallast(t *testing.T, clock policy.Clock, yaml string) *ballast {
	t.Helper()
	src, cfg := loadConfig(t, yaml)
	logs := &syncBuffer{}
	srv, err := proxy.New(cfg, proxy.Options{
		Logger:   slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registry: prometheus.NewRegistry(),
		Source:   &src,
		Clock:    clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	aln := listen(t)
	done := make(chan struct{}, 2)
	go func() { _ = srv.Serve(ln); done <- struct{}{} }()
	go func() { _ = srv.ServeAdmin(aln); done <- struct{}{} }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
		<-done
		if t.Failed() {
			t.Logf("ballast logs:\n%s", logs.String())
		}
	})
	return &ballast{base: "http://" + ln.Addr().String(), addr: ln.Addr().String(), logs: logs, srv: srv}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serve runs h on a loopback listener until the test ends and returns its
// base URL. Handlers that block must return when their request's context
// ends: ballast closing the connection is what ends a hang.
func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	ln := listen(t)
	s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if s.Shutdown(ctx) != nil {
			_ = s.Close()
		}
	})
	return "http://" + ln.Addr().String()
}

// httpClient is the HTTP client every SDK gets: a fresh transport whose
// idle connections close with the test, and a bound on each call so that a
// ballast bug fails the test instead of hanging it.
func httpClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

// readAll reads and closes a response body.
func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}

// waitFor polls cond until it holds, for at most 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testContext is a context bounded well inside the package's time budget.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
