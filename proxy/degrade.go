package proxy

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/supervise"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/valyala/fasthttp"
)

// routeCache is a route's response cache.
type routeCache struct {
	c     *cache.Cache
	fresh bool // fresh mode: answer from entries younger than ttl
	// opts say what keys hold: the route's vary list and identity, plus
	// the request headers its upstream's answers were seen to vary on
	// (learnVary). Swapped whole, never changed in place.
	opts         atomic.Pointer[cache.KeyOptions]
	allowPrivate bool
	group        *cache.Group[struct{}] // collapses concurrent fresh-mode misses
	results      [len(cacheResults)]prometheus.Counter
	remote       *sharedCache // the Redis second tier; nil unless cache.shared
}

// cacheResults are the result label values of ballast_cache_requests_total.
var cacheResults = [...]string{"hit", "miss", "stale", "bypass"}

const (
	cacheHit = iota
	cacheMiss
	cacheStale
	cacheBypass
)

// cacheState is what one request's cache lookup decided.
type cacheState struct {
	use    bool
	key    cache.Key
	status cache.Status // for the Cache-Status field of a forwarded answer
	// opts are the key options key was built with: the route may learn a
	// Vary header while the request runs, and then key lacks it.
	opts *cache.KeyOptions
	// noStore: the agent said Cache-Control: no-store; its answer is not
	// stored (RFC 9111 §5.2.1.5).
	noStore bool
	// deadline is the request's, on the server clock: it bounds a read
	// of the Redis tier for a stale answer too.
	deadline time.Time
}

var keyBuilders = sync.Pool{New: func() any { return cache.NewKeyBuilder() }}

// buildCache returns the route's cache, kept across reloads that keep its
// settings; nil in mode off.
func (s *Server) buildCache(rc *config.Route) (*routeCache, error) {
	cc := rc.Cache
	if cc.Mode == "off" || cc.Mode == "" {
		return nil, nil
	}
	key := fmt.Sprintf("cache|%s|%+v", rc.Name, cc)
	s.limiters.mu.Lock()
	defer s.limiters.mu.Unlock()
	s.limiters.use(key)
	if rcache, ok := s.limiters.caches[key]; ok {
		return rcache, nil
	}
	c, err := cache.New(cache.Config{MaxEntries: cc.MaxEntries, MaxBytes: int64(cc.MaxBytes), TTL: cc.TTL.D(), Stale: cc.Stale.D()})
	if err != nil {
		return nil, err
	}
	rcache := &routeCache{c: c, fresh: cc.Mode == "fresh", allowPrivate: cc.AllowPrivate, group: &cache.Group[struct{}]{}}
	rcache.opts.Store(&cache.KeyOptions{Vary: cc.Vary, Public: cc.Public})
	rcache.remote = s.newSharedCache(rc)
	for i, res := range cacheResults {
		rcache.results[i] = s.m.cacheRequests.WithLabelValues(rc.Name, res)
	}
	s.limiters.caches[key] = rcache
	return rcache, nil
}

// learnVary handles an answer whose Vary names request headers that the
// route's keys leave out, under the options o it was keyed with. Stored,
// it would be served to callers who differ in those headers, so it is
// not; instead the route's keys include them from now on, as if they were
// in cache.vary (at most cache.MaxVary in all; beyond that such answers
// are never stored).
func (s *Server) learnVary(r *route, o *cache.KeyOptions, h *fasthttp.ResponseHeader) {
	n, ok := o.WithVary(h)
	if !ok {
		return
	}
	if r.cache.opts.CompareAndSwap(o, n) {
		s.log.Info("cache: the route's keys now include the request headers its upstream varies on",
			"route", r.name, "vary", n.Vary)
	}
}

// cacheableMethod: the methods whose answers the cache keeps. POST is
// included because model and tool calls are POSTs; their body is part of
// the key.
func cacheableMethod(m []byte) bool {
	switch string(m) {
	case "GET", "HEAD", "POST":
		return true
	}
	return false
}

