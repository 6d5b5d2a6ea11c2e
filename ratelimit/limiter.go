package ratelimit

import "time"

// Limiter decides admission for n units (requests, or model tokens) under a
// partition key at an explicit time. Implementations are safe for concurrent
// use; one value may be shared by several routes. Limiters that do not
// partition (Bucket, Adaptive) ignore key.
//
// The in-process implementations are Bucket, Keyed and Adaptive; a distributed
// backend implements the same interface and builds its Reservations with
// NewReservation, so callers do not change.
type Limiter interface {
	// Reserve takes n units for key at now if they are available within
	// maxWait, and returns a Reservation whose Delay is the wait before the
	// caller may proceed (zero when admitted at once). When the wait would
	// exceed maxWait it takes nothing and returns a *LimitedError (wrapping
	// ErrLimited). maxWait ≤ 0 admits only what is available at once. n ≤ 0
	// is admitted at once and takes nothing. An n larger than the burst is
	// clamped to the burst: such a request waits for a full bucket and takes
	// all of it (Reservation.Tokens reports what was taken).
	Reserve(key uint64, n int, now time.Time, maxWait time.Duration) (Reservation, error)
	// Quota reports the limiter's state for key at now, for the RateLimit
	// response fields. It takes nothing and does not create per-key state.
	Quota(key uint64, now time.Time) Quota
	// Stats reports counters for metrics and the status page.
	Stats() Stats
}

// Settler is the part of a Limiter that a Reservation calls back into. Only
// backends outside this package implement it (see NewReservation); the
// in-process limiters settle through x/time/rate directly.
type Settler interface {
	// CancelReservation returns the n units reserved under key for time at,
	// as far as reservations made after it allow. It is called only while
	// now is before at (the caller has not proceeded).
	CancelReservation(key uint64, n int, at, now time.Time)
	// AdjustReservation takes delta more units under key at now when delta
	// > 0 (debt: later requests wait longer), or returns -delta units when
	// delta < 0.
	AdjustReservation(key uint64, delta int, now time.Time)
}

// Quota is what the IETF RateLimit-Policy and RateLimit fields report about
// one limiter (see AppendRateLimitFields). A token bucket of rate r and burst
// b is described as Limit = max(b, r·Window) units per Window, where Window
// is the time a drained bucket takes to refill (at least one second).
type Quota struct {
	// Limit is the quota (q): units allowed per Window.
	Limit int64
	// Window is the quota's time window (w).
	Window time.Duration
	// Remaining is the units available now (r), never negative.
	Remaining int64
	// Reset is the time until the bucket is full again (t); zero when full.
	Reset time.Duration
}

// Stats are a limiter's numbers for metrics and status. The proxy owns the
// Prometheus collectors; it reads these.
type Stats struct {
	// Rate is the effective refill rate in units per second (the configured
	// rate, or the adaptive rate after upstream 429s).
	Rate float64
	// Burst is the bucket size.
	Burst int
	// Limited counts refusals (Reserve returning ErrLimited) since creation.
	Limited uint64
	// Keys is the number of per-key buckets held (Keyed only; else zero).
	Keys int
}
