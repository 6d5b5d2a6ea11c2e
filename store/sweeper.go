package store

import (
	"context"
	"errors"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// DefaultSweepEvery is the sweep interval RunSweeper uses when every ≤ 0.
const DefaultSweepEvery = time.Minute

// RunSweeper calls s.Sweep(clock.Now()) every interval until ctx ends or the
// store is closed, and passes each result to report (which may be nil). It
// blocks; the caller runs it in a goroutine and cancels ctx before, or
// closes s, to stop it. One goroutine sweeps the whole store: there is no
// timer per entry.
func RunSweeper(ctx context.Context, s Store, clock policy.Clock, every time.Duration, report func(removed int, err error)) {
	if every <= 0 {
		every = DefaultSweepEvery
	}
	for {
		t := clock.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		removed, err := s.Sweep(clock.Now())
		if errors.Is(err, ErrClosed) {
			return
		}
		if report != nil {
			report(removed, err)
		}
	}
}
