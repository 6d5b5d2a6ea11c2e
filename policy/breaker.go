package policy

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is a circuit breaker's state.
type BreakerState int32

// The breaker states. Their numbers are the values of the
// ballast_breaker_state gauge.
const (
	StateClosed   BreakerState = 0 // requests flow; failures are counted
	StateHalfOpen BreakerState = 1 // a few probes test whether the upstream recovered
	StateOpen     BreakerState = 2 // requests fail fast until OpenFor has passed
)

func (s BreakerState) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half_open"
	case StateOpen:
		return "open"
	}
	return "unknown"
}

// BreakerConfig configures a Breaker. The zero value of a field means its
// default.
type BreakerConfig struct {
	// Failures opens the breaker after this many consecutive failures.
	// Default 5. Values above math.MaxInt32 (the counter's range) count
	// as math.MaxInt32.
	Failures int
	// FailureRatio, when > 0, also opens it when the share of failures in
	// the last Window reaches it, once MinRequests were seen there.
	FailureRatio float64
	// MinRequests is the least number of requests in Window before
	// FailureRatio applies. Default 20.
	MinRequests int
	// Window is the span FailureRatio looks at. Default 10s.
	Window time.Duration
	// OpenFor is how long the breaker stays open before probing. Default 30s.
	OpenFor time.Duration
	// HalfOpenProbes is how many requests may probe at once while half
	// open; that many consecutive successes close it. Default 1.
	HalfOpenProbes int
}

// Breaker is a circuit breaker for one upstream, driven by explicit times
// so tests are deterministic.
//
// ballast keeps its own rather than github.com/sony/gobreaker/v2: gobreaker
// reads time.Now() internally, which would put real sleeps into every test
// of open and half-open behaviour, and its generation bookkeeping adds a
// mutex to every request. Here a closed breaker admits without locking.
//
// Callers ask Allow before an attempt and report its outcome with Record,
// passing back the probe flag Allow returned. Only upstream-health failures
// (transient, timeout, invalid) should be recorded as failures: rate limits
// have the cool-down, and caller faults say nothing about the upstream.
type Breaker struct {
	cfg      BreakerConfig
	state    atomic.Int32 // BreakerState; read without the lock on the hot path
	failures atomic.Int32 // consecutive failures while closed
	onChange func(BreakerState)

	mu          sync.Mutex
	openUntil   time.Time
	probes      int // probes in flight while half open
	probeWins   int
	windowStart time.Time
	windowReqs  int
	windowFails int
}

// NewBreaker returns a closed breaker. onChange, when not nil, is called
// (under the breaker's lock: keep it short) on every state change.
func NewBreaker(cfg BreakerConfig, onChange func(BreakerState)) *Breaker {
	if cfg.Failures <= 0 {
		cfg.Failures = 5
	}
	// The consecutive count is an int32: a larger bound would wrap when
	// converted, to one a success already meets.
	cfg.Failures = min(cfg.Failures, math.MaxInt32)
	if cfg.MinRequests <= 0 {
		cfg.MinRequests = 20
	}
	if cfg.Window <= 0 {
		cfg.Window = 10 * time.Second
	}
	if cfg.OpenFor <= 0 {
		cfg.OpenFor = 30 * time.Second
	}
	if cfg.HalfOpenProbes <= 0 {
		cfg.HalfOpenProbes = 1
	}
	return &Breaker{cfg: cfg, onChange: onChange}
}

// State returns the state at now (an open breaker whose time is up reads
// as half open).
func (b *Breaker) State(now time.Time) BreakerState {
	s := BreakerState(b.state.Load())
	if s == StateOpen {
		b.mu.Lock()
		defer b.mu.Unlock()
		if !now.Before(b.openUntil) {
			return StateHalfOpen
		}
	}
	return s
}

// Allow reports whether an attempt may go to the upstream at now. probe
// says the attempt is a half-open probe; pass it back to Record. When ok
// is false, retryIn says when the breaker will next let a probe through.
func (b *Breaker) Allow(now time.Time) (ok, probe bool, retryIn time.Duration) {
	if b == nil || BreakerState(b.state.Load()) == StateClosed {
		return true, false, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch BreakerState(b.state.Load()) {
	case StateClosed:
		return true, false, 0
	case StateOpen:
		if now.Before(b.openUntil) {
			return false, false, b.openUntil.Sub(now)
		}
		b.setLocked(StateHalfOpen)
		b.probes, b.probeWins = 0, 0
	}
	if b.probes >= b.cfg.HalfOpenProbes {
		return false, false, time.Second
	}
	b.probes++
	return true, true, 0
}

// Release gives back a probe that Allow granted for an attempt that was
// then not made (the retry budget, a cool-down or the rate limit stopped
// it first). Without it the half-open breaker would wait forever for the
// probe's outcome and refuse every request. It does nothing unless probe.
func (b *Breaker) Release(probe bool) {
	if b == nil || !probe {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) == StateHalfOpen && b.probes > 0 {
		b.probes--
	}
}

// Record reports the outcome of an attempt Allow admitted.
func (b *Breaker) Record(now time.Time, success, probe bool) {
	if b == nil {
		return
	}
	if !probe && BreakerState(b.state.Load()) == StateClosed && b.cfg.FailureRatio <= 0 {
		// Fast path: consecutive counting only.
		if success {
			if b.failures.Load() != 0 {
				b.failures.Store(0)
			}
			return
		}
		if b.failures.Add(1) < int32(b.cfg.Failures) {
			return
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch BreakerState(b.state.Load()) {
	case StateHalfOpen:
		if !probe {
			return
		}
		b.probes--
		if !success {
			b.openLocked(now)
			return
		}
		if b.probeWins++; b.probeWins >= b.cfg.HalfOpenProbes {
			b.failures.Store(0)
			b.windowStart, b.windowReqs, b.windowFails = now, 0, 0
			b.setLocked(StateClosed)
		}
	case StateClosed:
		if success {
			b.failures.Store(0)
		} else if b.failures.Load() < int32(b.cfg.Failures) {
			b.failures.Add(1)
		}
		trip := b.failures.Load() >= int32(b.cfg.Failures)
		if b.cfg.FailureRatio > 0 {
			if now.Sub(b.windowStart) >= b.cfg.Window {
				b.windowStart, b.windowReqs, b.windowFails = now, 0, 0
			}
			b.windowReqs++
			if !success {
				b.windowFails++
			}
			if b.windowReqs >= b.cfg.MinRequests && float64(b.windowFails) >= b.cfg.FailureRatio*float64(b.windowReqs) {
				trip = true
			}
		}
		if trip {
			b.openLocked(now)
		}
	}
}

func (b *Breaker) openLocked(now time.Time) {
	b.openUntil = now.Add(b.cfg.OpenFor)
	b.probes, b.probeWins = 0, 0
	b.failures.Store(0)
	b.setLocked(StateOpen)
}

func (b *Breaker) setLocked(s BreakerState) {
	if BreakerState(b.state.Swap(int32(s))) != s && b.onChange != nil {
		b.onChange(s)
	}
}
