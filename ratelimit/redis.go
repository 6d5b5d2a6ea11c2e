package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of RedisConfig.
const (
	// DefaultRedisPrefix starts every key the Redis limiter writes.
	DefaultRedisPrefix = "ballast:"
	// DefaultRedisOpTimeout bounds one Redis round trip of a limiter.
	DefaultRedisOpTimeout = 250 * time.Millisecond
)

// maxRedisPrefixBytes bounds RedisConfig.Prefix and Name.
const maxRedisPrefixBytes = 256

// ErrUnavailable is wrapped by every error of the Redis limiter and the
// Cooldown when Redis cannot be reached, or does not answer, within the
// operation timeout. The limiter has then decided nothing: the proxy chooses
// whether to admit (fail open, with a local limiter as a fallback) or refuse.
var ErrUnavailable = errors.New("ratelimit: redis unavailable")

// RedisConfig configures a Redis limiter.
type RedisConfig struct {
	// Config sizes each key's bucket, as for Keyed.
	Config
	// Name tells this limiter's buckets apart from others under the same
	// prefix: the route's or the named limiter's name. Required; replicas
	// share a limit by using the same Prefix, Name and Config.
	Name string
	// Prefix starts every key (DefaultRedisPrefix when empty). It must not
	// contain braces.
	Prefix string
	// OpTimeout bounds each round trip to Redis (DefaultRedisOpTimeout when
	// ≤ 0). Reserve has no context, so this is its only bound.
	OpTimeout time.Duration
}

// Redis is a Limiter whose buckets live in Redis, so that every replica of
// a deployment draws on one quota. Each key has its own bucket, as with
// Keyed, but nothing is held in process memory: a bucket is one Redis key,
// <prefix>rl:{<name>:<key as 16 hex digits>}, that expires when the bucket
// is full again. The hash tag makes it a Cluster-safe single-key operation.
//
// Every decision is one Lua script (EVALSHA) run atomically by Redis: GCRA
// on the Redis server's clock (TIME), so replicas agree whatever their
// clocks. The now passed to Reserve, Quota, Cancel and Settle is therefore
// used only for local computations: the Reservation's DelayFrom and the
// remaining wait a Cancel reports (delays are durations, which both clocks
// measure alike). Semantics follow the in-process limiters: Reserve returns
// the wait before the caller may proceed, having reserved the units, or
// refuses (taking nothing) when that wait exceeds maxWait; Cancel gives the
// units back as far as later reservations allow; Settle returns unused units
// (up to the burst) or takes the excess as debt (up to 16 bursts).
//
// The key must be the same on every replica for the same caller: use
// StableKeyHash, not KeyHash (which is seeded per process).
//
// When Redis cannot be reached within OpTimeout, Reserve returns an error
// wrapping ErrUnavailable; Cancel and Settle, which cannot report errors,
// then do nothing (the bucket keeps the units until it refills); Quota
// reports an empty bucket. Redis is safe for concurrent use; create it
// with NewRedis.
type Redis struct {
	client      redis.UniversalClient
	keyPrefix   string // <prefix>rl:{<name>:
	rate        float64
	burst       int
	emission    float64 // T: µs per unit
	tolerance   float64 // tau: burst·T, in µs
	opTimeout   time.Duration
	scripts     *redisScripts
	limited     atomic.Uint64
	unavailable atomic.Uint64
}

var (
	_ Limiter = (*Redis)(nil)
	_ Settler = (*Redis)(nil)
)

// NewRedis returns a limiter on client, or an error wrapping
// ErrInvalidConfig. It does not contact Redis. The caller closes client
// (the limiter holds no other resource).
func NewRedis(client redis.UniversalClient, cfg RedisConfig) (*Redis, error) {
	c, err := cfg.Config.normalize()
	if err != nil {
		return nil, err
	}
	if client == nil {
		return nil, configError("redis: nil client")
	}
	if cfg.Name == "" {
		return nil, configError("redis: name is required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultRedisPrefix
	}
	for _, s := range []struct{ what, v string }{{"prefix", cfg.Prefix}, {"name", cfg.Name}} {
		if len(s.v) > maxRedisPrefixBytes || strings.ContainsAny(s.v, "{}") {
			return nil, configError("redis: %s %q must be at most %d bytes without braces", s.what, s.v, maxRedisPrefixBytes)
		}
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = DefaultRedisOpTimeout
	}
	emission := 1e6 / c.Rate
	return &Redis{
		client:    client,
		keyPrefix: cfg.Prefix + "rl:{" + cfg.Name + ":",
		rate:      c.Rate,
		burst:     c.Burst,
		emission:  emission,
		tolerance: float64(c.Burst) * emission,
		opTimeout: cfg.OpTimeout,
		scripts:   newRedisScripts(),
	}, nil
}

// bucketKey is the Redis key of key's bucket.
func (r *Redis) bucketKey(key uint64) string {
	var b [16]byte
	return r.keyPrefix + string(fmtHex(b[:0], key)) + "}"
}

// fmtHex appends key as 16 hex digits.
func fmtHex(b []byte, key uint64) []byte {
	const digits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, digits[key>>uint(shift)&0xf])
	}
	return b
}

