package store

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

type sweepResult struct {
	removed int
	err     error
}

// startSweeper runs RunSweeper in a goroutine and returns its reports and a
// channel closed when it returns.
func startSweeper(ctx context.Context, s Store, clock *policy.FakeClock, every time.Duration) (<-chan sweepResult, <-chan struct{}) {
	reports := make(chan sweepResult, 16)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		RunSweeper(ctx, s, clock, every, func(n int, err error) { reports <- sweepResult{n, err} })
	}()
	return reports, stopped
}

func awaitTimer(clock *policy.FakeClock) {
	for clock.Waiters() == 0 {
		runtime.Gosched()
	}
}

func TestRunSweeperRemovesExpiredAndStops(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	s := OpenMemory(MemoryOptions{})
	defer s.Close()
	held := mustClaim(t, s, "k", args("a", t0))
	if err := s.Complete(context.Background(), held, resp("r"), t0, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	reports, stopped := startSweeper(ctx, s, clock, time.Minute)

	steps := []struct {
		name        string
		wantRemoved int
	}{
		{"t0+1m: not yet expired", 0},
		{"t0+2m: expired at t0+90s", 1},
		{"t0+3m: nothing left", 0},
	}
	for _, st := range steps {
		awaitTimer(clock)
		clock.Advance(time.Minute)
		if r := <-reports; r.err != nil || r.removed != st.wantRemoved {
			t.Fatalf("%s: report = %+v, want %d removed", st.name, r, st.wantRemoved)
		}
	}
	awaitTimer(clock)
	cancel()
	<-stopped
	if clock.Waiters() != 0 {
		t.Fatalf("sweeper left %d timers", clock.Waiters())
	}
}

func TestRunSweeperStopsOnClose(t *testing.T) {
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			clock := policy.NewFakeClock(t0)
			s := be.open(t, Limits{})
			reports, stopped := startSweeper(context.Background(), s, clock, 0)
			awaitTimer(clock)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			clock.Advance(DefaultSweepEvery)
			<-stopped
			select {
			case r := <-reports:
				t.Fatalf("sweeper reported %+v after Close", r)
			default:
			}
			if _, err := s.Sweep(t0); !errors.Is(err, ErrClosed) {
				t.Fatalf("Sweep after Close = %v", err)
			}
		})
	}
}
