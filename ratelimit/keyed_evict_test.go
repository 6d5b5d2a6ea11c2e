package ratelimit

import (
	"errors"
	"sync"
	"testing"
)

// stableKey is a deterministic key hash, so that these tests do not depend
// on the process's KeyHash seed.
func stableKey(i int) uint64 {
	return StableKeyHash([]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)})
}

// heldInShards counts the buckets the shards hold, which Len must match.
func heldInShards(k *Keyed) int {
	n := 0
	for _, s := range k.shards {
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// Past max_keys, each new key drops exactly one other; never the new key,
// and never one of those used since the oldest.
func TestKeyedEvictsOnlyPastMaxKeys(t *testing.T) {
	tests := []struct {
		name    string
		maxKeys int
	}{
		{name: "one LRU", maxKeys: 1000},
		{name: "sharded at the threshold", maxKeys: 1024},
		{name: "sharded", maxKeys: 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 0.001, Burst: 1}, MaxKeys: tt.maxKeys})
			for i := range tt.maxKeys {
				if _, err := k.Reserve(stableKey(i), 1, t0, 0); err != nil {
					t.Fatalf("key %d: %v", i, err)
				}
			}
			// Touch the second half again, so the first half is the older.
			for i := tt.maxKeys / 2; i < tt.maxKeys; i++ {
				if _, err := k.Reserve(stableKey(i), 1, t0, 0); !errors.Is(err, ErrLimited) {
					t.Fatalf("key %d again: %v, want ErrLimited (kept, spent)", i, err)
				}
			}
			// A quarter of max_keys new keys: as many old ones dropped.
			extra := tt.maxKeys / 4
			for i := range extra {
				key := stableKey(tt.maxKeys + i)
				if _, err := k.Reserve(key, 1, t0, 0); err != nil {
					t.Fatalf("new key %d: %v", i, err)
				}
				if _, err := k.Reserve(key, 1, t0, 0); !errors.Is(err, ErrLimited) {
					t.Fatalf("new key %d was dropped right after being added: %v", i, err)
				}
				if got := k.Len(); got != tt.maxKeys {
					t.Fatalf("after new key %d: Len = %d, want %d", i, got, tt.maxKeys)
				}
			}
			if got := heldInShards(k); got != tt.maxKeys {
				t.Errorf("shards hold %d buckets, Len says %d", got, k.Len())
			}
			// The recently used half was never dropped.
			for i := tt.maxKeys / 2; i < tt.maxKeys; i++ {
				if _, err := k.Reserve(stableKey(i), 1, t0, 0); !errors.Is(err, ErrLimited) {
					t.Fatalf("recently used key %d was dropped (fresh burst): %v", i, err)
				}
			}
			dropped := 0
			for i := range tt.maxKeys / 2 {
				if _, ok := k.shard(stableKey(i)).lru.Peek(stableKey(i)); !ok {
					dropped++
				}
			}
			if dropped != extra {
				t.Errorf("%d of the older half dropped for %d new keys, want %d", dropped, extra, extra)
			}
		})
	}
}

// Keys added from many goroutines at once: none is dropped while their
// number stays within max_keys, and past it the count held is exactly
// max_keys once they are done.
func TestKeyedConcurrentAddsKeepExactCount(t *testing.T) {
	tests := []struct {
		name          string
		maxKeys, keys int
	}{
		{name: "within max_keys", maxKeys: 4096, keys: 4096},
		{name: "past max_keys", maxKeys: 2048, keys: 10_000},
		{name: "one LRU past max_keys", maxKeys: 500, keys: 3000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 0.001, Burst: 1}, MaxKeys: tt.maxKeys})
			const workers = 8
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i := w; i < tt.keys; i += workers {
						if _, err := k.Reserve(stableKey(i), 1, t0, 0); err != nil {
							t.Errorf("first request of key %d: %v", i, err)
						}
					}
				})
			}
			wg.Wait()
			want := min(tt.keys, tt.maxKeys)
			if got := k.Len(); got != want {
				t.Errorf("Len = %d, want %d", got, want)
			}
			if got := heldInShards(k); got != want {
				t.Errorf("shards hold %d, want %d", got, want)
			}
			if tt.keys > tt.maxKeys {
				return
			}
			for i := range tt.keys {
				if _, err := k.Reserve(stableKey(i), 1, t0, 0); !errors.Is(err, ErrLimited) {
					t.Fatalf("key %d got a fresh burst: it was dropped with %d keys ≤ max_keys %d", i, tt.keys, tt.maxKeys)
				}
			}
		})
	}
}

// A new key alone in its partition drops the oldest key of another one:
// the count still stays at max_keys.
func TestKeyedEvictsFromAnotherShardWhenAlone(t *testing.T) {
	k := mustKeyed(t, KeyedConfig{Config: Config{Rate: 0.001, Burst: 1}, MaxKeys: 1024})
	// Fill max_keys keys in shards other than 0 (keys ≡ 1..15 mod 16).
	key := uint64(0)
	for range 1024 {
		key++
		if key&k.mask == 0 {
			key++
		}
		if _, err := k.Reserve(key, 1, t0, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Key 1 is the oldest, in shard 1; key 1<<20 goes to shard 0, empty.
	const first = 1
	if _, err := k.Reserve(1<<20, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	if got := k.Len(); got != 1024 || heldInShards(k) != 1024 {
		t.Errorf("Len = %d, shards hold %d, want 1024", got, heldInShards(k))
	}
	if _, err := k.Reserve(1<<20, 1, t0, 0); !errors.Is(err, ErrLimited) {
		t.Errorf("the new key was dropped: %v", err)
	}
	if _, ok := k.shard(first).lru.Peek(first); ok {
		t.Errorf("key %d, the oldest of the next shard, was kept", first)
	}
}
