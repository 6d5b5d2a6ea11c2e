package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/ratelimit"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/prometheus/client_golang/prometheus"
)

// table is one immutable generation of the routing configuration. It is
// built once per config load and swapped atomically; a request keeps the
// table it started with until it ends.
type table struct {
	routes []*route // longest path prefix first
	cfg    *config.Config
}

// boardNames is what the status board keeps for t: each route's name
// with the names of its upstreams.
func (t *table) boardNames() map[string][]string {
	keep := make(map[string][]string, len(t.routes))
	for _, r := range t.routes {
		for _, tg := range r.targets {
			keep[r.name] = append(keep[r.name], tg.name)
		}
		if _, ok := keep[r.name]; !ok {
			keep[r.name] = nil
		}
	}
	return keep
}

// route is a config.Route resolved for the request path: every per-route
// setting is computed here, at load, and never per request.
type route struct {
	name       string
	host       []byte // lower case; empty matches any host
	hostSuffix bool   // host was "*.example.com": match by suffix ".example.com"
	prefix     []byte
	slashEnd   bool   // prefix ends in '/'
	methods    []byte // nil: any; else the methods joined by ' ', with a leading and trailing space
	strip      bool

	// targets are the primary upstream, then the fallbacks in order.
	targets []*target

	maxBody int64
	perTry  time.Duration
	idle    time.Duration
	total   time.Duration

	limit     *limiting           // nil: no rate limit
	bulkhead  *ratelimit.Bulkhead // nil: no concurrency limit
	validator *validate.Validator // nil: no checks
	cache     *routeCache         // nil: cache off
	static    *staticAnswer       // nil: no static fallback
	idem      *idemPolicy         // nil: idempotency off
	async     *asyncPolicy        // nil: no Prefer: respond-async

	retry         policy.Retry
	jsonrpc       *jsonrpcSafety // nil: JSON-RPC methods are not read
	hedgeAfter    time.Duration  // 0: no hedging
	attempts      int            // per target, the first included
	backoff       policy.Backoff
	maxRetryAfter time.Duration
	maxCooldown   time.Duration // the longest pause one hint sets (retry.max_cooldown)

	m *routeMetrics
}

// Check compiles cfg the way a running ballast would — retry.on words,
// validators and JSON Schemas, limiters, caches — without opening state or
// listening, and returns every problem with its config path. `ballast
// validate` runs it after config.Load.
func Check(cfg *config.Config) error {
	s := &Server{
		clock:    policy.SystemClock{},
		health:   newHealthPool(),
		limiters: newLimiterPool(),
		m:        newMetrics(prometheus.NewRegistry()),
	}
	s.ups = newUpstreamPool(s.clock)
	_, err := s.buildTable(cfg)
	return err
}

