// Package policy holds the decisions ballast makes about one upstream
// exchange: the failure class of an outcome, whether and when to retry, the
// retry budget, and the clock those decisions read.
//
// policy is a leaf: it imports only the standard library and fasthttp types,
// so every other package can depend on it.
package policy

import "time"

// Clock is the source of time for every retry, backoff, rate and expiry
// decision. Production code uses SystemClock; tests use a FakeClock so that
// behaviour over time is deterministic and needs no sleeping.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once after d. A d ≤ 0 fires at once.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer that waits use. Stop reports whether it
// stopped the timer before it fired, as time.Timer.Stop does.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// SystemClock is the wall clock. Its zero value is ready to use.
type SystemClock struct{}

var _ Clock = SystemClock{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer returns a real timer.
func (SystemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (s systemTimer) C() <-chan time.Time { return s.t.C }
func (s systemTimer) Stop() bool          { return s.t.Stop() }
