package proxy

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// statusClasses are the values of the code label: the status class of the
// answer the agent got.
var statusClasses = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// metrics holds ballast's collectors. It is created once per Server and
// registered on the Registerer the caller passes; routes resolve their
// label children once, at config load.
type metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	truncated *prometheus.CounterVec
	reloads   *prometheus.CounterVec
	inflight  *prometheus.GaugeVec

	attempts        *prometheus.CounterVec
	retries         *prometheus.CounterVec
	budgetExhausted *prometheus.CounterVec
	retryWait       *prometheus.HistogramVec
	breakerState    *prometheus.GaugeVec
	rateRejected    *prometheus.CounterVec
	rateWait        *prometheus.HistogramVec
	cacheRequests   *prometheus.CounterVec
	validation      *prometheus.CounterVec
	idem            *prometheus.CounterVec
	hedges          *prometheus.CounterVec
	stateSeconds    *prometheus.HistogramVec
	backendUp       prometheus.Gauge
	stateErrors     *prometheus.CounterVec
	stateReconciled *prometheus.CounterVec
	reg             prometheus.Registerer
	funcs           map[string]prometheus.Collector // function-backed collectors by id, replaced on reload
	srcs            map[string]any                  // what the series of an id reads (follow)

	mu     sync.Mutex
	routes map[string]*routeMetrics
}

// routeMetrics are one route's pre-resolved label children.
type routeMetrics struct {
	requests  [len(statusClasses)]prometheus.Counter
	duration  [len(statusClasses)]prometheus.Observer
	truncated prometheus.Counter
	inflight  prometheus.Gauge

	retries         [policy.Canceled + 1]prometheus.Counter // by the failed attempt's class
	budgetExhausted prometheus.Counter
	retryWait       prometheus.Observer
	rateRejected    [len(rejectReasons)]prometheus.Counter
	rateWait        prometheus.Observer

	validationFailures map[string]prometheus.Counter // by check
	idem               [len(idemResults)]prometheus.Counter
	hedges             prometheus.Counter
}

// rejectReasons are the reason label values of ballast_ratelimit_rejected_total.
var rejectReasons = [...]string{"rate_limited", "tokens", "overloaded"}