// buildTable compiles a config into a route table. Errors carry the config
// path they come from.
func (s *Server) buildTable(cfg *config.Config) (*table, error) {
	s.limiters.begin()
	s.ups.begin()
	s.health.begin()
	t := &table{cfg: cfg}
	var errs []error
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		r, err := s.buildRoute(rc, fmt.Sprintf("routes[%d]", i), cfg.Limiters)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.routes = append(t.routes, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	sort.SliceStable(t.routes, func(i, j int) bool {
		a, b := t.routes[i], t.routes[j]
		if len(a.prefix) != len(b.prefix) {
			return len(a.prefix) > len(b.prefix)
		}
		// Equal prefixes: the more specific match (host, then an exact
		// host before a wildcard one, as nginx and Envoy choose, then
		// methods) first.
		if (len(a.host) > 0) != (len(b.host) > 0) {
			return len(a.host) > 0
		}
		if len(a.host) > 0 && a.hostSuffix != b.hostSuffix {
			return !a.hostSuffix
		}
		return a.methods != nil && b.methods == nil
	})
	return t, nil
}

func (s *Server) buildRoute(rc *config.Route, path string, limiters map[string]config.Limiter) (*route, error) {
	var errs []error // every problem of the route, not just the first
	on, err := policy.ParseRetryOn(rc.Retry.On)
	if err != nil {
		errs = append(errs, &config.FieldError{Path: path + ".retry.on", Msg: err.Error()})
	}
	r := &route{
		name:     rc.Name,
		prefix:   []byte(rc.Match.PathPrefix),
		slashEnd: strings.HasSuffix(rc.Match.PathPrefix, "/"),
		strip:    rc.StripPrefix,
		maxBody:  int64(rc.MaxBody),
		perTry:   rc.Timeouts.PerTry.D(),
		idle:     rc.Timeouts.Idle.D(),
		total:    rc.Timeouts.Total.D(),

		retry:         policy.Retry{On: on, UnsafeMethods: rc.Retry.UnsafeMethods},
		attempts:      rc.Retry.Attempts,
		backoff:       policy.Backoff{Base: rc.Retry.Backoff.Base.D(), Max: rc.Retry.Backoff.Max.D()},
		maxRetryAfter: rc.Retry.MaxRetryAfter.D(),
		maxCooldown:   rc.Retry.MaxCooldown.D(),
		hedgeAfter:    rc.HedgeAfter.D(),
		m:             s.m.forRoute(rc.Name),
	}
	primary, err := s.buildTarget(rc.Name, rc.Upstream, rc.CAFile, &rc.Policy, rc.Headers)
	if err != nil {
		return nil, &config.FieldError{Path: path + ".upstream", Msg: err.Error()}
	}
	r.targets = append(r.targets, primary)
	if rc.Retry.JSONRPC {
		r.jsonrpc = &jsonrpcSafety{tools: map[string]bool{}}
		for _, t := range rc.Retry.IdempotentTools {
			r.jsonrpc.tools[t] = true
		}
	}
	for i, f := range rc.Fallbacks {
		t, err := s.buildTarget(rc.Name, f.Upstream, f.CAFile, &rc.Policy, rc.Headers, f.Headers)
		if err != nil {
			return nil, &config.FieldError{Path: fmt.Sprintf("%s.fallbacks[%d].upstream", path, i), Msg: err.Error()}
		}
		r.targets = append(r.targets, t)
	}
	if r.limit, err = s.buildLimiting(rc, limiters); err != nil {
		return nil, &config.FieldError{Path: path + ".rate_limit", Msg: err.Error()}
	}
	if r.bulkhead, err = s.buildBulkhead(rc); err != nil {
		return nil, &config.FieldError{Path: path + ".concurrency", Msg: err.Error()}
	}
	if r.validator, err = buildValidator(rc.Validate, path); err != nil {
		errs = append(errs, err)
	}
	if r.cache, err = s.buildCache(rc); err != nil {
		return nil, &config.FieldError{Path: path + ".cache", Msg: err.Error()}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	r.static = buildStatic(rc.StaticFallback)
	r.idem = buildIdem(rc)
	r.async = buildAsync(rc)
	if h := strings.ToLower(rc.Match.Host); h != "" {
		if rest, ok := strings.CutPrefix(h, "*"); ok {
			r.host, r.hostSuffix = []byte(rest), true
		} else {
			r.host = []byte(h)
		}
	}
	if len(rc.Match.Methods) > 0 {
		r.methods = []byte(" " + strings.Join(rc.Match.Methods, " ") + " ")
	}
	return r, nil
}

// match returns the route for a request, or nil. host may carry a port;
// path is the normalised, decoded path.
func (t *table) match(host, path, method []byte) *route {
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && bytes.IndexByte(host[i:], ']') < 0 {
		host = host[:i]
	}
	for _, r := range t.routes {
		if r.matches(host, path, method) {
			return r
		}
	}
	return nil
}

func (r *route) matches(host, path, method []byte) bool {
	if !r.matchPath(path) {
		return false
	}
	if len(r.host) > 0 {
		if r.hostSuffix {
			if len(host) <= len(r.host) || !asciiEqualFold(host[len(host)-len(r.host):], r.host) {
				return false
			}
		} else if !asciiEqualFold(host, r.host) {
			return false
		}
	}
	if r.methods != nil && !r.allowsMethod(method) {
		return false
	}
	return true
}

// allowsMethod reports whether method is one of the route's methods as a
// whole word: PATCH is not found inside PROPPATCH.
func (r *route) allowsMethod(method []byte) bool {
	if len(method) == 0 {
		return false
	}
	for rest := r.methods; ; {
		i := bytes.Index(rest, method)
		if i < 0 {
			return false
		}
		if i > 0 && i+len(method) < len(rest) && rest[i-1] == ' ' && rest[i+len(method)] == ' ' {
			return true
		}
		rest = rest[i+1:]
	}
}

// matchPath matches the prefix at a segment boundary.
func (r *route) matchPath(path []byte) bool {
	if !bytes.HasPrefix(path, r.prefix) {
		return false
	}
	return r.slashEnd || len(path) == len(r.prefix) || path[len(r.prefix)] == '/'
}

// appendUpstreamPath appends the path to send to t for path, the decoded
// matched path, escaping it again: the result goes on the wire as it is.
func (r *route) appendUpstreamPath(dst []byte, t *target, path []byte) []byte {
	rest := path
	if r.strip {
		rest = path[r.stripLen():]
	}
	return appendPath(appendBase(dst, t, rest), rest, false)
}

// appendBase appends t's base path (as escaped in the config) and the '/'
// that must come between it and rest.
func appendBase(dst []byte, t *target, rest []byte) []byte {
	dst = append(dst, t.basePath...)
	if len(rest) == 0 || rest[0] != '/' {
		dst = append(dst, '/')
	}
	return dst
}

// appendPath appends p as a path goes on the wire: everything but
// unreserved characters, sub-delims, ':', '@' and '/' percent-encoded.
// keepEscapes: p is already escaped, its '%'s stay; otherwise p is decoded
// and its '%'s are escaped too, so the result decodes exactly once to p.
func appendPath(dst, p []byte, keepEscapes bool) []byte {
	const hex = "0123456789ABCDEF"
	for _, c := range p {
		if pathByte(c) || (keepEscapes && c == '%') {
			dst = append(dst, c)
		} else {
			dst = append(dst, '%', hex[c>>4], hex[c&15])
		}
	}
	return dst
}

// pathByte reports whether c may appear as itself in a path (RFC 3986
// pchar or '/').
func pathByte(c byte) bool { return pathBytes[c] }

// pathBytes is pathByte's table, built once: every byte of every forwarded
// path is looked up in it.
var pathBytes = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-._~!$&'()*+,;=:@/", byte(c)) >= 0
	}
	return t
}()

// stripLen is how many leading bytes strip_prefix removes from a matched
// path: the prefix, less a trailing '/' that separates what follows.
func (r *route) stripLen() int {
	if r.slashEnd {
		return len(r.prefix) - 1
	}
	return len(r.prefix)
}

func asciiEqualFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
