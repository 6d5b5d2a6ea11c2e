package store

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Run: go test -run '^$' -bench . -benchmem ./store/
// The file benchmarks fsync every commit, on the disk that holds TMPDIR.

type benchBackend struct {
	name string
	open func(b *testing.B) Store
}

func benchBackends() []benchBackend {
	big := Limits{MaxRecords: 1 << 30}
	file := func(opts FileOptions) func(b *testing.B) Store {
		return func(b *testing.B) Store {
			opts.Limits = big
			return openTestFile(b, filepath.Join(b.TempDir(), "state.db"), opts)
		}
	}
	return []benchBackend{
		{"memory", func(b *testing.B) Store {
			s := OpenMemory(MemoryOptions{Limits: big})
			b.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{"file", file(FileOptions{})},
		{"file-unbatched", file(FileOptions{BatchSize: 1})},
		{"file-boltbatch1ms", file(FileOptions{BatchDelay: time.Millisecond})},
		{"redis", func(b *testing.B) Store {
			return openTestRedis(b, RedisOptions{Limits: big})
		}},
	}
}

var benchResp = &Response{
	Status: 200,
	Header: []byte("Content-Type: application/json\r\nX-Request-Id: 0123456789abcdef\r\n"),
	Body:   []byte(strings.Repeat(`{"choice":"some text"},`, 40)), // ~1 KiB
}

func benchRound(b *testing.B, s Store, key string, now time.Time) {
	ctx := context.Background()
	rec, owned, err := s.Claim(ctx, key, ClaimArgs{Fingerprint: fp("a"), Now: now})
	if err != nil || !owned {
		b.Fatal(err, owned)
	}
	if err := s.Complete(ctx, rec, benchResp, now, time.Hour); err != nil {
		b.Fatal(err)
	}
}

func opsPerSec(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkClaimComplete: one request's store work (claim, then store a
// 1 KiB response) by one goroutine at a time.
func BenchmarkClaimComplete(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				benchRound(b, s, "tenant/route/"+strconv.Itoa(i), t0)
			}
			opsPerSec(b)
		})
	}
}

// BenchmarkClaimCompleteParallel: as BenchmarkClaimComplete with 64
// concurrent requests; for the file backend this shows what sharing the
// fsyncs buys: file (group commit, the default) against file-unbatched
// (every write commits alone) and file-boltbatch1ms (bbolt's DB.Batch).
func BenchmarkClaimCompleteParallel(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(32) // × GOMAXPROCS goroutines
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					benchRound(b, s, "tenant/route/"+strconv.FormatInt(n.Add(1), 10), t0)
				}
			})
			opsPerSec(b)
		})
	}
}

// BenchmarkGet: reading a completed record (a replay).
func BenchmarkGet(b *testing.B) {
	for _, be := range benchBackends()[:2] {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			benchRound(b, s, "k", t0)
			ctx := context.Background()
			now := t0.Add(time.Minute)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Get(ctx, "k", now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkClaimReplay: a duplicate of a completed request.
func BenchmarkClaimReplay(b *testing.B) {
	for _, be := range benchBackends()[:2] {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
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
		})
	}
}

func BenchmarkFingerprint(b *testing.B) {
	method, path := []byte("POST"), []byte("/openai/v1/chat/completions")
	ct := []byte("Content-Type: application/json")
	jsonBody := []byte(`{"model":"gpt-4o","temperature":0.2,"messages":[` +
		strings.Repeat(`{"role":"user","content":"Summarise the following paragraph in one line please."},`, 12) +
		`{"role":"system","content":"be brief"}],"tools":[{"type":"function","function":{"name":"search","parameters":{"type":"object"}}}]}`)
	rawBody := []byte(strings.Repeat("plain text body ", len(jsonBody)/16))
	for _, bc := range []struct {
		name string
		body []byte
	}{{"raw", rawBody}, {"json", jsonBody}} {
		b.Run(bc.name+"-"+strconv.Itoa(len(bc.body))+"B", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.body)))
			for b.Loop() {
				Fingerprint(method, path, bc.body, ct)
			}
		})
	}
}
