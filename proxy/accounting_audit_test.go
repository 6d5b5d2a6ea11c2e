package proxy_test

// An accounting-invariants audit: under a mixed, faulty load, do the
// numbers ballast reports (metrics, /status, the decision trail) add up,
// agree with each other, and agree with what the agents and the upstreams
// actually saw? Every request carries its own X-Request-Id, which the
// upstreams receive, so each request's upstream hits are known exactly.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/supervise"
)

// aaUpstream is a scripted upstream that counts what it received, by
// request id. Its behaviour is chosen by the last path segment and by how
// many times this request id was seen (1-based), never at random.
type aaUpstream struct {
	addr string
	url  string

	mu    sync.Mutex
	hits  map[string]int
	total int

	bhGate   chan struct{} // releases the bulkhead route's calls
	idemGate chan struct{} // releases the keyed call others attach to
	bhOnce   sync.Once
	idemOnce sync.Once
}

func (u *aaUpstream) openBulkhead()    { u.bhOnce.Do(func() { close(u.bhGate) }) }
func (u *aaUpstream) openIdempotency() { u.idemOnce.Do(func() { close(u.idemGate) }) }

func aaStartUpstream(t *testing.T) *aaUpstream {
	u := &aaUpstream{hits: map[string]int{}, bhGate: make(chan struct{}), idemGate: make(chan struct{})}
	u.url, u.addr = upstream(t, u.serve)
	t.Cleanup(func() { u.openBulkhead(); u.openIdempotency() }) // before the upstream's shutdown
	return u
}

func (u *aaUpstream) hitsOf(id string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[id]
}

func (u *aaUpstream) totalHits() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.total
}

func aaJSON(w http.ResponseWriter, code int, body string, headers ...string) {
	for i := 0; i+1 < len(headers); i += 2 {
		w.Header().Set(headers[i], headers[i+1])
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	io.WriteString(w, body)
}

func aaHang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

func (u *aaUpstream) serve(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	id := r.Header.Get("X-Request-Id")
	u.mu.Lock()
	u.hits[id]++
	u.total++
	n := u.hits[id]
	u.mu.Unlock()
	ok := `{"ok":true}`
	switch mode := path.Base(r.URL.Path); {
	case mode == "ok":
		aaJSON(w, 200, ok)
	case mode == "flaky": // 503 once, then fine
		if n == 1 {
			aaJSON(w, 503, `{"error":"flaky"}`)
			return
		}
		aaJSON(w, 200, ok)
	case mode == "reset": // the connection closes once without an answer
		if n == 1 {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		aaJSON(w, 200, ok)
	case mode == "dead":
		aaJSON(w, 503, `{"error":"dead"}`)
	case mode == "ra": // longer than max_retry_after
		aaJSON(w, 503, `{"error":"later"}`, "Retry-After", "5")
	case mode == "r429":
		aaJSON(w, 429, `{"error":"slow down"}`, "Retry-After", "5")
	case mode == "slow": // past per_try once, then fine
		if n == 1 {
			aaHang(r)
			return
		}
		aaJSON(w, 200, ok)
	case mode == "hang":
		aaHang(r)
	case mode == "400":
		aaJSON(w, 400, `{"error":"bad request"}`)
	case mode == "bad":
		aaJSON(w, 200, `not json`)
	case mode == "badonce":
		if n == 1 {
			aaJSON(w, 200, `not json`)
			return
		}
		aaJSON(w, 200, ok)
	case mode == "hedge": // the first copy hangs; a hedge answers
		if n == 1 {
			aaHang(r)
			return
		}
		aaJSON(w, 200, ok)
	case mode == "bhgate":
		<-u.bhGate
		aaJSON(w, 200, ok)
	case mode == "idemgate":
		<-u.idemGate
		aaJSON(w, 200, ok)
	case strings.HasPrefix(mode, "item"):
		if r.Header.Get("X-Fail") != "" {
			aaJSON(w, 503, `{"error":"down"}`)
			return
		}
		aaJSON(w, 200, `{"item":"`+mode+`"}`, "Cache-Control", "max-age=60")
	case mode == "sse", mode == "ssecut":
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		f := w.(http.Flusher)
		for i := range 3 {
			if mode == "ssecut" && i == 2 {
				panic(http.ErrAbortHandler) // the stream breaks mid-body
			}
			fmt.Fprintf(w, "data: {\"n\":%d}\n\n", i)
			f.Flush()
		}
	case mode == "bigcut": // a chunked JSON body that breaks off
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		io.WriteString(w, `{"part":"`+strings.Repeat("x", 4096))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	default:
		aaJSON(w, 404, `{"error":"no such mode"}`)
	}
}

// aaResult is what one agent saw.
type aaResult struct {
	id, route, method string
	path              string
	status            int  // 0: the agent hung up and got nothing
	hungUp            bool // the agent closed its connection mid-call
	cut               bool // the body broke off (a truncated stream)
	staleServed       bool // Cache-Status says fwd=stale
}

// aaLoad is the agents' side of a run.
type aaLoad struct {
	t       *testing.T
	b       *ballast
	c       *http.Client
	mu      sync.Mutex
	results []aaResult
	seq     int
	wg      sync.WaitGroup
	sem     chan struct{}
}

func (l *aaLoad) nextID(prefix string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	return fmt.Sprintf("aa-%s-%03d", prefix, l.seq)
}

// send makes one request and records what the agent saw. It returns the
// request id.
func (l *aaLoad) send(route, method, p, body string, headers ...string) string {
	id := l.nextID(route)
	req, err := http.NewRequest(method, l.b.base+p, strings.NewReader(body))
	if err != nil {
		l.t.Error(err)
		return id
	}
	req.Header.Set("X-Request-Id", id)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res := aaResult{id: id, route: route, method: method, path: p}
	resp, err := l.c.Do(req)
	if err != nil {
		l.t.Errorf("%s %s: %v", method, p, err)
		return id
	}
	_, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	res.status, res.cut = resp.StatusCode, rerr != nil
	res.staleServed = strings.Contains(resp.Header.Get("Cache-Status"), "fwd=stale")
	if got := resp.Header.Get("X-Request-Id"); got != id {
		l.t.Errorf("%s: answered with request id %q", id, got)
	}
	l.record(res)
	return id
}

func (l *aaLoad) record(r aaResult) {
	l.mu.Lock()
	l.results = append(l.results, r)
	l.mu.Unlock()
}

// async runs send on a goroutine, bounded by the load's concurrency.
func (l *aaLoad) async(route, method, p, body string, headers ...string) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.sem <- struct{}{}
		defer func() { <-l.sem }()
		l.send(route, method, p, body, headers...)
	}()
}

