package proxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

type trailLine struct {
	Level        string `json:"level"`
	Msg          string `json:"msg"`
	RequestID    string `json:"request_id"`
	TraceID      string `json:"trace_id"`
	Route        string `json:"route"`
	Method       string `json:"method"`
	Path         string `json:"path"`
	Status       int    `json:"status"`
	Cache        string `json:"cache"`
	Idempotency  string `json:"idempotency"`
	Stopped      string `json:"stopped"`
	AttemptCount int    `json:"attempt_count"`
	Attempts     []struct {
		Upstream  string  `json:"upstream"`
		Outcome   string  `json:"outcome"`
		Status    int     `json:"status"`
		Ms        float64 `json:"ms"`
		WaitedMs  int     `json:"waited_ms"`
		WaitedFor string  `json:"waited_for"`
	} `json:"attempts"`
}

func trails(t *testing.T, b *ballast) []trailLine {
	t.Helper()
	var out []trailLine
	sc := bufio.NewScanner(strings.NewReader(b.logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l trailLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("a log line is not JSON: %q: %v", sc.Text(), err)
		}
		if l.Msg == "request" {
			out = append(out, l)
		}
	}
	return out
}

func TestDecisionTrail(t *testing.T) {
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(503, "Retry-After", "0"), status(502)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 2ms}}
    headers: {set: {Authorization: "Bearer ${UP_KEY}"}}
`, up), "UP_KEY=sk-upstream-secret")
	resp, _ := do(t, "GET", b.base+"/search?api_key=query-secret", "",
		"Authorization", "Bearer agent-secret", "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"X-Ballast-Debug", "1", "Cookie", "session=cookie-secret")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if dbg := resp.Header.Get("X-Ballast-Trail"); !strings.Contains(dbg, "transient 503") || !strings.Contains(dbg, "transient") || !strings.Contains(dbg, "ok 200") {
		t.Errorf("X-Ballast-Trail %q", dbg)
	}
	lines := trails(t, b)
	if len(lines) != 1 {
		t.Fatalf("%d trail lines, want 1:\n%s", len(lines), b.logs.String())
	}
	l := lines[0]
	if l.RequestID != resp.Header.Get("X-Request-Id") || l.Route != "tool" || l.Method != "GET" || l.Path != "/search" || l.Status != 200 {
		t.Errorf("trail %+v", l)
	}
	if l.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace id %q", l.TraceID)
	}
	if l.AttemptCount != 3 || len(l.Attempts) != 3 {
		t.Fatalf("attempts %+v", l.Attempts)
	}
	if a := l.Attempts[0]; a.Outcome != "transient" || a.Status != 503 {
		t.Errorf("attempt 1 %+v", a)
	}
	if a := l.Attempts[1]; a.Outcome != "transient" || a.Status != 502 || a.WaitedFor == "" {
		t.Errorf("attempt 2 (after a wait) %+v", a)
	}
	if a := l.Attempts[2]; a.Outcome != "ok" || a.Status != 200 {
		t.Errorf("attempt 3 %+v", a)
	}
	for _, secret := range []string{"sk-upstream-secret", "agent-secret", "query-secret", "cookie-secret"} {
		if strings.Contains(b.logs.String(), secret) {
			t.Errorf("the logs contain %q", secret)
		}
	}
}

func TestTrailSamplesSuccessesNeverFailures(t *testing.T) {
	s := &scripted{}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, fmt.Sprintf(`
log: {success_sample: 0}
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, up))
	for range 5 {
		do(t, "GET", b.base+"/ok", "")
	}
	s.steps = append(s.steps, status(503))
	do(t, "GET", b.base+"/fails", "")
	do(t, "GET", b.base+"/nowhere/../../x", "")
	lines := trails(t, b)
	if len(lines) != 1 || lines[0].Status != 503 || lines[0].Level != "WARN" {
		t.Errorf("with success_sample 0, want only the failure logged: %+v", lines)
	}
}

// The trail obeys the log level like ballast's other logs: successes are
// INFO lines, failures WARN lines.
func TestTrailObeysTheLogLevel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		level    slog.Level
		ok, fail int
	}{
		{name: "info", level: slog.LevelInfo, ok: 3, fail: 1},
		{name: "warn", level: slog.LevelWarn, ok: 0, fail: 1},
		{name: "error", level: slog.LevelError, ok: 0, fail: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scripted{}
			up, _ := upstream(t, s.handler)
			b := startBallastLogging(t, nil, nil, tc.level, fmt.Sprintf(`
routes: [{name: r, match: {path_prefix: /}, upstream: %q, retry: {attempts: 1}}]
`, up))
			for range 3 {
				do(t, "GET", b.base+"/ok", "")
			}
			s.steps = append(s.steps, status(503))
			do(t, "GET", b.base+"/fails", "")
			ok, fail := 0, 0
			for _, l := range trails(t, b) {
				switch {
				case l.Status == 200 && l.Level == "INFO":
					ok++
				case l.Status == 503 && l.Level == "WARN":
					fail++
				default:
					t.Errorf("unexpected trail line %+v", l)
				}
			}
			if ok != tc.ok || fail != tc.fail {
				t.Errorf("at level %s: %d success and %d failure lines, want %d and %d", tc.level, ok, fail, tc.ok, tc.fail)
			}
		})
	}
}

func TestMetricLabelsStayBounded(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /api/}
    upstream: %q
    idempotency: {mode: header}
    rate_limit: {rps: 100000, key: "header:X-Agent-Id"}
`, up))
	c := client(t)
	send := func(i int) {
		req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/item/%d?id=%d", b.base, i, i), strings.NewReader("{}"))
		req.Header.Set("Idempotency-Key", fmt.Sprintf("key-%d", i))
		req.Header.Set("X-Agent-Id", fmt.Sprintf("agent-%d", i))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		resp, err = c.Get(fmt.Sprintf("%s/unrouted/%d", b.base, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := range 10 {
		send(i)
	}
	before := seriesCount(t, b)
	for i := 10; i < 10000; i++ {
		send(i)
	}
	if after := seriesCount(t, b); after != before {
		t.Errorf("10,000 distinct paths, keys and agents grew the series from %d to %d", before, after)
	}
}

func seriesCount(t *testing.T, b *ballast) int {
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "ballast_") {
			n += len(mf.GetMetric())
		}
	}
	return n
}
