package proxy_test

// A reporting audit: what ballast says about itself — Prometheus metrics,
// the decision trail, /status — checked for bounded cardinality, series
// that follow reloads, cut streams told as they ended, hostile strings and
// secrets kept out of the logs, and units as documented.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
)

// raSeries counts ballast's own series (ballast_*), and returns every label
// value seen.
func raSeries(t *testing.T, b *ballast) (n int, values map[string]bool) {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values = map[string]bool{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "ballast_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			n++
			for _, lp := range m.GetLabel() {
				values[lp.GetName()+"="+lp.GetValue()] = true
			}
		}
	}
	return n, values
}

// raLines decodes every log line; a line that is not one JSON object
// fails the test (a forged or broken line).
func raLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("a log line is not one JSON object (%v): %q", err, sc.Text())
			continue
		}
		out = append(out, m)
	}
	return out
}

// raRequestLines are the decision-trail lines.
func raRequestLines(t *testing.T, b *ballast) []map[string]any {
	var out []map[string]any
	for _, m := range raLines(t, b.logs.String()) {
		if m["msg"] == "request" {
			out = append(out, m)
		}
	}
	return out
}

// raReload writes yaml as the config file and reloads it.
func raReload(t *testing.T, b *ballast, yaml string) {
	t.Helper()
	if err := os.WriteFile(b.file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if resp, body := do(t, "POST", b.admin+"/reload", ""); resp.StatusCode != 200 {
		t.Fatalf("reload: %d %s", resp.StatusCode, body)
	}
}

// Every label value comes from the config or a closed set: thousands of
// distinct paths, methods, hosts, API keys, request ids, model names,
// upstream statuses and upstream headers add no series.
func TestReportingAuditCardinalityBoundedByConfig(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		code := 200
		if p := strings.Split(r.URL.Path, "/"); len(p) > 2 {
			if c, err := strconv.Atoi(p[2]); err == nil {
				code = c
			}
		}
		w.Header().Set("X-Request-Id", "zq-up-"+r.URL.Path)
		w.Header().Set("Cache-Status", "zq-upstream-cache; hit")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"model":"zq-model","usage":{"total_tokens":3}}`)
	})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1}
defaults:
  retry: {attempts: 1}
  breaker: {enabled: false}
routes:
  - name: any
    match: {path_prefix: /a/}
    upstream: %[1]q
    rate_limit: {rps: 100000, burst: 100000, key: "header:Authorization"}
  - name: checked
    match: {path_prefix: /v/}
    upstream: %[1]q
    validate: {status: [2xx], json: true}
  - name: keyed
    match: {path_prefix: /k/}
    upstream: %[1]q
    idempotency: {mode: header}
`, up))
	c := client(t)
	send := func(i int, warm bool) {
		tag := "zq" + strconv.Itoa(i)
		if warm {
			tag = "warm"
		}
		code := 200 + i%400 // every status an upstream can send
		var method, url string
		switch i % 5 {
		case 0:
			method, url = "POST", fmt.Sprintf("%s/a/%d/%s?api_key=%s", b.base, code, tag, tag)
		case 1:
			method, url = "ZQ"+strings.ToUpper(strconv.FormatInt(int64(i%1000), 36)), fmt.Sprintf("%s/a/%d/%s", b.base, code, tag)
		case 2:
			method, url = "GET", fmt.Sprintf("%s/v/%d/%s", b.base, code, tag)
		case 3:
			method, url = "POST", fmt.Sprintf("%s/k/%d/%s", b.base, code, tag)
		case 4:
			method, url = "GET", fmt.Sprintf("%s/nowhere/%s", b.base, tag)
		}
		if warm {
			method = strings.Replace(method, "ZQ", "WARM", 1)
		}
		req, err := http.NewRequest(method, url, strings.NewReader(`{"model":"`+tag+`","user":"`+tag+`"}`))
		if err != nil {
			t.Error(err)
			return
		}
		req.Host = tag + ".example"
		req.Header.Set("Authorization", "Bearer "+tag)
		req.Header.Set("X-Request-Id", tag)
		req.Header.Set("Idempotency-Key", tag)
		req.Header.Set("User-Agent", tag)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := range 400 { // warm-up: every route, status class and method kind once
		send(i, true)
	}
	before, _ := raSeries(t, b)
	const n = 2000
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				send(i, false)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	after, values := raSeries(t, b)
	if after != before {
		t.Errorf("%d distinct hostile requests took ballast from %d to %d series", n, before, after)
	}
	for v := range values {
		if strings.Contains(v, "zq") {
			t.Errorf("a label value comes from a request or an upstream: %s", v)
		}
	}
	if got := b.metricSum("ballast_requests_total", nil); got != 400+n {
		t.Errorf("ballast_requests_total = %v for %d requests", got, 400+n)
	}
}

