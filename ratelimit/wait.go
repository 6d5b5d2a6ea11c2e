package ratelimit

import (
	"context"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// WaitBudget is how long a request may wait in line at now: maxWait, lowered
// to what is left before ctx's deadline. It is never negative; zero means the
// request is admitted only if units are available at once.
func WaitBudget(ctx context.Context, now time.Time, maxWait time.Duration) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		maxWait = min(maxWait, deadline.Sub(now))
	}
	return max(maxWait, 0)
}

// Wait blocks until r's time comes, using clock's timer. When ctx ends first
// (the agent disconnected, or its deadline passed), it cancels r at
// clock.Now() so the units go back, and returns ctx.Err(). A reservation with
// no wait left returns nil at once without looking at ctx.
func Wait(ctx context.Context, clock policy.Clock, r *Reservation) error {
	d := r.DelayFrom(clock.Now())
	if d <= 0 {
		return nil
	}
	t := clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		r.Cancel(clock.Now())
		return ctx.Err()
	}
}

// Admit reserves n units for key on lim, waiting in line for at most maxWait
// (lowered to ctx's remaining deadline), and returns once the caller may
// proceed. It returns a *LimitedError at once when the wait would be longer,
// and ctx.Err() (with the units given back) when ctx ends while waiting. The
// returned Reservation is for Settle.
func Admit(ctx context.Context, clock policy.Clock, lim Limiter, key uint64, n int, maxWait time.Duration) (Reservation, error) {
	now := clock.Now()
	r, err := lim.Reserve(key, n, now, WaitBudget(ctx, now, maxWait))
	if err != nil {
		return r, err
	}
	if err := Wait(ctx, clock, &r); err != nil {
		return Reservation{}, err
	}
	return r, nil
}
