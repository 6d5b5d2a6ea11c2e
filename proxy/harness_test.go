package proxy_test

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
	"github.com/ballast-proxy/ballast/internal/freeport"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http's test clients keep idle connections in the background;
		// each test closes its own, this only covers the transport reaper.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// fasthttp's pool cleaners sleep on their own timers and exit on
		// the next tick after Shutdown; they are not per-request goroutines.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		// fasthttp keeps one process-wide goroutine that updates the Date header.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}

// ballast is one running ballast under test.
type ballast struct {
	t     testing.TB
	srv   *proxy.Server
	base  string // http://127.0.0.1:port
	admin string // http://127.0.0.1:port
	addr  string // host:port of the main listener
	reg   *prometheus.Registry
	logs  *syncBuffer
	file  string
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
	// flush, when set, writes ballast's buffered trail lines first, so
	// that String sees every request that has finished.
	flush func()
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	if s.flush != nil {
		s.flush() // before s.mu: the flush writes into s
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startBallast writes yaml to a file, loads it as ballast would, and serves
// it on loopback listeners. Environment references resolve from env.
func startBallast(t testing.TB, yaml string, env ...string) *ballast {
	t.Helper()
	return startBallastClock(t, nil, yaml, env...)
}

// startBallastClock is startBallast with an injected clock for retry,
// backoff and cool-down waits. A FakeClock must start at the real time:
// socket deadlines are computed from it.
func startBallastClock(t testing.TB, clock policy.Clock, yaml string, env ...string) *ballast {
	t.Helper()
	return startBallastWith(t, clock, nil, yaml, env...)
}

// startBallastWith also chooses where the decision trail goes; nil means
// the test's log buffer.
func startBallastWith(t testing.TB, clock policy.Clock, accessLog io.Writer, yaml string, env ...string) *ballast {
	t.Helper()
	return startBallastLogging(t, clock, accessLog, slog.LevelDebug, yaml, env...)
}

// startBallastLogging is startBallastWith with the logger's level, which
// `ballast run --log-level` sets.
func startBallastLogging(t testing.TB, clock policy.Clock, accessLog io.Writer, level slog.Level, yaml string, env ...string) *ballast {
	t.Helper()
	file := t.TempDir() + "/ballast.yaml"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	src := config.Source{File: file, Environ: env}
	cfg, err := config.Load(src)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &syncBuffer{}
	if accessLog == nil {
		accessLog = logs
	}
	reg := prometheus.NewRegistry()
	srv, err := proxy.New(cfg, proxy.Options{
		Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level})),
		Registry:  reg,
		Source:    &src,
		Clock:     clock,
		AccessLog: accessLog,
		// Agents that hang up are found within a few scans, not seconds.
		AgentCheckEvery: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sb, ok := accessLog.(*syncBuffer); ok {
		sb.flush = srv.FlushAccessLog
	}
	ln, aln := listenFree(t), listenFree(t)
	done := make(chan struct{}, 2)
	go func() { _ = srv.Serve(ln); done <- struct{}{} }()
	go func() { _ = srv.ServeAdmin(aln); done <- struct{}{} }()
	b := &ballast{t: t, srv: srv, base: "http://" + ln.Addr().String(), admin: "http://" + aln.Addr().String(),
		addr: ln.Addr().String(), reg: reg, logs: logs, file: file}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
		<-done
	})
	return b
}

// client returns an HTTP client whose idle connections close with the test.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// upstream starts a real loopback HTTP server.
func upstream(t *testing.T, h http.HandlerFunc) (url string, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: h}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if s.Shutdown(ctx) != nil {
			_ = s.Close()
		}
	})
	return "http://" + ln.Addr().String(), ln.Addr().String()
}

// heldUpstream is an asUpstream answering status (0: 200) whose calls wait
// until release is called. release may be called more than once; the
// test's cleanup calls it too, so a test that fails early frees its calls.
func heldUpstream(t *testing.T, status int) (up *asUpstream, release func()) {
	up = &asUpstream{release: make(chan struct{}), status: status}
	var once sync.Once
	release = func() { once.Do(func() { close(up.release) }) }
	t.Cleanup(release)
	return up, release
}

func get(t *testing.T, c *http.Client, url string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp, string(body)
}

// metricValues returns, in the registry's order, the value of every series
// of name whose labels include labels: a counter's or a gauge's value, a
// histogram's sample count.
func (b *ballast) metricValues(name string, labels map[string]string) []float64 {
	b.t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		b.t.Fatal(err)
	}
	var out []float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				out = append(out, m.GetCounter().GetValue())
			case m.Gauge != nil:
				out = append(out, m.GetGauge().GetValue())
			case m.Histogram != nil:
				out = append(out, float64(m.GetHistogram().GetSampleCount()))
			}
		}
	}
	return out
}

// metric returns the value of the first series whose name and labels
// match, or -1 when it does not exist.
func (b *ballast) metric(name string, labels map[string]string) float64 {
	b.t.Helper()
	if vs := b.metricValues(name, labels); len(vs) > 0 {
		return vs[0]
	}
	return -1
}

// metricSum adds up every series of name whose labels include labels (0
// when there is none): a counter summed over its other labels, say.
func (b *ballast) metricSum(name string, labels map[string]string) float64 {
	b.t.Helper()
	sum := 0.0
	for _, v := range b.metricValues(name, labels) {
		sum += v
	}
	return sum
}

// listenFree listens on a loopback port below the kernel's ephemeral
// range (internal/freeport), which nothing else in this process is
// given: once ballast closes it, a dial there is refused, rather than
// answered by another test's listener on port 0 that the kernel handed
// the freed port (a flake of the tests that check a closed listener).
func listenFree(t testing.TB) net.Listener {
	t.Helper()
	var err error
	for range 8 {
		var addr string
		if addr, err = freeport.Loopback(); err != nil {
			break
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln
		}
	}
	t.Fatal(err)
	return nil
}