// A named limiter and a route with a rate limit of its own must not share
// a name: both would be ballast_ratelimit_rate{limiter="x"}, the later
// gauge replacing the earlier (and both RateLimit-Policy names "x").
func TestReportingAuditLimiterAndRouteNameClashRefused(t *testing.T) {
	file := t.TempDir() + "/ballast.yaml"
	yaml := `
limiters:
  x: {rps: 5}
routes:
  - {name: a, match: {path_prefix: /a/}, upstream: "http://127.0.0.1:1/", rate_limit: {limiter: x}}
  - {name: x, match: {path_prefix: /x/}, upstream: "http://127.0.0.1:1/", rate_limit: {rps: 7}}
`
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load(config.Source{File: file})
	if err == nil || !strings.Contains(err.Error(), "limiters.x") {
		t.Fatalf("a limiter and a route both named x, each with its own rate: config error %v", err)
	}
	// Distinct names are fine, and each has its own gauge.
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {})
	b := startBallast(t, fmt.Sprintf(`
limiters:
  x: {rps: 5}
routes:
  - {name: a, match: {path_prefix: /a/}, upstream: %[1]q, rate_limit: {limiter: x}}
  - {name: y, match: {path_prefix: /y/}, upstream: %[1]q, rate_limit: {rps: 7}}
`, up))
	if x, y := b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "x"}), b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "y"}); x != 5 || y != 7 {
		t.Errorf("ballast_ratelimit_rate x=%v y=%v, want 5 and 7", x, y)
	}
}

