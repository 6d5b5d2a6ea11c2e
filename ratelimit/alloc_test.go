package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// The admitted path runs on every proxied request: it must not allocate.
func TestAdmittedPathDoesNotAllocate(t *testing.T) {
	bucket := mustBucket(t, Config{Rate: 1e9, Burst: 1 << 30})
	keyed := mustKeyed(t, KeyedConfig{Config: Config{Rate: 1e9, Burst: 1 << 30}, MaxKeys: 4096})
	adaptive, err := NewAdaptive(AdaptiveConfig{Config: Config{Rate: 1e9, Burst: 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	bulkhead := mustBulkhead(t, BulkheadConfig{MaxConcurrency: 4, MaxQueue: 4})
	clock := policy.SystemClock{}
	ctx := context.Background()
	key := KeyHash([]byte("agent"))
	if _, err := keyed.Reserve(key, 1, t0, 0); err != nil { // create the key
		t.Fatal(err)
	}
	buf := make([]byte, 0, 256)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":64}`)

	tests := []struct {
		name string
		fn   func()
	}{
		{name: "Bucket.Reserve", fn: func() {
			r, err := bucket.Reserve(0, 1, t0, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = Wait(ctx, clock, &r)
		}},
		{name: "Keyed.Reserve existing key", fn: func() {
			if _, err := keyed.Reserve(key, 1, t0, time.Second); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "Adaptive.Reserve", fn: func() {
			if _, err := adaptive.Reserve(0, 1, t0, time.Second); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "Reserve then Settle", fn: func() {
			r, _ := bucket.Reserve(0, 100, t0, time.Second)
			r.Settle(40, t0)
		}},
		{name: "Admit", fn: func() {
			if _, err := Admit(ctx, clock, bucket, 0, 1, time.Second); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "Bulkhead.Acquire free slot", fn: func() {
			p, err := bulkhead.Acquire(ctx, clock, PriorityNormal)
			if err != nil {
				t.Fatal(err)
			}
			p.Release(clock.Now())
		}},
		{name: "AppendRateLimitFields", fn: func() {
			buf, _, _ = AppendRateLimitFields(buf[:0], "openai", Quota{Limit: 50, Window: time.Second, Remaining: 3})
		}},
		{name: "Quota", fn: func() { _ = keyed.Quota(key, t0) }},
		{name: "KeyHash", fn: func() { _ = KeyHash(body) }},
		{name: "EstimateTokens", fn: func() { _ = EstimateTokens(body) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(1000, tt.fn); allocs != 0 {
				t.Errorf("%s: %v allocations per run, want 0", tt.name, allocs)
			}
		})
	}
}
