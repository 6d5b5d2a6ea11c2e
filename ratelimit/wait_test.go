package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

func TestWaitBudget(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		deadline time.Duration // 0: none
		maxWait  time.Duration
		want     time.Duration
	}{
		{name: "no deadline", maxWait: 5 * time.Second, want: 5 * time.Second},
		{name: "deadline sooner", deadline: 2 * time.Second, maxWait: 5 * time.Second, want: 2 * time.Second},
		{name: "max_wait sooner", deadline: time.Hour, maxWait: 5 * time.Second, want: 5 * time.Second},
		{name: "deadline passed", deadline: -time.Second, maxWait: 5 * time.Second, want: 0},
		{name: "negative max_wait", maxWait: -time.Second, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.deadline != 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, now.Add(tt.deadline))
				defer cancel()
			}
			if got := WaitBudget(ctx, now, tt.maxWait); got != tt.want {
				t.Errorf("WaitBudget = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestWaitProceedsWhenTimeComes(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBucket(t, Config{Rate: 10, Burst: 1})
	if _, err := b.Reserve(0, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	r, err := b.Reserve(0, 1, t0, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- Wait(context.Background(), clock, &r) }()
	waitForTimers(t, clock, 1)
	clock.Advance(99 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before the reservation's time", err)
	default:
	}
	clock.Advance(time.Millisecond)
	if err := <-done; err != nil {
		t.Fatalf("Wait = %v", err)
	}
}

func TestWaitCancelledReturnsTokens(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBucket(t, Config{Rate: 1, Burst: 1})
	if _, err := b.Reserve(0, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	r, err := b.Reserve(0, 1, t0, 5*time.Second)
	if err != nil || r.Delay() != time.Second {
		t.Fatalf("reserve: %v %v", r.Delay(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Wait(ctx, clock, &r) }()
	waitForTimers(t, clock, 1)
	clock.Advance(300 * time.Millisecond)
	cancel() // the agent disconnected
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
	if clock.Waiters() != 0 {
		t.Error("Wait left its timer running")
	}
	// The token due at 1s went back: the next request waits 700ms, not 1.7s.
	next, err := b.Reserve(0, 1, clock.Now(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if next.Delay() != 700*time.Millisecond {
		t.Errorf("next delay = %v, want 700ms", next.Delay())
	}
}

func TestAdmit(t *testing.T) {
	tests := []struct {
		name      string
		deadline  time.Duration // from now, 0: none
		maxWait   time.Duration
		wantErr   error
		wantTimer bool
	}{
		{name: "waits within max_wait", maxWait: time.Second, wantTimer: true},
		{name: "refused: wait beyond max_wait", maxWait: 400 * time.Millisecond, wantErr: ErrLimited},
		{name: "refused: wait beyond deadline", maxWait: time.Second, deadline: 400 * time.Millisecond, wantErr: ErrLimited},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			clock := policy.NewFakeClock(start)
			b := mustBucket(t, Config{Rate: 2, Burst: 1})
			if _, err := b.Reserve(0, 1, start, 0); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tt.deadline != 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, start.Add(tt.deadline))
				defer cancel()
			}
			done := make(chan error)
			go func() {
				_, err := Admit(ctx, clock, b, 0, 1, tt.maxWait)
				done <- err
			}()
			if tt.wantTimer {
				waitForTimers(t, clock, 1)
				clock.Advance(500 * time.Millisecond)
			}
			if err := <-done; !errors.Is(err, tt.wantErr) {
				t.Errorf("Admit = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// waitForTimers blocks until clock has n pending timers, so that the test
// advances time only after the goroutine under test started waiting.
func waitForTimers(t *testing.T, clock *policy.FakeClock, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for clock.Waiters() < n {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d timers (have %d)", n, clock.Waiters())
		}
		runtimeGosched()
	}
}
