package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

func mustBulkhead(t testing.TB, cfg BulkheadConfig) *Bulkhead {
	t.Helper()
	b, err := NewBulkhead(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type acquired struct {
	name   string
	permit Permit
	err    error
}

// acquireAsync starts Acquire in a goroutine and waits until it is queued.
func acquireAsync(t *testing.T, b *Bulkhead, ctx context.Context, clock policy.Clock, p Priority, name string, out chan<- acquired) {
	t.Helper()
	before := b.Stats().Queued
	go func() {
		permit, err := b.Acquire(ctx, clock, p)
		out <- acquired{name: name, permit: permit, err: err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for b.Stats().Queued == before {
		if time.Now().After(deadline) {
			t.Fatalf("%s never queued", name)
		}
		runtimeGosched()
	}
}

func TestBulkheadAdmitsUpToMaxConcurrency(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 2})
	p1, err1 := b.Acquire(context.Background(), clock, PriorityNormal)
	p2, err2 := b.Acquire(context.Background(), clock, PriorityLow)
	if err1 != nil || err2 != nil {
		t.Fatalf("acquire: %v, %v", err1, err2)
	}
	_, err := b.Acquire(context.Background(), clock, PriorityNormal)
	var oe *OverloadedError
	if !errors.As(err, &oe) || !errors.Is(err, ErrOverloaded) {
		t.Fatalf("third acquire with no queue: %v, want *OverloadedError", err)
	}
	if oe.RetryAfter != DefaultShedRetryAfter || oe.InFlight != 2 {
		t.Errorf("shed = %+v, want default retry-after and 2 in flight", oe)
	}
	p1.Release(clock.Now())
	p1.Release(clock.Now()) // a second Release does nothing
	if got := b.Stats(); got.InFlight != 1 || got.Shed != 1 {
		t.Errorf("Stats = %+v, want 1 in flight, 1 shed", got)
	}
	p2.Release(clock.Now())
	if got := b.Stats().InFlight; got != 0 {
		t.Errorf("InFlight = %d after all released", got)
	}
}

func TestBulkheadShedsWhenQueueFull(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 1})
	held, err := b.Acquire(context.Background(), clock, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan acquired, 2)
	acquireAsync(t, b, context.Background(), clock, PriorityNormal, "queued", out)
	if _, err := b.Acquire(context.Background(), clock, PriorityNormal); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("acquire past a full queue = %v, want ErrOverloaded", err)
	}
	clock.Advance(2 * time.Second)
	held.Release(clock.Now()) // held 2s: hands the slot to the queued request
	got := <-out
	if got.err != nil {
		t.Fatalf("queued request: %v", got.err)
	}
	if s := b.Stats(); s.InFlight != 1 || s.Queued != 0 {
		t.Errorf("Stats = %+v, want the slot handed over", s)
	}
	got.permit.Release(clock.Now())
}

func TestBulkheadRetryAfterFollowsHoldTime(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1})
	p, _ := b.Acquire(context.Background(), clock, PriorityNormal)
	clock.Advance(3 * time.Second)
	p.Release(clock.Now())
	p, _ = b.Acquire(context.Background(), clock, PriorityNormal)
	_, err := b.Acquire(context.Background(), clock, PriorityNormal)
	var oe *OverloadedError
	if !errors.As(err, &oe) || oe.RetryAfter != 3*time.Second {
		t.Errorf("shed = %v, want retry after 3s", err)
	}
	p.Release(clock.Now())
}

func TestBulkheadQueueWaitBounded(t *testing.T) {
	tests := []struct {
		name     string
		maxWait  time.Duration
		deadline time.Duration // from the fake clock's start; 0: none
		advance  time.Duration
	}{
		{name: "by max_wait", maxWait: time.Second, advance: time.Second},
		{name: "by the deadline", maxWait: time.Minute, deadline: 500 * time.Millisecond, advance: 500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			clock := policy.NewFakeClock(start)
			b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 5, MaxWait: tt.maxWait})
			held, _ := b.Acquire(context.Background(), clock, PriorityNormal)
			ctx := context.Background()
			if tt.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, start.Add(tt.deadline+time.Hour))
				defer cancel()
				// The budget is computed from the fake now; give the real
				// deadline an hour's slack so only the fake clock decides.
				ctx = deadlineOverride{ctx, start.Add(tt.deadline)}
			}
			out := make(chan acquired, 1)
			acquireAsync(t, b, ctx, clock, PriorityNormal, "waiter", out)
			waitForTimers(t, clock, 1)
			clock.Advance(tt.advance - time.Nanosecond)
			select {
			case got := <-out:
				t.Fatalf("returned early: %v", got.err)
			default:
			}
			clock.Advance(time.Nanosecond)
			got := <-out
			if !errors.Is(got.err, ErrOverloaded) {
				t.Fatalf("err = %v, want ErrOverloaded", got.err)
			}
			if s := b.Stats(); s.Queued != 0 || s.InFlight != 1 || s.Shed != 1 {
				t.Errorf("Stats = %+v, want waiter gone and counted as shed", s)
			}
			held.Release(clock.Now())
			if s := b.Stats(); s.InFlight != 0 {
				t.Errorf("slot handed to a waiter that left: %+v", s)
			}
		})
	}
}

