package ratelimit

import (
	"context"
	"encoding/binary"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// admittedConfig never refuses within a benchmark, so the admitted path is
// what is measured.
var admittedConfig = Config{Rate: 1e12, Burst: 1 << 40}

func BenchmarkBucketReserve(b *testing.B) {
	lim := mustBucket(b, admittedConfig)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := lim.Reserve(0, 1, now, time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBucketReserveParallel(b *testing.B) {
	lim := mustBucket(b, admittedConfig)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := lim.Reserve(0, 1, now, time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkKeyedReserve(b *testing.B) {
	k := mustKeyed(b, KeyedConfig{Config: admittedConfig, MaxKeys: 100_000})
	keys := benchKeys(10_000)
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := k.Reserve(keys[i%len(keys)], 1, now, time.Second); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkKeyedReserveParallel(b *testing.B) {
	k := mustKeyed(b, KeyedConfig{Config: admittedConfig, MaxKeys: 100_000})
	keys := benchKeys(10_000)
	for _, key := range keys {
		_, _ = k.Reserve(key, 0, time.Now(), 0)
	}
	now := time.Now()
	var seq atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := seq.Add(1) * 7919
		for pb.Next() {
			if _, err := k.Reserve(keys[i%uint64(len(keys))], 1, now, time.Second); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkKeyedMemory fills a Keyed limiter with 1,000,000 distinct keys and
// reports the heap it retains per key held, and in total. With max_keys below
// the key count, the total stays bounded by max_keys.
func BenchmarkKeyedMemory(b *testing.B) {
	const distinct = 1_000_000
	for _, maxKeys := range []int{1_000_000, 100_000} {
		b.Run("max_keys="+itoa(maxKeys), func(b *testing.B) {
			keys := benchKeys(distinct)
			now := time.Now()
			var k *Keyed
			var before, after runtime.MemStats
			for b.Loop() {
				k = nil
				runtime.GC()
				runtime.ReadMemStats(&before)
				k = mustKeyed(b, KeyedConfig{Config: Config{Rate: 10, Burst: 10}, MaxKeys: maxKeys})
				for _, key := range keys {
					if _, err := k.Reserve(key, 1, now, 0); err != nil {
						b.Fatal(err)
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
			}
			held := k.Len()
			if held > maxKeys {
				b.Fatalf("holds %d keys, max_keys %d", held, maxKeys)
			}
			retained := float64(after.HeapAlloc) - float64(before.HeapAlloc)
			b.ReportMetric(retained/float64(held), "B/key")
			b.ReportMetric(retained/(1<<20), "MiB-retained")
			b.ReportMetric(float64(held), "keys-held")
			runtime.KeepAlive(k)
		})
	}
}

func BenchmarkBulkheadAcquireRelease(b *testing.B) {
	bh := mustBulkhead(b, BulkheadConfig{MaxConcurrency: 1 << 20})
	clock := policy.SystemClock{}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			p, err := bh.Acquire(ctx, clock, PriorityNormal)
			if err != nil {
				b.Fatal(err)
			}
			p.Release(clock.Now())
		}
	})
}

func BenchmarkEstimateTokens(b *testing.B) {
	body := []byte(`{"model":"gpt-4o","max_tokens":512,"messages":[{"role":"system","content":"` +
		strings.Repeat("You are a helpful assistant. ", 100) + `"},{"role":"user","content":"` +
		strings.Repeat("Summarise this paragraph please. ", 300) + `"}]}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		_ = EstimateTokens(body)
	}
}

func BenchmarkUsageFromBody(b *testing.B) {
	body := []byte("data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n" +
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\n" +
		"data: [DONE]\n\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := UsageFromBody(body); !ok {
			b.Fatal("no usage")
		}
	}
}

func benchKeys(n int) []uint64 {
	keys := make([]uint64, n)
	var raw [8]byte
	for i := range keys {
		binary.LittleEndian.PutUint64(raw[:], uint64(i))
		keys[i] = KeyHash(raw[:])
	}
	return keys
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
