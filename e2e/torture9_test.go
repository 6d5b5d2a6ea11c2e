package e2e

// The torture test: one seeded, time-bounded run of everything at once —
// 32 agents sending GETs, keyed POSTs (repeated, some concurrently), model
// POSTs, SSE streams and async jobs, some hanging up mid-request, against
// the chaos upstream's standard fault profile, while the config is reloaded
// and the admin endpoints are read in a loop — followed by a graceful
// shutdown and the invariants that must hold whatever the timing. Nothing
// asserted depends on how the requests interleaved: each agent checks each
// answer it got on its own, and the totals are compared by inequalities
// that hold for every schedule.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/bench"
	"github.com/ballast-proxy/ballast/proxy"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

const (
	torture9Seed     = 9
	torture9Agents   = 32
	torture9Run      = 7 * time.Second // agents' sending window
	torture9Shutdown = 4 * time.Second // shutdown_timeout
	torture9Reloads  = 6
	torture9Items    = 8 // distinct GET paths, so the stale cache is used
	// Retry settings every config version keeps within: the bounds the
	// metrics are checked against.
	torture9MaxAttempts  = 4
	torture9BudgetRatio  = 0.5
	torture9BudgetPerSec = 20
	torture9HeapBound    = 256 << 20
)

// torture9Config renders config version v: the reloads alternate retry
// attempts and backoff, the items route's rate limit, and add or remove
// the extra route. The retry budget stays the same, so that one bound
// covers the whole run.
func torture9Config(upstream string, v int) string {
	attempts := 3 + v%2 // 3 or 4, ≤ torture9MaxAttempts
	base := []string{"5ms", "10ms"}[v%2]
	rps := []int{300, 120, 200}[v%3]
	extra := ""
	if v%2 == 1 {
		extra = fmt.Sprintf(`
  - name: extra
    match: {path_prefix: /v1/extra/}
    upstream: http://%s
    retry: {unsafe_methods: true}`, upstream)
	}
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
shutdown_timeout: %s
state: {backend: memory}
defaults:
  timeouts: {connect: 1s, per_try: 250ms, total: 3s}
  retry:
    attempts: %d
    backoff: {base: %s, max: 50ms}
    max_retry_after: 1s
    budget: {ratio: %v, min_per_second: %d}
  validate: {status: [2xx], content_type: [application/json], json: true}
routes:
  - name: items
    match: {path_prefix: /v1/items/, methods: [GET]}
    upstream: http://%[6]s
    rate_limit: {rps: %[7]d, burst: 20, max_wait: 50ms}
    cache: {mode: fallback, stale: 1h}
  - name: orders
    match: {path_prefix: /v1/orders}
    upstream: http://%[6]s
    idempotency: {mode: header, ttl: 1h}
    # The chaos upstream does not dedupe keys: ballast repeats an order
    # only when it was certainly not executed.
    retry: {on: [connect-failure, 429, 503]}
  - name: model
    match: {path_prefix: /v1/chat/}
    upstream: http://%[6]s
    retry: {unsafe_methods: true}
    concurrency: {max: 12, queue: 16, max_wait: 1s}
    validate: {content_type: [application/json, text/event-stream]}
    async: {enabled: true, ttl: 1m}%[8]s
`, torture9Shutdown, attempts, base, torture9BudgetRatio, torture9BudgetPerSec, upstream, rps, extra)
}

// torture9Ballast is the ballast under torture, with what the test needs
// beyond startBallast's: the admin listener, the config file to rewrite,
// the registry to read after shutdown, and control of the shutdown.
type torture9Ballast struct {
	srv   *proxy.Server
	reg   *prometheus.Registry
	base  string
	admin string
	file  string
	logs  *syncBuffer
	done  chan struct{}
}

func startTorture9(t *testing.T, yaml string) *torture9Ballast {
	t.Helper()
	src, cfg := loadConfig(t, yaml)
	b := &torture9Ballast{reg: prometheus.NewRegistry(), file: src.File, logs: &syncBuffer{}, done: make(chan struct{}, 2)}
	var err error
	b.srv, err = proxy.New(cfg, proxy.Options{
		Logger:    slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registry:  b.reg,
		Source:    &src,
		AccessLog: b.logs,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, aln := listen(t), listen(t)
	go func() { _ = b.srv.Serve(ln); b.done <- struct{}{} }()
	go func() { _ = b.srv.ServeAdmin(aln); b.done <- struct{}{} }()
	b.base, b.admin = "http://"+ln.Addr().String(), "http://"+aln.Addr().String()
	return b
}

// torture9Reasons reads the reasons docs/errors.md lists: an agent's
// problem must carry one of them.
func torture9Reasons(t *testing.T) map[string]bool {
	t.Helper()
	doc, err := os.ReadFile("../docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| \\[`([a-z_]+)`\\]").FindAllSubmatch(doc, -1) {
		reasons[string(m[1])] = true
	}
	if len(reasons) < 10 {
		t.Fatalf("found only %d reasons in docs/errors.md", len(reasons))
	}
	return reasons
}

// torture9Tally is what the agents saw, and every broken invariant.
type torture9Tally struct {
	mu         sync.Mutex
	outcomes   map[string]int
	violations []string

	answered   atomic.Int64 // requests (not job polls) that got a status line
	truncated  atomic.Int64 // streams cut without the agent hanging up
	jobs       atomic.Int64 // async jobs accepted
	adminReads atomic.Int64
}

func (ty *torture9Tally) note(outcome string) {
	ty.mu.Lock()
	ty.outcomes[outcome]++
	ty.mu.Unlock()
}

func (ty *torture9Tally) violate(format string, args ...any) {
	ty.mu.Lock()
	if len(ty.violations) < 40 {
		ty.violations = append(ty.violations, fmt.Sprintf(format, args...))
	}
	ty.mu.Unlock()
}

// torture9Kind is what an agent asked for, which decides what a complete
// answer looks like.
type torture9Kind int

const (
	kindJSON torture9Kind = iota
	kindStream
	kindAsync
)

// torture9Agent is one agent: its own client, its own seeded choices.
type torture9Agent struct {
	id      int
	rng     *rand.Rand
	client  *http.Client
	base    string
	tally   *torture9Tally
	reasons map[string]bool
	seq     int
}

// request is one call. hangUp > 0 makes the agent give up after that long.
type torture9Request struct {
	method, path, key, keyHeader string
	body                         string
	kind                         torture9Kind
	hangUp                       time.Duration
	headers                      []string
}

// do sends rq and checks the answer; it returns the answer's status and,
// for an accepted async job, its Location.
func (a *torture9Agent) do(ctx context.Context, rq torture9Request) (int, string) {
	var cancel context.CancelFunc = func() {}
	if rq.hangUp > 0 {
		ctx, cancel = context.WithTimeout(ctx, rq.hangUp)
	}
	defer cancel()
	var body io.Reader
	if rq.body != "" {
		body = strings.NewReader(rq.body)
	}
	req, err := http.NewRequestWithContext(ctx, rq.method, a.base+rq.path, body)
	if err != nil {
		a.tally.violate("building %s %s: %v", rq.method, rq.path, err)
		return 0, ""
	}
	if rq.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if rq.keyHeader != "" {
		req.Header.Set(rq.keyHeader, rq.key)
	}
	for i := 0; i+1 < len(rq.headers); i += 2 {
		req.Header.Set(rq.headers[i], rq.headers[i+1])
	}
	resp, err := a.client.Do(req)
	what := fmt.Sprintf("agent %d %s %s key %s", a.id, rq.method, rq.path, rq.key)
	if err != nil {
		if rq.hangUp > 0 && ctx.Err() != nil {
			a.tally.note("hung up")
			return 0, ""
		}
		a.tally.violate("%s: connection error without hanging up: %v", what, err)
		return 0, ""
	}
	if !strings.HasPrefix(rq.path, "/_ballast/jobs/") {
		a.tally.answered.Add(1)
	}
	b, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	hungUp := rq.hangUp > 0 && ctx.Err() != nil
	return resp.StatusCode, a.check(what, rq, resp, b, rerr, hungUp)
}

// check judges one answer. An answer is acceptable when it is complete and
// belongs to the request (its id or echo is the request's key), or is a
// precise ballast problem, or is a stream the upstream cut (it must then
// not look complete). It returns an accepted job's Location.
func (a *torture9Agent) check(what string, rq torture9Request, resp *http.Response, b []byte, rerr error, hungUp bool) string {
	ty := a.tally
	ct := resp.Header.Get("Content-Type")
	if resp.Header.Get("X-Request-Id") == "" {
		ty.violate("%s: %d answer without X-Request-Id", what, resp.StatusCode)
	}
	if rerr != nil && hungUp {
		ty.note("hung up mid-body")
		return ""
	}
	if strings.HasPrefix(ct, "application/problem+json") {
		if rerr != nil {
			ty.violate("%s: problem body broken: %v", what, rerr)
			return ""
		}
		var p struct {
			Type      string `json:"type"`
			Status    int    `json:"status"`
			Reason    string `json:"reason"`
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal(b, &p); err != nil {
			ty.violate("%s: problem is not JSON: %v: %q", what, err, b)
			return ""
		}
		switch {
		case !a.reasons[p.Reason]:
			ty.violate("%s: problem with unknown reason %q: %s", what, p.Reason, b)
		case p.Type != "urn:ballast:problem:"+p.Reason || p.Status != resp.StatusCode:
			ty.violate("%s: problem type/status %q/%d do not match %s/%d", what, p.Type, p.Status, p.Reason, resp.StatusCode)
		case p.RequestID != resp.Header.Get("X-Request-Id"):
			ty.violate("%s: problem request_id %q, header %q", what, p.RequestID, resp.Header.Get("X-Request-Id"))
		}
		ty.note(fmt.Sprintf("problem %d %s", resp.StatusCode, p.Reason))
		return ""
	}
	if echo := resp.Header.Get("X-Bench-Echo"); echo != rq.key && !(rq.kind == kindAsync && resp.StatusCode == http.StatusAccepted) {
		ty.violate("%s: cross-delivered: answer %d echoes %q", what, resp.StatusCode, echo)
		return ""
	}
	if rq.kind == kindStream && resp.StatusCode == http.StatusOK && strings.HasPrefix(ct, "text/event-stream") {
		if rerr != nil {
			// Only the upstream cutting the stream may do this; the totals
			// check that against the upstream's count of cuts.
			ty.truncated.Add(1)
			ty.note("stream truncated")
			return ""
		}
		if !bytes.HasSuffix(b, []byte("data: [DONE]\n\n")) {
			ty.violate("%s: stream read to its end without its final event: %q", what, tail(b))
			return ""
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: "))
			var ev struct{ ID string }
			if ok && json.Unmarshal(data, &ev) == nil && ev.ID != rq.key {
				ty.violate("%s: cross-delivered stream event %q", what, sc.Bytes())
				return ""
			}
		}
		ty.note("stream complete")
		return ""
	}
	if rerr != nil {
		ty.violate("%s: %d body broken without hanging up: %v", what, resp.StatusCode, rerr)
		return ""
	}
	if rq.kind == kindAsync && resp.StatusCode == http.StatusAccepted {
		var j struct{ ID, State, Location string }
		if err := json.Unmarshal(b, &j); err != nil || j.Location == "" || resp.Header.Get("Location") != j.Location {
			ty.violate("%s: 202 job answer %q (Location %q)", what, b, resp.Header.Get("Location"))
			return ""
		}
		return j.Location
	}
	if !strings.HasPrefix(ct, "application/json") || !json.Valid(b) {
		ty.violate("%s: %d answer is not complete JSON (%s): %q", what, resp.StatusCode, ct, tail(b))
		return ""
	}
	switch resp.StatusCode {
	case http.StatusOK:
		var doc struct{ ID string }
		if err := json.Unmarshal(b, &doc); err != nil || doc.ID != rq.key {
			ty.violate("%s: cross-delivered: body id %q", what, doc.ID)
			return ""
		}
		switch {
		case resp.Header.Get("Idempotent-Replayed") == "true":
			ty.note("ok replayed")
		case resp.Header.Get("Age") != "":
			ty.note("ok stale")
		default:
			ty.note("ok")
		}
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		ty.note(fmt.Sprintf("upstream %d relayed", resp.StatusCode)) // retries spent on it
	default:
		ty.violate("%s: unexpected upstream status %d: %q", what, resp.StatusCode, tail(b))
	}
	return ""
}

func tail(b []byte) []byte {
	if len(b) > 120 {
		return b[len(b)-120:]
	}
	return b
}

const torture9ModelBody = `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"say hi"}]}`

// run sends the agent's seeded mix until ctx ends.
func (a *torture9Agent) run(ctx context.Context) {
	for ctx.Err() == nil {
		a.seq++
		key := func(kind string) string { return fmt.Sprintf("%s-%d-%d", kind, a.id, a.seq) }
		var hangUp time.Duration
		if a.rng.IntN(10) == 0 {
			hangUp = time.Duration(1+a.rng.IntN(40)) * time.Millisecond
		}
		// Requests already started are finished after ctx ends: the
		// agents stop sending, not reading.
		bg := context.WithoutCancel(ctx)
		switch n := a.rng.IntN(100); {
		case n < 25:
			item := a.rng.IntN(torture9Items)
			a.do(bg, torture9Request{method: "GET", path: fmt.Sprintf("/v1/items/%d", item),
				key: fmt.Sprintf("get-item-%d", item), keyHeader: "X-Bench-Op", hangUp: hangUp})
		case n < 45:
			a.keyed(bg, key("ord"), hangUp)
		case n < 65:
			a.do(bg, torture9Request{method: "POST", path: "/v1/chat/completions", key: key("mdl"), keyHeader: "X-Bench-Op",
				body: torture9ModelBody, hangUp: hangUp})
		case n < 80:
			a.do(bg, torture9Request{method: "POST", path: "/v1/chat/completions", key: key("sse"), keyHeader: "X-Bench-Op",
				body: `{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"say hi"}]}`,
				kind: kindStream, hangUp: hangUp, headers: []string{"Accept", "text/event-stream"}})
		case n < 93:
			a.job(bg, key("job"))
		default:
			// The extra route comes and goes with the reloads: a valid
			// answer or 404 no_route, never anything else.
			a.do(bg, torture9Request{method: "POST", path: "/v1/extra/completions", key: key("ext"), keyHeader: "X-Bench-Op",
				body: torture9ModelBody, hangUp: hangUp})
		}
	}
}

// keyed sends one keyed POST one to three times: in a row, or at once.
func (a *torture9Agent) keyed(ctx context.Context, key string, hangUp time.Duration) {
	rq := torture9Request{method: "POST", path: "/v1/orders", key: key, keyHeader: "Idempotency-Key",
		body: fmt.Sprintf(`{"item":%d,"qty":1}`, a.seq), hangUp: hangUp}
	times := 1 + a.rng.IntN(3)
	if a.rng.IntN(2) == 0 {
		for range times {
			a.do(ctx, rq)
			rq.hangUp = 0 // the agent's retry waits for its answer
		}
		return
	}
	var wg sync.WaitGroup
	for i := range times {
		r := rq
		if i > 0 {
			r.hangUp = 0
		}
		wg.Go(func() { a.do(ctx, r) })
	}
	wg.Wait()
}

// job starts an async job and polls it to completion.
func (a *torture9Agent) job(ctx context.Context, key string) {
	rq := torture9Request{method: "POST", path: "/v1/chat/completions", key: key, keyHeader: "X-Bench-Op",
		body: torture9ModelBody, kind: kindAsync, headers: []string{"Prefer", "respond-async"}}
	status, loc := a.do(ctx, rq)
	if status != http.StatusAccepted || loc == "" {
		return
	}
	a.tally.jobs.Add(1)
	poll := torture9Request{method: "GET", path: loc, key: key, kind: kindAsync, headers: []string{"Prefer", "wait=2"}}
	for range 20 {
		if status, loc = a.do(ctx, poll); status != http.StatusAccepted {
			return
		}
	}
	a.tally.violate("agent %d: job %s (%s) still pending after 20 polls of up to 2s", a.id, key, loc)
}

// torture9Admin reads /status, /, /metrics and /config until ctx ends:
// each must answer 200 with a well-formed body every time.
func torture9Admin(ctx context.Context, client *http.Client, admin string, ty *torture9Tally) {
	for ctx.Err() == nil {
		for _, ep := range []struct{ path, ct string }{{"/status", "application/json"}, {"/", "text/html"},
			{"/metrics", "text/plain"}, {"/config", "application/json"}} {
			resp, err := client.Get(admin + ep.path)
			if err != nil {
				ty.violate("admin %s: %v", ep.path, err)
				continue
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			ty.adminReads.Add(1)
			ct := resp.Header.Get("Content-Type")
			switch {
			case err != nil || resp.StatusCode != http.StatusOK:
				ty.violate("admin %s: %d %v: %q", ep.path, resp.StatusCode, err, tail(b))
			case !strings.HasPrefix(ct, ep.ct):
				ty.violate("admin %s: Content-Type %q", ep.path, ct)
			case ep.ct == "application/json" && !json.Valid(b):
				ty.violate("admin %s: invalid JSON: %q", ep.path, tail(b))
			case ep.ct == "text/html" && !bytes.Contains(b, []byte("</html>")):
				ty.violate("admin %s: incomplete page: %q", ep.path, tail(b))
			case ep.path == "/metrics" && !bytes.Contains(b, []byte("ballast_requests_total")):
				ty.violate("admin /metrics without ballast_requests_total")
			}
		}
	}
}

// torture9Metric sums the samples of the counter or gauge name whose labels
// include match.
func torture9Metric(t *testing.T, reg *prometheus.Registry, name string, match ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(match); i += 2 {
				if !hasLabel(m, match[i], match[i+1]) {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

func TestTorture9(t *testing.T) {
	leaks := []goleak.Option{goleak.IgnoreCurrent(),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	}
	reasons := torture9Reasons(t)
	profile, err := bench.NamedProfile("standard")
	if err != nil {
		t.Fatal(err)
	}
	profile.CutStream = 5 // the standard profile's share of everything else, plus cut streams
	profile.HangFor = 2 * time.Second
	up := bench.NewUpstream(bench.UpstreamConfig{Seed: torture9Seed, Profile: profile, Size: 512, StreamEvents: 8, Echo: true})
	uln := listen(t)
	upDone := make(chan struct{})
	go func() { _ = up.Serve(uln); close(upDone) }()
	upAddr := uln.Addr().String()
	var upOnce sync.Once
	stopUpstream := func() { upOnce.Do(func() { _ = up.Shutdown(); <-upDone }) }
	defer stopUpstream()

	start := time.Now()
	bl := startTorture9(t, torture9Config(upAddr, 0))
	shutDown := false
	defer func() {
		if !shutDown {
			ctx, cancel := context.WithTimeout(context.Background(), torture9Shutdown)
			defer cancel()
			_ = bl.srv.Shutdown(ctx)
			<-bl.done
			<-bl.done
		}
		if t.Failed() {
			t.Logf("ballast logs (tail):\n%s", tailString(bl.logs.String(), 6000))
		}
	}()

	ty := &torture9Tally{outcomes: map[string]int{}}
	var transports []*http.Transport
	newClient := func() *http.Client {
		tr := &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}
		transports = append(transports, tr)
		return &http.Client{Transport: tr, Timeout: 15 * time.Second}
	}
	// The agents stop once the run's window has passed and every reload
	// was made, however slow the machine.
	window, stopWindow := context.WithTimeout(context.Background(), torture9Run)
	defer stopWindow()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var agents, side sync.WaitGroup
	for i := range torture9Agents {
		a := &torture9Agent{id: i, rng: rand.New(rand.NewPCG(torture9Seed, uint64(i))), client: newClient(),
			base: bl.base, tally: ty, reasons: reasons}
		agents.Go(func() { a.run(ctx) })
	}
	adminClient := newClient()
	side.Go(func() { torture9Admin(ctx, adminClient, bl.admin, ty) })
	reloads := 0
	side.Go(func() {
		defer func() { <-window.Done(); stop() }()
		tick := time.NewTicker(torture9Run / (torture9Reloads + 1))
		defer tick.Stop()
		for v := 1; v <= torture9Reloads; v++ {
			<-tick.C
			if err := os.WriteFile(bl.file, []byte(torture9Config(upAddr, v)), 0o600); err != nil {
				ty.violate("writing config: %v", err)
				return
			}
			resp, err := adminClient.Post(bl.admin+"/reload", "", nil)
			if err != nil {
				ty.violate("reload %d: %v", v, err)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				ty.violate("reload %d: %d %s", v, resp.StatusCode, b)
				continue
			}
			reloads++
		}
	})
	agents.Wait()
	side.Wait()

	// Shut down gracefully: nothing is in flight any more, so the drain
	// must end well within shutdown_timeout, and both listeners return.
	sctx, cancel := context.WithTimeout(context.Background(), torture9Shutdown)
	began := time.Now()
	err = bl.srv.Shutdown(sctx)
	cancel()
	for range 2 {
		select {
		case <-bl.done:
		case <-time.After(torture9Shutdown):
			t.Fatal("Serve did not return after Shutdown")
		}
	}
	shutDown = true
	if err != nil {
		t.Errorf("Shutdown: %v (after %v)", err, time.Since(began))
	}
	elapsed := time.Since(start)
	counters := up.Counters()
	for _, tr := range transports {
		tr.CloseIdleConnections()
	}

	ty.mu.Lock()
	t.Logf("%d answered, %d jobs, %d admin reads, %d reloads in %v; outcomes: %v; upstream faults: %v",
		ty.answered.Load(), ty.jobs.Load(), ty.adminReads.Load(), reloads, elapsed.Round(time.Millisecond), ty.outcomes, counters.Faults)
	for _, v := range ty.violations {
		t.Error(v)
	}
	ty.mu.Unlock()

	// Every keyed POST's side effect ran at most once.
	for k, c := range counters.Keys {
		if strings.HasPrefix(k, "ord-") && c.Effects > 1 {
			t.Errorf("key %s: side effect ran %d times (%d arrivals)", k, c.Effects, c.Arrivals)
		}
	}
	// A stream an agent saw cut was cut by the upstream, or by ballast at
	// the request's deadline (timeouts.total: a stream that began late in
	// it), and ballast knew: it counted each one.
	if got := torture9Metric(t, bl.reg, "ballast_stream_truncated_total"); got < float64(ty.truncated.Load()) {
		t.Errorf("ballast_stream_truncated_total %v < %d streams agents saw cut", got, ty.truncated.Load())
	}
	// Metrics: every answer counted; attempts and retries within bounds.
	requests := torture9Metric(t, bl.reg, "ballast_requests_total")
	attempts := torture9Metric(t, bl.reg, "ballast_upstream_attempts_total")
	retries := torture9Metric(t, bl.reg, "ballast_retries_total")
	if requests < float64(ty.answered.Load()) {
		t.Errorf("ballast_requests_total %v < %d answers the agents got", requests, ty.answered.Load())
	}
	if attempts > torture9MaxAttempts*(requests+float64(ty.jobs.Load())) {
		t.Errorf("%v upstream attempts for %v requests and %d jobs: more than %d each", attempts, requests, ty.jobs.Load(), torture9MaxAttempts)
	}
	if budget := torture9BudgetRatio*(attempts-retries) + torture9BudgetPerSec*(elapsed.Seconds()+10); retries > attempts || retries > budget {
		t.Errorf("%v retries of %v attempts: over the budget's %v", retries, attempts, budget)
	}
	if got := torture9Metric(t, bl.reg, "ballast_config_reloads_total", "result", "success"); got != float64(reloads) {
		t.Errorf("ballast_config_reloads_total{success} = %v, want %d", got, reloads)
	}
	if reloads != torture9Reloads {
		t.Errorf("%d of %d reloads happened", reloads, torture9Reloads)
	}
	if got := torture9Metric(t, bl.reg, "ballast_inflight_requests"); got != 0 {
		t.Errorf("ballast_inflight_requests = %v after shutdown", got)
	}

	// No goroutine outlives the shutdown, and the heap is bounded.
	stopUpstream()
	if err := goleak.Find(leaks...); err != nil {
		t.Error(err)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap after the run: %d MiB", ms.HeapAlloc>>20)
	if ms.HeapAlloc > torture9HeapBound {
		t.Errorf("heap after the run %d MiB, bound %d MiB", ms.HeapAlloc>>20, torture9HeapBound>>20)
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestTorture9KeyedAttemptThatMayHaveRunIsNotRepeated pins the bug the
// torture test found: a keyed POST whose attempt reached the upstream and
// then failed in a way ballast answers itself (an answer validation
// refuses, a reset after sending, a timeout) used to free its key, so the
// agent's retry with the same key ran the call a second time. Its retry
// now reads 409 outcome_unknown, and the upstream sees the call once.
func TestTorture9KeyedAttemptThatMayHaveRunIsNotRepeated(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  fault
		reason string
	}{
		{"invalid answer", malformedJSON, "invalid_response"},
		{"reset after sending", resetConn, "upstream_unavailable"},
		{"timeout", hang, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := newScript(tc.fault)
			up := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				sc.serve(w, r, func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					_, _ = io.WriteString(w, `{"ok":true}`)
				})
			}))
			b := startBallast(t, nil, `
routes:
  - name: orders
    match: {path_prefix: /}
    upstream: `+up+`
    timeouts: {per_try: 200ms, total: 2s}
    retry: {on: [connect-failure, 429, 503]}
    validate: {json: true}
    idempotency: {mode: header}
`)
			client := httpClient(t)
			send := func() (int, string) {
				req, _ := http.NewRequestWithContext(testContext(t), "POST", b.base+"/orders", strings.NewReader(`{"item":1}`))
				req.Header.Set("Idempotency-Key", "order-1")
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				var p struct{ Reason string }
				_ = json.Unmarshal([]byte(readAll(t, resp)), &p)
				return resp.StatusCode, p.Reason
			}
			if _, reason := send(); reason != tc.reason {
				t.Fatalf("first send: reason %q, want %q", reason, tc.reason)
			}
			if status, reason := send(); status != http.StatusConflict || reason != "outcome_unknown" {
				t.Errorf("retry with the same key: %d %q, want 409 outcome_unknown", status, reason)
			}
			if n := sc.hits.Load(); n != 1 {
				t.Errorf("the upstream saw the call %d times, want once", n)
			}
		})
	}
}
