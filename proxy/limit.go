package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/ratelimit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// limiting is a route's resolved rate limit.
type limiting struct {
	name     string            // shown in RateLimit-Policy and ballast_ratelimit_rate
	requests ratelimit.Limiter // nil: no request limit
	adaptive *ratelimit.Adaptive
	tokens   ratelimit.Limiter // nil: no token limit
	key      keySource
	maxWait  time.Duration
}

// sharedLimiter is the state of one limit, kept across reloads that keep
// its settings.
type sharedLimiter struct {
	requests ratelimit.Limiter
	adaptive *ratelimit.Adaptive
	tokens   ratelimit.Limiter
}

// limiterPool keeps limiters (their tokens and keys), bulkheads and route
// caches across config generations, keyed by their settings: a reload
// that keeps a block keeps its state. Only the generation in force is
// kept: a table build marks what it takes (use), and sweep, once the new
// table is in force, drops the rest, so that a block changed and then
// changed back starts afresh instead of finding its old state.
type limiterPool struct {
	mu        sync.Mutex
	all       map[string]*sharedLimiter
	bulkheads map[string]*ratelimit.Bulkhead
	caches    map[string]*routeCache
	used      map[string]bool // the keys the table being built takes
}

// use marks key as taken by the table being built. The caller holds mu.
func (p *limiterPool) use(key string) {
	if p.used == nil {
		p.used = map[string]bool{}
	}
	p.used[key] = true
}

// begin starts a table build.
func (p *limiterPool) begin() {
	p.mu.Lock()
	p.used = nil
	p.mu.Unlock()
}

// sweep drops what the table now in force did not take.
func (p *limiterPool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.all {
		if !p.used[k] {
			delete(p.all, k)
		}
	}
	for k := range p.bulkheads {
		if !p.used[k] {
			delete(p.bulkheads, k)
		}
	}
	for k := range p.caches {
		if !p.used[k] {
			delete(p.caches, k)
		}
	}
}

func newLimiterPool() *limiterPool {
	return &limiterPool{all: map[string]*sharedLimiter{}, bulkheads: map[string]*ratelimit.Bulkhead{}, caches: map[string]*routeCache{}}
}

func (p *limiterPool) get(id string, l config.Limiter, sh *shared) (*sharedLimiter, error) {
	key := fmt.Sprintf("%s|%+v", id, l)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.use(key)
	if sl, ok := p.all[key]; ok {
		return sl, nil
	}
	sl := &sharedLimiter{}
	if l.RPS > 0 {
		cfg := ratelimit.Config{Rate: l.RPS, Burst: l.Burst}
		var err error
		switch {
		case l.Adaptive:
			sl.adaptive, err = ratelimit.NewAdaptive(ratelimit.AdaptiveConfig{Config: cfg})
			sl.requests = sl.adaptive
		case l.Key != "":
			maxKeys := l.MaxKeys
			if maxKeys <= 0 {
				maxKeys = 10000
			}
			sl.requests, err = ratelimit.NewKeyed(ratelimit.KeyedConfig{Config: cfg, MaxKeys: maxKeys})
		default:
			sl.requests, err = ratelimit.NewBucket(cfg)
		}
		if err != nil {
			return nil, err
		}
		if sh != nil && sl.adaptive == nil {
			// One quota for the fleet: the bucket lives in Redis.
			remote, err := ratelimit.NewRedis(sh.client, ratelimit.RedisConfig{Config: cfg, Name: id,
				Prefix: sh.cfg.KeyPrefix, OpTimeout: sh.cfg.OpTimeout.D()})
			if err != nil {
				return nil, err
			}
			sl.requests = &failoverLimiter{remote: remote, local: sl.requests, sh: sh}
		}
	}
	if l.TokensPerMinute > 0 {
		t, err := ratelimit.NewBucket(ratelimit.PerMinute(l.TokensPerMinute))
		if err != nil {
			return nil, err
		}
		sl.tokens = t
		if sh != nil {
			remote, err := ratelimit.NewRedis(sh.client, ratelimit.RedisConfig{Config: ratelimit.PerMinute(l.TokensPerMinute),
				Name: id + ":tokens", Prefix: sh.cfg.KeyPrefix, OpTimeout: sh.cfg.OpTimeout.D()})
			if err != nil {
				return nil, err
			}
			sl.tokens = &failoverLimiter{remote: remote, local: t, sh: sh}
		}
	}
	p.all[key] = sl
	return sl, nil
}

