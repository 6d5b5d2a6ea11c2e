package proxy

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// target is one upstream a route can send to — its primary or a fallback —
// with the header rules for it and the upstream's health.
type target struct {
	up       *upstream
	name     string // host[:port], for X-Ballast-Upstream and metric labels
	basePath []byte // as escaped in the config, without a trailing '/'

	setHeaders    [][2][]byte
	removeHeaders [][]byte

	health   *health
	attempts [policy.Canceled + 1]prometheus.Counter // by outcome class
}

// health is the state ballast keeps about an upstream across requests and
// reloads: its circuit breaker and its retry budget. It is shared by every
// route that names the same upstream with the same breaker and budget
// settings, and survives reloads that keep them.
type health struct {
	breaker *policy.Breaker // nil when breaker.enabled is false
	budget  *policy.Budget
	// noted is the breaker state last seen by an exchange (opened).
	noted atomic.Int32
	// retired: a reload dropped it (healthPool.sweep). Requests still
	// running on an older table use it to the end, but it no longer drives
	// the upstream's breaker gauge or raises alerts: the breaker in force
	// does.
	retired atomic.Bool
}

// opened reports, once per opening of the breaker, that state s is it
// opening: the routes sharing an upstream (and its breaker) each see the
// state, but only the first to see it open raises the alert, so one
// outage behind N routes is one alert, not N.
func (h *health) opened(s policy.BreakerState) bool {
	if h.retired.Load() {
		return false
	}
	for {
		old := h.noted.Load()
		if policy.BreakerState(old) == s {
			return false
		}
		if h.noted.CompareAndSwap(old, int32(s)) {
			return s == policy.StateOpen
		}
	}
}

// healthPool keeps health (breaker, retry budget) across config
// generations, for as long as the table in force uses it: like the
// upstream and limiter pools, a table build marks what it takes (begin,
// get) and sweep drops the rest, so reloads that change an upstream's
// policies do not pile up breakers nobody consults.
type healthPool struct {
	mu    sync.Mutex
	all   map[string]*health
	names map[string]string // key → upstream name, the breaker gauge's label
	used  map[string]bool   // taken by the table being built; nil before the first
	m     *metrics          // whose breaker gauges sweep deletes
}

func newHealthPool() *healthPool {
	return &healthPool{all: map[string]*health{}, names: map[string]string{}}
}

// begin starts a table build.
func (p *healthPool) begin() {
	p.mu.Lock()
	p.used = map[string]bool{}
	p.mu.Unlock()
}

// sweep drops the health the table now in force did not take, and the
// breaker gauge of an upstream no health is left for. Requests still
// running on an older table keep theirs until they end.
func (p *healthPool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used == nil {
		return
	}
	kept := map[string]bool{}
	for k, h := range p.all {
		if p.used[k] && h.breaker != nil {
			kept[p.names[k]] = true
		}
	}
	for k := range p.all {
		if p.used[k] {
			continue
		}
		if name := p.names[k]; !kept[name] && p.m != nil {
			p.m.breakerState.DeleteLabelValues(name)
		}
		p.all[k].retired.Store(true)
		delete(p.all, k)
		delete(p.names, k)
	}
}

func (p *healthPool) get(upstreamKey string, pol *config.Policy, m *metrics, upstreamName string) *health {
	key := fmt.Sprintf("%s|%+v|%+v", upstreamKey, pol.Breaker, pol.Retry.Budget)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used != nil {
		p.used[key] = true
	}
	if h, ok := p.all[key]; ok {
		return h
	}
	p.m = m
	h := &health{budget: policy.NewBudget(pol.Retry.Budget.Ratio, pol.Retry.Budget.MinPerSecond, policy.DefaultBudgetTTL)}
	p.names[key] = upstreamName
	if b := pol.Breaker; b.Enabled {
		gauge := m.breakerState.WithLabelValues(upstreamName)
		gauge.Set(float64(policy.StateClosed))
		h.breaker = policy.NewBreaker(policy.BreakerConfig{
			Failures: b.Failures, FailureRatio: b.FailureRatio, MinRequests: b.MinRequests,
			OpenFor: b.OpenFor.D(), HalfOpenProbes: b.HalfOpenRequests,
		}, func(s policy.BreakerState) {
			if !h.retired.Load() {
				gauge.Set(float64(s))
			}
		})
	}
	p.all[key] = h
	return h
}

// buildTarget resolves one upstream of a route. rules are applied in order:
// the route's header rules, then the fallback's own.
func (s *Server) buildTarget(routeName, rawURL, caFile string, pol *config.Policy, rules ...config.HeaderRules) (*target, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	up, upKey, err := s.ups.get(u, caFile, pol.Timeouts.Connect.D(), s.m)
	if err != nil {
		return nil, err
	}
	t := &target{
		up:       up,
		name:     u.Host,
		basePath: []byte(strings.TrimSuffix(u.EscapedPath(), "/")),
		health:   s.health.get(upKey, pol, s.m, u.Host),
	}
	// Header names are case-insensitive: the rules are merged by their
	// lower-case name, so a later rule (a fallback's) replaces or removes
	// an earlier one (the route's) whatever either's spelling, and the
	// route's key never reaches the fallback.
	type header struct{ name, value string }
	set := map[string]header{}
	var remove []string
	for _, r := range rules {
		for _, k := range r.Remove {
			remove = append(remove, k)
			delete(set, strings.ToLower(k))
		}
		names := make([]string, 0, len(r.Set))
		for k := range r.Set {
			names = append(names, k)
		}
		sort.Strings(names) // one rule spelling a name twice: the same winner every time
		for _, k := range names {
			set[strings.ToLower(k)] = header{k, r.Set[k]}
		}
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.setHeaders = append(t.setHeaders, [2][]byte{[]byte(set[k].name), []byte(set[k].value)})
	}
	for _, k := range remove {
		t.removeHeaders = append(t.removeHeaders, []byte(k))
	}
	for c := policy.OK; c <= policy.Canceled; c++ {
		t.attempts[c] = s.m.attempts.WithLabelValues(routeName, t.name, c.String())
	}
	return t, nil
}