// A reload that removes a limiter, a route's concurrency limit or cache, or
// an upstream drops the gauges computed from them: a rate gauge left
// behind reads as a limit still in force, and keeps the old limiter (and a
// cache's memory) alive.
func TestReportingAuditReloadDropsRemovedGauges(t *testing.T) {
	up1, addr1 := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	up2, addr2 := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
limiters:
  shared: {rps: 9}
routes:
  - name: a
    match: {path_prefix: /a/}
    upstream: %[1]q
    rate_limit: {rps: 5}
    concurrency: {max: 2}
    cache: {mode: fresh, ttl: 1m}
  - {name: b, match: {path_prefix: /b/}, upstream: %[2]q, rate_limit: {limiter: shared}}
`, up1, up2))
	c := client(t)
	get(t, c, b.base+"/a/x")
	get(t, c, b.base+"/b/x")
	present := []struct {
		name   string
		labels map[string]string
	}{
		{"ballast_ratelimit_rate", map[string]string{"limiter": "a"}},
		{"ballast_ratelimit_rate", map[string]string{"limiter": "shared"}},
		{"ballast_concurrency_inflight", map[string]string{"route": "a"}},
		{"ballast_concurrency_queue_depth", map[string]string{"route": "a"}},
		{"ballast_cache_bytes", map[string]string{"route": "a"}},
		{"ballast_cache_evictions_total", map[string]string{"route": "a"}},
		{"ballast_cooldown_seconds", map[string]string{"upstream": addr1}},
		{"ballast_cooldown_seconds", map[string]string{"upstream": addr2}},
		{"ballast_breaker_state", map[string]string{"upstream": addr2}},
	}
	for _, s := range present {
		if b.metric(s.name, s.labels) < 0 {
			t.Fatalf("%s%v missing before the reload", s.name, s.labels)
		}
	}
	// Route a loses its limits and cache; route b and the shared limiter
	// and upstream 2 go; a new route c appears.
	up3, addr3 := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	raReload(t, b, fmt.Sprintf(`
routes:
  - {name: a, match: {path_prefix: /a/}, upstream: %[1]q}
  - {name: c, match: {path_prefix: /c/}, upstream: %[2]q, rate_limit: {rps: 3}}
`, up1, up3))
	for _, s := range present[:len(present)-2] {
		if s.name == "ballast_cooldown_seconds" {
			continue // upstream 1 stays
		}
		if v := b.metric(s.name, s.labels); v >= 0 {
			t.Errorf("%s%v = %v after the reload removed it", s.name, s.labels, v)
		}
	}
	for _, s := range present[len(present)-2:] {
		if v := b.metric(s.name, s.labels); v >= 0 {
			t.Errorf("%s%v = %v after the reload removed the upstream", s.name, s.labels, v)
		}
	}
	if b.metric("ballast_cooldown_seconds", map[string]string{"upstream": addr1}) < 0 ||
		b.metric("ballast_cooldown_seconds", map[string]string{"upstream": addr3}) < 0 ||
		b.metric("ballast_ratelimit_rate", map[string]string{"limiter": "c"}) != 3 {
		t.Error("the series of what the reload kept or added are missing")
	}
	// Documented: a removed route's counters stay at their last value.
	if v := b.metric("ballast_requests_total", map[string]string{"route": "b", "code": "2xx"}); v != 1 {
		t.Errorf("ballast_requests_total{route=b} = %v after the reload, want 1 (docs/metrics.md: it stays)", v)
	}
	// Put everything back: the gauges come back.
	raReload(t, b, fmt.Sprintf(`
limiters:
  shared: {rps: 9}
routes:
  - name: a
    match: {path_prefix: /a/}
    upstream: %[1]q
    rate_limit: {rps: 5}
    concurrency: {max: 2}
    cache: {mode: fresh, ttl: 1m}
  - {name: b, match: {path_prefix: /b/}, upstream: %[2]q, rate_limit: {limiter: shared}}
`, up1, up2))
	for _, s := range present {
		if b.metric(s.name, s.labels) < 0 {
			t.Errorf("%s%v missing after the reload put it back", s.name, s.labels)
		}
	}
}

// A cache rebuilt by a reload (its settings changed) starts afresh, but
// ballast_cache_evictions_total is a counter: it never goes down.
func TestReportingAuditCacheEvictionsNeverDecrease(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok "+r.URL.Path) })
	cfg := func(ttl string) string {
		return fmt.Sprintf(`
routes:
  - {name: a, match: {path_prefix: /}, upstream: %q, cache: {mode: fresh, ttl: %s, max_entries: 1}}
`, up, ttl)
	}
	b := startBallast(t, cfg("1m"))
	c := client(t)
	for i := range 4 {
		get(t, c, fmt.Sprintf("%s/p%d", b.base, i))
	}
	lb := map[string]string{"route": "a"}
	evicted := b.metric("ballast_cache_evictions_total", lb)
	if evicted < 1 {
		t.Fatalf("ballast_cache_evictions_total = %v after 4 answers in a 1-entry cache", evicted)
	}
	raReload(t, b, cfg("2m"))
	if v := b.metric("ballast_cache_evictions_total", lb); v < evicted {
		t.Errorf("ballast_cache_evictions_total went from %v down to %v across a reload", evicted, v)
	}
	get(t, c, b.base+"/p8")
	get(t, c, b.base+"/p9")
	if v := b.metric("ballast_cache_evictions_total", lb); v < evicted+1 {
		t.Errorf("ballast_cache_evictions_total = %v after more evictions, was %v", v, evicted)
	}
}

// The decision trail names the request by ballast's id, as the README
// promises for log lines and as /status's failure list does, even when the
// upstream answers with an X-Request-Id of its own (which then takes the
// X-Request-Id header).
func TestReportingAuditTrailRequestIDIsBallasts(t *testing.T) {
	long := strings.Repeat("U", 4000)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/forged") {
			w.Header().Set("X-Ballast-Request-Id", "forged-by-upstream")
			w.WriteHeader(500)
			return
		}
		w.Header().Set("X-Request-Id", "upstream-"+long)
		if strings.HasSuffix(r.URL.Path, "/bad") {
			w.WriteHeader(500)
		}
		_, _ = io.WriteString(w, `{}`)
	})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1}
defaults: {retry: {attempts: 1}, breaker: {enabled: false}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q}
`, up))
	c := client(t)
	for _, p := range []string{"/ok", "/bad"} {
		resp, _ := get(t, c, b.base+p)
		ours := resp.Header.Get("X-Ballast-Request-Id")
		if ours == "" || !strings.HasPrefix(resp.Header.Get("X-Request-Id"), "upstream-") {
			t.Fatalf("%s: X-Request-Id %.20q, X-Ballast-Request-Id %q", p, resp.Header.Get("X-Request-Id"), ours)
		}
		var line map[string]any
		waitFor(t, func() bool {
			for _, m := range raRequestLines(t, b) {
				if m["path"] == p {
					line = m
					return true
				}
			}
			return false
		})
		if line["request_id"] != ours {
			t.Errorf("%s: the trail's request_id is %.40q, ballast's id is %q", p, line["request_id"], ours)
		}
		if p == "/bad" {
			snap := aaStatus(t, b)
			if len(snap.Failures) != 1 || snap.Failures[0].RequestID != ours {
				t.Errorf("/status failures %+v, want one with request id %q", snap.Failures, ours)
			}
		}
	}
	if strings.Contains(b.logs.String(), long) {
		t.Error("the upstream's 4000-byte X-Request-Id reached the log")
	}
	// An upstream that sends an X-Ballast-Request-Id of its own cannot
	// pass it off as ballast's.
	resp, _ := get(t, c, b.base+"/forged")
	ours := resp.Header.Get("X-Request-Id")
	if got := resp.Header.Get("X-Ballast-Request-Id"); got != "" {
		t.Errorf("the agent got the upstream's X-Ballast-Request-Id %q (ballast's id is %q)", got, ours)
	}
	waitFor(t, func() bool {
		for _, m := range raRequestLines(t, b) {
			if m["path"] == "/forged" {
				if m["request_id"] != ours {
					t.Errorf("the trail's request_id is %q, ballast's id is %q", m["request_id"], ours)
				}
				return true
			}
		}
		return false
	})
	if snap := aaStatus(t, b); len(snap.Failures) != 2 || snap.Failures[0].RequestID != ours {
		t.Errorf("/status failures %+v, the newest should have request id %q", snap.Failures, ours)
	}
}