// exchange answers a request: from the cache when the route's fresh mode
// has a fresh entry, else upstream (collapsing concurrent identical
// misses into one call), with the degradation order on failure.
func (s *Server) exchange(ctx *fasthttp.RequestCtx, r *route, body []byte, deadline time.Time, guarded bool) {
	rc := r.cache
	if rc == nil || !cacheableMethod(ctx.Method()) {
		s.exchangeUpstream(ctx, r, body, deadline, nil, guarded)
		return
	}
	kb := keyBuilders.Get().(*cache.KeyBuilder)
	opts := rc.opts.Load()
	cs := &cacheState{use: true, key: kb.Request(&ctx.Request, body, opts), opts: opts, noStore: cache.RequestNoStore(&ctx.Request.Header), deadline: deadline}
	keyBuilders.Put(kb)
	if !rc.fresh {
		cs.status = cache.Miss(cache.FwdBypass, false, false) // fallback mode always asks upstream first
		s.exchangeUpstream(ctx, r, body, deadline, cs, guarded)
		return
	}
	now := s.clock.Now()
	if cache.RequestNoCache(&ctx.Request.Header) {
		rc.results[cacheBypass].Inc()
		cs.status = cache.Miss(cache.FwdRequest, false, false)
		s.exchangeUpstream(ctx, r, body, deadline, cs, guarded)
		return
	}
	if l, ok := rc.c.Get(cs.key, now); ok && l.Fresh {
		rc.results[cacheHit].Inc()
		s.serveEntry(ctx, l, cache.Hit(l), 0)
		s.observe(ctx, r, policy.OK, "")
		return
	}
	ran := false
	// A follower waits for the leader within its own deadline, not the
	// leader's: past it, it answers as any request out of time does.
	wait, cancel := context.WithDeadline(context.Background(), s.wall(deadline))
	defer cancel()
	_, _, shared := rc.group.Do(wait, cs.key, func() (struct{}, error) {
		ran = true
		if s.sharedHit(ctx, wait, r, cs.key) { // another replica stored it
			return struct{}{}, nil
		}
		rc.results[cacheMiss].Inc()
		cs.status = cache.Miss(cache.FwdURIMiss, false, false)
		s.exchangeUpstream(ctx, r, body, deadline, cs, guarded)
		return struct{}{}, nil
	})
	if ran {
		return
	}
	if shared {
		if l, ok := rc.c.Get(cs.key, s.clock.Now()); ok && l.Fresh {
			rc.results[cacheHit].Inc()
			st := cache.Hit(l)
			st.Collapsed = true
			s.serveEntry(ctx, l, st, 0)
			return
		}
	}
	rc.results[cacheMiss].Inc()
	cs.status = cache.Miss(cache.FwdURIMiss, false, false)
	s.exchangeUpstream(ctx, r, body, deadline, cs, guarded)
}

// store keeps a good, buffered answer, received at the server clock's
// received, in the route's cache. The answer the cache already holds for
// the key, received again, only refreshes that entry: no copy, no
// allocation.
func (s *Server) store(r *route, cs *cacheState, resp *fasthttp.Response, received time.Time) {
	if cs == nil || !cs.use || cs.noStore || resp.IsBodyStream() || !cache.Storable(resp.StatusCode(), &resp.Header, r.cache.allowPrivate) {
		return
	}
	if !cs.opts.VaryCovered(&resp.Header) {
		s.learnVary(r, cs.opts, &resp.Header)
		return
	}
	if cs.opts != r.cache.opts.Load() {
		// The route learned a header since this request was keyed: its
		// key lacks it, and the answer would serve callers who differ in
		// it.
		return
	}
	e, ok := r.cache.c.Refresh(cs.key, resp, received)
	if !ok {
		e = cache.NewEntry(resp, received)
		ok = r.cache.c.Set(cs.key, e)
	}
	if ok {
		cs.status.Stored = true
		r.cache.remote.put(cs.key, e)
	}
}

// degrade serves the best answer left after the upstreams failed: a
// stored response (stale-if-error), then the route's static fallback. It
// reports whether it answered.
func (s *Server) degrade(ctx *fasthttp.RequestCtx, r *route, cs *cacheState, last *attempt, attempts int) bool {
	if cs != nil && cs.use {
		if l, ok := s.cachedOrShared(r.cache, cs.key, cs.deadline); ok {
			r.cache.results[cacheStale].Inc()
			s.serveEntry(ctx, l, cache.StaleIfError(l, attempts > 0, last.status), attempts)
			return true
		}
	}
	sf := r.static
	if sf == nil {
		return false
	}
	var idBuf [maxRequestIDLen]byte
	id := idBuf[:copy(idBuf[:], ctx.Response.Header.Peek(headerRequestID))]
	ctx.Response.Reset()
	ctx.Response.Header.SetBytesV(headerRequestID, id)
	ctx.Response.SetStatusCode(sf.status)
	ctx.Response.Header.SetContentType(sf.contentType)
	for _, kv := range sf.headers {
		ctx.Response.Header.SetBytesKV(kv[0], kv[1])
	}
	st := cache.Status{Fwd: cache.FwdURIMiss, FwdStatus: last.status, Detail: "static-fallback"}
	if attempts == 0 {
		st.Fwd = cache.FwdBypass
	}
	addCacheStatus(ctx, st)
	ctx.Response.Header.Set(headerAttempts, strconv.Itoa(attempts))
	ctx.Response.Header.Set("X-Ballast-Fallback", "static")
	ctx.Response.SetBodyRaw(sf.body)
	return true
}

