package store

import (
	"context"
	"testing"
	"time"
)

// The redis backend also runs in BenchmarkClaimComplete(Parallel) (see
// benchBackends); these are its counterparts of BenchmarkGet and
// BenchmarkClaimReplay, against the shared local redis-server.

func BenchmarkRedisGet(b *testing.B) {
	s := openTestRedis(b, RedisOptions{})
	benchRound(b, s, "k", t0)
	ctx := context.Background()
	now := t0.Add(time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Get(ctx, "k", now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedisClaimReplay(b *testing.B) {
	s := openTestRedis(b, RedisOptions{})
	benchRound(b, s, "k", t0)
	ctx := context.Background()
	a := ClaimArgs{Fingerprint: fp("a"), Now: t0.Add(time.Minute)}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if rec, owned, err := s.Claim(ctx, "k", a); err != nil || owned || rec.State != Completed {
				b.Fatal(err)
			}
		}
	})
}