// Secrets never reach the logs, at any level, and agent- or
// upstream-controlled strings cannot forge a line or break its JSON.
func TestReportingAuditHostileStringsInLogs(t *testing.T) {
	up, upAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Cache-Status", "up\"},{\"level\":\"ERROR\"; hit")
		switch {
		case strings.Contains(r.URL.Path, "fail"):
			w.WriteHeader(503)
		case strings.Contains(r.URL.Path, "cut"):
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: SECRET_BODY_PART\n\n")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler) // the stream breaks mid-body
		}
		_, _ = io.WriteString(w, `{"echo":"SECRET_BODY_PART"}`)
	})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1, flush_interval: 0s}
defaults: {retry: {attempts: 2, backoff: {base: 1ms, max: 2ms}}, breaker: {enabled: false}}
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    headers:
      set: {Authorization: "Bearer ${UPSTREAM_KEY}", X-Api-Key: "${UPSTREAM_KEY}"}
`, up), "UPSTREAM_KEY=SECRET_ENV_VALUE")
	_ = upAddr
	hostile := `zq"},{"level":"ERROR","msg":"forged`
	paths := []string{
		"/ok/%0a%0d%22%7d%2c%7b%22level%22%3a%22ERROR%22%7d",
		"/fail/%00%1b%5b31m%e2%80%a8%ff",
		"/cut/x",
		`/ok/\u0022`,
	}
	var sent int
	for _, p := range paths {
		for _, q := range []string{"", "?api_key=SECRET_QUERY&access_token=SECRET_QUERY2"} {
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "POST %s%s HTTP/1.1\r\nHost: h.example\r\n"+
				"Authorization: Bearer SECRET_AUTH\r\nX-Api-Key: SECRET_HEADER\r\nCookie: s=SECRET_COOKIE\r\n"+
				"X-Request-Id: %s\r\nUser-Agent: ua\"\t\x80\xff}{\r\ntraceparent: 00-%s-0123456789abcdef-01\"\r\n"+
				"Proxy-Authorization: Basic SECRET_PROXY\r\nContent-Length: 22\r\nConnection: close\r\n\r\n"+
				`{"key":"SECRET_BODY"}`+"\n", p, q, hostile, strings.Repeat("ab", 16))
			_, _ = io.Copy(io.Discard, conn)
			conn.Close()
			sent++
		}
	}
	// Requests fasthttp cannot parse: a header value with a control
	// character, a request line with one. ballast answers 400 itself and
	// logs them only at DEBUG, if at all.
	for _, raw := range []string{
		"GET /ok HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer SECRET_BAD\x7f\r\n\r\n",
		"GET /ok HTTP/1.1\r\nHost: h\r\nX-Api-Key: SECRET_BAD\x01\r\n\r\n",
		"GET /ok HTTP/1.1\r\nHost: h\r\nCookie: s=SECRET_BAD\x00x\r\n\r\n",
		"GET /ok?api_key=SECRET_BAD\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /ok HTTP/1.1\r\nHost: h\r\nAuthorization : Bearer SECRET_BAD\r\n\r\n",
		"GET /ok HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer SECRET_BAD\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 20) + "\r\n",
	} {
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, raw)
		_, _ = io.Copy(io.Discard, conn)
		conn.Close()
	}
	waitFor(t, func() bool { return len(raRequestLines(t, b)) == sent })
	logs := b.logs.String()
	for _, secret := range []string{"SECRET"} {
		if i := strings.Index(logs, secret); i >= 0 {
			t.Errorf("a secret reached the log: ...%s...", logs[max(i-200, 0):min(i+50, len(logs))])
		}
	}
	levels := map[string]int{}
	for _, m := range raLines(t, logs) {
		levels[fmt.Sprint(m["level"])]++
		if m["msg"] != "request" {
			continue
		}
		if m["request_id"] != hostile {
			t.Errorf("request_id %q, the agent sent %q", m["request_id"], hostile)
		}
		if p, _ := m["path"].(string); !strings.HasPrefix(p, "/ok/") && !strings.HasPrefix(p, "/fail/") && !strings.HasPrefix(p, "/cut/") {
			t.Errorf("path %q", p)
		}
	}
	if levels["ERROR"] != 0 {
		t.Errorf("a forged ERROR line: %v", levels)
	}
	for _, m := range raRequestLines(t, b) {
		if p := m["path"].(string); strings.HasPrefix(p, "/ok/\n") && p != "/ok/\n\r\"},{\"level\":\"ERROR\"}" {
			t.Errorf("the decoded path logged as %q", p)
		}
	}
}

// A streamed answer is logged when it ends, as nginx and Envoy log: the
// trail line carries the bytes relayed and, for a stream the upstream cut,
// truncated:true at WARN. The /status window and failure list count the
// cut stream as failed; ballast_requests_total counts it under the status
// class the agent got (2xx) and ballast_stream_truncated_total counts the
// cut.
func TestReportingAuditCutStreamLoggedAtItsEnd(t *testing.T) {
	release := map[string]chan struct{}{"/whole": make(chan struct{}), "/cut": make(chan struct{})}
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release[r.URL.Path]:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: two\n\n")
		if r.URL.Path == "/cut" {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1, flush_interval: 0s}
routes:
  - {name: s, match: {path_prefix: /}, upstream: %q}
`, up))
	for _, tc := range []struct {
		path string
		cut  bool
	}{{"/whole", false}, {"/cut", true}} {
		t.Run(strings.TrimPrefix(tc.path, "/"), func(t *testing.T) {
			before := len(raRequestLines(t, b))
			resp, err := client(t).Post(b.base+tc.path, "application/json", strings.NewReader(`{"stream":true}`))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			buf := make([]byte, 11)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatal(err)
			}
			// The headers and first event are out: the request is not over.
			if n := len(raRequestLines(t, b)); n != before {
				t.Errorf("the trail line was written while the stream was still running")
			}
			close(release[tc.path])
			rest, err := io.ReadAll(resp.Body)
			if (err != nil) != tc.cut {
				t.Fatalf("reading the rest: %q, %v", rest, err)
			}
			var line map[string]any
			waitFor(t, func() bool {
				lines := raRequestLines(t, b)
				if len(lines) > before {
					line = lines[len(lines)-1]
					return true
				}
				return false
			})
			wantLevel := "INFO"
			if tc.cut {
				wantLevel = "WARN"
			}
			if line["level"] != wantLevel || line["status"] != 200.0 || (line["truncated"] == true) != tc.cut {
				t.Errorf("trail line %v: want level %s, status 200, truncated %v", line, wantLevel, tc.cut)
			}
			if got, _ := line["body_bytes"].(float64); got != 22 {
				t.Errorf("trail body_bytes %v, the upstream sent 22", line["body_bytes"])
			}
			if d, _ := line["duration_ms"].(float64); d <= 0 {
				t.Errorf("trail duration_ms %v", line["duration_ms"])
			}
		})
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}) == 1 })
	if v := b.metric("ballast_requests_total", map[string]string{"route": "s", "code": "2xx"}); v != 2 {
		t.Errorf("ballast_requests_total{code=2xx} = %v, want 2", v)
	}
	snap := aaStatus(t, b)
	rs := snap.Routes[0]
	if rs.Requests != 2 || rs.Failures != 1 {
		t.Errorf("/status window: %d requests, %d failures; want 2 and 1 (the cut stream failed)", rs.Requests, rs.Failures)
	}
	if len(snap.Failures) != 1 || snap.Failures[0].Status != 200 || snap.Failures[0].RequestID == "" {
		t.Errorf("/status failures %+v, want the cut stream", snap.Failures)
	}
}

