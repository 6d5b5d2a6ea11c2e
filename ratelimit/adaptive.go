package ratelimit

import (
	"math"
	"sync"
	"time"
)

// AdaptiveConfig sizes an Adaptive limiter. Zero values take the defaults
// noted on each field.
type AdaptiveConfig struct {
	// Config is the configured bucket; its Rate is the ceiling the
	// effective rate climbs back to.
	Config
	// Factor multiplies the effective rate on each upstream throttle; in
	// (0, 1). Zero means 0.5.
	Factor float64
	// Floor is the lowest effective rate, in units per second; in
	// (0, Rate]. Zero means Rate/10.
	Floor float64
	// Successes is the run of successes that earns one increase. Zero
	// means 10.
	Successes int
	// Step is the additive increase, in units per second. Zero means
	// Rate/10.
	Step float64
	// Cooldown merges throttles closer together than it into one decrease,
	// so that a volley of 429s from requests already in flight halves the
	// rate once, not once per request. Zero means one second; negative means
	// every throttle decreases.
	Cooldown time.Duration
}

// Adaptive is a Bucket whose effective rate follows the upstream by additive
// increase, multiplicative decrease (as AWS SDK adaptive retry mode does):
// each upstream throttle (429) multiplies the rate by Factor, down to Floor;
// each run of Successes successes adds Step, up to the configured Rate. The
// burst does not change. It is safe for concurrent use; one value may be
// shared by several routes. Create it with NewAdaptive.
type Adaptive struct {
	*Bucket
	cfg AdaptiveConfig

	mu           sync.Mutex
	rate         float64
	run          int
	lastDecrease time.Time
}

var _ Limiter = (*Adaptive)(nil)

// NewAdaptive returns an Adaptive limiter at its configured rate, or an error
// wrapping ErrInvalidConfig.
func NewAdaptive(cfg AdaptiveConfig) (*Adaptive, error) {
	c, err := cfg.Config.normalize()
	if err != nil {
		return nil, err
	}
	cfg.Config = c
	if cfg.Factor == 0 {
		cfg.Factor = 0.5
	}
	if cfg.Floor == 0 {
		cfg.Floor = c.Rate / 10
	}
	if cfg.Successes == 0 {
		cfg.Successes = 10
	}
	if cfg.Step == 0 {
		cfg.Step = c.Rate / 10
	}
	if cfg.Cooldown == 0 {
		cfg.Cooldown = time.Second
	}
	switch {
	case !(cfg.Factor > 0 && cfg.Factor < 1):
		return nil, configError("factor must be in (0, 1), got %v", cfg.Factor)
	case !(cfg.Floor > 0 && cfg.Floor <= c.Rate):
		return nil, configError("floor must be in (0, rate], got %v", cfg.Floor)
	case cfg.Successes < 1:
		return nil, configError("successes must be ≥ 1, got %d", cfg.Successes)
	case !(cfg.Step > 0) || math.IsInf(cfg.Step, 0):
		return nil, configError("step must be finite and > 0, got %v", cfg.Step)
	}
	b, err := NewBucket(c)
	if err != nil {
		return nil, err
	}
	return &Adaptive{Bucket: b, cfg: cfg, rate: c.Rate}, nil
}

// EffectiveRate is the current refill rate in units per second.
func (a *Adaptive) EffectiveRate() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.rate
}

// OnThrottle records an upstream throttle (429) at now: the rate is
// multiplied by Factor (not below Floor) unless the previous decrease was
// within Cooldown, and the run of successes restarts.
func (a *Adaptive) OnThrottle(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.run = 0
	if a.cfg.Cooldown > 0 && !a.lastDecrease.IsZero() && now.Sub(a.lastDecrease) < a.cfg.Cooldown {
		return
	}
	a.lastDecrease = now
	a.set(now, max(a.cfg.Floor, a.rate*a.cfg.Factor))
}

// OnSuccess records an upstream success at now; every Successes-th in a row
// while below the configured rate adds Step (not above the configured rate).
func (a *Adaptive) OnSuccess(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.rate >= a.cfg.Rate {
		a.run = 0
		return
	}
	a.run++
	if a.run < a.cfg.Successes {
		return
	}
	a.run = 0
	a.set(now, min(a.cfg.Rate, a.rate+a.cfg.Step))
}

// set changes the rate; a.mu must be held.
func (a *Adaptive) set(now time.Time, r float64) {
	if r == a.rate {
		return
	}
	a.rate = r
	a.setRateAt(now, r)
}
