package ratelimit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redisconn"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
)

// OpTimeout is "the only bound" of a Redis limiter's Reserve: against a
// Redis that accepts and never answers, Reserve must fail with
// ErrUnavailable within about OpTimeout, not a multiple of it.
func TestRedisReserveBoundedByOpTimeout(t *testing.T) {
	addr := redistest.Hung(t)
	c, err := redisconn.New(redisconn.Options{Addr: addr, ReadTimeout: time.Second, WriteTimeout: time.Second, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// A bound below both 2×op and the client's 1s read timeout, with
	// 350ms of slack for a loaded machine.
	const op, slack = 500 * time.Millisecond, 350 * time.Millisecond
	lim := mustRedis(t, c, RedisConfig{Config: Config{Rate: 1}, OpTimeout: op})
	for i := range 2 {
		start := time.Now()
		_, err := lim.Reserve(1, 1, start, 0)
		took := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Reserve %d = %v, want ErrUnavailable", i, err)
		}
		if took > op+slack {
			t.Errorf("Reserve %d against a hung Redis took %v with OpTimeout %v", i, took.Round(time.Millisecond), op)
		}
	}
	cool, err := NewCooldown(c, "", op)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := cool.Get(context.Background(), "up", time.Now()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Cooldown.Get = %v", err)
	}
	if took := time.Since(start); took > op+slack {
		t.Errorf("Cooldown.Get against a hung Redis took %v with op timeout %v", took.Round(time.Millisecond), op)
	}
}

// max_keys is the number of per-key buckets kept ("the least recently used
// are dropped"): with exactly max_keys active keys, none may be dropped,
// or a dropped key comes back with a fresh burst and the limit admits more
// than it should.
func TestKeyedMaxKeysHonoured(t *testing.T) {
	for _, maxKeys := range []int{100, 1024, 10000} {
		k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 0.001, Burst: 1}, MaxKeys: maxKeys})
		now := at(0)
		for i := range maxKeys {
			key := StableKeyHash([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
			if _, err := k.Reserve(key, 1, now, 0); err != nil {
				t.Fatalf("max_keys %d: first request of key %d refused: %v", maxKeys, i, err)
			}
		}
		fresh := 0
		for i := range maxKeys {
			key := StableKeyHash([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
			if _, err := k.Reserve(key, 1, now, 0); err == nil {
				fresh++
			}
		}
		if fresh != 0 || k.Len() != maxKeys {
			t.Errorf("max_keys %d with %d active keys: %d keys were dropped and got a fresh burst; %d buckets held",
				maxKeys, maxKeys, fresh, k.Len())
		}
	}
}

// An empty Redis (restarted, or the key expired) is a full bucket; a
// settlement of a reservation made before the restart never overfills it
// and never leaves it negative beyond the debt cap; and the bucket's key
// always carries an expiry.
func TestFleetRedisRestartEmptyBucket(t *testing.T) {
	srv := redistest.Start(t)
	c := newTestClient(t, srv.Addr())
	lim := mustRedis(t, c, RedisConfig{Config: Config{Rate: 0.01, Burst: 10}, Name: "audit"})
	now := time.Now()
	res, err := lim.Reserve(3, 10, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	// The refund of a reservation made before the restart.
	res.Settle(2, time.Now())
	if q := lim.Quota(3, time.Now()); q.Remaining != 10 {
		t.Errorf("after restart and refund: %d remaining, want 10 (full, not more)", q.Remaining)
	}
	// Debt past the cap is capped at 16 bursts.
	res2, err := lim.Reserve(3, 1, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	res2.Settle(1_000_000, time.Now())
	if _, err := lim.Reserve(3, 1, time.Now(), 0); !errors.Is(err, ErrLimited) {
		t.Fatalf("in debt: %v", err)
	}
	var le *LimitedError
	_, err = lim.Reserve(3, 1, time.Now(), 0)
	if !errors.As(err, &le) || le.RetryAfter > time.Duration(17*10/0.01)*time.Second {
		t.Errorf("debt: %v, want at most 16 bursts + 1 of wait", err)
	}
	ttl, err := c.PTTL(context.Background(), lim.bucketKey(3)).Result()
	if err != nil || ttl <= 0 {
		t.Errorf("bucket key PTTL %v %v: want an expiry", ttl, err)
	}
}

// AIMD per the docs: a 429 halves the rate (429s within one second count
// once), not below rps/10; every 10 successes add rps/10, up to rps.
func TestFleetAdaptiveAIMD(t *testing.T) {
	a, err := NewAdaptive(AdaptiveConfig{Config: Config{Rate: 100}})
	if err != nil {
		t.Fatal(err)
	}
	now := at(0)
	a.OnThrottle(now)
	a.OnThrottle(now.Add(500 * time.Millisecond))
	if r := a.EffectiveRate(); r != 50 {
		t.Fatalf("after two 429s within a second: %v, want 50", r)
	}
	for i := range 10 {
		a.OnThrottle(now.Add(time.Duration(i+1) * 1100 * time.Millisecond))
	}
	if r := a.EffectiveRate(); r != 10 {
		t.Fatalf("floor: %v, want 10", r)
	}
	for range 9 {
		a.OnSuccess(now)
	}
	if r := a.EffectiveRate(); r != 10 {
		t.Fatalf("after 9 successes: %v", r)
	}
	a.OnSuccess(now)
	if r := a.EffectiveRate(); r != 20 {
		t.Fatalf("after 10 successes: %v, want 20", r)
	}
	for range 200 {
		a.OnSuccess(now)
	}
	if r, s := a.EffectiveRate(), a.Stats().Rate; r != 100 || s != 100 {
		t.Fatalf("recovered: %v (stats %v), want 100", r, s)
	}
}

// Bulkhead: waiters of one priority are served first come, first served,
// and a waiter that gives up leaves no hole that stalls the queue.
func TestFleetBulkheadFIFOAndNoStarvation(t *testing.T) {
	clock := policy.NewFakeClock(at(0))
	b := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 1, MaxQueue: 10})
	p0, err := b.Acquire(context.Background(), clock, PriorityNormal)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 5)
	gone, cancelGone := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range 5 {
		ctx := context.Background()
		if i == 1 {
			ctx = gone
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := b.Acquire(ctx, clock, PriorityNormal)
			if err != nil {
				return
			}
			order <- i
			p.Release(clock.Now())
		}()
		for b.Stats().Queued != i+1 {
			runtimeGosched()
		}
	}
	cancelGone()
	for b.Stats().Queued != 4 {
		runtimeGosched()
	}
	p0.Release(clock.Now())
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	if len(got) != 4 || got[0] != 0 || got[1] != 2 || got[2] != 3 || got[3] != 4 {
		t.Errorf("served %v, want [0 2 3 4]", got)
	}
	if s := b.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Errorf("after all: %+v", s)
	}
}
