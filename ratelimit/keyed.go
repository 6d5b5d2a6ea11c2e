package ratelimit

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/time/rate"
)

// KeyedConfig sizes a Keyed limiter.
type KeyedConfig struct {
	// Config sizes each key's bucket.
	Config
	// MaxKeys bounds the per-key buckets held. It must be ≥ 1. No bucket is
	// dropped while at most MaxKeys keys are held; a new key past it drops
	// one of the least recently used (see Keyed). A dropped key starts again
	// with a full bucket when it returns, so MaxKeys should exceed the number
	// of keys active within one refill time (Burst/Rate).
	MaxKeys int
}

// keyedShards is the number of LRU partitions once MaxKeys reaches
// shardedMinKeys; below that one exact LRU is used. Sharding keeps parallel
// callers from queueing on one LRU lock.
const (
	keyedShards    = 16
	shardedMinKeys = 1024
)

// Keyed holds one token bucket per partition key (a hash from KeyHash: raw
// keys are never stored), so that one key's traffic does not consume
// another's. Memory is bounded by MaxKeys buckets, counted over the whole
// limiter: no bucket is dropped while at most MaxKeys keys are held, and a
// new key past MaxKeys drops one. Below 1024 keys one exact LRU drops the
// least recently used key; from 1024 the keys are spread over 16 locked
// partitions (each may hold up to MaxKeys), and the key dropped is the least
// recently used of the new key's partition (of another one when the new key
// is alone in its own) — an approximation of the global LRU order, the
// partitions being filled evenly by the hash.
//
// Keyed is safe for concurrent use. Create it with NewKeyed; the zero value
// is not ready for use.
type Keyed struct {
	rate    rate.Limit
	burst   int
	maxKeys int64
	shards  []*keyedShard
	mask    uint64
	// keys is the number of buckets held over all shards; it changes only
	// under the lock of the shard that gains or loses a bucket.
	keys    atomic.Int64
	limited atomic.Uint64
}

// keyedShard is one partition of a Keyed limiter's buckets.
type keyedShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[uint64, *rate.Limiter]
	// Padding keeps neighbouring shards' locks off one cache line.
	_ [64]byte
}

var _ Limiter = (*Keyed)(nil)

// NewKeyed returns a Keyed limiter with no keys yet, or an error wrapping
// ErrInvalidConfig.
func NewKeyed(cfg KeyedConfig) (*Keyed, error) {
	c, err := cfg.Config.normalize()
	if err != nil {
		return nil, err
	}
	if cfg.MaxKeys < 1 {
		return nil, configError("max_keys must be ≥ 1, got %d", cfg.MaxKeys)
	}
	shards := 1
	if cfg.MaxKeys >= shardedMinKeys {
		shards = keyedShards
	}
	k := &Keyed{
		rate:    rate.Limit(c.Rate),
		burst:   c.Burst,
		maxKeys: int64(cfg.MaxKeys),
		shards:  make([]*keyedShard, shards),
		mask:    uint64(shards - 1),
	}
	for i := range k.shards {
		// Each shard may hold all MaxKeys (the count over all shards bounds
		// them); simplelru allocates per entry, not up front.
		l, err := simplelru.NewLRU[uint64, *rate.Limiter](cfg.MaxKeys, nil)
		if err != nil {
			return nil, configError("max_keys: %v", err)
		}
		k.shards[i] = &keyedShard{lru: l}
	}
	return k, nil
}

// Reserve implements Limiter for key's bucket, creating it (full) when the
// key is new. Only a new key allocates.
func (k *Keyed) Reserve(key uint64, n int, now time.Time, maxWait time.Duration) (Reservation, error) {
	return reserve(k.bucket(key), k.burst, key, n, now, maxWait, &k.limited)
}

// Quota implements Limiter for key; an unknown key reports a full bucket.
func (k *Keyed) Quota(key uint64, now time.Time) Quota {
	tokens := float64(k.burst)
	s := k.shard(key)
	s.mu.Lock()
	lim, ok := s.lru.Peek(key)
	s.mu.Unlock()
	if ok {
		tokens = lim.TokensAt(now)
	}
	return quotaOf(float64(k.rate), k.burst, tokens)
}

// Stats implements Limiter.
func (k *Keyed) Stats() Stats {
	return Stats{Rate: float64(k.rate), Burst: k.burst, Limited: k.limited.Load(), Keys: k.Len()}
}

// Len is the number of per-key buckets held: at most MaxKeys once no new
// key is being added.
func (k *Keyed) Len() int {
	return int(k.keys.Load())
}

func (k *Keyed) shard(key uint64) *keyedShard {
	return k.shards[key&k.mask]
}

// bucket returns key's bucket, adding a full one when key is new and then
// dropping one other bucket when more than MaxKeys are held.
func (k *Keyed) bucket(key uint64) *rate.Limiter {
	i := int(key & k.mask)
	s := k.shards[i]
	s.mu.Lock()
	if lim, ok := s.lru.Get(key); ok {
		s.mu.Unlock()
		return lim
	}
	lim := rate.NewLimiter(k.rate, k.burst)
	if s.lru.Add(key, lim) {
		// The shard alone was full: it dropped its oldest, the count stays.
		s.mu.Unlock()
		return lim
	}
	over := k.keys.Add(1) > k.maxKeys
	if over && s.lru.Len() > 1 {
		// key is the newest of s, so never the oldest dropped here.
		s.lru.RemoveOldest()
		k.keys.Add(-1)
		over = false
	}
	s.mu.Unlock()
	if over {
		k.evictElsewhere(i)
	}
	return lim
}

// evictElsewhere drops the least recently used bucket of the first shard
// after shard except that holds any. It finds none only when the count was
// briefly ahead of the shards (other callers between their add and their
// drop); the count stays exact either way.
func (k *Keyed) evictElsewhere(except int) {
	for i := 1; i < len(k.shards); i++ {
		s := k.shards[(except+i)%len(k.shards)]
		s.mu.Lock()
		_, _, ok := s.lru.RemoveOldest()
		if ok {
			k.keys.Add(-1)
		}
		s.mu.Unlock()
		if ok {
			return
		}
	}
}
