package ratelimit

import (
	"errors"
	"testing"
)

func mustKeyed(t testing.TB, cfg KeyedConfig) *Keyed {
	t.Helper()
	k, err := NewKeyed(cfg)
	if err != nil {
		t.Fatalf("NewKeyed(%+v): %v", cfg, err)
	}
	return k
}

func TestKeyedIsolation(t *testing.T) {
	k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 1, Burst: 3}, MaxKeys: 100})
	a, b := KeyHash([]byte("Bearer agent-a")), KeyHash([]byte("Bearer agent-b"))
	if _, err := k.Reserve(a, 3, t0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Reserve(a, 1, t0, 0); !errors.Is(err, ErrLimited) {
		t.Fatalf("key A past its burst: err = %v, want ErrLimited", err)
	}
	for i := range 3 {
		r, err := k.Reserve(b, 1, t0, 0)
		if err != nil || r.Delay() != 0 {
			t.Fatalf("key B request %d after A exhausted: delay %v, err %v", i, r.Delay(), err)
		}
	}
	if q := k.Quota(a, t0); q.Remaining != 0 {
		t.Errorf("A remaining = %d, want 0", q.Remaining)
	}
	if got := k.Stats(); got.Keys != 2 || got.Limited != 1 {
		t.Errorf("Stats = %+v, want 2 keys, 1 refusal", got)
	}
}

func TestKeyedEvictsLeastRecentlyUsed(t *testing.T) {
	k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 1, Burst: 1}, MaxKeys: 2})
	for _, key := range []uint64{1, 2} {
		if _, err := k.Reserve(key, 1, t0, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Key 1 is used again (refused, but touched), so key 2 is the oldest.
	if _, err := k.Reserve(1, 1, t0, 0); !errors.Is(err, ErrLimited) {
		t.Fatalf("key 1 again: %v", err)
	}
	if _, err := k.Reserve(3, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	if got := k.Len(); got != 2 {
		t.Fatalf("Len = %d, want 2 (max_keys)", got)
	}
	// Key 2 was dropped: it starts again with a full bucket.
	if _, err := k.Reserve(2, 1, t0, 0); err != nil {
		t.Errorf("evicted key 2 not reset: %v", err)
	}
	// Key 1 was kept (then evicted by key 2's return, as the oldest now).
	if _, err := k.Reserve(3, 1, t0, 0); !errors.Is(err, ErrLimited) {
		t.Errorf("key 3 lost its state: %v", err)
	}
}

func TestKeyedMemoryBounded(t *testing.T) {
	tests := []struct {
		name    string
		maxKeys int
		keys    int
	}{
		{name: "one LRU", maxKeys: 500, keys: 20_000},
		{name: "sharded", maxKeys: 5_000, keys: 200_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 1, Burst: 1}, MaxKeys: tt.maxKeys})
			var raw [8]byte
			for i := range tt.keys {
				raw[0], raw[1], raw[2], raw[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
				if _, err := k.Reserve(KeyHash(raw[:]), 1, t0, 0); err != nil {
					t.Fatalf("new key %d refused: %v", i, err)
				}
			}
			if got := k.Len(); got > tt.maxKeys || got < tt.maxKeys*9/10 {
				t.Errorf("Len = %d after %d keys, want ≤ %d (and near it)", got, tt.keys, tt.maxKeys)
			}
		})
	}
}

func TestKeyedQuotaOfUnknownKeyIsFull(t *testing.T) {
	k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 10, Burst: 10}, MaxKeys: 10})
	if got := k.Quota(42, t0); got.Remaining != 10 || got.Reset != 0 {
		t.Errorf("Quota(unknown) = %+v, want full", got)
	}
	if k.Len() != 0 {
		t.Errorf("Quota created a key")
	}
}

func TestKeyHash(t *testing.T) {
	a1, a2, b := KeyHash([]byte("a")), KeyHash([]byte("a")), KeyHash([]byte("b"))
	if a1 != a2 {
		t.Error("KeyHash is not stable within the process")
	}
	if a1 == b {
		t.Error("KeyHash(a) == KeyHash(b)")
	}
}

func TestKeyedSharedAcrossGoroutines(t *testing.T) {
	k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 1, Burst: 100}, MaxKeys: 2000})
	done := make(chan int)
	for range 8 {
		go func() {
			admitted := 0
			for i := range 52 { // 13 per key
				if _, err := k.Reserve(uint64(i%4), 1, t0, 0); err == nil {
					admitted++
				}
			}
			done <- admitted
		}()
	}
	total := 0
	for range 8 {
		total += <-done
	}
	// 416 requests at one instant for 4 keys × burst 100.
	if total != 400 {
		t.Errorf("admitted %d, want exactly 400 (4 keys × burst 100)", total)
	}
	if got := k.Stats().Limited; got != 16 {
		t.Errorf("Limited = %d, want 16", got)
	}
}