const (
	rejectRate = iota
	rejectTokens
	rejectOverloaded
)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_requests_total",
			Help: "Requests answered, by route and status class of the answer.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ballast_request_duration_seconds",
			Help:    "Time from request arrival until the response headers were ready, by route and status class.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"route", "code"}),
		truncated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_stream_truncated_total",
			Help: "Responses whose upstream body broke after the headers were sent; the agent's connection was aborted.",
		}, []string{"route"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_config_reloads_total",
			Help: "Config reloads by result (success or failure).",
		}, []string{"result"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ballast_inflight_requests",
			Help: "Requests being handled now, by route.",
		}, []string{"route"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_upstream_attempts_total",
			Help: "Attempts sent upstream, by route, upstream and outcome class.",
		}, []string{"route", "upstream", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_retries_total",
			Help: "Retries, by route and the class of the attempt that was retried.",
		}, []string{"route", "reason"}),
		budgetExhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_retry_budget_exhausted_total",
			Help: "Retries refused because the upstream's retry budget was spent.",
		}, []string{"route"}),
		retryWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ballast_retry_wait_seconds",
			Help:    "Waits before retries (backoff or server hint) and cool-down waits.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60},
		}, []string{"route"}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ballast_breaker_state",
			Help: "Circuit breaker state per upstream: 0 closed, 1 half open, 2 open.",
		}, []string{"upstream"}),
		rateRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_ratelimit_rejected_total",
			Help: "Requests refused before reaching the upstream, by route and reason (rate_limited, tokens, overloaded).",
		}, []string{"route", "reason"}),
		rateWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ballast_ratelimit_wait_seconds",
			Help:    "Time requests waited in line for the rate limit.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2, 5},
		}, []string{"route"}),
		cacheRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_cache_requests_total",
			Help: "Cache lookups by route and result (hit, miss, stale, bypass).",
		}, []string{"route", "result"}),
		validation: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_validation_failures_total",
			Help: "Upstream responses that failed validation, by route and check.",
		}, []string{"route", "check"}),
		idem: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_idempotency_total",
			Help: "Guarded requests by route and result (claimed, attached, replayed, conflict, mismatch, unknown_outcome, too_large).",
		}, []string{"route", "result"}),
		stateSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ballast_state_store_seconds",
			Help:    "State store operation latency by operation and backend.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1},
		}, []string{"op", "backend"}),
		hedges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_hedges_total",
			Help: "Hedged attempts sent because the first had no response within hedge_after, by route.",
		}, []string{"route"}),
		backendUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ballast_state_backend_up",
			Help: "1 while the shared state backend (Redis) answers, 0 while ballast runs on local state or refuses.",
		}),
		stateErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_state_errors_total",
			Help: "Failed operations on the state backend (Redis, or the file store's deferred completions), by operation.",
		}, []string{"op"}),
		stateReconciled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_state_reconciled_total",
			Help: "Idempotency records and jobs made locally during a Redis outage (fail_open) and reconciled with Redis once it answered, by result (published, present, conflict).",
		}, []string{"result"}),
		reg:    reg,
		funcs:  map[string]prometheus.Collector{},
		srcs:   map[string]any{},
		routes: map[string]*routeMetrics{},
	}
	reg.MustRegister(m.requests, m.duration, m.truncated, m.reloads, m.inflight,
		m.attempts, m.retries, m.budgetExhausted, m.retryWait, m.breakerState, m.rateRejected, m.rateWait, m.cacheRequests, m.validation, m.idem, m.hedges, m.stateSeconds, m.backendUp, m.stateErrors, m.stateReconciled)
	m.backendUp.Set(1)
	for _, r := range []string{reconcilePublished, reconcilePresent, reconcileConflict} {
		m.stateReconciled.WithLabelValues(r)
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	return m
}

// registerLogDrops exposes how many log lines were dropped because their
// destination was stuck (logsink).
func (m *metrics) registerLogDrops(dropped func() uint64) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ballast_log_dropped_lines_total",
		Help: "Log lines (decision trail and, under ballast run, every log line) dropped because stderr's reader did not keep up.",
	}, func() float64 { return float64(dropped()) }))
}

// registerRuntime adds the Go and process collectors, unless the registry
// already has them.
func registerRuntime(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return fmt.Errorf("proxy: registering runtime metrics: %w", err)
			}
		}
	}
	return nil
}

// forRoute returns the route's label children, creating them once.
func (m *metrics) forRoute(name string) *routeMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if rm, ok := m.routes[name]; ok {
		return rm
	}
	rm := &routeMetrics{
		truncated: m.truncated.WithLabelValues(name),
		inflight:  m.inflight.WithLabelValues(name),
	}
	for i, c := range statusClasses {
		rm.requests[i] = m.requests.WithLabelValues(name, c)
		rm.duration[i] = m.duration.WithLabelValues(name, c)
	}
	for c := policy.OK; c <= policy.Canceled; c++ {
		rm.retries[c] = m.retries.WithLabelValues(name, c.String())
	}
	rm.budgetExhausted = m.budgetExhausted.WithLabelValues(name)
	rm.retryWait = m.retryWait.WithLabelValues(name)
	for i, reason := range rejectReasons {
		rm.rateRejected[i] = m.rateRejected.WithLabelValues(name, reason)
	}
	rm.rateWait = m.rateWait.WithLabelValues(name)
	rm.validationFailures = m.validationChildren(name)
	for i, res := range idemResults {
		rm.idem[i] = m.idem.WithLabelValues(name, res)
	}
	rm.hedges = m.hedges.WithLabelValues(name)
	m.routes[name] = rm
	return rm
}