// buildLimiting resolves a route's rate limit; nil when it has none.
func (s *Server) buildLimiting(rc *config.Route, limiters map[string]config.Limiter) (*limiting, error) {
	rl := rc.RateLimit
	l, id, name := rl.Limiter, "route:"+rc.Name, rc.Name
	if rl.Use != "" {
		l, id, name = limiters[rl.Use], "shared:"+rl.Use, rl.Use
	}
	if l.RPS == 0 && l.TokensPerMinute == 0 {
		return nil, nil
	}
	sl, err := s.limiters.get(id, l, s.shared)
	if err != nil {
		return nil, err
	}
	ks, err := parseKeySource(l.Key)
	if err != nil {
		return nil, err
	}
	return &limiting{name: name, requests: sl.requests, adaptive: sl.adaptive, tokens: sl.tokens, key: ks, maxWait: rl.MaxWait.D()}, nil
}

// keySource says what a rate-limit bucket belongs to.
type keySource struct {
	kind keyKind
	name []byte // header name or JSON field
}

type keyKind uint8

const (
	keyNone keyKind = iota
	keyIP
	keyHeader
	keyJSON
)

func parseKeySource(k string) (keySource, error) {
	switch {
	case k == "":
		return keySource{}, nil
	case k == "ip":
		return keySource{kind: keyIP}, nil
	case len(k) > 7 && k[:7] == "header:":
		return keySource{kind: keyHeader, name: []byte(k[7:])}, nil
	case len(k) > 5 && k[:5] == "json:":
		return keySource{kind: keyJSON, name: []byte(k[5:])}, nil
	}
	return keySource{}, fmt.Errorf("rate_limit.key %q is not ip, header:NAME or json:FIELD", k)
}

// of returns the partition key of a request: a hash, never the raw value.
// Requests without the key share partition 0.
func (k keySource) of(ctx *fasthttp.RequestCtx, body []byte) uint64 {
	switch k.kind {
	case keyIP:
		if ta, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
			var b [16]byte
			ip := ta.AddrPort().Addr().As16()
			copy(b[:], ip[:])
			return ratelimit.StableKeyHash(b[:])
		}
	case keyHeader:
		if v := ctx.Request.Header.PeekBytes(k.name); len(v) > 0 {
			return ratelimit.StableKeyHash(v)
		}
	case keyJSON:
		if len(body) > 0 && bytes.IndexByte(body, '{') >= 0 {
			var fields map[string]json.RawMessage
			if json.Unmarshal(body, &fields) == nil {
				if v, ok := fields[string(k.name)]; ok {
					return ratelimit.StableKeyHash(v)
				}
			}
		}
	}
	return 0
}

// admit waits for the route's rate limit before an attempt, now being the
// server clock's reading an instant ago. It returns false when the request
// may not go: the limit refused within the deadline (the caller answers),
// or the server is shutting down.
func (s *Server) admit(ctx *fasthttp.RequestCtx, r *route, key uint64, now, deadline time.Time) (ok bool, refused *ratelimit.LimitedError) {
	l := r.limit
	if l == nil || l.requests == nil {
		return true, nil
	}
	// A turn that comes at the deadline leaves no time to send in: the
	// wait must end before it (Reserve allows waits up to maxWait).
	maxWait := min(l.maxWait, deadline.Sub(now)-time.Nanosecond)
	res, err := reserve(l.requests, key, 1, now, max(maxWait, 0), deadline.Sub(now))
	if err != nil {
		var le *ratelimit.LimitedError
		if errors.As(err, &le) {
			r.m.rateRejected[rejectRate].Inc()
			return false, le
		}
		s.stateUnavailable(ctx, r, err) // the shared limit is unreachable (fail_closed)
		return false, nil
	}
	if d := res.DelayFrom(now); d > 0 {
		r.m.rateWait.Observe(d.Seconds())
		if tr := trailOf(ctx); tr != nil {
			tr.rateWait += d
		}
		if !s.sleep(ctx, r, d) {
			res.Cancel(s.clock.Now()) // the turn goes to whoever is next
			return false, nil
		}
	}
	return true, nil
}

