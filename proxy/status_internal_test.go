package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/valyala/fasthttp"
)

// newStatusServer builds (without serving) a Server on yaml.
func newStatusServer(t *testing.T, yaml string) *Server {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

func TestStatusOptionalSections(t *testing.T) {
	s := newStatusServer(t, `
routes:
  - {name: plain, match: {path_prefix: /p/}, upstream: "http://127.0.0.1:1"}
  - {name: limited, match: {path_prefix: /l/}, upstream: "http://127.0.0.1:1", rate_limit: {rps: 5, burst: 2}, concurrency: {max: 3}}
`)
	snap := s.snapshot()
	byName := func(snap *supervise.Snapshot, name string) *supervise.RouteStatus {
		for i := range snap.Routes {
			if snap.Routes[i].Name == name {
				return &snap.Routes[i]
			}
		}
		t.Fatalf("no route %q", name)
		return nil
	}
	if l := byName(snap, "limited").Limiter; l == nil || l.Name != "limited" || l.EffectiveRPS != 5 || l.QueueDepth != 0 {
		t.Errorf("limited's limiter %+v, want 5 rps and an empty queue", l)
	}
	if p := byName(snap, "plain"); p.Limiter != nil || p.Cache != nil || snap.Jobs != nil {
		t.Errorf("without limits or hooks the optional sections must be nil: %+v %+v %+v", p.Limiter, p.Cache, snap.Jobs)
	}
	if p := byName(snap, "plain"); p.Health != supervise.HealthIdle || p.Upstreams[0].Breaker != "closed" {
		t.Errorf("an unused route is idle with closed breakers: %s %s", p.Health, p.Upstreams[0].Breaker)
	}

	next := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s.status.setHooks(statusHooks{
		cache: func(r *route) *supervise.CacheStatus {
			if r.name != "plain" {
				return nil
			}
			return supervise.NewCacheStatus(3, 1)
		},
		jobs: func(time.Time) *supervise.JobsStatus {
			return &supervise.JobsStatus{
				Waiting: []supervise.Job{{ID: "j2", Route: "plain", Attempts: 1, NextAction: "retry", NextAt: &next}},
				Failed:  []supervise.Job{{ID: "j1", Route: "plain", Attempts: 3, NextAction: "none", Reason: "timeout"}},
			}
		},
	})
	snap = s.snapshot()
	if c := byName(snap, "plain").Cache; c == nil || *c.HitRatio != 0.75 {
		t.Errorf("plain's cache %+v, want the hook's", c)
	}
	if byName(snap, "limited").Cache != nil {
		t.Error("a nil hook result must omit the section")
	}
	b, err := json.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"jobs":{"running":null,"waiting":[{"id":"j2"`, `"next_at":"2026-01-02T03:04:05Z"`,
		`"failed":[{"id":"j1","route":"plain","attempts":3,"next_action":"none","reason":"timeout"}]`, `"hit_ratio":0.75`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/status lacks %s:\n%s", want, b)
		}
	}
}

// webhookEvents serves a webhook that hands every event to the test.
func webhookEvents(t *testing.T) (url string, events chan supervise.Event) {
	events = make(chan supervise.Event, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if json.NewDecoder(r.Body).Decode(&e) == nil {
			events <- e
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/hook", events
}

func nextEvent(t *testing.T, events chan supervise.Event) supervise.Event {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no alert within 10s")
	}
	return supervise.Event{}
}

func TestAlertJobFailedAndWebhookReload(t *testing.T) {
	first, firstEvents := webhookEvents(t)
	second, secondEvents := webhookEvents(t)
	const routes = `
routes:
  - {name: jobs, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`
	s := newStatusServer(t, fmt.Sprintf("notify: {webhook: %q}\n%s", first, routes))
	s.status.start()
	s.alertJobFailed("jobs", "job-42", "timeout")
	e := nextEvent(t, firstEvents)
	if e.Kind != supervise.KindJobFailed || e.Route != "jobs" || e.Detail != "job job-42 failed for good: timeout" {
		t.Errorf("event %+v", e)
	}

	// A reload that points notify.webhook elsewhere moves the alerts.
	cfg, err := config.Parse([]byte(fmt.Sprintf("notify: {webhook: %q}\n%s", second, routes)), config.Source{Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	s.alert(supervise.KindBreakerOpen, "jobs", "127.0.0.1:1", "test")
	if e := nextEvent(t, secondEvents); e.Kind != supervise.KindBreakerOpen {
		t.Errorf("after the reload: %+v", e)
	}
	select {
	case e := <-firstEvents:
		t.Errorf("the old webhook still got %+v", e)
	default:
	}
}

// observe records answers made outside an exchange: a cache hit is a
// success, a refusal before any attempt a failure with its reason.
func TestObserveAnswersWithoutAnExchange(t *testing.T) {
	s := newStatusServer(t, `
routes:
  - {name: r, match: {path_prefix: /}, upstream: "http://127.0.0.1:1"}
`)
	r := s.table.Load().routes[0]
	var req fasthttp.Request
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	ctx.Response.Header.Set(headerRequestID, "req-7")

	s.observe(&ctx, r, policy.OK, "")
	ctx.SetStatusCode(429)
	s.observe(&ctx, r, policy.RateLimited, ReasonRateLimited)

	snap := s.snapshot()
	st := snap.Routes[0]
	if st.Requests != 2 || st.Failures != 1 || st.Retries != 0 {
		t.Errorf("route counts %d/%d/%d, want 2 requests, 1 failure, no retries", st.Requests, st.Failures, st.Retries)
	}
	want := supervise.Failure{Time: snap.Failures[0].Time, Route: "r", Status: 429, Class: "rate_limited",
		Reason: "rate_limited", RequestID: "req-7"}
	if len(snap.Failures) != 1 || snap.Failures[0] != want {
		t.Errorf("failures %+v, want %+v", snap.Failures, want)
	}
}
