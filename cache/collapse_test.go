package cache

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestGroupCollapses(t *testing.T) {
	var g Group[*Entry]
	const n = 50
	release := make(chan struct{})
	started := make(chan struct{})
	var calls atomic.Int32
	want := &Entry{Status: 200, Body: []byte("shared")}

	results := make(chan *Entry, n)
	var sharedCount atomic.Int32
	var wg sync.WaitGroup
	leader := func() {
		defer wg.Done()
		v, err, shared := g.Do(context.Background(), k(1), func() (*Entry, error) {
			calls.Add(1)
			close(started)
			<-release
			return want, nil
		})
		if err != nil || shared {
			t.Errorf("leader: err %v shared %v", err, shared)
		}
		results <- v
	}
	wg.Add(1)
	go leader()
	<-started // the leader is inside fn: everyone else must wait on it
	for range n - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err, shared := g.Do(context.Background(), k(1), func() (*Entry, error) {
				calls.Add(1)
				return nil, errors.New("a second upstream call")
			})
			if err != nil {
				t.Errorf("waiter: %v", err)
			}
			if shared {
				sharedCount.Add(1)
			}
			results <- v
		}()
	}
	// Release only once every waiter is parked on the call, so none of them
	// can arrive late and become a second leader.
	for g.Waiters(k(1)) < n-1 {
		runtime.Gosched()
	}
	if got := g.AllWaiters(); got != n-1 {
		t.Fatalf("AllWaiters = %d with one call and %d parked on it", got, n-1)
	}
	close(release)
	wg.Wait()
	close(results)
	if calls.Load() != 1 {
		t.Fatalf("fn called %d times, want 1", calls.Load())
	}
	if sharedCount.Load() != n-1 {
		t.Fatalf("%d callers shared, want %d", sharedCount.Load(), n-1)
	}
	for v := range results {
		if v != want {
			t.Fatalf("caller got %v, want the shared entry", v)
		}
	}
	if g.InFlight() != 0 || g.AllWaiters() != 0 {
		t.Fatal("call not cleaned up")
	}
}

func TestGroupWaiterContext(t *testing.T) {
	var g Group[int]
	release := make(chan struct{})
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		v, err, _ := g.Do(context.Background(), k(1), func() (int, error) {
			close(started)
			<-release
			return 7, nil
		})
		if v != 7 || err != nil {
			t.Errorf("leader got %d, %v", v, err)
		}
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err, shared := g.Do(ctx, k(1), func() (int, error) { return 0, nil }); !errors.Is(err, context.Canceled) || !shared {
		t.Fatalf("waiter with done ctx: err %v shared %v", err, shared)
	}
	// A different key is not collapsed.
	if v, err, shared := g.Do(context.Background(), k(2), func() (int, error) { return 9, nil }); v != 9 || err != nil || shared {
		t.Fatalf("other key: %d %v %v", v, err, shared)
	}
	close(release)
	<-done
}

func TestGroupLeaderPanic(t *testing.T) {
	var g Group[int]
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("panic was swallowed")
			}
		}()
		_, _, _ = g.Do(context.Background(), k(1), func() (int, error) { panic("boom") })
	}()
	if g.InFlight() != 0 {
		t.Fatal("panicked call left in flight")
	}
	if v, err, _ := g.Do(context.Background(), k(1), func() (int, error) { return 1, nil }); v != 1 || err != nil {
		t.Fatalf("after panic: %d %v", v, err)
	}
}

func TestGroupErrorShared(t *testing.T) {
	var g Group[int]
	boom := errors.New("upstream down")
	if _, err, _ := g.Do(context.Background(), k(1), func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}
