package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/internal/redisconn"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
)

// Redis decides on the server's clock, so these tests run in real time.
// They use slow rates (a token per second or slower), where the
// milliseconds that pass between calls do not change the numbers asserted,
// except TestRedisSharedQuotaAcrossReplicas, which measures a real rate.

func newTestClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c, err := redisconn.New(redisconn.Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustRedis(t testing.TB, c redis.UniversalClient, cfg RedisConfig) *Redis {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = "route"
	}
	r, err := NewRedis(c, cfg)
	if err != nil {
		t.Fatalf("NewRedis(%+v): %v", cfg, err)
	}
	return r
}

// within reports whether got is within tol of want.
func within(got, want, tol time.Duration) bool { return got >= want-tol && got <= want+tol }

func TestNewRedisInvalid(t *testing.T) {
	c := newTestClient(t, "127.0.0.1:1")
	tests := []struct {
		name   string
		client redis.UniversalClient
		cfg    RedisConfig
	}{
		{name: "nil client", cfg: RedisConfig{Config: Config{Rate: 1}, Name: "r"}},
		{name: "no name", client: c, cfg: RedisConfig{Config: Config{Rate: 1}}},
		{name: "zero rate", client: c, cfg: RedisConfig{Name: "r"}},
		{name: "brace in name", client: c, cfg: RedisConfig{Config: Config{Rate: 1}, Name: "r}"}},
		{name: "brace in prefix", client: c, cfg: RedisConfig{Config: Config{Rate: 1}, Name: "r", Prefix: "{p}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewRedis(tt.client, tt.cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("NewRedis = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestRedisReserveWaitsRefusesAndCancels(t *testing.T) {
	srv := redistest.Start(t)
	// One token every 10 s, burst 2.
	lim := mustRedis(t, newTestClient(t, srv.Addr()), RedisConfig{Config: Config{Rate: 0.1, Burst: 2}})
	now := time.Now()
	const tol = 500 * time.Millisecond
	if r, err := lim.Reserve(7, 2, now, 0); err != nil || r.Delay() != 0 || r.Tokens() != 2 {
		t.Fatalf("burst = %v, %v; want admitted at once", r.Delay(), err)
	}
	_, err := lim.Reserve(7, 1, now, 0)
	var le *LimitedError
	if !errors.As(err, &le) || !errors.Is(err, ErrLimited) || !within(le.RetryAfter, 10*time.Second, tol) || le.Remaining != 0 {
		t.Fatalf("empty bucket, maxWait 0 = %v; want LimitedError with RetryAfter ≈ 10s", err)
	}
	if _, err := lim.Reserve(7, 1, now, 5*time.Second); !errors.Is(err, ErrLimited) {
		t.Fatalf("wait 10s > maxWait 5s = %v; want refused", err)
	}
	r, err := lim.Reserve(7, 1, now, 15*time.Second)
	if err != nil || !within(r.Delay(), 10*time.Second, tol) {
		t.Fatalf("wait 10s ≤ maxWait 15s = %v, %v; want admitted after ≈10s", r.Delay(), err)
	}
	if d := r.DelayFrom(now.Add(4 * time.Second)); !within(d, 6*time.Second, tol) {
		t.Fatalf("DelayFrom(now+4s) = %v, want ≈6s (local arithmetic)", d)
	}
	r.Cancel(time.Now())
	again, err := lim.Reserve(7, 1, now, 15*time.Second)
	if err != nil || !within(again.Delay(), 10*time.Second, tol) {
		t.Fatalf("after Cancel = %v, %v; want the returned slot (≈10s), not the next one (≈20s)", again.Delay(), err)
	}
	if other, err := lim.Reserve(8, 2, now, 0); err != nil || other.Delay() != 0 {
		t.Fatalf("another key = %v, %v; want its own full bucket", other.Delay(), err)
	}
	if st := lim.Stats(); st.Limited != 2 || st.Burst != 2 || st.Rate != 0.1 {
		t.Fatalf("Stats = %+v, want 2 refusals", st)
	}
	if q := lim.Quota(8, now); q.Remaining != 0 || q.Limit != 2 || !within(q.Reset, 20*time.Second, tol) {
		t.Fatalf("Quota(drained key) = %+v", q)
	}
	if q := lim.Quota(9, now); q.Remaining != 2 || q.Reset != 0 {
		t.Fatalf("Quota(unknown key) = %+v, want a full bucket", q)
	}
}

func TestRedisCancelReturnsOnlyWhatLaterReservationsAllow(t *testing.T) {
	srv := redistest.Start(t)
	lim := mustRedis(t, newTestClient(t, srv.Addr()), RedisConfig{Config: Config{Rate: 0.1, Burst: 1}})
	now := time.Now()
	const tol = 500 * time.Millisecond
	if _, err := lim.Reserve(1, 1, now, 0); err != nil {
		t.Fatal(err)
	}
	first, err := lim.Reserve(1, 1, now, time.Minute) // at +10s
	if err != nil {
		t.Fatal(err)
	}
	second, err := lim.Reserve(1, 1, now, time.Minute) // at +20s, built on first
	if err != nil || !within(second.Delay(), 20*time.Second, tol) {
		t.Fatalf("second = %v, %v", second.Delay(), err)
	}
	first.Cancel(time.Now()) // a later reservation built on it: nothing returns
	if third, err := lim.Reserve(1, 1, now, time.Minute); err != nil || !within(third.Delay(), 30*time.Second, tol) {
		t.Fatalf("after cancelling a slot others built on = %v, %v; want ≈30s", third.Delay(), err)
	}
}

func TestRedisSettle(t *testing.T) {
	// One token per second, burst 6000: TestSettle's cases at 1/100 of the
	// rate, so that real milliseconds between calls do not count; each wait
	// is 100 times as long.
	srv := redistest.Start(t)
	lim := mustRedis(t, newTestClient(t, srv.Addr()), RedisConfig{Config: Config{Rate: 1, Burst: 6000}})
	for i, tt := range settleCases {
		t.Run(tt.name, func(t *testing.T) {
			key := uint64(100 + i)
			now := time.Now()
			r, err := lim.Reserve(key, tt.estimate, now, 0)
			if err != nil {
				t.Fatal(err)
			}
			r.Settle(tt.actual, now)
			r.Settle(tt.actual*2, now)      // a second Settle does nothing
			r.Cancel(now.Add(-time.Second)) // nor does a Cancel after Settle
			if got := lim.Quota(key, now).Remaining; got != tt.wantRemaining {
				t.Errorf("remaining after Settle = %d, want %d", got, tt.wantRemaining)
			}
			next, err := lim.Reserve(key, 1000, now, 30*time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := next.Delay(), 100*tt.nextDelay; !within(got, want, time.Second) {
				t.Errorf("next 1000 tokens wait %v, want %v", got, want)
			}
		})
	}
}

func TestRedisRefundNeverOverfills(t *testing.T) {
	srv := redistest.Start(t)
	lim := mustRedis(t, newTestClient(t, srv.Addr()), RedisConfig{Config: Config{Rate: 1, Burst: 600}})
	now := time.Now()
	if _, err := lim.Reserve(1, 600, now, 0); err != nil {
		t.Fatal(err)
	}
	lim.AdjustReservation(1, -100_000, now) // a refund far beyond the burst
	if _, err := lim.Reserve(1, 600, now, 0); err != nil {
		t.Fatalf("after the refund a full burst = %v", err)
	}
	lim.AdjustReservation(1, -100_000, now)
	lim.AdjustReservation(1, -100_000, now)
	if _, err := lim.Reserve(1, 600, now, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := lim.Reserve(1, 1, now, 0); !errors.Is(err, ErrLimited) {
		t.Fatalf("refunds lifted the bucket past its burst: %v", err)
	}
}

func TestRedisDecidesOnServerClock(t *testing.T) {
	srv := redistest.Start(t)
	lim := mustRedis(t, newTestClient(t, srv.Addr()), RedisConfig{Config: Config{Rate: 0.1, Burst: 1}})
	// Replicas whose clocks disagree by years still share one bucket.
	past, future := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := lim.Reserve(1, 1, past, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := lim.Reserve(1, 1, future, 0); !errors.Is(err, ErrLimited) {
		t.Fatalf("a replica with a clock far ahead = %v; want the shared bucket empty", err)
	}
}

func TestRedisNoUnitsNoRoundTrip(t *testing.T) {
	lim := mustRedis(t, newTestClient(t, "127.0.0.1:1"), RedisConfig{Config: Config{Rate: 1}})
	r, err := lim.Reserve(1, 0, time.Now(), 0)
	if err != nil || r.Delay() != 0 || r.Tokens() != 0 {
		t.Fatalf("Reserve(0 units) = %v, %v; want admitted at once without Redis", r.Delay(), err)
	}
	r.Settle(100, time.Now()) // nothing was taken through Redis: nothing to settle
	if n := lim.Unavailable(); n != 0 {
		t.Fatalf("Settle of an empty reservation called Redis (%d failures)", n)
	}
}

func TestRedisSharedQuotaAcrossReplicas(t *testing.T) {
	const (
		rate    = 20
		window  = 3 * time.Second
		workers = 4 // per replica: keeps about 400 ms of slots queued
	)
	srv := redistest.Start(t)
	cfg := RedisConfig{Config: Config{Rate: rate, Burst: 1}, Name: "shared"}
	replicas := []*Redis{
		mustRedis(t, newTestClient(t, srv.Addr()), cfg),
		mustRedis(t, newTestClient(t, srv.Addr()), cfg),
	}
	key := StableKeyHash([]byte("Bearer sk-test"))
	start := time.Now()
	end := start.Add(window)
	var (
		wg      sync.WaitGroup
		counts  [2]atomic.Int64
		failure atomic.Value
	)
	for i, lim := range replicas {
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					now := time.Now()
					r, err := lim.Reserve(key, 1, now, time.Second)
					if err != nil {
						failure.Store(err)
						return
					}
					if !now.Add(r.Delay()).Before(end) {
						r.Cancel(time.Now())
						return
					}
					counts[i].Add(1)
					if err := Wait(context.Background(), policy.SystemClock{}, &r); err != nil {
						failure.Store(err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if err, _ := failure.Load().(error); err != nil {
		t.Fatal(err)
	}
	a, b := counts[0].Load(), counts[1].Load()
	want := int64(rate * window / time.Second)
	if total := a + b; total < want*9/10 || total > want*11/10 {
		t.Fatalf("replicas proceeded %d + %d = %d times in %v, want %d ±10%% (one quota of %d/s)", a, b, total, window, want, rate)
	}
	if a == 0 || b == 0 {
		t.Fatalf("one replica got every slot (%d, %d)", a, b)
	}
	t.Logf("replicas proceeded %d + %d = %d times in %v (quota %d/s)", a, b, a+b, window, rate)
}

func TestRedisOutageFailsFastAndRecovers(t *testing.T) {
	srv := redistest.Start(t)
	const opTimeout = 200 * time.Millisecond
	client := newTestClient(t, srv.Addr())
	lim := mustRedis(t, client, RedisConfig{Config: Config{Rate: 0.1, Burst: 5}, OpTimeout: opTimeout})
	cd, err := NewCooldown(client, "", opTimeout)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	held, err := lim.Reserve(1, 1, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	ctx := context.Background()
	ops := []struct {
		name string
		call func() error
	}{
		{"Reserve", func() error { _, err := lim.Reserve(1, 1, now, time.Minute); return err }},
		{"Cooldown.Extend", func() error { _, err := cd.Extend(ctx, "u", "k", now.Add(time.Minute)); return err }},
		{"Cooldown.Get", func() error { _, err := cd.Get(ctx, "u", now); return err }},
	}
	for _, op := range ops {
		began := time.Now()
		err := op.call()
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s with Redis down = %v, want ErrUnavailable", op.name, err)
		}
		if took := time.Since(began); took > 2*opTimeout+time.Second {
			t.Errorf("%s with Redis down took %v, want it bounded by the op timeout", op.name, took)
		}
	}
	if q := lim.Quota(1, now); q.Remaining != 0 || q.Limit != 5 {
		t.Errorf("Quota with Redis down = %+v, want an empty bucket of 5", q)
	}
	before := lim.Unavailable()
	held.Settle(0, time.Now()) // cannot report: counts the failure, never blocks or panics
	if lim.Unavailable() != before+1 {
		t.Errorf("Unavailable = %d, want %d after a failed Settle", lim.Unavailable(), before+1)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := lim.Reserve(1, 1, time.Now(), 0)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Reserve after restart = %v; want it to recover", err)
		}
		pause := time.NewTimer(20 * time.Millisecond)
		<-pause.C
	}
}

func TestCooldownOnlyExtends(t *testing.T) {
	srv := redistest.Start(t)
	c1, c2 := newTestClient(t, srv.Addr()), newTestClient(t, srv.Addr())
	a, err := NewCooldown(c1, "cd:", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewCooldown(c2, "cd:", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base := time.Now().Truncate(time.Millisecond)
	steps := []struct {
		name      string
		extend    time.Time
		wantExt   bool
		wantUntil time.Time
	}{
		{name: "first pause", extend: base.Add(time.Minute), wantExt: true, wantUntil: base.Add(time.Minute)},
		{name: "shorter pause ignored", extend: base.Add(30 * time.Second), wantExt: false, wantUntil: base.Add(time.Minute)},
		{name: "longer pause extends", extend: base.Add(2 * time.Minute), wantExt: true, wantUntil: base.Add(2 * time.Minute)},
		{name: "past time ignored", extend: base.Add(-time.Minute), wantExt: false, wantUntil: base.Add(2 * time.Minute)},
	}
	for _, st := range steps {
		ext, err := a.Extend(ctx, "https://api.example/", "key-1", st.extend)
		if err != nil || ext != st.wantExt {
			t.Fatalf("%s: Extend = %v, %v; want %v", st.name, ext, err, st.wantExt)
		}
		// The other replica sees the pause.
		pauses, err := b.Get(ctx, "https://api.example/", base)
		if err != nil || len(pauses) != 1 || !pauses["key-1"].Equal(st.wantUntil) {
			t.Fatalf("%s: other replica's Get = %v, %v; want key-1 until %v", st.name, pauses, err, st.wantUntil)
		}
	}
	// Another credential's pause is its own, and the first one's stands.
	if ext, err := a.Extend(ctx, "https://api.example/", "key-2", base.Add(time.Minute)); err != nil || !ext {
		t.Fatalf("Extend(key-2) = %v, %v", ext, err)
	}
	pauses, err := b.Get(ctx, "https://api.example/", base)
	if err != nil || len(pauses) != 2 || !pauses["key-1"].Equal(base.Add(2*time.Minute)) || !pauses["key-2"].Equal(base.Add(time.Minute)) {
		t.Fatalf("Get with two credentials = %v, %v", pauses, err)
	}
	// Seen from a minute and a half on, only key-1's pause is left.
	if pauses, err := b.Get(ctx, "https://api.example/", base.Add(90*time.Second)); err != nil || len(pauses) != 1 {
		t.Fatalf("Get after key-2's pause ended = %v, %v", pauses, err)
	}
	if pauses, err := b.Get(ctx, "https://other.example/", base); err != nil || len(pauses) != 0 {
		t.Fatalf("Get(unpaused upstream) = %v, %v; want no pauses", pauses, err)
	}
	ttl, err := c1.PTTL(ctx, a.key("https://api.example/")).Result()
	if err != nil || ttl <= time.Minute || ttl > 2*time.Minute {
		t.Fatalf("pause key PTTL = %v, %v; want it to expire with the last pause", ttl, err)
	}
	// An extension drops the pauses that have ended.
	if err := c1.HSet(ctx, a.key("https://api.example/"), "ended", base.Add(-time.Hour).UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Extend(ctx, "https://api.example/", "key-3", base.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n, err := c1.HExists(ctx, a.key("https://api.example/"), "ended").Result(); err != nil || n {
		t.Fatalf("an ended pause survived an extension: %v, %v", n, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.Get(cctx, "u", base); !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with a cancelled ctx = %v, want context.Canceled", err)
	}
}

func TestStableKeyHash(t *testing.T) {
	// Pinned: replicas of different builds and processes must agree.
	if got, want := StableKeyHash([]byte("")), uint64(0xe3b0c44298fc1c14); got != want {
		t.Fatalf("StableKeyHash(\"\") = %#x, want %#x (SHA-256 prefix)", got, want)
	}
	if StableKeyHash([]byte("a")) == StableKeyHash([]byte("b")) {
		t.Fatal("distinct keys collide")
	}
}

func TestRedisBucketKey(t *testing.T) {
	lim := mustRedis(t, newTestClient(t, "127.0.0.1:1"), RedisConfig{Config: Config{Rate: 1}, Name: "openai"})
	if got, want := lim.bucketKey(0xab), "ballast:rl:{openai:00000000000000ab}"; got != want {
		t.Fatalf("bucketKey = %q, want %q", got, want)
	}
}