// Units and types: every ballast_ metric has HELP text, counters end in
// _total, histograms are in seconds; /status reports milliseconds in
// *_ms and seconds in *_s.
func TestReportingAuditUnitsAndTypes(t *testing.T) {
	up, addr := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/busy") {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
			return
		}
		time.Sleep(120 * time.Millisecond) // the upstream's own latency
		_, _ = io.WriteString(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf(`
defaults: {retry: {attempts: 1}}
routes:
  - {name: r, match: {path_prefix: /}, upstream: %q}
`, up))
	c := client(t)
	get(t, c, b.base+"/slow")
	get(t, c, b.base+"/busy")
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "ballast_") {
			continue
		}
		if mf.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
		switch mf.GetType().String() {
		case "COUNTER":
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s does not end in _total", name)
			}
		case "HISTOGRAM":
			if !strings.HasSuffix(name, "_seconds") {
				t.Errorf("histogram %s is not in seconds", name)
			}
			for _, m := range mf.GetMetric() {
				for _, bk := range m.GetHistogram().GetBucket() {
					if bk.GetUpperBound() > 120 {
						t.Errorf("%s has a bucket at %v: not seconds", name, bk.GetUpperBound())
					}
				}
			}
		default:
			if strings.HasSuffix(name, "_total") {
				t.Errorf("%s is a %s but ends in _total", name, mf.GetType())
			}
		}
	}
	// One 120ms request: the duration histogram's sum is in seconds.
	for _, mf := range mfs {
		if mf.GetName() != "ballast_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			if m.GetLabel()[0].GetValue() != "2xx" || m.GetLabel()[1].GetValue() != "r" {
				continue
			}
			if h.GetSampleCount() != 1 || (h.GetSampleSum() < 0.1 || h.GetSampleSum() > 5) {
				t.Errorf("ballast_request_duration_seconds sum %v for one 120ms request", h.GetSampleSum())
			}
		}
	}
	cool := b.metric("ballast_cooldown_seconds", map[string]string{"upstream": addr})
	if cool < 20 || cool > 30 {
		t.Errorf("ballast_cooldown_seconds = %v after Retry-After: 30", cool)
	}
	snap := aaStatus(t, b)
	if snap.WindowSeconds != 60 {
		t.Errorf("/status window_s = %d", snap.WindowSeconds)
	}
	rs := snap.Routes[0]
	if rs.P99MS == nil || *rs.P99MS < 100 || *rs.P99MS > 5000 {
		t.Errorf("/status p99_ms = %v for a 120ms request", rs.P99MS)
	}
	if us := rs.Upstreams[0]; us.CooldownRemainingS < 20 || us.CooldownRemainingS > 30 {
		t.Errorf("/status cooldown_remaining_s = %v after Retry-After: 30", us.CooldownRemainingS)
	}
}