// hangUp sends a request on a raw connection and closes it once the
// upstream has the call: the agent left mid-call.
func (l *aaLoad) hangUp(route, p string, up *aaUpstream) {
	id := l.nextID(route)
	conn, err := net.Dial("tcp", l.b.addr)
	if err != nil {
		l.t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n\r\n", p, id)
	waitFor(l.t, func() bool { return up.hitsOf(id) > 0 })
	conn.Close()
	l.record(aaResult{id: id, route: route, method: "GET", path: p, hungUp: true})
}

func (l *aaLoad) count(cond func(aaResult) bool) int {
	n := 0
	for _, r := range l.results {
		if cond(r) {
			n++
		}
	}
	return n
}

// aaTrail is one decision-trail line.
type aaTrail struct {
	Msg          string `json:"msg"`
	RequestID    string `json:"request_id"`
	Route        string `json:"route"`
	Method       string `json:"method"`
	Status       int    `json:"status"`
	Stopped      string `json:"stopped"`
	Idempotency  string `json:"idempotency"`
	Cache        string `json:"cache"`
	AttemptCount int    `json:"attempt_count"`
	Attempts     []struct {
		Upstream string `json:"upstream"`
		Outcome  string `json:"outcome"`
		Hedged   bool   `json:"hedged"`
	} `json:"attempts"`
}

// copies is how many requests the trail says reached upstreams: each
// attempt, and the second copy of a hedged one.
func (tr aaTrail) copies() int {
	n := tr.AttemptCount
	for _, a := range tr.Attempts {
		if a.Hedged {
			n++
		}
	}
	return n
}

func aaTrails(t *testing.T, b *ballast) map[string][]aaTrail {
	t.Helper()
	out := map[string][]aaTrail{}
	sc := bufio.NewScanner(strings.NewReader(b.logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var tr aaTrail
		if json.Unmarshal(sc.Bytes(), &tr) != nil || tr.Msg != "request" || tr.RequestID == "" {
			continue
		}
		out[tr.RequestID] = append(out[tr.RequestID], tr)
	}
	return out
}

func aaStatus(t *testing.T, b *ballast) supervise.Snapshot {
	t.Helper()
	resp, body := get(t, client(t), b.admin+"/status")
	if resp.StatusCode != 200 {
		t.Fatalf("/status: %d %s", resp.StatusCode, body)
	}
	var snap supervise.Snapshot
	if err := json.Unmarshal([]byte(body), &snap); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return snap
}

func aaClass(status int) string { return fmt.Sprintf("%dxx", status/100) }

// aaRoutes are the mixed run's routes, by name.
var aaRoutes = []string{"plain", "json", "stream", "hedge", "fb", "r429", "cfresh", "cfall", "rl", "bh", "idem", "hang"}

type aaRun struct {
	b                      *ballast
	load                   *aaLoad
	main, fb, hedge, limit *aaUpstream
	keyed                  int // requests with an Idempotency-Key
	attachedReplays        int // keyed duplicates that attached and then replayed
}

// aaMixedRun drives a few hundred requests of every kind through one
// ballast, concurrently where the outcome does not depend on the order,
// and waits until every one of them is accounted for.
func aaMixedRun(t *testing.T) *aaRun {
	main, fb, hedge, limit := aaStartUpstream(t), aaStartUpstream(t), aaStartUpstream(t), aaStartUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1}
defaults:
  timeouts: {connect: 500ms, per_try: 150ms, total: 3s}
  retry: {attempts: 3, backoff: {base: 1ms, max: 5ms}, max_retry_after: 100ms, budget: {ratio: 1, min_per_second: 100000}}
  breaker: {enabled: false}
routes:
  - {name: plain, match: {path_prefix: /plain/}, upstream: %[1]q}
  - {name: json, match: {path_prefix: /json/}, upstream: %[1]q, validate: {json: true}}
  - {name: stream, match: {path_prefix: /stream/}, upstream: %[1]q, timeouts: {per_try: 2s, total: 5s}}
  - {name: hedge, match: {path_prefix: /hedge/}, upstream: %[3]q, hedge_after: 30ms, timeouts: {per_try: 2s, total: 5s}}
  - name: fb
    match: {path_prefix: /fb/}
    upstream: %[1]q
    retry: {attempts: 2}
    fallbacks: [{upstream: %[2]q}]
  - {name: r429, match: {path_prefix: /r429/}, upstream: %[4]q, timeouts: {per_try: 150ms, total: 1s}}
  - {name: cfresh, match: {path_prefix: /cfresh/}, upstream: %[1]q, cache: {mode: fresh, ttl: 1m}}
  - {name: cfall, match: {path_prefix: /cfall/}, upstream: %[1]q, cache: {mode: fallback, stale: 1h}}
  - {name: rl, match: {path_prefix: /rl/}, upstream: %[1]q, rate_limit: {rps: 1, burst: 3, max_wait: 1ms}}
  - {name: bh, match: {path_prefix: /bh/}, upstream: %[1]q, concurrency: {max: 2, queue: 2, max_wait: 5s}, timeouts: {per_try: 5s, total: 8s}}
  - {name: idem, match: {path_prefix: /idem/}, upstream: %[1]q, idempotency: {mode: header}, timeouts: {per_try: 5s, total: 8s}}
  - {name: hang, match: {path_prefix: /hang/}, upstream: %[1]q, timeouts: {per_try: 5s, total: 8s}}
`, main.url, fb.url, hedge.url, limit.url))
	l := &aaLoad{t: t, b: b, c: client(t), sem: make(chan struct{}, 24)}
	run := &aaRun{b: b, load: l, main: main, fb: fb, hedge: hedge, limit: limit}

	// Phase 1: the faulty mix, all at once.
	for range 12 {
		for _, m := range []string{"ok", "flaky", "reset", "dead", "ra", "slow", "400"} {
			l.async("plain", "GET", "/plain/"+m, "")
		}
		for _, m := range []string{"ok", "flaky", "reset"} {
			l.async("plain", "POST", "/plain/"+m, `{"q":1}`)
		}
	}
	for range 8 {
		l.async("json", "GET", "/json/bad", "")
		l.async("json", "GET", "/json/badonce", "")
		l.async("stream", "POST", "/stream/sse", `{"stream":true}`)
		l.async("stream", "POST", "/stream/ssecut", `{"stream":true}`)
		l.async("hedge", "GET", "/hedge/hedge", "")
		l.async("fb", "GET", "/fb/dead", "")
	}
	for range 5 {
		l.async("r429", "GET", "/r429/r429", "")
	}
	for i := range 30 {
		l.async("cfresh", "GET", fmt.Sprintf("/cfresh/item%d", i%3), "")
	}
	for i := range 4 {
		l.async("cfresh", "GET", fmt.Sprintf("/cfresh/item%d", i%3), "", "Cache-Control", "no-cache")
	}
	for i := range 6 {
		l.async("cfall", "GET", fmt.Sprintf("/cfall/item%d", i%2), "")
	}
	for range 15 {
		l.async("rl", "GET", "/rl/ok", "")
	}
	l.wg.Wait()

	// Phase 2: the fallback cache answers for a failing upstream.
	for i := range 6 {
		l.async("cfall", "GET", fmt.Sprintf("/cfall/item%d", i%2), "", "X-Fail", "1")
	}
	// Agents that hang up mid-call.
	for range 5 {
		l.hangUp("hang", "/hang/hang", main)
	}
	l.wg.Wait()

	// Phase 3: the bulkhead binds: 2 in flight, 2 queued, the rest shed.
	for range 2 {
		l.async("bh", "GET", "/bh/bhgate", "")
	}
	waitFor(t, func() bool { return b.metricSum("ballast_concurrency_inflight", map[string]string{"route": "bh"}) == 2 })
	for range 2 {
		l.async("bh", "GET", "/bh/bhgate", "")
	}
	waitFor(t, func() bool {
		return b.metricSum("ballast_concurrency_queue_depth", map[string]string{"route": "bh"}) == 2
	})
	for range 4 {
		l.send("bh", "GET", "/bh/bhgate", "") // shed at once
	}
	main.openBulkhead()
	l.wg.Wait()

	// Phase 4: idempotency keys.
	for i := range 5 { // claimed, then replayed
		k := fmt.Sprintf("seq-%d", i)
		l.send("idem", "POST", "/idem/ok", `{"n":1}`, "Idempotency-Key", k)
		l.send("idem", "POST", "/idem/ok", `{"n":1}`, "Idempotency-Key", k)
		run.keyed += 2
	}
	l.send("idem", "POST", "/idem/ok", `{"n":1}`, "Idempotency-Key", "mis") // claimed
	l.send("idem", "POST", "/idem/ok", `{"n":2}`, "Idempotency-Key", "mis") // mismatch
	l.send("idem", "POST", "/idem/flaky", `{"n":1}`, "Idempotency-Key", "flaky")
	run.keyed += 3
	// One call runs; three duplicates attach to it, then replay its answer.
	l.async("idem", "POST", "/idem/idemgate", `{"n":1}`, "Idempotency-Key", "gate")
	waitFor(t, func() bool {
		return b.metricSum("ballast_idempotency_total", map[string]string{"route": "idem", "result": "claimed"}) == 8
	})
	for range 3 {
		l.async("idem", "POST", "/idem/idemgate", `{"n":1}`, "Idempotency-Key", "gate")
	}
	waitFor(t, func() bool {
		return b.metricSum("ballast_idempotency_total", map[string]string{"route": "idem", "result": "attached"}) == 3
	})
	main.openIdempotency()
	l.wg.Wait()
	run.keyed += 4
	run.attachedReplays = 3

	// Every request answered, counted, and logged.
	sent := len(l.results)
	waitFor(t, func() bool { return b.metricSum("ballast_requests_total", nil) == float64(sent) })
	waitFor(t, func() bool { return b.metricSum("ballast_inflight_requests", nil) == 0 })
	waitFor(t, func() bool { return len(aaTrails(t, b)) == sent })
	return run
}

// TestAccountingAudit_MixedLoad checks, after one mixed faulty run, that
// every number ballast reports adds up.
func TestAccountingAudit_MixedLoad(t *testing.T) {
	run := aaMixedRun(t)
	b, l := run.b, run.load
	trails := aaTrails(t, b)
	routeOf := map[string]string{}
	for _, r := range l.results {
		routeOf[r.id] = r.route
	}
	hitsOf := func(id string) int {
		return run.main.hitsOf(id) + run.fb.hitsOf(id) + run.hedge.hitsOf(id) + run.limit.hitsOf(id)
	}
	if len(l.results) < 250 {
		t.Fatalf("only %d requests sent", len(l.results))
	}
	t.Logf("%d requests; upstream hits: main %d, fallback %d, hedge %d, 429 %d", len(l.results),
		run.main.totalHits(), run.fb.totalHits(), run.hedge.totalHits(), run.limit.totalHits())

	t.Run("RequestsByRouteAndClass", func(t *testing.T) {
		for _, route := range aaRoutes {
			sent := l.count(func(r aaResult) bool { return r.route == route })
			if got := b.metricSum("ballast_requests_total", map[string]string{"route": route}); got != float64(sent) {
				t.Errorf("route %s: ballast_requests_total %v, agents sent %d", route, got, sent)
			}
			for _, class := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
				want := l.count(func(r aaResult) bool {
					return r.route == route && (aaClass(r.status) == class || r.hungUp && class == "4xx") // 499
				})
				if got := b.metricSum("ballast_requests_total", map[string]string{"route": route, "code": class}); got != float64(want) {
					t.Errorf("route %s code %s: counted %v, agents got %d", route, class, got, want)
				}
			}
		}
		if got := b.metricSum("ballast_requests_total", map[string]string{"route": "_unmatched"}); got != 0 {
			t.Errorf("_unmatched counted %v", got)
		}
	})

	t.Run("DurationHistogramShadowsRequests", func(t *testing.T) {
		for _, route := range aaRoutes {
			for _, class := range []string{"1xx", "2xx", "3xx", "4xx", "5xx"} {
				lb := map[string]string{"route": route, "code": class}
				if c, h := b.metricSum("ballast_requests_total", lb), b.metricSum("ballast_request_duration_seconds", lb); c != h {
					t.Errorf("%v: requests_total %v, duration count %v", lb, c, h)
				}
			}
		}
	})

	t.Run("RetryWaitHistogramShadowsRetries", func(t *testing.T) {
		// retry_wait also observes shared cool-down waits; in this run a
		// cool-down never fits the 429 route's deadline, so none is waited.
		for _, route := range aaRoutes {
			lb := map[string]string{"route": route}
			if c, h := b.metricSum("ballast_retries_total", lb), b.metricSum("ballast_retry_wait_seconds", lb); c != h {
				t.Errorf("route %s: retries_total %v, retry_wait count %v", route, c, h)
			}
		}
	})

	// staleResent is how many copies the upstream got of the GETs its
	// scripted reset hit on a reused keep-alive connection beyond the
	// attempts the trail shows (see TestAccountingAudit_StaleConnectionResend).
	staleResent := func(up *aaUpstream) (n int) {
		for _, r := range l.results {
			if r.method == "GET" && r.path == "/plain/reset" && len(trails[r.id]) == 1 {
				n += up.hitsOf(r.id) - trails[r.id][0].AttemptCount
			}
		}
		return n
	}
	attemptsVsHits := func(t *testing.T, exceptStale bool) {
		for _, up := range []*aaUpstream{run.main, run.fb, run.hedge, run.limit} {
			attempts := b.metricSum("ballast_upstream_attempts_total", map[string]string{"upstream": up.addr})
			hedges := 0.0
			if up == run.hedge {
				hedges = b.metricSum("ballast_hedges_total", map[string]string{"route": "hedge"})
			}
			hits := up.totalHits()
			if exceptStale && up == run.main { // only the main upstream resets
				hits -= staleResent(up)
			}
			if attempts+hedges != float64(hits) {
				t.Errorf("upstream %s: attempts %v + hedges %v, but it received %d requests", up.addr, attempts, hedges, hits)
			}
		}
	}
	t.Run("AttemptsPlusHedgesEqualUpstreamHits", func(t *testing.T) {
		if n := staleResent(run.main); n != 0 {
			t.Errorf("%d copies resent after a pooled connection closed reached the upstream uncounted", n)
		}
		attemptsVsHits(t, false)
	})
	t.Run("AttemptsPlusHedgesEqualUpstreamHitsButStaleResends", func(t *testing.T) {
		attemptsVsHits(t, true)
	})

	t.Run("HedgesEqualExtraCopies", func(t *testing.T) {
		extra := 0
		for _, r := range l.results {
			if r.route == "hedge" {
				extra += max(run.hedge.hitsOf(r.id)-1, 0)
			}
		}
		if got := b.metricSum("ballast_hedges_total", map[string]string{"route": "hedge"}); got != float64(extra) || extra == 0 {
			t.Errorf("hedges_total %v, extra copies the upstream saw %d", got, extra)
		}
	})

	t.Run("RetriesPlusFirstAttemptsEqualAttempts", func(t *testing.T) {
		// A retry is a repeat on the same upstream; the first attempt on
		// each upstream tried (primary, then fallbacks) is not a retry.
		for _, route := range aaRoutes {
			firsts := 0
			for id, lines := range trails {
				if routeOf[id] != route || len(lines) != 1 {
					continue
				}
				prev := ""
				for _, a := range lines[0].Attempts {
					if a.Upstream != prev {
						firsts++
					}
					prev = a.Upstream
				}
			}
			retries := b.metricSum("ballast_retries_total", map[string]string{"route": route})
			attempts := b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": route})
			if retries+float64(firsts) != attempts {
				t.Errorf("route %s: retries %v + first attempts %d != attempts %v", route, retries, firsts, attempts)
			}
		}
	})

	t.Run("TrailAttemptCountsEqualAttemptsMetric", func(t *testing.T) {
		for _, route := range aaRoutes {
			n := 0
			for id, lines := range trails {
				if routeOf[id] == route && len(lines) == 1 {
					n += lines[0].AttemptCount
				}
			}
			if got := b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": route}); got != float64(n) {
				t.Errorf("route %s: attempts_total %v, trail attempt_count sum %d", route, got, n)
			}
		}
	})

	t.Run("GaugesReturnToZero", func(t *testing.T) {
		for _, name := range []string{"ballast_concurrency_inflight", "ballast_concurrency_queue_depth", "ballast_inflight_requests"} {
			if got := b.metricSum(name, nil); got != 0 {
				t.Errorf("%s = %v after the run", name, got)
			}
		}
		snap := aaStatus(t, b)
		for _, rs := range snap.Routes {
			if rs.InFlight != 0 {
				t.Errorf("/status route %s inflight %d", rs.Name, rs.InFlight)
			}
			if rs.Limiter != nil && rs.Limiter.QueueDepth != 0 {
				t.Errorf("/status route %s queue_depth %d", rs.Name, rs.Limiter.QueueDepth)
			}
			for _, us := range rs.Upstreams {
				if us.InFlight != 0 {
					t.Errorf("/status route %s upstream %s inflight %d", rs.Name, us.Name, us.InFlight)
				}
			}
		}
	})

	t.Run("BindingLimitsCounted", func(t *testing.T) {
		shed := l.count(func(r aaResult) bool { return r.route == "bh" && r.status == 503 })
		if got := b.metricSum("ballast_ratelimit_rejected_total", map[string]string{"route": "bh", "reason": "overloaded"}); got != float64(shed) || shed != 4 {
			t.Errorf("bulkhead: overloaded %v, agents shed %d (want 4)", got, shed)
		}
		limited := l.count(func(r aaResult) bool { return r.route == "rl" && r.status == 429 })
		if got := b.metricSum("ballast_ratelimit_rejected_total", map[string]string{"route": "rl", "reason": "rate_limited"}); got != float64(limited) || limited == 0 {
			t.Errorf("rate limit: rejected %v, agents got 429 %d", got, limited)
		}
		if passed := l.count(func(r aaResult) bool { return r.route == "rl" && r.status == 200 }); float64(passed) != b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": "rl"}) {
			t.Errorf("rate limit: %d passed, attempts %v", passed, b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": "rl"}))
		}
	})

	t.Run("CacheCountersSumToCachedRequests", func(t *testing.T) {
		fresh := l.count(func(r aaResult) bool { return r.route == "cfresh" })
		sum := 0.0
		for _, res := range []string{"hit", "miss", "stale", "bypass"} {
			sum += b.metricSum("ballast_cache_requests_total", map[string]string{"route": "cfresh", "result": res})
		}
		if sum != float64(fresh) {
			t.Errorf("fresh route: hit+miss+stale+bypass %v, requests %d", sum, fresh)
		}
		if got := b.metricSum("ballast_cache_requests_total", map[string]string{"route": "cfresh", "result": "bypass"}); got != 4 {
			t.Errorf("fresh route: bypass %v, want 4", got)
		}
		// Each fresh miss asked the upstream once (no failures there).
		if m, a := b.metricSum("ballast_cache_requests_total", map[string]string{"route": "cfresh", "result": "miss"}),
			b.metricSum("ballast_cache_requests_total", map[string]string{"route": "cfresh", "result": "bypass"}); m+a != b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": "cfresh"}) {
			t.Errorf("fresh route: misses %v + bypasses %v, attempts %v", m, a, b.metricSum("ballast_upstream_attempts_total", map[string]string{"route": "cfresh"}))
		}
		stale := l.count(func(r aaResult) bool { return r.route == "cfall" && r.staleServed })
		if got := b.metricSum("ballast_cache_requests_total", map[string]string{"route": "cfall"}); got != float64(stale) || stale != 6 {
			t.Errorf("fallback route: counted %v, agents served stale %d (want 6)", got, stale)
		}
	})

	t.Run("StreamTruncationsMatchCutStreams", func(t *testing.T) {
		cut := l.count(func(r aaResult) bool { return r.cut })
		if got := b.metricSum("ballast_stream_truncated_total", nil); got != float64(cut) || cut != 8 {
			t.Errorf("stream_truncated_total %v, agents saw %d cut (want 8)", got, cut)
		}
	})

	t.Run("TrailOneLinePerRequestWithTheAgentsStatus", func(t *testing.T) {
		if len(trails) != len(l.results) {
			t.Errorf("%d trail request ids for %d requests", len(trails), len(l.results))
		}
		for _, r := range l.results {
			lines := trails[r.id]
			if len(lines) != 1 {
				t.Errorf("%s: %d trail lines", r.id, len(lines))
				continue
			}
			tr := lines[0]
			want := r.status
			if r.hungUp {
				want = 499
			}
			if tr.Status != want || tr.Route != r.route || tr.Method != r.method {
				t.Errorf("%s: trail says %s %s %d, the agent sent %s to %s and got %d", r.id, tr.Method, tr.Route, tr.Status, r.method, r.route, want)
			}
		}
	})

	t.Run("TrailStoppedWhenDocumented", func(t *testing.T) {
		for _, r := range l.results {
			tr := trails[r.id]
			if len(tr) != 1 {
				continue
			}
			want := ""
			switch {
			case r.hungUp: // docs/errors.md: logged with "stopped":"agent_gone"
				want = "agent_gone"
			case r.path == "/plain/ra", r.path == "/r429/r429": // a hint past max_retry_after, or a cool-down past the deadline
				want = "rate_limited"
			case r.status == 200 || r.status == 400:
				want = ""
			default:
				continue
			}
			if tr[0].Stopped != want {
				t.Errorf("%s %s: got %d, trail stopped %q, want %q", r.id, r.path, tr[0].Status, tr[0].Stopped, want)
			}
		}
	})

	t.Run("StatusFailuresAreInTheTrail", func(t *testing.T) {
		snap := aaStatus(t, b)
		if len(snap.Failures) == 0 {
			t.Fatal("no failures on /status")
		}
		for _, f := range snap.Failures {
			lines := trails[f.RequestID]
			if len(lines) != 1 || lines[0].Status != f.Status || lines[0].Route != f.Route || lines[0].AttemptCount != f.Attempts {
				t.Errorf("/status failure %+v; trail %+v", f, lines)
			}
		}
	})

	t.Run("IdempotencyResultsSumToKeyedRequests", func(t *testing.T) {
		sum := 0.0
		for _, res := range []string{"claimed", "attached", "replayed", "conflict", "mismatch", "unknown_outcome"} {
			sum += b.metricSum("ballast_idempotency_total", map[string]string{"route": "idem", "result": res})
		}
		if sum != float64(run.keyed) {
			t.Errorf("idempotency results sum to %v for %d keyed requests: one result each", sum, run.keyed)
		}
	})

	t.Run("IdempotencyTrailAgreesWithMetrics", func(t *testing.T) {
		byResult := map[string]int{}
		for id, lines := range trails {
			if routeOf[id] == "idem" && len(lines) == 1 {
				byResult[lines[0].Idempotency]++
			}
		}
		for _, res := range []string{"claimed", "mismatch"} {
			if got := b.metricSum("ballast_idempotency_total", map[string]string{"route": "idem", "result": res}); got != float64(byResult[res]) {
				t.Errorf("%s: metric %v, trail %d", res, got, byResult[res])
			}
		}
		// Three duplicates attached and then replayed; the trail keeps one
		// result per request, whichever of the two it names.
		if byResult["claimed"] != 8 || byResult["mismatch"] != 1 || byResult["replayed"]+byResult["attached"] != 5+run.attachedReplays {
			t.Errorf("trail idempotency results %v", byResult)
		}
	})

	trailVsHits := func(keep func(aaResult) bool) (bad []string) {
		for _, r := range l.results {
			lines := trails[r.id]
			if len(lines) != 1 || !keep(r) {
				continue
			}
			if hits := hitsOf(r.id); lines[0].copies() != hits {
				bad = append(bad, fmt.Sprintf("%s %s %s: trail %d copies, upstream hits %d", r.method, r.path, r.id, lines[0].copies(), hits))
			}
		}
		return bad
	}
	t.Run("TrailAttemptsEqualUpstreamHits", func(t *testing.T) {
		if bad := trailVsHits(func(r aaResult) bool { return r.route != "hedge" }); len(bad) > 0 {
			t.Error(bad)
		}
	})
	t.Run("TrailAttemptsEqualUpstreamHitsButStaleResends", func(t *testing.T) {
		if bad := trailVsHits(func(r aaResult) bool {
			return r.route != "hedge" && !(r.method == "GET" && r.path == "/plain/reset")
		}); len(bad) > 0 {
			t.Errorf("%d requests: %s", len(bad), strings.Join(bad, "; "))
		}
	})
	t.Run("TrailAttemptsEqualUpstreamHitsHedged", func(t *testing.T) {
		if bad := trailVsHits(func(r aaResult) bool { return r.route == "hedge" }); len(bad) > 0 {
			t.Error(bad)
		}
	})

	statusVsRequests := func(skip map[string]bool) (bad []string) {
		snap := aaStatus(t, b)
		for _, rs := range snap.Routes {
			if skip[rs.Name] {
				continue
			}
			if got := b.metricSum("ballast_requests_total", map[string]string{"route": rs.Name}); float64(rs.TotalRequests) != got {
				bad = append(bad, fmt.Sprintf("route %s: /status total_requests %d, ballast_requests_total %v", rs.Name, rs.TotalRequests, got))
			}
		}
		return bad
	}
	t.Run("StatusRouteTotalsEqualRequests", func(t *testing.T) {
		if bad := statusVsRequests(nil); len(bad) > 0 {
			t.Error(bad)
		}
	})
	t.Run("StatusRouteTotalsEqualRequestsButIdemAndCollapsedHits", func(t *testing.T) {
		if bad := statusVsRequests(map[string]bool{"idem": true, "cfresh": true}); len(bad) > 0 {
			t.Error(bad)
		}
	})

	t.Run("StatusUpstreamTotalsEqualAttempts", func(t *testing.T) {
		snap := aaStatus(t, b)
		for _, rs := range snap.Routes {
			for _, us := range rs.Upstreams {
				lb := map[string]string{"route": rs.Name, "upstream": us.Name}
				attempts := b.metricSum("ballast_upstream_attempts_total", lb)
				lb["outcome"] = "canceled"
				canceled := b.metricSum("ballast_upstream_attempts_total", lb)
				if float64(us.TotalRequests) != attempts-canceled {
					t.Errorf("/status %s/%s total_requests %d, attempts %v (canceled %v)", rs.Name, us.Name, us.TotalRequests, attempts, canceled)
				}
			}
		}
	})
}

// A GET whose reused keep-alive connection the upstream closes after
// reading the request is sent again on a fresh connection inside one
// attempt: the upstream receives two copies, ballast counts one.
func TestAccountingAudit_StaleConnectionResend(t *testing.T) {
	up := aaStartUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1}
routes:
  - {name: plain, match: {path_prefix: /}, upstream: %q, breaker: {enabled: false}}
`, up.url))
	l := &aaLoad{t: t, b: b, c: client(t)}
	l.send("plain", "GET", "/ok", "")          // leaves a pooled connection behind
	id := l.send("plain", "GET", "/reset", "") // the upstream closes it unanswered
	if l.results[1].status != 200 {
		t.Fatalf("the agent got %d", l.results[1].status)
	}
	waitFor(t, func() bool { return len(aaTrails(t, b)) == 2 })
	attempts := b.metricSum("ballast_upstream_attempts_total", nil)
	trail := aaTrails(t, b)[id][0]
	if float64(up.totalHits()) != attempts || up.hitsOf(id) != trail.AttemptCount {
		t.Errorf("the upstream received %d requests (%d for %s), ballast_upstream_attempts_total is %v and the trail shows %d attempt(s)",
			up.totalHits(), up.hitsOf(id), id, attempts, trail.AttemptCount)
	}
}

