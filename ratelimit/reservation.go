package ratelimit

import (
	"time"

	"golang.org/x/time/rate"
)

// Reservation is units taken from a Limiter by Reserve. It is a value (no
// allocation); keep it in one place and call its methods through a pointer,
// since Cancel and Settle record that they were done and act only once.
//
// The zero Reservation holds nothing: Delay is zero and Cancel and Settle do
// nothing.
type Reservation struct {
	at     time.Time        // when the caller may proceed
	delay  time.Duration    // at minus the reservation time
	res    rate.Reservation // in-process backends
	lim    *rate.Limiter    // in-process backends; nil otherwise
	remote Settler          // other backends; nil otherwise
	key    uint64
	n      int
	burst  int
	done   bool
}

// maxDebtBursts caps the debt one Settle can take, in bursts.
const maxDebtBursts = 16

// NewReservation builds a Reservation for a Limiter outside this package: n
// units taken under key at now, usable after delay. Cancel and Settle call s.
func NewReservation(s Settler, key uint64, n int, now time.Time, delay time.Duration) Reservation {
	if delay < 0 {
		delay = 0
	}
	return Reservation{at: now.Add(delay), delay: delay, remote: s, key: key, n: n}
}

// Delay is the wait, from the time of the Reserve call, before the caller may
// proceed. Zero means at once.
func (r *Reservation) Delay() time.Duration { return r.delay }

// DelayFrom is the wait still left at now; never negative.
func (r *Reservation) DelayFrom(now time.Time) time.Duration {
	if d := r.at.Sub(now); d > 0 {
		return d
	}
	return 0
}

// Tokens is the number of units the reservation holds (n from Reserve, after
// clamping to the burst).
func (r *Reservation) Tokens() int { return r.n }

// Cancel gives the units back because the caller will not proceed (its
// context ended while it waited). It has effect only while now is before the
// time the caller could have proceeded, and returns only what reservations
// made since allow (x/time/rate's CancelAt). Cancel after Cancel or Settle
// does nothing.
func (r *Reservation) Cancel(now time.Time) {
	if r.done || r.n == 0 {
		return
	}
	r.done = true
	if !now.Before(r.at) {
		return
	}
	if r.remote != nil {
		r.remote.CancelReservation(r.key, r.n, r.at, now)
		return
	}
	if r.lim != nil {
		r.res.CancelAt(now)
	}
}

// Settle replaces the estimate the reservation was made with by the units
// actually used (for token-aware limits: the usage the response reported).
// When actual is lower, the difference goes back to the bucket (up to its
// burst); when higher, the difference is taken at now as debt, so later
// requests wait longer. actual < 0 is treated as 0. Settle after Cancel or
// Settle does nothing.
func (r *Reservation) Settle(actual int, now time.Time) {
	if r.done {
		return
	}
	r.done = true
	if actual < 0 {
		actual = 0
	}
	delta := actual - r.n
	if delta == 0 {
		return
	}
	if r.remote != nil {
		r.remote.AdjustReservation(r.key, delta, now)
		return
	}
	if r.lim != nil {
		adjust(r.lim, r.burst, delta, now)
	}
}

// adjust takes delta tokens from lim at now (debt) or, for delta < 0, gives
// -delta back. x/time/rate has no deposit method; reserving a negative count
// is its arithmetic inverse: the token count rises (capped at the burst on
// the next update) and the time of the last reserved event moves back by as
// much. Debt is taken in pieces of at most burst, since ReserveN refuses more,
// and is capped at maxDebtBursts bursts so that a wild usage figure from an
// upstream cannot stall the limiter for ever.
func adjust(lim *rate.Limiter, burst, delta int, now time.Time) {
	if delta < 0 {
		if delta < -burst {
			delta = -burst
		}
		lim.ReserveN(now, delta)
		return
	}
	if burst < 1 {
		return
	}
	if delta > maxDebtBursts*burst {
		delta = maxDebtBursts * burst
	}
	for delta > 0 {
		step := min(delta, burst)
		lim.ReserveN(now, step)
		delta -= step
	}
}
