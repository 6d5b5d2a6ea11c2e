package supervise

import (
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// Snapshot is what /status answers: every route with its upstreams, the
// last failures, and the optional sections other subsystems fill. It holds
// names, numbers and request ids only — never header values, tokens, keys
// or URLs with credentials.
type Snapshot struct {
	// Time is when the snapshot was taken (the server's clock).
	Time time.Time `json:"time"`
	// WindowSeconds is the span rates, ratios and quantiles cover.
	WindowSeconds int `json:"window_s"`
	// Routes are in the route table's match order.
	Routes []RouteStatus `json:"routes"`
	// Failures are the most recent failed requests, newest first, at most
	// FailureCapacity.
	Failures []Failure `json:"failures"`
	// Jobs is the async job queue; omitted until a jobs hook is installed.
	Jobs *JobsStatus `json:"jobs,omitempty"`
	// Alerts counts webhook notifications; omitted when notify.webhook is
	// not set.
	Alerts *NotifyStats `json:"alerts,omitempty"`
}

// Stats are a Window's numbers over the last WindowSeconds.
type Stats struct {
	// Requests, Failures and Retries are counts inside the window.
	Requests uint64 `json:"requests"`
	Failures uint64 `json:"failures"`
	Retries  uint64 `json:"retries"`
	// RatePerSecond is Requests divided by the window's span.
	RatePerSecond float64 `json:"rate_rps"`
	// SuccessRatio is (Requests-Failures)/Requests; null with no requests.
	SuccessRatio *float64 `json:"success_ratio"`
	// P50MS and P99MS are latency quantiles in milliseconds from a
	// fixed-bucket histogram; null with no requests.
	P50MS *float64 `json:"p50_ms"`
	P99MS *float64 `json:"p99_ms"`
	// InFlight is how many requests (or attempts, for an upstream) are
	// running now.
	InFlight int64 `json:"inflight"`
	// TotalRequests counts every request recorded since the window was
	// created (it survives reloads that keep the route's name).
	TotalRequests uint64 `json:"total_requests"`
}

// Series are per-second points over the window, oldest first, for the
// status page's sparklines.
type Series struct {
	Requests []uint32 `json:"requests"`
	Failures []uint32 `json:"failures"`
}

// Health is a route's colour on the status page.
type Health string

// The health values, from best to worst.
const (
	HealthIdle     Health = "idle"     // no traffic in the window, nothing wrong known
	HealthOK       Health = "ok"       // traffic flows and nearly all of it succeeds
	HealthDegraded Health = "degraded" // some failures, a breaker not closed, or a cool-down
	HealthFailing  Health = "failing"  // most requests fail, or every upstream's breaker is open
)

// RouteStatus is one route on the status page.
type RouteStatus struct {
	Name   string `json:"name"`
	Health Health `json:"health"`
	Stats
	Series Series `json:"series"`
	// Upstreams are the primary, then the fallbacks in order.
	Upstreams []UpstreamStatus `json:"upstreams"`
	// Limiter is the route's rate limiter; omitted when it has none.
	Limiter *LimiterStatus `json:"limiter,omitempty"`
	// Cache is the route's response cache; omitted when it has none.
	Cache *CacheStatus `json:"cache,omitempty"`
}

// UpstreamStatus is one upstream of a route: its attempts' numbers and its
// shared health state.
type UpstreamStatus struct {
	// Name is host[:port], as in X-Ballast-Upstream.
	Name string `json:"name"`
	// Role is "primary" or "fallback".
	Role string `json:"role"`
	Stats
	// Breaker is closed, half_open, open, or disabled.
	Breaker string `json:"breaker"`
	// CooldownRemainingS is how long the upstream still asks ballast to
	// wait, in seconds (0 when it does not).
	CooldownRemainingS float64 `json:"cooldown_remaining_s"`
	// LastFailure is the most recent failure of an attempt at the
	// upstream on this route, or of ballast's own to open a connection to
	// it (ShortOf), worded; omitted before any. It outlives the window: an upstream failing now and then keeps
	// its last reason on show until the next failure replaces it.
	LastFailure *LastFailure `json:"last_failure,omitempty"`
}

// LimiterStatus is a route's rate and concurrency limits.
type LimiterStatus struct {
	// Name is the limiter's name: the route's, or the shared limiter's.
	Name string `json:"name,omitempty"`
	// EffectiveRPS is the rate the limiter applies now (adaptive limits
	// lower it below the configured rate after 429s); 0 when the route
	// has only a concurrency limit.
	EffectiveRPS float64 `json:"effective_rps"`
	// QueueDepth is how many requests wait for a concurrency slot now.
	QueueDepth int `json:"queue_depth"`
	// Limited counts requests the rate limit refused since it was created.
	Limited uint64 `json:"limited"`
}

// CacheStatus is a response cache's effectiveness, filled by a hook.
type CacheStatus struct {
	Hits   uint64 `json:"hits"`
	Misses uint64 `json:"misses"`
	// HitRatio is Hits/(Hits+Misses); null before any lookup.
	HitRatio *float64 `json:"hit_ratio"`
}

// NewCacheStatus returns the status for the given counts, with HitRatio
// computed.
func NewCacheStatus(hits, misses uint64) *CacheStatus {
	c := &CacheStatus{Hits: hits, Misses: misses}
	if n := hits + misses; n > 0 {
		r := round3(float64(hits) / float64(n))
		c.HitRatio = &r
	}
	return c
}

// JobsStatus is the async job queue, filled by a hook.
type JobsStatus struct {
	Running []Job `json:"running"`
	Waiting []Job `json:"waiting"`
	Failed  []Job `json:"failed"`
}

// Job is one async job.
type Job struct {
	// ID names the job by the first characters of its id, never the
	// whole id: that is the capability to read the job's result, which
	// only the agent that started the job is given.
	ID       string `json:"id"`
	Route    string `json:"route"`
	Attempts int    `json:"attempts"`
	// NextAction says what happens next ("retry", "deliver", "expire", or
	// "none" for a job that failed for good).
	NextAction string `json:"next_action"`
	// NextAt is when NextAction is due; omitted when not scheduled.
	NextAt *time.Time `json:"next_at,omitempty"`
	// Reason is the class or reason of the last failure, if any.
	Reason string `json:"reason,omitempty"`
}

// BreakerName is the /status word for a breaker state; nil breakers are
// "disabled".
func BreakerName(s policy.BreakerState, enabled bool) string {
	if !enabled {
		return "disabled"
	}
	return s.String()
}

// CountsAsFailure reports whether an outcome class counts against a
// route's or upstream's health (its success ratio and failure series).
// Caller faults and cancellations do not: they say nothing about the
// upstream or ballast.
func CountsAsFailure(c policy.Class) bool {
	return c != policy.OK && c != policy.CallerFault && c != policy.Canceled
}

// Health thresholds on the success ratio.
const (
	degradedBelow = 0.95
	failingBelow  = 0.5
)

// RouteHealth colours a route from its numbers and its upstreams' state.
func RouteHealth(r *RouteStatus) Health {
	open, notClosed, cooling := 0, 0, false
	for i := range r.Upstreams {
		u := &r.Upstreams[i]
		switch u.Breaker {
		case "open":
			open++
			notClosed++
		case "half_open":
			notClosed++
		}
		if u.CooldownRemainingS > 0 {
			cooling = true
		}
	}
	if len(r.Upstreams) > 0 && open == len(r.Upstreams) {
		return HealthFailing
	}
	if r.SuccessRatio != nil && *r.SuccessRatio < failingBelow {
		return HealthFailing
	}
	if notClosed > 0 || cooling || (r.SuccessRatio != nil && *r.SuccessRatio < degradedBelow) {
		return HealthDegraded
	}
	if r.Requests == 0 {
		return HealthIdle
	}
	return HealthOK
}
