package ratelimit

import (
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// Run: go test -run '^$' -bench 'Reserve' -benchmem ./ratelimit/
// The Redis benchmarks use a local redis-server over loopback TCP; compare
// them with BenchmarkKeyedReserve(Parallel).

func benchRedis(b *testing.B) *Redis {
	srv := redistest.Start(b)
	return mustRedis(b, newTestClient(b, srv.Addr()), RedisConfig{Config: admittedConfig, Name: "bench"})
}

func BenchmarkRedisReserve(b *testing.B) {
	lim := benchRedis(b)
	keys := benchKeys(10_000)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := lim.Reserve(keys[i%len(keys)], 1, time.Now(), time.Second); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkRedisReserveParallel(b *testing.B) {
	lim := benchRedis(b)
	keys := benchKeys(10_000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := lim.Reserve(keys[i%len(keys)], 1, time.Now(), time.Second); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
