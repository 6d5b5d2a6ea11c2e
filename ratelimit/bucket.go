package ratelimit

import (
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Bucket is one token bucket shared by every caller and key: a route's limit,
// or a named limit that several routes reference. It is safe for concurrent
// use. Create it with NewBucket; the zero value is not ready for use.
type Bucket struct {
	lim     *rate.Limiter
	burst   int
	limited atomic.Uint64
}

var _ Limiter = (*Bucket)(nil)

// NewBucket returns a full bucket for cfg, or an error wrapping
// ErrInvalidConfig.
func NewBucket(cfg Config) (*Bucket, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	return &Bucket{lim: rate.NewLimiter(rate.Limit(cfg.Rate), cfg.Burst), burst: cfg.Burst}, nil
}

// Reserve implements Limiter; key is ignored.
func (b *Bucket) Reserve(_ uint64, n int, now time.Time, maxWait time.Duration) (Reservation, error) {
	return reserve(b.lim, b.burst, 0, n, now, maxWait, &b.limited)
}

// Quota implements Limiter; key is ignored.
func (b *Bucket) Quota(_ uint64, now time.Time) Quota {
	return quotaOf(float64(b.lim.Limit()), b.burst, b.lim.TokensAt(now))
}

// Stats implements Limiter.
func (b *Bucket) Stats() Stats {
	return Stats{Rate: float64(b.lim.Limit()), Burst: b.burst, Limited: b.limited.Load()}
}

// setRateAt changes the refill rate from now on (for Adaptive).
func (b *Bucket) setRateAt(now time.Time, r float64) { b.lim.SetLimitAt(now, rate.Limit(r)) }

// reserve is Reserve for one in-process bucket.
//
// x/time/rate offers a bounded reservation only through AllowN (no wait) and
// WaitN (real clock), so reserve composes one: AllowN admits at once; else
// the wait is read from TokensAt without touching the bucket, and only a
// wait within maxWait is reserved with ReserveN. A refusal therefore changes
// nothing. (Reserving and then cancelling would not do: CancelAt returns
// only what later reservations have not built on, so under contention every
// refusal would leak tokens and the limiter would admit less than its rate.)
// The one cancel left covers losing a race between TokensAt and ReserveN.
func reserve(lim *rate.Limiter, burst int, key uint64, n int, now time.Time, maxWait time.Duration, limited *atomic.Uint64) (Reservation, error) {
	if n <= 0 {
		return Reservation{at: now, key: key}, nil
	}
	n = min(n, burst)
	if lim.AllowN(now, n) {
		return Reservation{at: now, lim: lim, key: key, n: n, burst: burst}, nil
	}
	limit := float64(lim.Limit())
	tokens := lim.TokensAt(now)
	wait := durationOf((float64(n) - tokens) / limit)
	if wait <= maxWait {
		res := *lim.ReserveN(now, n)
		delay := res.DelayFrom(now)
		if res.OK() && delay <= maxWait {
			return Reservation{at: now.Add(delay), delay: delay, res: res, lim: lim, key: key, n: n, burst: burst}, nil
		}
		res.CancelAt(now)
		tokens = lim.TokensAt(now)
		wait = delay
	}
	limited.Add(1)
	return Reservation{}, &LimitedError{RetryAfter: max(wait, 0), Quota: quotaOf(limit, burst, tokens)}
}