// admitHedge takes a token of the route's request limit for a hedge, at
// once or not at all: a hedge is an attempt the upstream sees, so it pays,
// but it is worth no wait.
func (s *Server) admitHedge(r *route, key uint64, now, deadline time.Time) bool {
	l := r.limit
	if l == nil || l.requests == nil {
		return true
	}
	_, err := reserve(l.requests, key, 1, now, 0, deadline.Sub(now))
	return err == nil
}

// writeRateLimited answers a request the rate limit refused: 429 with
// Retry-After and the IETF RateLimit and RateLimit-Policy fields.
func writeRateLimited(ctx *fasthttp.RequestCtx, r *route, le *ratelimit.LimitedError, attempts int, detail string) {
	writeProblem(ctx, problem{Status: fasthttp.StatusTooManyRequests, Reason: ReasonRateLimited, Route: r.name,
		Attempts: attempts, RetryAfter: le.RetryAfter, Detail: detail})
	if r.limit != nil {
		var buf [128]byte
		_, policy, limit := ratelimit.AppendRateLimitFields(buf[:0], r.limit.name, le.Quota)
		ctx.Response.Header.SetBytesV("RateLimit-Policy", policy)
		ctx.Response.Header.SetBytesV("RateLimit", limit)
	}
}

// acquireSlot takes a concurrency slot for the request, waiting in the
// bulkhead's queue until before the deadline. It answers 503 itself and returns
// ok=false when the request is shed.
func (s *Server) acquireSlot(ctx *fasthttp.RequestCtx, r *route, deadline time.Time) (ratelimit.Permit, bool) {
	// Not derived from ctx: a context whose parent is a fasthttp.RequestCtx
	// starts a goroutine that may read the RequestCtx after the handler
	// returned and fasthttp reused it (a data race the race detector saw).
	// Like admit's turn, the wait ends before the deadline: a slot that
	// frees up at the deadline leaves no time to send in. The bulkhead
	// reads this deadline on s.clock, so it is the deadline itself, not
	// its wall-clock image (s.wall), which the context's own expiry
	// then only approximates under a test clock.
	c, cancel := context.WithDeadline(context.Background(), deadline.Add(-time.Nanosecond))
	defer cancel()
	// A drain ends the wait: nothing was sent, so the agent may as well
	// go to another replica now.
	defer context.AfterFunc(s.drain, cancel)()
	// So does the agent hanging up (agentWatch): its place in the queue
	// goes to the next request, and its call is never sent. A detached
	// (keyed) call waits on, as it runs on.
	var watch *watchedCall
	if tr := trailOf(ctx); tr != nil && !tr.detached {
		if rc := agentConn(ctx); rc != nil {
			watch = s.agents.addLeaving(rc, tr.start, cancel)
			defer s.agents.remove(watch)
		}
	}
	permit, err := r.bulkhead.Acquire(c, s.clock, priorityOf(&ctx.Request.Header))
	if err == nil {
		return permit, true
	}
	if watch.hungUp() {
		ctx.SetConnectionClose()
		writeProblem(ctx, problem{Status: statusAgentGone, Title: "Client Closed Request", Reason: ReasonAgentGone,
			Route: r.name, Detail: "the agent closed its connection while its call waited for a concurrency slot"})
		if tr := trailOf(ctx); tr != nil {
			tr.stop = ReasonAgentGone
		}
		s.observe(ctx, r, policy.Canceled, ReasonAgentGone)
		return ratelimit.Permit{}, false
	}
	if s.drain.Err() != nil { // the drain, not shutdown_delay: that serves as usual
		ctx.SetConnectionClose()
		writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonShuttingDown, Route: r.name,
			Detail: "ballast is shutting down"})
		return ratelimit.Permit{}, false
	}
	r.m.rateRejected[rejectOverloaded].Inc()
	retry := time.Second
	var oe *ratelimit.OverloadedError
	if errors.As(err, &oe) && oe.RetryAfter > 0 {
		retry = oe.RetryAfter
	}
	writeProblem(ctx, problem{Status: fasthttp.StatusServiceUnavailable, Reason: ReasonOverloaded, Route: r.name,
		RetryAfter: retry, Detail: "the route's concurrency limit and queue are full; try again shortly"})
	s.observe(ctx, r, policy.RateLimited, ReasonOverloaded)
	return ratelimit.Permit{}, false
}

