package proxy

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

func TestSharedEntryEncodingRoundTrip(t *testing.T) {
	stored := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	tests := []struct {
		name string
		e    cache.Entry
	}{
		{"empty", cache.Entry{Status: 204, StoredAt: stored}},
		{"headers and body", cache.Entry{Status: 200, Header: []byte("Content-Type: application/json\r\nEtag: \"x\"\r\n"),
			Body: []byte(`{"ok":true}`), StoredAt: stored}},
		{"binary body", cache.Entry{Status: 301, Header: []byte("Location: /y\r\n"), Body: []byte{0, 1, 2, '\r', '\n', 255}, StoredAt: stored}},
		{"large header", cache.Entry{Status: 200, Header: []byte("X-Long: " + strings.Repeat("v", 300) + "\r\n"), StoredAt: stored}},
		{"before 1970", cache.Entry{Status: 200, StoredAt: time.Unix(-5, 0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := encodeEntry(nil, &tt.e)
			got, err := decodeEntry(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tt.e.Status || !bytes.Equal(got.Header, tt.e.Header) || !bytes.Equal(got.Body, tt.e.Body) || !got.StoredAt.Equal(tt.e.StoredAt) {
				t.Errorf("decoded %+v, want %+v", got, tt.e)
			}
		})
	}
}

func TestSharedEntryDecodeRejects(t *testing.T) {
	good := encodeEntry(nil, &cache.Entry{Status: 200, Header: []byte("A: b\r\n"), Body: []byte("x"), StoredAt: time.Unix(1, 0)})
	with := func(i int, c byte) []byte { b := bytes.Clone(good); b[i] = c; return b }
	header := func(h string) []byte {
		return encodeEntry(nil, &cache.Entry{Status: 200, Header: []byte(h), StoredAt: time.Unix(1, 0)})
	}
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"truncated", good[:5]},
		{"unknown version", with(0, 2)},
		{"status 0", with(10, 0)},
		{"header length past the end", with(11, 100)},
		{"overlong header length", append(append(bytes.Clone(good[:11]), 0x86, 0x00), good[12:]...)},
		{"header without colon", header("Ab\r\n")},
		{"header without space", header("A:b\r\n")},
		{"bare LF in value", header("A: b\nInjected: y\r\n")},
		{"NUL in value", header("A: b\x00\r\n")},
		{"unterminated line", header("A: b")},
		{"space in name", header("A b: c\r\n")},
		{"empty name", header(": c\r\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if e, err := decodeEntry(tt.b); !errors.Is(err, errSharedEntry) {
				t.Errorf("decodeEntry = %+v, %v; want an error matching errSharedEntry", e, err)
			}
		})
	}
}

// FuzzSharedEntryDecode: Redis content is outside input. decodeEntry never
// panics, and whatever it accepts encodes back to the same bytes and
// writes a response fasthttp can serialise.
func FuzzSharedEntryDecode(f *testing.F) {
	f.Add(encodeEntry(nil, &cache.Entry{Status: 200, Header: []byte("Content-Type: text/plain\r\n"), Body: []byte("hi"), StoredAt: time.Unix(1e9, 0)}))
	f.Add(encodeEntry(nil, &cache.Entry{Status: 204, StoredAt: time.Unix(0, 0)}))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		if again := encodeEntry(nil, e); !bytes.Equal(again, b) {
			t.Fatalf("round trip changed %q into %q", b, again)
		}
		var resp fasthttp.Response
		e.WriteResponse(&resp)
		if resp.StatusCode() != e.Status {
			t.Fatalf("status %d, want %d", resp.StatusCode(), e.Status)
		}
		_ = resp.String()
	})
}

// newTestSharedCache is a route's Redis tier on addr, as newSharedCache
// builds it, with its own error counters.
func newTestSharedCache(addr string) (*sharedCache, *prometheus.CounterVec) {
	errs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "errs"}, []string{"op"})
	sh := &shared{
		client: redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1}),
		cfg:    config.Redis{KeyPrefix: "p:", OpTimeout: config.Duration(200 * time.Millisecond)},
		errs:   errs,
	}
	sh.up.Store(true)
	return &sharedCache{sh: sh, prefix: "p:cache:{tool}:", life: time.Minute,
		writes: make(chan struct{}, sharedCacheWrites), errs: errs.WithLabelValues("cache")}, errs
}

// waitUntil polls cond for up to 5s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
	}
}

