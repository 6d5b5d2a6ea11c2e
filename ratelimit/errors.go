package ratelimit

import (
	"errors"
	"fmt"
	"time"
)

// ErrLimited is the sentinel of every refusal by a rate Limiter. Match it with
// errors.Is; errors.As with *LimitedError yields the numbers for Retry-After
// and the RateLimit response fields.
var ErrLimited = errors.New("ratelimit: rate limited")

// ErrOverloaded is the sentinel of every refusal by a Bulkhead (load shed).
// Match it with errors.Is; errors.As with *OverloadedError yields a
// Retry-After suggestion.
var ErrOverloaded = errors.New("ratelimit: overloaded")

// ErrInvalidConfig is wrapped by every constructor error.
var ErrInvalidConfig = errors.New("ratelimit: invalid config")

// LimitedError reports a refused reservation. RetryAfter is how long until the
// requested tokens would be available (the wait the request would have had in
// line); Quota describes the limiter at the time of refusal.
type LimitedError struct {
	RetryAfter time.Duration
	Quota
}

// Error implements error.
func (e *LimitedError) Error() string {
	return fmt.Sprintf("ratelimit: rate limited, retry after %v", e.RetryAfter)
}

// Unwrap returns ErrLimited.
func (e *LimitedError) Unwrap() error { return ErrLimited }

// OverloadedError reports a request shed by a Bulkhead: the queue was full,
// the queue wait would outlast the request's budget, or a normal-priority
// request took a low-priority request's place in a full queue. RetryAfter is a
// suggestion from the recent time requests held their slot.
type OverloadedError struct {
	RetryAfter time.Duration
	InFlight   int
	Queued     int
}

// Error implements error.
func (e *OverloadedError) Error() string {
	return fmt.Sprintf("ratelimit: overloaded (%d in flight, %d queued), retry after %v",
		e.InFlight, e.Queued, e.RetryAfter)
}

// Unwrap returns ErrOverloaded.
func (e *OverloadedError) Unwrap() error { return ErrOverloaded }

func configError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
}
