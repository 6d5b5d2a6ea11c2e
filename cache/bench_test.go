package cache

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func BenchmarkKeyRequest(b *testing.B) {
	req := newRequest("POST", "http://tool.local/v1/search?z=1&b=2&a=3", `{"query":"ballast","limit":10}`,
		"Authorization", "Bearer sk-tenant", "Accept", "application/json")
	defer fasthttp.ReleaseRequest(req)
	opts := &KeyOptions{Vary: []string{"Accept"}}
	kb := NewKeyBuilder()
	b.ReportAllocs()
	for b.Loop() {
		_ = kb.Request(req, req.Body(), opts)
	}
}

func BenchmarkKeyPieces(b *testing.B) {
	kb := NewKeyBuilder()
	method, path, query := []byte("GET"), []byte("/v1/items"), []byte("page=2&sort=asc&q=go")
	auth, authV := []byte("Authorization"), []byte("Bearer sk-tenant")
	b.ReportAllocs()
	for b.Loop() {
		kb.Reset()
		kb.Method(method)
		kb.Path(path)
		kb.Query(query)
		kb.Identity(auth, authV)
		_ = kb.Sum()
	}
}

// hitCache is a cache holding 512-byte answers for keys k(0) to k(999),
// stored at t0 and fresh for a minute after.
func hitCache(b *testing.B) *Cache {
	b.Helper()
	c, err := New(Config{TTL: time.Minute, Stale: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		c.Set(k(i), &Entry{Status: 200, Body: make([]byte, 512), StoredAt: t0})
	}
	return c
}

func BenchmarkGetHit(b *testing.B) {
	c := hitCache(b)
	now := t0.Add(time.Second)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := c.Get(k(i%1000), now); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

func BenchmarkGetHitParallel(b *testing.B) {
	c := hitCache(b)
	now := t0.Add(time.Second)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			c.Get(k(i%1000), now)
			i++
		}
	})
}

// BenchmarkSet stores into a full cache, so every Set also evicts.
func BenchmarkSet(b *testing.B) {
	c, err := New(Config{MaxEntries: 1000, TTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	e := &Entry{Status: 200, Body: make([]byte, 512), StoredAt: t0}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Set(k(i%4096), e)
		i++
	}
}

// BenchmarkNewEntry is the copy made when a response is stored.
func BenchmarkNewEntry(b *testing.B) {
	var resp fasthttp.Response
	resp.Header.SetContentType("application/json")
	resp.Header.Set("X-Request-Id", "abc")
	resp.Header.Set("Openai-Processing-Ms", "120")
	resp.SetBody(make([]byte, 2048))
	b.ReportAllocs()
	for b.Loop() {
		_ = NewEntry(&resp, t0)
	}
}

func BenchmarkStatusAppend(b *testing.B) {
	buf := make([]byte, 0, 128)
	s := StaleIfError(Lookup{Remaining: -42 * time.Second}, true, 503)
	b.ReportAllocs()
	for b.Loop() {
		buf = s.Append(buf[:0], "ballast")
	}
}
