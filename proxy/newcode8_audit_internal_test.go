package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// A duplicate that found the key in flight in Redis and waits for it
// after the claim's answer was recorded in the local store (Redis did not
// take the Complete, fail_open) gets that answer at once: Wait looks
// where the key is held, the local store, whatever state it holds it in,
// rather than wait in Redis on a claim nobody will finish until its lease
// ends.
func TestNewCode8AuditWaitFindsLocalAnswer(t *testing.T) {
	rs := redistest.Start(t)
	client := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	rst, err := store.OpenRedis(client, store.RedisOptions{Prefix: "nc8w:", OpTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sh := &shared{client: client, failOpen: true, errs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "e"}, []string{"op"})}
	sh.up.Store(true)
	f := &failoverStore{Store: rst, local: store.OpenMemory(store.MemoryOptions{}), sh: sh, clock: policy.SystemClock{}}
	t.Cleanup(func() { _ = f.Close() })
	ctx := context.Background()
	now := time.Now()
	args := store.ClaimArgs{Fingerprint: [32]byte{1}, Now: now, TTL: time.Hour}
	held, owned, err := f.Claim(ctx, "k", args)
	if err != nil || !owned {
		t.Fatalf("claim: %v owned %v", err, owned)
	}
	// The duplicate's claim, before the answer: in flight in Redis.
	rec, owned, err := f.Claim(ctx, "k", args)
	if err != nil || owned || rec.State != store.InFlight {
		t.Fatalf("duplicate claim: %v owned %v %+v", err, owned, rec)
	}
	// Redis did not take the answer: it is kept locally.
	if err := f.completeLocally(ctx, held, &store.Response{Status: 200, Body: []byte("ok")}, now, time.Hour); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	got, err := f.Wait(wctx, "k")
	if err != nil || got == nil || got.State != store.Completed || string(got.Response.Body) != "ok" {
		t.Fatalf("the duplicate's wait after %v: %+v, %v; want the answer held locally", time.Since(start).Round(time.Millisecond), got, err)
	}
}