// serveEntry answers from a stored response, marked with Cache-Status and
// Age.
func (s *Server) serveEntry(ctx *fasthttp.RequestCtx, l cache.Lookup, st cache.Status, attempts int) {
	var idBuf [maxRequestIDLen]byte
	id := idBuf[:copy(idBuf[:], ctx.Response.Header.Peek(headerRequestID))]
	ctx.Response.Reset()
	ctx.Response.Header.SetNoDefaultContentType(true)
	l.Entry.WriteResponse(&ctx.Response)
	ctx.Response.Header.SetBytesV(headerRequestID, id)
	addCacheStatus(ctx, st)
	var buf [96]byte
	ctx.Response.Header.SetBytesV("Age", cache.AppendAge(buf[:0], l.Age))
	ctx.Response.Header.SetBytesV(headerAttempts, strconv.AppendInt(buf[:0], int64(attempts), 10))
}

// addCacheStatus adds ballast's member to the answer's Cache-Status
// (RFC 9211), after any the upstream sent, and keeps it for the request's
// log line, which shows ballast's outcome, never the upstream's text.
func addCacheStatus(ctx *fasthttp.RequestCtx, st cache.Status) {
	var buf [96]byte
	v := st.Append(buf[:0], "ballast")
	ctx.Response.Header.AddBytesV("Cache-Status", v)
	if tr := trailOf(ctx); tr != nil {
		tr.cache = append(tr.cache[:0], v...)
	}
}

// degradable reports the outcomes after which a stored or static answer
// beats the failure: the upstream's own faults and refusals, not answers
// about the request (caller_fault, auth).
func degradable(c policy.Class) bool {
	switch c {
	case policy.Transient, policy.Timeout, policy.Invalid, policy.RateLimited, policy.Quota,
		policy.BreakerOpen, policy.BudgetExhausted:
		return true
	}
	return false
}

// staticAnswer is a route's resolved static_fallback.
type staticAnswer struct {
	status      int
	contentType string
	headers     [][2][]byte
	body        []byte
}

func buildStatic(sf *config.StaticFallback) *staticAnswer {
	if sf == nil {
		return nil
	}
	a := &staticAnswer{status: sf.Status, contentType: sf.ContentType, body: []byte(sf.Body)}
	if a.status == 0 {
		a.status = fasthttp.StatusServiceUnavailable
	}
	if a.contentType == "" {
		a.contentType = "application/json"
	}
	for k, v := range sf.Headers {
		a.headers = append(a.headers, [2][]byte{[]byte(k), []byte(v)})
	}
	return a
}

// cacheStatus is the cache section of a route on /status.
func cacheStatus(r *route) *supervise.CacheStatus {
	if r.cache == nil {
		return nil
	}
	return supervise.NewCacheStatus(counterValue(r.cache.results[cacheHit])+counterValue(r.cache.results[cacheStale]),
		counterValue(r.cache.results[cacheMiss]))
}

func counterValue(c prometheus.Counter) uint64 {
	var m dto.Metric
	if c.Write(&m) != nil || m.Counter == nil {
		return 0
	}
	return uint64(m.Counter.GetValue())
}

// registerCache exports a route cache's size and evictions. A cache that
// replaces the route's earlier one (a reload changed its settings) counts
// its evictions on from the earlier one's: a counter never goes down.
func (m *metrics) registerCache(route string, c *cache.Cache) {
	m.registerFunc(funcID("ballast_cache_bytes", route), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ballast_cache_bytes", Help: "Bytes held by the route's response cache.",
		ConstLabels: prometheus.Labels{"route": route},
	}, func() float64 { return float64(c.Stats().Bytes) }))
	id := funcID("ballast_cache_evictions_total", route)
	m.mu.Lock()
	before := m.funcValue(id)
	m.mu.Unlock()
	m.registerFunc(id, prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "ballast_cache_evictions_total", Help: "Entries evicted from the route's cache to make room.",
		ConstLabels: prometheus.Labels{"route": route},
	}, func() float64 { return before + float64(c.Stats().Evictions) }))
}