// deadlineOverride reports a chosen deadline while keeping ctx's Done.
type deadlineOverride struct {
	context.Context
	deadline time.Time
}

func (d deadlineOverride) Deadline() (time.Time, bool) { return d.deadline, true }

func TestBulkheadPastDeadlineShedsAtOnce(t *testing.T) {
	start := time.Now()
	clock := policy.NewFakeClock(start)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 5})
	held, _ := b.Acquire(context.Background(), clock, PriorityNormal)
	ctx := deadlineOverride{context.Background(), start}
	if _, err := b.Acquire(ctx, clock, PriorityNormal); !errors.Is(err, ErrOverloaded) {
		t.Errorf("err = %v, want ErrOverloaded without queueing", err)
	}
	held.Release(clock.Now())
}

func TestBulkheadNormalBeforeLow(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 10})
	held, _ := b.Acquire(context.Background(), clock, PriorityNormal)
	out := make(chan acquired, 4)
	// Low work queues first; normal work arriving later still goes first.
	acquireAsync(t, b, context.Background(), clock, PriorityLow, "low-1", out)
	acquireAsync(t, b, context.Background(), clock, PriorityLow, "low-2", out)
	acquireAsync(t, b, context.Background(), clock, PriorityNormal, "normal-1", out)
	acquireAsync(t, b, context.Background(), clock, PriorityNormal, "normal-2", out)
	if s := b.Stats(); s.Queued != 4 || s.QueuedLow != 2 {
		t.Fatalf("Stats = %+v", s)
	}
	var order []string
	current := held
	for range 4 {
		current.Release(clock.Now())
		got := <-out
		if got.err != nil {
			t.Fatalf("%s: %v", got.name, got.err)
		}
		order = append(order, got.name)
		current = got.permit
	}
	current.Release(clock.Now())
	want := []string{"normal-1", "normal-2", "low-1", "low-2"}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("admission order %v, want %v", order, want)
		}
	}
}

func TestBulkheadNormalDisplacesLowInFullQueue(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 2})
	held, _ := b.Acquire(context.Background(), clock, PriorityNormal)
	out := make(chan acquired, 3)
	acquireAsync(t, b, context.Background(), clock, PriorityLow, "low-1", out)
	acquireAsync(t, b, context.Background(), clock, PriorityLow, "low-2", out)
	// Queue full of low work: a low request is shed, a normal one takes the
	// newest low request's place.
	if _, err := b.Acquire(context.Background(), clock, PriorityLow); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("low into full queue: %v", err)
	}
	go func() {
		p, err := b.Acquire(context.Background(), clock, PriorityNormal)
		out <- acquired{name: "normal", permit: p, err: err}
	}()
	displaced := <-out
	if displaced.name != "low-2" || !errors.Is(displaced.err, ErrOverloaded) {
		t.Fatalf("first result %s: %v, want low-2 displaced", displaced.name, displaced.err)
	}
	held.Release(clock.Now())
	first := <-out
	if first.name != "normal" || first.err != nil {
		t.Fatalf("after release: %s %v, want normal admitted", first.name, first.err)
	}
	first.permit.Release(clock.Now())
	last := <-out
	if last.name != "low-1" || last.err != nil {
		t.Fatalf("then: %s %v, want low-1", last.name, last.err)
	}
	last.permit.Release(clock.Now())
	if s := b.Stats(); s.InFlight != 0 || s.Queued != 0 || s.Shed != 2 {
		t.Errorf("Stats = %+v, want empty with 2 shed", s)
	}
}

func TestBulkheadCancelledWaiterLeavesQueue(t *testing.T) {
	clock := policy.NewFakeClock(t0)
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 2})
	held, _ := b.Acquire(context.Background(), clock, PriorityNormal)
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan acquired, 1)
	acquireAsync(t, b, ctx, clock, PriorityNormal, "leaver", out)
	cancel()
	if got := <-out; !errors.Is(got.err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", got.err)
	}
	if s := b.Stats(); s.Queued != 0 || s.Shed != 0 {
		t.Errorf("Stats = %+v: the cancelled waiter must leave the queue uncounted", s)
	}
	held.Release(clock.Now())
	if s := b.Stats(); s.InFlight != 0 {
		t.Errorf("InFlight = %d", s.InFlight)
	}
}

func TestParsePriority(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Priority
	}{
		{name: "low", in: "low", want: PriorityLow},
		{name: "LOW spaced", in: " LOW ", want: PriorityLow},
		{name: "normal", in: "normal", want: PriorityNormal},
		{name: "empty", in: "", want: PriorityNormal},
		{name: "garbage", in: "lowest", want: PriorityNormal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParsePriority([]byte(tt.in)); got != tt.want {
				t.Errorf("ParsePriority(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