const headerPriority = "X-Ballast-Priority"

// priorityOf reads X-Ballast-Priority over all its lines: low when any
// says low, as repeated control headers resolve to the more cautious
// value (the lowest X-Ballast-Timeout, likewise).
func priorityOf(h *fasthttp.RequestHeader) ratelimit.Priority {
	for _, v := range h.PeekAll(headerPriority) {
		if ratelimit.ParsePriority(v) == ratelimit.PriorityLow {
			return ratelimit.PriorityLow
		}
	}
	return ratelimit.PriorityNormal
}

// registerLimiterRate exports a limiter's effective rate, replacing the
// gauge of an earlier limiter of the same name (after a reload).
func (m *metrics) registerLimiterRate(name string, lim ratelimit.Limiter) {
	rate := func() float64 { return lim.Stats().Rate }
	m.registerFunc(funcID("ballast_ratelimit_rate", name), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ballast_ratelimit_rate",
		Help:        "A rate limiter's effective rate in requests per second (lower than configured while adaptive limiting backs off).",
		ConstLabels: prometheus.Labels{"limiter": name},
	}, rate))
}

// registerBulkhead exports a route's concurrency numbers.
func (m *metrics) registerBulkhead(route string, b *ratelimit.Bulkhead) {
	m.registerFunc(funcID("ballast_concurrency_queue_depth", route), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ballast_concurrency_queue_depth",
		Help:        "Requests waiting for a concurrency slot, by route.",
		ConstLabels: prometheus.Labels{"route": route},
	}, func() float64 { return float64(b.Stats().Queued) }))
	m.registerFunc(funcID("ballast_concurrency_inflight", route), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ballast_concurrency_inflight",
		Help:        "Requests holding a concurrency slot, by route.",
		ConstLabels: prometheus.Labels{"route": route},
	}, func() float64 { return float64(b.Stats().InFlight) }))
}

// registerFunc registers a function-backed collector under id, replacing
// the one registered before under the same id.
func (m *metrics) registerFunc(id string, c prometheus.Collector) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.funcs[id]; ok {
		m.reg.Unregister(old)
	}
	if m.reg.Register(c) == nil {
		m.funcs[id] = c
	}
}

// buildBulkhead returns the route's bulkhead, kept across reloads that keep
// its settings; nil when concurrency.max is 0.
func (s *Server) buildBulkhead(rc *config.Route) (*ratelimit.Bulkhead, error) {
	c := rc.Concurrency
	if c.Max <= 0 {
		return nil, nil
	}
	key := fmt.Sprintf("bulkhead|%s|%+v", rc.Name, c)
	s.limiters.mu.Lock()
	defer s.limiters.mu.Unlock()
	s.limiters.use(key)
	if b, ok := s.limiters.bulkheads[key]; ok {
		return b, nil
	}
	b, err := ratelimit.NewBulkhead(ratelimit.BulkheadConfig{MaxConcurrency: c.Max, MaxQueue: c.Queue, MaxWait: c.MaxWait.D()})
	if err != nil {
		return nil, err
	}
	s.limiters.bulkheads[key] = b
	return b, nil
}