// The stream's line follows the logger's level at its end: under
// `--log-level warn` a whole stream writes nothing and a cut one writes
// its WARN line. An HTTP/1.0 agent's close-delimited stream (relayed on a
// hijacked connection) is logged at its end too.
func TestReportingAuditStreamLinesByLevelAndHTTP10(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "data: two\n\n")
		if strings.HasSuffix(r.URL.Path, "/cut") {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	})
	yaml := fmt.Sprintf(`
log: {success_sample: 1, flush_interval: 0s}
routes:
  - {name: s, match: {path_prefix: /}, upstream: %q}
`, up)
	t.Run("warn level", func(t *testing.T) {
		b := startBallastLogging(t, nil, nil, slog.LevelWarn, yaml)
		for _, p := range []string{"/whole", "/cut", "/whole"} {
			resp, err := client(t).Post(b.base+p, "application/json", strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		waitFor(t, func() bool { return b.metricSum("ballast_stream_truncated_total", nil) == 1 })
		waitFor(t, func() bool { return len(raRequestLines(t, b)) >= 1 })
		lines := raRequestLines(t, b)
		if len(lines) != 1 || lines[0]["path"] != "/cut" || lines[0]["level"] != "WARN" || lines[0]["truncated"] != true {
			t.Errorf("under --log-level warn the trail has %v, want the cut stream's WARN line alone", lines)
		}
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		b := startBallast(t, yaml)
		for _, p := range []string{"/whole", "/cut"} {
			conn, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "POST %s HTTP/1.0\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}", p)
			raw, _ := io.ReadAll(conn)
			conn.Close()
			if !strings.Contains(string(raw), "data: two\n\n") {
				t.Fatalf("%s: the agent got %q", p, raw)
			}
		}
		var lines []map[string]any
		waitFor(t, func() bool { lines = raRequestLines(t, b); return len(lines) == 2 })
		for _, m := range lines {
			cut := m["path"] == "/cut"
			if m["body_bytes"] != 22.0 || (m["truncated"] == true) != cut || (m["level"] == "WARN") != cut {
				t.Errorf("HTTP/1.0 stream's line %v", m)
			}
		}
	})
}

