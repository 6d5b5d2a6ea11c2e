package policy

import (
	"math/rand/v2"
	"time"
)

// Backoff is exponential backoff with full jitter (the "Full Jitter" of the
// AWS Architecture Blog's "Exponential Backoff and Jitter"): the delay before
// retry n (n = 0 for the first retry) is uniform in [0, min(Max, Base·2^n)).
// Full jitter spreads the retries of many clients that failed together, so
// they do not return in synchronized waves.
//
// Config defaults are Base 100ms and Max 10s. The zero value, and any value
// with Base ≤ 0 or Max ≤ 0, gives no delay.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// Ceiling returns min(Max, Base·2^retry), the exclusive upper bound of the
// delay before retry number retry (0-based; negative counts as 0). It never
// overflows, however large retry is.
func (b Backoff) Ceiling(retry int) time.Duration {
	if b.Base <= 0 || b.Max <= 0 {
		return 0
	}
	if retry < 0 {
		retry = 0
	}
	if retry >= 62 || b.Base > b.Max>>uint(retry) {
		return b.Max
	}
	return b.Base << uint(retry)
}

// Delay returns the jittered delay before retry number retry: a uniform
// draw from [0, Ceiling(retry)). int63n must return a value in [0, n), as
// rand.Int64N does; nil uses math/rand/v2, which is safe for concurrent use
// and does not allocate. Tests pass a deterministic function.
func (b Backoff) Delay(retry int, int63n func(int64) int64) time.Duration {
	ceiling := b.Ceiling(retry)
	if ceiling <= 0 {
		return 0
	}
	var d int64
	if int63n == nil {
		d = rand.Int64N(int64(ceiling))
	} else {
		d = int63n(int64(ceiling))
	}
	// Keep a faulty source inside the contract rather than trusting it.
	if d < 0 {
		d = 0
	} else if d >= int64(ceiling) {
		d = int64(ceiling) - 1
	}
	return time.Duration(d)
}