func (r *Redis) op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.opTimeout)
}

// opWithin is op bounded also by limit, when that is shorter.
func (r *Redis) opWithin(limit time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), min(r.opTimeout, limit))
}

func (r *Redis) fail(what string, err error) error {
	r.unavailable.Add(1)
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, err)
}

// Reserve implements Limiter. It makes one round trip to Redis (none when
// n ≤ 0), bounded by OpTimeout.
func (r *Redis) Reserve(key uint64, n int, now time.Time, maxWait time.Duration) (Reservation, error) {
	return r.ReserveWithin(key, n, now, maxWait, r.opTimeout)
}

// ReserveWithin is Reserve with its round trip bounded by limit too, when
// that is shorter than OpTimeout: a request's time left, so that a Redis
// that hangs cannot hold a request past its own deadline. A round trip
// cut short fails with ErrUnavailable, as an unreachable Redis does.
func (r *Redis) ReserveWithin(key uint64, n int, now time.Time, maxWait, limit time.Duration) (Reservation, error) {
	if n <= 0 {
		return NewReservation(nil, key, 0, now, 0), nil
	}
	n = min(n, r.burst)
	ctx, cancel := r.opWithin(limit)
	defer cancel()
	v, err := r.scripts.reserve.Run(ctx, r.client, []string{r.bucketKey(key)},
		r.emission, r.tolerance, n, micros(max(maxWait, 0))).Slice()
	if err != nil {
		return Reservation{}, r.fail("reserve", err)
	}
	ok, wait, tokens, err := parseReserve(v)
	if err != nil {
		return Reservation{}, r.fail("reserve", err)
	}
	if !ok {
		r.limited.Add(1)
		return Reservation{}, &LimitedError{RetryAfter: wait, Quota: quotaOf(r.rate, r.burst, tokens)}
	}
	return NewReservation(r, key, n, now, wait), nil
}

// parseReserve reads {admitted, wait µs, tokens}.
func parseReserve(v []any) (ok bool, wait time.Duration, tokens float64, err error) {
	if len(v) != 3 {
		return false, 0, 0, fmt.Errorf("reserve script returned %d values", len(v))
	}
	flag, ok1 := v[0].(int64)
	us, ok2 := v[1].(int64)
	s, ok3 := v[2].(string)
	if !ok1 || !ok2 || !ok3 {
		return false, 0, 0, fmt.Errorf("reserve script returned %T, %T, %T", v[0], v[1], v[2])
	}
	tokens, err = strconv.ParseFloat(s, 64)
	if err != nil {
		return false, 0, 0, err
	}
	return flag == 1, time.Duration(us) * time.Microsecond, tokens, nil
}

// Quota implements Limiter with one round trip; when Redis does not answer
// it reports an empty bucket.
func (r *Redis) Quota(key uint64, now time.Time) Quota {
	ctx, cancel := r.op()
	defer cancel()
	s, err := r.scripts.quota.Run(ctx, r.client, []string{r.bucketKey(key)}, r.emission, r.tolerance).Text()
	if err != nil {
		r.unavailable.Add(1)
		return quotaOf(r.rate, r.burst, 0)
	}
	tokens, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return quotaOf(r.rate, r.burst, 0)
	}
	return quotaOf(r.rate, r.burst, tokens)
}

// Stats implements Limiter. Keys is zero: the buckets live in Redis.
func (r *Redis) Stats() Stats {
	return Stats{Rate: r.rate, Burst: r.burst, Limited: r.limited.Load()}
}

// Unavailable counts the operations that failed because Redis did not
// answer, for metrics.
func (r *Redis) Unavailable() uint64 { return r.unavailable.Load() }

// CancelReservation implements Settler: Reservation.Cancel calls it.
func (r *Redis) CancelReservation(key uint64, n int, at, now time.Time) {
	ctx, cancel := r.op()
	defer cancel()
	if err := r.scripts.cancel.Run(ctx, r.client, []string{r.bucketKey(key)},
		r.emission, n, micros(at.Sub(now)), r.tolerance).Err(); err != nil {
		r.unavailable.Add(1)
	}
}

// AdjustReservation implements Settler: Reservation.Settle calls it.
func (r *Redis) AdjustReservation(key uint64, delta int, now time.Time) {
	ctx, cancel := r.op()
	defer cancel()
	if err := r.scripts.adjust.Run(ctx, r.client, []string{r.bucketKey(key)},
		r.emission, delta, r.burst, maxDebtBursts*r.burst).Err(); err != nil {
		r.unavailable.Add(1)
	}
}

// micros converts d to whole microseconds.
func micros(d time.Duration) int64 { return int64(d / time.Microsecond) }