// registerCooldown exports an upstream's remaining cool-down as
// ballast_cooldown_seconds{upstream}, computed when scraped.
func (m *metrics) registerCooldown(upstream string, remaining func() float64) {
	m.registerFunc(funcID("ballast_cooldown_seconds", upstream), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ballast_cooldown_seconds",
		Help:        "Seconds the upstream still asks ballast to wait before sending (shared cool-down).",
		ConstLabels: prometheus.Labels{"upstream": upstream},
	}, remaining))
}

// funcID names a function-backed series in metrics.funcs: the metric and
// its label's value.
func funcID(metric, label string) string { return metric + "{" + label + "}" }

// retain makes the function-backed series follow the route table t, once
// it is in force: a limiter's rate and a route's concurrency and cache
// numbers read the state t's routes hold (follow), and the series of what
// t no longer has (those, an upstream's cool-down) are dropped. A gauge
// left behind would report a limit no longer in force, and keep the
// limiter or cache it reads alive. Counters of removed routes stay (see
// docs/metrics.md).
func (m *metrics) retain(t *table) {
	for _, r := range t.routes {
		if l := r.limit; l != nil && l.requests != nil {
			m.follow(funcID("ballast_ratelimit_rate", l.name), l.requests, func() { m.registerLimiterRate(l.name, l.requests) })
		}
		if b := r.bulkhead; b != nil {
			m.follow(funcID("ballast_concurrency_queue_depth", r.name), b, func() { m.registerBulkhead(r.name, b) })
		}
		if c := r.cache; c != nil {
			m.follow(funcID("ballast_cache_bytes", r.name), c.c, func() { m.registerCache(r.name, c.c) })
		}
	}
	keep := map[string]bool{}
	for _, r := range t.routes {
		if r.limit != nil && r.limit.requests != nil {
			keep[funcID("ballast_ratelimit_rate", r.limit.name)] = true
		}
		if r.bulkhead != nil {
			keep[funcID("ballast_concurrency_queue_depth", r.name)] = true
			keep[funcID("ballast_concurrency_inflight", r.name)] = true
		}
		if r.cache != nil {
			keep[funcID("ballast_cache_bytes", r.name)] = true
			keep[funcID("ballast_cache_evictions_total", r.name)] = true
		}
		for _, tg := range r.targets {
			keep[funcID("ballast_cooldown_seconds", tg.name)] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, c := range m.funcs {
		if !keep[id] && !strings.HasPrefix(id, "ballast_jobs{") {
			m.reg.Unregister(c)
			delete(m.funcs, id)
			delete(m.srcs, id)
		}
	}
}

// follow makes the series under id read src, the state of the table in
// force, calling register when it reads something else (or nothing).
// retain calls it once a table is in force, never while one is built: a
// build a reload then refuses (a schema or CA file it cannot read) must
// leave every series reading the state still in use.
func (m *metrics) follow(id string, src any, register func()) {
	m.mu.Lock()
	same := m.srcs[id] == src
	m.mu.Unlock()
	if same {
		return
	}
	register()
	m.mu.Lock()
	m.srcs[id] = src
	m.mu.Unlock()
}

// funcValue is the current value of the function-backed counter or gauge
// registered under id, 0 when there is none. The caller holds mu.
func (m *metrics) funcValue(id string) float64 {
	c, ok := m.funcs[id].(prometheus.Metric)
	if !ok {
		return 0
	}
	var d dto.Metric
	if c.Write(&d) != nil {
		return 0
	}
	return d.GetCounter().GetValue() + d.GetGauge().GetValue()
}

// observe counts one answered request.
func (rm *routeMetrics) observe(status int, seconds float64) {
	i := status/100 - 1
	if i < 0 || i >= len(statusClasses) {
		i = len(statusClasses) - 1
	}
	rm.requests[i].Inc()
	rm.duration[i].Observe(seconds)
}
