package cache

import (
	"errors"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func k(i int) Key {
	var key Key
	key[0], key[1] = byte(i), byte(i>>8)
	return key
}

// entryOfSize returns an entry whose Size is exactly n (n >= entryOverhead).
func entryOfSize(n int, at time.Time) *Entry {
	return &Entry{Status: 200, Body: make([]byte, n-entryOverhead), StoredAt: at}
}

func mustNew(t *testing.T, cfg Config) *Cache {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEvictionByBytes(t *testing.T) {
	c := mustNew(t, Config{MaxBytes: 10 << 10, TTL: time.Hour})
	for i := range 10 { // 10 × 1 KiB fills the cache exactly
		if !c.Set(k(i), entryOfSize(1<<10, t0)) {
			t.Fatalf("Set(%d) refused", i)
		}
	}
	if s := c.Stats(); s.Entries != 10 || s.Bytes != 10<<10 || s.Evictions != 0 {
		t.Fatalf("full cache stats = %+v", s)
	}
	if _, ok := c.Get(k(0), t0); !ok { // touch 0: now 1 is the oldest
		t.Fatal("entry 0 missing")
	}
	c.Set(k(10), entryOfSize(2<<10, t0)) // needs two slots
	for _, gone := range []int{1, 2} {
		if _, ok := c.Get(k(gone), t0); ok {
			t.Errorf("entry %d should have been evicted", gone)
		}
	}
	for _, kept := range []int{0, 3, 9, 10} {
		if _, ok := c.Get(k(kept), t0); !ok {
			t.Errorf("entry %d should be kept", kept)
		}
	}
	if s := c.Stats(); s.Entries != 9 || s.Bytes != 10<<10 || s.Evictions != 2 {
		t.Fatalf("stats after eviction = %+v", s)
	}
}

func TestEvictionByCount(t *testing.T) {
	c := mustNew(t, Config{MaxEntries: 3, TTL: time.Hour})
	for i := range 5 {
		c.Set(k(i), entryOfSize(200, t0))
	}
	for i := range 5 {
		_, ok := c.Get(k(i), t0)
		if want := i >= 2; ok != want {
			t.Errorf("entry %d present = %v, want %v", i, ok, want)
		}
	}
	if s := c.Stats(); s.Entries != 3 || s.Bytes != 600 || s.Evictions != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestReplaceKeepsByteAccount(t *testing.T) {
	c := mustNew(t, Config{MaxBytes: 4096, TTL: time.Hour})
	c.Set(k(1), entryOfSize(1000, t0))
	c.Set(k(1), entryOfSize(300, t0))
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 300 || s.Evictions != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if !c.Remove(k(1)) || c.Remove(k(1)) {
		t.Fatal("Remove should report presence once")
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Fatalf("stats after remove = %+v", s)
	}
}

func TestOversizedEntryRefused(t *testing.T) {
	c := mustNew(t, Config{MaxBytes: 4096, MaxEntryBytes: 1024, TTL: time.Hour})
	c.Set(k(1), entryOfSize(500, t0))
	if c.Set(k(2), entryOfSize(1025, t0)) {
		t.Fatal("entry over MaxEntryBytes stored")
	}
	if _, ok := c.Get(k(1), t0); !ok {
		t.Fatal("refused entry flushed an existing one")
	}
}

func TestExpiry(t *testing.T) {
	c := mustNew(t, Config{TTL: 10 * time.Second, Stale: time.Minute})
	c.Set(k(1), &Entry{Status: 200, Body: []byte("x"), StoredAt: t0})
	tests := []struct {
		name          string
		at            time.Duration
		wantOK        bool
		wantFresh     bool
		wantAge       time.Duration
		wantRemaining time.Duration
	}{
		{name: "clock behind store time counts as age 0", at: -time.Second, wantOK: true, wantFresh: true, wantAge: 0, wantRemaining: 10 * time.Second},
		{name: "just stored", at: 0, wantOK: true, wantFresh: true, wantAge: 0, wantRemaining: 10 * time.Second},
		{name: "last fresh instant", at: 10*time.Second - 1, wantOK: true, wantFresh: true, wantAge: 10*time.Second - 1, wantRemaining: 1},
		{name: "stale at ttl", at: 10 * time.Second, wantOK: true, wantAge: 10 * time.Second, wantRemaining: 0},
		{name: "stale later", at: 40 * time.Second, wantOK: true, wantAge: 40 * time.Second, wantRemaining: -30 * time.Second},
		{name: "gone at ttl+stale", at: 70 * time.Second},
		{name: "still gone after", at: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, ok := c.Get(k(1), t0.Add(tt.at))
			if ok != tt.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tt.wantOK)
			}
			if !ok {
				return
			}
			if l.Fresh != tt.wantFresh || l.Age != tt.wantAge || l.Remaining != tt.wantRemaining {
				t.Errorf("lookup = fresh %v age %v remaining %v, want %v %v %v", l.Fresh, l.Age, l.Remaining, tt.wantFresh, tt.wantAge, tt.wantRemaining)
			}
		})
	}
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.Expirations != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestFallbackOnlyCacheIsNeverFresh(t *testing.T) {
	c := mustNew(t, Config{Stale: time.Hour})
	c.Set(k(1), &Entry{Status: 200, StoredAt: t0})
	l, ok := c.Get(k(1), t0)
	if !ok || l.Fresh {
		t.Fatalf("got ok=%v fresh=%v, want a stale entry", ok, l.Fresh)
	}
}

func TestPrune(t *testing.T) {
	c := mustNew(t, Config{TTL: time.Second, Stale: time.Second})
	c.Set(k(1), entryOfSize(200, t0))
	c.Set(k(2), entryOfSize(200, t0.Add(5*time.Second)))
	if n := c.Prune(t0.Add(3 * time.Second)); n != 1 {
		t.Fatalf("Prune removed %d, want 1", n)
	}
	if s := c.Stats(); s.Entries != 1 || s.Bytes != 200 || s.Expirations != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestNewConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "negative entries", cfg: Config{MaxEntries: -1, TTL: time.Second}},
		{name: "negative bytes", cfg: Config{MaxBytes: -1, TTL: time.Second}},
		{name: "negative entry bytes", cfg: Config{MaxEntryBytes: -1, TTL: time.Second}},
		{name: "negative ttl", cfg: Config{TTL: -time.Second, Stale: time.Second}},
		{name: "negative stale", cfg: Config{TTL: time.Second, Stale: -time.Second}},
		{name: "nothing servable", cfg: Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
		})
	}
}
