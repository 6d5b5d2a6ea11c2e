package policy

import (
	"sync"
	"testing"
	"time"
)

func TestBreakerOpensOnConsecutiveFailures(t *testing.T) {
	now := time.Unix(1000, 0)
	var changes []BreakerState
	b := NewBreaker(BreakerConfig{Failures: 3, OpenFor: 10 * time.Second}, func(s BreakerState) { changes = append(changes, s) })
	for i := range 2 {
		b.Record(now, false, false)
		if ok, _, _ := b.Allow(now); !ok {
			t.Fatalf("open after %d failures", i+1)
		}
	}
	b.Record(now, true, false) // a success resets the run
	b.Record(now, false, false)
	b.Record(now, false, false)
	if ok, _, _ := b.Allow(now); !ok {
		t.Fatal("a success must reset the consecutive count")
	}
	b.Record(now, false, false)
	ok, _, retryIn := b.Allow(now.Add(time.Second))
	if ok || retryIn != 9*time.Second {
		t.Fatalf("after 3 consecutive failures: ok=%v retryIn=%v, want refused for 9s", ok, retryIn)
	}
	if b.State(now) != StateOpen {
		t.Errorf("state %v", b.State(now))
	}

	// Half open after OpenFor: one probe at a time.
	later := now.Add(10 * time.Second)
	ok, probe, _ := b.Allow(later)
	if !ok || !probe {
		t.Fatalf("after open_for: ok=%v probe=%v, want a probe", ok, probe)
	}
	if ok2, _, _ := b.Allow(later); ok2 {
		t.Fatal("a second probe was admitted while the first is in flight")
	}
	b.Record(later, false, true) // the probe failed: open again
	if ok, _, retryIn := b.Allow(later); ok || retryIn != 10*time.Second {
		t.Fatalf("failed probe: ok=%v retryIn=%v", ok, retryIn)
	}
	later = later.Add(10 * time.Second)
	_, probe, _ = b.Allow(later)
	b.Record(later, true, probe)
	if b.State(later) != StateClosed {
		t.Fatalf("a good probe must close the breaker, state %v", b.State(later))
	}
	want := []BreakerState{StateOpen, StateHalfOpen, StateOpen, StateHalfOpen, StateClosed}
	if len(changes) != len(want) {
		t.Fatalf("changes %v, want %v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Fatalf("changes %v, want %v", changes, want)
		}
	}
}

func TestBreakerFailureRatio(t *testing.T) {
	now := time.Unix(0, 0)
	b := NewBreaker(BreakerConfig{Failures: 1000, FailureRatio: 0.5, MinRequests: 10, Window: 10 * time.Second}, nil)
	for i := range 9 { // 9 requests, alternating: below MinRequests
		b.Record(now, i%2 == 0, false)
	}
	if b.State(now) != StateClosed {
		t.Fatal("opened below min_requests")
	}
	b.Record(now, false, false) // 10th: 5 failures of 10
	if b.State(now) != StateOpen {
		t.Fatal("50% failures over 10 requests must open a 0.5 breaker")
	}
	// A new window forgets old requests.
	c := NewBreaker(BreakerConfig{Failures: 1000, FailureRatio: 0.5, MinRequests: 4, Window: time.Second}, nil)
	c.Record(now, false, false)
	c.Record(now, false, false)
	later := now.Add(2 * time.Second)
	c.Record(later, true, false)
	c.Record(later, true, false)
	c.Record(later, false, false)
	c.Record(later, true, false)
	if c.State(later) != StateClosed {
		t.Fatal("failures from an expired window counted")
	}
}

func TestBreakerConcurrent(t *testing.T) {
	b := NewBreaker(BreakerConfig{Failures: 50, FailureRatio: 0.9}, nil)
	now := time.Unix(0, 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				if ok, probe, _ := b.Allow(now); ok {
					b.Record(now, (i+g)%3 != 0, probe)
				}
			}
		}()
	}
	wg.Wait()
	_ = b.State(now)
}

func TestNilBreakerAllowsEverything(t *testing.T) {
	var b *Breaker
	if ok, _, _ := b.Allow(time.Now()); !ok {
		t.Fatal("nil breaker refused")
	}
	b.Record(time.Now(), false, false)
}

func BenchmarkBreakerClosed(b *testing.B) {
	br := NewBreaker(BreakerConfig{}, nil)
	now := time.Unix(0, 0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ok, probe, _ := br.Allow(now)
			if ok {
				br.Record(now, true, probe)
			}
		}
	})
}

func TestBreakerReleaseGivesBackAnUnusedProbe(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := NewBreaker(BreakerConfig{Failures: 1, OpenFor: time.Second}, nil)
	b.Record(t0, false, false) // opens
	now := t0.Add(2 * time.Second)
	ok, probe, _ := b.Allow(now)
	if !ok || !probe {
		t.Fatalf("half open: Allow = %v, probe %v", ok, probe)
	}
	if ok, _, _ := b.Allow(now); ok {
		t.Fatal("a second probe while the first is out")
	}
	b.Release(probe) // the attempt was not made
	if ok, probe, _ := b.Allow(now); !ok || !probe {
		t.Fatalf("after Release: Allow = %v, probe %v; want the probe back", ok, probe)
	}
	b.Release(false) // not a probe: nothing to give back
	if ok, _, _ := b.Allow(now); ok {
		t.Fatal("Release(false) gave back a probe")
	}
}