// Requests no route took are counted in ballast_requests_total{route=
// "_unmatched"} and, as docs/config.md promises one line per request (and
// nginx logs its 404s and 400s), logged too: a misaimed agent's 404s are
// what an operator looks for first.
func TestReportingAuditUnroutedRequestsAreLogged(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {})
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 1, flush_interval: 0s}
routes:
  - {name: r, match: {path_prefix: /api/}, upstream: %q}
`, up))
	want := map[string]int{}
	for _, raw := range []struct{ req, key string }{
		{"GET /nowhere?api_key=SECRET_Q HTTP/1.1\r\nHost: h\r\n\r\n", "/nowhere"},
		{"TRACE /api/x HTTP/1.1\r\nHost: h\r\n\r\n", "/api/x"},
		{"GET /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "/api/x"},
	} {
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, raw.req)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
		want[raw.key+" "+strconv.Itoa(resp.StatusCode)]++
	}
	counted := b.metricSum("ballast_requests_total", map[string]string{"route": "_unmatched"})
	var lines []map[string]any
	waitFor(t, func() bool { lines = raRequestLines(t, b); return len(lines) >= int(counted) })
	got := map[string]int{}
	for _, m := range lines {
		if m["route"] != "_unmatched" || m["level"] != "WARN" || m["request_id"] == "" {
			t.Errorf("line %v", m)
		}
		got[fmt.Sprintf("%s %v", m["path"], m["status"])]++
	}
	if counted != 3 || len(lines) != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("_unmatched: %v counted, logged %v, the agents got %v", counted, got, want)
	}
	if strings.Contains(b.logs.String(), "SECRET") {
		t.Error("the query reached the log")
	}
}
