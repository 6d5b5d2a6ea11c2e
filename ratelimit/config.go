package ratelimit

import (
	"math"
	"time"
)

// Config sizes one token bucket.
type Config struct {
	// Rate is the sustained refill rate in units per second. It must be
	// finite and > 0.
	Rate float64
	// Burst is the bucket size: the most units available at once, and the
	// most one Reserve can take. Zero means max(1, ⌈Rate⌉) (one second's
	// worth); it must not be negative.
	Burst int
}

// PerMinute is the Config of a tokens_per_minute limit: n units per minute,
// with a burst of a whole minute's worth.
func PerMinute(n int) Config { return Config{Rate: float64(n) / 60, Burst: n} }

// normalize validates c and fills its defaults.
func (c Config) normalize() (Config, error) {
	if math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate <= 0 {
		return c, configError("rate must be finite and > 0, got %v", c.Rate)
	}
	if c.Burst < 0 {
		return c, configError("burst must be ≥ 0, got %d", c.Burst)
	}
	if c.Burst == 0 {
		c.Burst = int(max(1, math.Ceil(c.Rate)))
	}
	return c, nil
}

// quotaOf describes a bucket of rate r and burst b holding tokens (which may
// be negative while reservations are queued).
func quotaOf(r float64, b int, tokens float64) Quota {
	window := max(1, math.Ceil(float64(b)/r))
	q := Quota{
		Limit:  int64(max(float64(b), math.Floor(r*window))),
		Window: time.Duration(window * float64(time.Second)),
	}
	if tokens > 0 {
		q.Remaining = int64(math.Floor(tokens))
	}
	if missing := float64(b) - tokens; missing > 0 {
		q.Reset = durationOf(missing / r)
	}
	return q
}

// durationOf converts seconds to a Duration, saturating instead of
// overflowing.
func durationOf(seconds float64) time.Duration {
	if seconds >= float64(math.MaxInt64)/float64(time.Second) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(seconds * float64(time.Second))
}
