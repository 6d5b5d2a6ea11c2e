package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
)

// maxCooldown is the longest retry.max_cooldown: policy.MaxHint, the
// longest hint ballast trusts at all.
const maxCooldown = 365 * 24 * time.Hour

var routeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// hopByHop are the headers a proxy owns (RFC 9110 §7.6.1); routes may not
// set them.
var hopByHop = []string{"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}

// Validate checks the semantics of a decoded config and returns every
// problem, joined, each with its path.
func (c *Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(checkAddr("listen", c.Listen))
	add(checkAddr("admin.listen", c.Admin.Listen))
	errs = append(errs, c.Notify.validate("notify")...)
	if c.Admin.Token == "" && !IsLoopback(c.Admin.Listen) {
		add(pathErr("admin.listen", "binding the admin listener beyond localhost requires admin.token"))
	}
	if c.Server.MaxHeaderBytes < 1<<10 || c.Server.MaxHeaderBytes > 1<<20 {
		add(pathErr("server.max_header_bytes", "must be between 1KiB and 1MiB"))
	}
	if c.Server.ReadTimeout <= 0 {
		add(pathErr("server.read_timeout", "must be positive"))
	}
	switch c.State.Backend {
	case "", "memory", "file", "redis":
	default:
		add(pathErrf("state.backend", "%q is not memory, file or redis", c.State.Backend))
	}
	if c.State.Backend == "file" && c.State.Path == "" {
		add(pathErr("state.path", "is required with the file backend"))
	}
	if c.State.Backend == "redis" {
		rd := c.State.Redis
		if rd.Address == "" {
			add(pathErr("state.redis.address", "is required with the redis backend"))
		} else {
			add(checkAddr("state.redis.address", rd.Address))
		}
		if rd.OnError != "fail_open" && rd.OnError != "fail_closed" {
			add(pathErrf("state.redis.on_error", "%q is not fail_open or fail_closed", rd.OnError))
		}
		if strings.ContainsAny(rd.KeyPrefix, "{}*?[]\\") {
			add(pathErr("state.redis.key_prefix", "must not contain braces or glob characters"))
		}
	}
	if c.State.MaxRecords < 1 {
		add(pathErr("state.max_records", "must be at least 1"))
	}
	if c.Log.SuccessSample < 0 || c.Log.SuccessSample > 1 {
		add(pathErr("log.success_sample", "must be between 0 and 1"))
	}
	if c.Procs < 0 {
		add(pathErr("procs", "must be 0 (ballast chooses) or a number of cores"))
	}
	switch d, total := c.ShutdownDelay.D(), c.ShutdownTimeout.D(); {
	case d < 0:
		add(pathErr("shutdown_delay", "must not be negative"))
	case d > 0 && d >= total:
		add(pathErrf("shutdown_delay", "%s must be less than shutdown_timeout (%s), which counts the delay and then the drain", d, total))
	}
	if c.Log.FlushInterval < 0 {
		add(pathErr("log.flush_interval", "must not be negative"))
	}
	defaultErrs := c.Defaults.validate("defaults")
	errs = append(errs, defaultErrs...)
	if len(c.Routes) == 0 {
		add(pathErr("routes", "at least one route is required: ballast forwards nothing without one"))
	}
	for name, l := range c.Limiters {
		errs = append(errs, l.validate("limiters."+name)...)
		if l.RPS == 0 && l.TokensPerMinute == 0 {
			add(pathErr("limiters."+name, "sets neither rps nor tokens_per_minute"))
		}
	}
	// A limiter the defaults name that does not exist is reported once,
	// at the defaults, not again for each route that inherits it.
	badDefaultUse := ""
	if use := c.Defaults.RateLimit.Use; use != "" {
		if _, ok := c.Limiters[use]; !ok {
			add(pathErrf("defaults.rate_limit.limiter", "%q is not in the limiters block", use))
			badDefaultUse = use
		}
	}
	names := map[string]int{}
	matches := map[string]int{}
	for i := range c.Routes {
		r := &c.Routes[i]
		p := fmt.Sprintf("routes[%d]", i)
		errs = append(errs, r.validate(p)...)
		// A route's policy is the defaults plus its overrides: a problem it
		// inherits is reported once, at its defaults path, above.
		errs = append(errs, inheritedDropped(r.Policy.validate(p), p, defaultErrs)...)
		if r.Cache.Shared && c.State.Backend != "redis" {
			add(pathErr(p+".cache.shared", "requires state.backend: redis (the shared tier lives in state.redis)"))
		}
		if use := r.RateLimit.Use; use != "" {
			if _, ok := c.Limiters[use]; !ok && use != badDefaultUse {
				add(pathErrf(p+".rate_limit.limiter", "%q is not in the limiters block", use))
			}
			if set := r.RateLimit.Limiter.keysBeyond(&c.Defaults.RateLimit.Limiter); len(set) > 0 {
				add(pathErrf(p+".rate_limit", "names a shared limiter and sets its own %s, which the shared one would silently override; set them in limiters.%s instead", strings.Join(set, ", "), use))
			}
		}
		if _, clash := c.Limiters[r.Name]; clash && r.RateLimit.Use == "" && (r.RateLimit.RPS > 0 || r.RateLimit.TokensPerMinute > 0) {
			// Both would be ballast_ratelimit_rate{limiter="<name>"} and
			// RateLimit-Policy "<name>": one series, two limits.
			add(pathErrf(p+".name", "%q is also the name of limiters.%s, and the route has a rate_limit of its own: the two limits would share their metric and RateLimit-Policy name; rename one", r.Name, r.Name))
		}
		if j, dup := names[r.Name]; dup && r.Name != "" {
			add(pathErrf(p+".name", "%q is already used by routes[%d]", r.Name, j))
		}
		names[r.Name] = i
		methods := make([]string, len(r.Match.Methods))
		for k, m := range r.Match.Methods {
			methods[k] = strings.ToUpper(m)
		}
		slices.Sort(methods)
		key := strings.ToLower(r.Match.Host) + " " + r.Match.PathPrefix + " " + strings.Join(slices.Compact(methods), ",")
		if j, dup := matches[key]; dup {
			add(pathErrf(p+".match", "matches exactly what routes[%d] (%s) matches", j, c.Routes[j].Name))
		}
		matches[key] = i
	}
	return errors.Join(errs...)
}

// inheritedDropped returns a route's policy problems (paths under route)
// less those at a path whose defaults counterpart has a problem too: the
// route inherited it.
func inheritedDropped(errs []error, route string, defaultErrs []error) []error {
	if len(defaultErrs) == 0 {
		return errs
	}
	failed := map[string]bool{}
	for _, e := range defaultErrs {
		var fe *FieldError
		if errors.As(e, &fe) {
			failed[strings.TrimPrefix(fe.Path, "defaults")] = true
		}
	}
	out := errs[:0]
	for _, e := range errs {
		var fe *FieldError
		if errors.As(e, &fe) && failed[strings.TrimPrefix(fe.Path, route)] {
			continue
		}
		out = append(out, e)
	}
	return out
}

func (p *Policy) validate(path string) []error {
	var errs []error
	t := p.Timeouts
	for _, x := range []struct {
		name string
		v    Duration
	}{{"connect", t.Connect}, {"per_try", t.PerTry}, {"total", t.Total}} {
		if x.v <= 0 {
			errs = append(errs, pathErr(path+".timeouts."+x.name, "must be positive"))
		}
	}
	if t.Connect > t.Total && t.Total > 0 {
		errs = append(errs, pathErr(path+".timeouts.connect", "is longer than timeouts.total"))
	}
	if p.MaxBody <= 0 || p.MaxBody > 1<<30 {
		errs = append(errs, pathErr(path+".max_body", "must be between 1 byte and 1GiB"))
	}
	add := func(key, msg string) { errs = append(errs, pathErr(path+"."+key, msg)) }
	rt := p.Retry
	if rt.Attempts < 1 || rt.Attempts > 10 {
		add("retry.attempts", "must be between 1 and 10 (the first attempt counts)")
	}
	if rt.Backoff.Base <= 0 {
		add("retry.backoff.base", "must be positive")
	}
	if rt.Backoff.Max < rt.Backoff.Base {
		add("retry.backoff.max", "must be at least retry.backoff.base")
	}
	if rt.MaxCooldown <= 0 || rt.MaxCooldown.D() > maxCooldown {
		add("retry.max_cooldown", fmt.Sprintf("must be positive and at most 8760h (a hint longer than a year is ignored anyway), not %s; the default is 24h", rt.MaxCooldown.D()))
	}
	if rt.Budget.Ratio < 0 || rt.Budget.Ratio > 1 {
		add("retry.budget.ratio", "must be between 0 and 1")
	}
	if rt.Budget.MinPerSecond < 0 {
		add("retry.budget.min_per_second", "must not be negative")
	}
	errs = append(errs, p.RateLimit.Limiter.validate(path+".rate_limit")...)
	if p.RateLimit.MaxWait < 0 {
		add("rate_limit.max_wait", "must not be negative")
	}
	if p.Concurrency.Max < 0 {
		add("concurrency.max", "must not be negative")
	}
	if p.Concurrency.Queue < 0 {
		add("concurrency.queue", "must not be negative")
	}
	switch p.Cache.Mode {
	case "off", "fallback", "fresh":
	default:
		add("cache.mode", fmt.Sprintf("%q is not off, fallback or fresh", p.Cache.Mode))
	}
	if p.Cache.Mode == "fresh" && p.Cache.TTL <= 0 {
		add("cache.ttl", "must be positive in fresh mode")
	}
	if p.Cache.Mode != "off" && p.Cache.TTL <= 0 && p.Cache.Stale <= 0 {
		add("cache.stale", "must be positive in fallback mode")
	}
	if p.Cache.MaxEntries < 1 {
		add("cache.max_entries", "must be at least 1")
	}
	if p.Cache.MaxBytes < 1<<10 {
		add("cache.max_bytes", "must be at least 1KiB")
	}
	for i, h := range p.Cache.Vary {
		if !isToken(h) {
			add(fmt.Sprintf("cache.vary[%d]", i), fmt.Sprintf("%q is not a header name", h))
		}
	}
	if sf := p.StaticFallback; sf != nil {
		if sf.Status != 0 && (sf.Status < 200 || sf.Status > 599) {
			add("static_fallback.status", "must be between 200 and 599 (default 503)")
		}
		for k, v := range sf.Headers {
			if !isToken(k) || isHopByHop(k) || strings.ContainsAny(v, "\r\n\x00") {
				add("static_fallback.headers."+k, "is not a valid end-to-end header")
			}
		}
	}
	switch p.Idempotency.Mode {
	case "off", "header", "auto":
	default:
		add("idempotency.mode", fmt.Sprintf("%q is not off, header or auto", p.Idempotency.Mode))
	}
	switch p.Idempotency.OnConflict {
	case "attach", "reject":
	default:
		add("idempotency.on_conflict", fmt.Sprintf("%q is not attach or reject", p.Idempotency.OnConflict))
	}
	if p.Idempotency.TTL <= 0 {
		add("idempotency.ttl", "must be positive")
	}
	if p.Idempotency.Window <= 0 {
		add("idempotency.window", "must be positive")
	}
	if p.Async.Enabled && p.Async.TTL <= 0 {
		add("async.ttl", "must be positive")
	}
	br := p.Breaker
	if br.Enabled {
		if br.Failures < 1 {
			add("breaker.failures", "must be at least 1")
		}
		if br.FailureRatio < 0 || br.FailureRatio > 1 {
			add("breaker.failure_ratio", "must be between 0 and 1")
		}
		if br.MinRequests < 1 {
			add("breaker.min_requests", "must be at least 1")
		}
		if br.OpenFor <= 0 {
			add("breaker.open_for", "must be positive")
		}
		if br.HalfOpenRequests < 1 {
			add("breaker.half_open_requests", "must be at least 1")
		}
	}
	return errs
}

func (r *Route) validate(p string) []error {
	var errs []error
	add := func(path, msg string) { errs = append(errs, pathErr(path, msg)) }
	if r.Name == "" {
		add(p+".name", "is required")
	} else if !routeName.MatchString(r.Name) {
		add(p+".name", "must be 1-63 letters, digits, '_', '.' or '-'")
	}
	switch {
	case r.Match.PathPrefix == "":
		add(p+".match.path_prefix", "is required (use / to match every path)")
	case !strings.HasPrefix(r.Match.PathPrefix, "/"):
		add(p+".match.path_prefix", "must start with /")
	case strings.ContainsAny(r.Match.PathPrefix, "?#%\\ \t\r\n") || strings.Contains(r.Match.PathPrefix, ".."):
		add(p+".match.path_prefix", "must be a plain path (no ?, #, %, .., spaces or backslashes)")
	}
	if h := r.Match.Host; h != "" && !validHostPattern(h) {
		add(p+".match.host", fmt.Sprintf("%q is not a host name or *.domain pattern", h))
	}
	for i, m := range r.Match.Methods {
		if !isToken(m) || strings.ToUpper(m) != m {
			add(fmt.Sprintf("%s.match.methods[%d]", p, i), fmt.Sprintf("%q is not an upper-case method name", m))
		}
	}
	errs = append(errs, checkUpstream(p, r.Upstream, r.CAFile, r.Headers)...)
	for i, f := range r.Fallbacks {
		errs = append(errs, checkUpstream(fmt.Sprintf("%s.fallbacks[%d]", p, i), f.Upstream, f.CAFile, f.Headers)...)
	}
	return errs
}

// keysBeyond names the limiter keys l sets to other values than d (the
// defaults it inherits), in the order of the docs.
func (l *Limiter) keysBeyond(d *Limiter) []string {
	var set []string
	for _, k := range []struct {
		name string
		on   bool
	}{
		{"rps", l.RPS != d.RPS}, {"burst", l.Burst != d.Burst}, {"key", l.Key != d.Key}, {"max_keys", l.MaxKeys != d.MaxKeys},
		{"adaptive", l.Adaptive != d.Adaptive}, {"tokens_per_minute", l.TokensPerMinute != d.TokensPerMinute},
	} {
		if k.on {
			set = append(set, k.name)
		}
	}
	return set
}

func (l *Limiter) validate(path string) []error {
	var errs []error
	add := func(key, msg string) { errs = append(errs, pathErr(path+"."+key, msg)) }
	if l.RPS < 0 || l.RPS > 1e6 {
		add("rps", "must be between 0 and 1000000")
	}
	if l.Burst < 0 {
		add("burst", "must not be negative")
	}
	if l.TokensPerMinute < 0 {
		add("tokens_per_minute", "must not be negative")
	}
	if l.MaxKeys < 0 {
		add("max_keys", "must not be negative")
	}
	if l.Adaptive && l.RPS == 0 {
		add("adaptive", "needs rps: the rate it backs off from and returns to")
	}
	switch k := l.Key; {
	case k == "", k == "ip":
	case strings.HasPrefix(k, "header:") && isToken(strings.TrimPrefix(k, "header:")):
	case strings.HasPrefix(k, "json:") && len(k) > len("json:"):
	default:
		add("key", fmt.Sprintf("%q is not ip, header:NAME or json:FIELD", k))
	}
	return errs
}

// checkUpstream validates an upstream URL with its CA file and header rules.
func checkUpstream(p, upstream, caFile string, headers HeaderRules) []error {
	var errs []error
	add := func(path, msg string) { errs = append(errs, pathErr(path, msg)) }
	u, err := url.Parse(upstream)
	switch {
	case upstream == "":
		add(p+".upstream", "is required")
	case err != nil:
		add(p+".upstream", fmt.Sprintf("%q is not a URL", withoutUserinfo(upstream)))
	case u.Scheme != "http" && u.Scheme != "https":
		add(p+".upstream", fmt.Sprintf("%q must use http or https", withoutUserinfo(upstream)))
	case u.Host == "" || u.Hostname() == "":
		add(p+".upstream", fmt.Sprintf("%q has no host", withoutUserinfo(upstream)))
	case u.User != nil:
		add(p+".upstream", "must not carry credentials; set an Authorization header from ${ENV} instead")
	case u.RawQuery != "" || u.Fragment != "":
		add(p+".upstream", "must not have a query or fragment")
	}
	for name, v := range headers.Set {
		hp := p + ".headers.set." + name
		switch {
		case !isToken(name):
			add(hp, "is not a valid header name")
		case isHopByHop(name):
			add(hp, "is a hop-by-hop header, owned by the proxy")
		case strings.ContainsAny(v, "\r\n\x00"):
			add(hp, "value must not contain CR, LF or NUL")
		}
	}
	for i, name := range headers.Remove {
		if !isToken(name) {
			add(fmt.Sprintf("%s.headers.remove[%d]", p, i), fmt.Sprintf("%q is not a valid header name", name))
		}
	}
	if caFile != "" {
		if err == nil && u.Scheme != "https" {
			add(p+".ca_file", "applies only to https upstreams")
		} else if pem, rerr := os.ReadFile(caFile); rerr != nil {
			add(p+".ca_file", rerr.Error())
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			add(p+".ca_file", fmt.Sprintf("%s holds no PEM certificate", caFile))
		}
	}
	return errs
}

// withoutUserinfo is rawURL for an error message: a user:password before
// the host (refused, but the message must not quote the password to the
// log or the reload's answer) is shown as [redacted]. It works on URLs
// url.Parse refuses too.
func withoutUserinfo(rawURL string) string {
	rest, prefix := rawURL, ""
	if i := strings.Index(rawURL, "//"); i >= 0 {
		prefix, rest = rawURL[:i+2], rawURL[i+2:]
	}
	authority := rest
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	at := strings.LastIndexByte(authority, '@')
	if at < 0 {
		return rawURL
	}
	return prefix + Redacted + rest[at:]
}

func checkAddr(path, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return pathErrf(path, "%q is not host:port", addr)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostPattern(host) {
		return pathErrf(path, "%q is not a valid host", host)
	}
	var n int
	if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 0 || n > 65535 || fmt.Sprint(n) != port {
		return pathErrf(path, "%q is not a port number", port)
	}
	return nil
}

// IsLoopback reports whether the listen address addr ("host:port") binds
// only to the local machine: localhost or a loopback IP. An empty host
// (all interfaces) or a malformed address is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func validHostPattern(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				return false
			}
		}
	}
	return true
}

// isToken reports whether s is an RFC 9110 token (header names, methods).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

func isHopByHop(name string) bool {
	for _, h := range hopByHop {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}