// ballast_stream_truncated_total counts "responses ... the agent saw
// truncated". A keyed answer whose body breaks while ballast buffers it
// for the idempotency record reaches the agent as a clean 502 instead.
func TestAccountingAudit_KeyedBrokenBodyIsNoTruncatedStream(t *testing.T) {
	up := aaStartUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1}
routes:
  - {name: idem, match: {path_prefix: /idem/}, upstream: %[1]q, idempotency: {mode: header}}
  - {name: plain, match: {path_prefix: /plain/}, upstream: %[1]q}
`, up.url))
	l := &aaLoad{t: t, b: b, c: client(t)}
	l.send("plain", "POST", "/plain/bigcut", `{}`) // unkeyed: the agent sees the cut
	if !l.results[0].cut || b.metricSum("ballast_stream_truncated_total", map[string]string{"route": "plain"}) != 1 {
		t.Fatalf("unkeyed: cut %v, truncated %v", l.results[0].cut, b.metricSum("ballast_stream_truncated_total", nil))
	}
	l.send("idem", "POST", "/idem/bigcut", `{}`, "Idempotency-Key", "k1")
	got := l.results[1]
	if got.cut || got.status != 502 {
		t.Fatalf("keyed: the agent got %d (cut %v)", got.status, got.cut)
	}
	truncated := b.metricSum("ballast_stream_truncated_total", map[string]string{"route": "idem"})
	if truncated != 0 {
		t.Errorf("ballast_stream_truncated_total{route=idem} is %v though the agent got a whole 502", truncated)
	}
}
