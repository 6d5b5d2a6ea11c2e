package ratelimit

import (
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
)

// KeyedConfig sizes a Keyed limiter.
type KeyedConfig struct {
	// Config sizes each key's bucket.
	Config
	// MaxKeys bounds the per-key buckets held; the least recently used is
	// dropped past it. It must be ≥ 1. A dropped key starts again with a full
	// bucket when it returns, so MaxKeys should exceed the number of keys
	// active within one refill time (Burst/Rate).
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
// another's. Memory is bounded by MaxKeys buckets: with MaxKeys ≥ 1024 the
// keys are split over 16 LRUs of MaxKeys/16 each (eviction is least recently
// used within a partition); below it one LRU holds exactly MaxKeys.
//
// Keyed is safe for concurrent use. Create it with NewKeyed; the zero value
// is not ready for use.
type Keyed struct {
	rate    rate.Limit
	burst   int
	shards  []*lru.Cache[uint64, *rate.Limiter]
	mask    uint64
	limited atomic.Uint64
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
		rate:   rate.Limit(c.Rate),
		burst:  c.Burst,
		shards: make([]*lru.Cache[uint64, *rate.Limiter], shards),
		mask:   uint64(shards - 1),
	}
	for i := range k.shards {
		k.shards[i], err = lru.New[uint64, *rate.Limiter](cfg.MaxKeys / shards)
		if err != nil {
			return nil, configError("max_keys: %v", err)
		}
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
	if lim, ok := k.shard(key).Peek(key); ok {
		tokens = lim.TokensAt(now)
	}
	return quotaOf(float64(k.rate), k.burst, tokens)
}

// Stats implements Limiter.
func (k *Keyed) Stats() Stats {
	return Stats{Rate: float64(k.rate), Burst: k.burst, Limited: k.limited.Load(), Keys: k.Len()}
}

// Len is the number of per-key buckets held, at most MaxKeys.
func (k *Keyed) Len() int {
	n := 0
	for _, s := range k.shards {
		n += s.Len()
	}
	return n
}

func (k *Keyed) shard(key uint64) *lru.Cache[uint64, *rate.Limiter] {
	return k.shards[key&k.mask]
}

// bucket returns key's bucket, adding a full one when key is new.
func (k *Keyed) bucket(key uint64) *rate.Limiter {
	s := k.shard(key)
	if lim, ok := s.Get(key); ok {
		return lim
	}
	lim := rate.NewLimiter(k.rate, k.burst)
	if prev, ok, _ := s.PeekOrAdd(key, lim); ok {
		return prev
	}
	return lim
}