func TestSharedCacheTier(t *testing.T) {
	rs := redistest.Start(t)
	sc, errs := newTestSharedCache(rs.Addr())
	defer sc.sh.client.Close()
	ctx := context.Background()
	cacheErrs := func() uint64 { return counterValue(errs.WithLabelValues("cache")) }
	key := cache.Key{1, 2, 3}
	if want := "p:cache:{tool}:010203" + strings.Repeat("00", 29); sc.redisKey(key) != want {
		t.Errorf("redis key %q, want %q", sc.redisKey(key), want)
	}

	if _, ok := sc.get(ctx, key); ok || cacheErrs() != 0 {
		t.Fatalf("absent key: hit %v, errors %v; want a plain miss", ok, cacheErrs())
	}
	e := &cache.Entry{Status: 200, Header: []byte("A: b\r\n"), Body: []byte("body"), StoredAt: time.Unix(1e9, 0)}
	sc.put(key, e)
	var got *cache.Entry
	waitUntil(t, func() bool { g, ok := sc.get(ctx, key); got = g; return ok })
	if got.Status != 200 || string(got.Header) != "A: b\r\n" || string(got.Body) != "body" || !got.StoredAt.Equal(e.StoredAt) {
		t.Errorf("read back %+v", got)
	}
	ttl, err := sc.sh.client.PTTL(ctx, sc.redisKey(key)).Result()
	if err != nil || ttl <= 0 || ttl > time.Minute {
		t.Errorf("PTTL %v %v, want within ttl+stale (1m)", ttl, err)
	}

	// fill keeps the newer of the two tiers in the local cache.
	local, _ := cache.New(cache.Config{TTL: time.Hour})
	now := e.StoredAt.Add(time.Second)
	if l, ok := sc.fill(ctx, local, key, now); !ok || l.Entry.StoredAt != e.StoredAt || l.Age != time.Second || !l.Fresh {
		t.Errorf("fill from Redis: %+v %v", l, ok)
	}
	newer := &cache.Entry{Status: 200, StoredAt: e.StoredAt.Add(500 * time.Millisecond)}
	local.Set(key, newer)
	if l, ok := sc.fill(ctx, local, key, now); !ok || l.Entry != newer {
		t.Errorf("fill replaced a newer local entry with %+v", l.Entry)
	}

	// A corrupt value is an error and a miss.
	if err := sc.sh.client.Set(ctx, sc.redisKey(key), "junk", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok := sc.get(ctx, key); ok || cacheErrs() != 1 {
		t.Errorf("corrupt value: hit %v, errors %v; want a counted miss", ok, cacheErrs())
	}

	// Unreachable Redis: reads are counted misses, writes counted drops.
	rs.Kill()
	if _, ok := sc.get(ctx, key); ok || cacheErrs() != 2 {
		t.Errorf("Redis down: hit %v, errors %v; want a counted miss", ok, cacheErrs())
	}
	sc.put(key, e)
	waitUntil(t, func() bool { return cacheErrs() == 3 })
	waitUntil(t, func() bool { return len(sc.writes) == 0 })

	// Known down (the health watcher said so): no Redis call at all.
	sc.sh.up.Store(false)
	if _, ok := sc.get(ctx, key); ok || cacheErrs() != 3 {
		t.Errorf("Redis known down: hit %v, errors %v; want an uncounted miss", ok, cacheErrs())
	}
	sc.put(key, e)
	if len(sc.writes) != 0 {
		t.Error("a write started while Redis was known down")
	}

	// A nil tier (cache.shared off) is a valid, disabled one.
	var off *sharedCache
	off.put(key, e)
	if _, ok := off.get(ctx, key); ok {
		t.Error("a nil tier hit")
	}
}

func TestSharedCacheWritesAreBounded(t *testing.T) {
	rs := redistest.Start(t)
	sc, _ := newTestSharedCache(rs.Addr())
	defer sc.sh.client.Close()
	ctx := context.Background()
	e := &cache.Entry{Status: 200, StoredAt: time.Unix(1e9, 0)}
	for range sharedCacheWrites {
		sc.writes <- struct{}{} // every slot busy
	}
	dropped, shared := cache.Key{1}, cache.Key{2}
	sc.put(dropped, e) // returns at once: no slot, no write
	for range sharedCacheWrites {
		<-sc.writes
	}
	sc.put(shared, e)
	waitUntil(t, func() bool { _, ok := sc.get(ctx, shared); return ok })
	if n, err := sc.sh.client.Exists(ctx, sc.redisKey(dropped)).Result(); err != nil || n != 0 {
		t.Errorf("the write made while every slot was busy reached Redis (exists %d, %v); want it dropped", n, err)
	}
}

func BenchmarkSharedEntryEncode(b *testing.B) {
	e := &cache.Entry{Status: 200, Header: []byte("Content-Type: application/json\r\nEtag: \"abc\"\r\n"),
		Body: bytes.Repeat([]byte("x"), 2048), StoredAt: time.Unix(1e9, 0)}
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = encodeEntry(buf[:0], e)
	}
}

func BenchmarkSharedEntryDecode(b *testing.B) {
	enc := encodeEntry(nil, &cache.Entry{Status: 200, Header: []byte("Content-Type: application/json\r\nEtag: \"abc\"\r\n"),
		Body: bytes.Repeat([]byte("x"), 2048), StoredAt: time.Unix(1e9, 0)})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEntry(enc); err != nil {
			b.Fatal(err)
		}
	}
}
