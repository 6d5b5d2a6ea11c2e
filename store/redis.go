package store

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ballast-proxy/ballast/policy"
)

// Defaults of RedisOptions.
const (
	// DefaultRedisOpTimeout bounds one store operation against Redis.
	DefaultRedisOpTimeout = time.Second
	// DefaultRedisPollEvery is how often Wait re-reads a record in case a
	// completion was published while its subscription was down.
	DefaultRedisPollEvery = 250 * time.Millisecond
)

// maxClaimRounds bounds Claim's compare-and-set loop; every round that
// fails does so because another replica changed the record meanwhile.
const maxClaimRounds = 16

// ErrUnavailable: Redis could not be reached, or did not answer, within the
// operation timeout (or answered with an error). The proxy degrades on it
// (503 state_unavailable, or passing the request through, as configured).
var ErrUnavailable = errors.New("store: state backend unavailable")

// RedisOptions configure a Redis store. The zero value uses the defaults.
type RedisOptions struct {
	// Limits: Owner, MaxJobs and MaxResponseBytes apply as in the other
	// backends. MaxRecords does not: records expire in Redis (PX) and Redis
	// bounds its memory itself (maxmemory); ErrFull is never returned for
	// records.
	Limits
	// Prefix starts every key (DefaultRedisPrefix when empty). Stores that
	// share a prefix share their state: that is how replicas share it. It
	// must not contain braces or glob characters (*?[]\).
	Prefix string
	// OpTimeout bounds each operation, including the retries go-redis makes
	// (DefaultRedisOpTimeout when ≤ 0). A shorter ctx deadline wins.
	OpTimeout time.Duration
	// PollEvery is Wait's safety-net poll interval (DefaultRedisPollEvery
	// when ≤ 0).
	PollEvery time.Duration
	// Clock times Wait's polls and the subscriber's reconnect back-off
	// (policy.SystemClock when nil).
	Clock policy.Clock
}

// Redis is the Store shared by the replicas of a deployment through Redis
// (or Valkey, or Redis Cluster: see redisKeys for the key layout).
//
// A claim is written with a Lua compare-and-set (SET with PX = the record's
// life, max(TTL, Lease)); Complete replaces it, checking its token, with the
// response and PX = ttl, and publishes on the key's channel; Release deletes
// it (token-checked) and publishes. Wait subscribes to the key's channel
// through one PubSub connection shared by the whole store (a map fans the
// messages out to local waiters) and re-reads the record every PollEvery in
// case a message was lost. Every decision about time uses the now the
// caller passes, exactly as the Memory and File backends do, so an InFlight
// record past its lease reads as UnknownOutcome on every replica; replicas
// should therefore keep their clocks in sync (NTP). Redis's own expiry (PX)
// removes records when their time is up, so Sweep rarely finds anything.
//
// Every operation is bounded by OpTimeout and ctx, and a failure to reach
// Redis returns an error wrapping ErrUnavailable; an operation whose ctx
// ended returns ctx's error instead. Reconnecting is go-redis's: a failed
// command drops its connection and the next one dials again.
//
// The store does not own the client: Close stops the store (blocked Waits
// return ErrClosed) and the caller closes the client afterwards.
type Redis struct {
	client    redis.UniversalClient
	lim       Limits
	keys      redisKeys
	opTimeout time.Duration
	pollEvery time.Duration
	clock     policy.Clock
	tokens    *tokens
	scripts   *redisScripts
	hub       *redisHub
	closed    atomic.Bool
}

var _ Store = (*Redis)(nil)

// OpenRedis returns a store on client. It does not contact Redis, so a
// process may start while Redis is down. The only error is an invalid
// option (wrapping ErrInvalid).
func OpenRedis(client redis.UniversalClient, opts RedisOptions) (*Redis, error) {
	if client == nil {
		return nil, invalidf("nil redis client")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultRedisPrefix
	}
	if err := checkPrefix(opts.Prefix); err != nil {
		return nil, err
	}
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = DefaultRedisOpTimeout
	}
	if opts.PollEvery <= 0 {
		opts.PollEvery = DefaultRedisPollEvery
	}
	if opts.Clock == nil {
		opts.Clock = policy.SystemClock{}
	}
	s := &Redis{
		client:    client,
		lim:       opts.Limits.withDefaults(),
		keys:      redisKeys{prefix: opts.Prefix},
		opTimeout: opts.OpTimeout,
		pollEvery: opts.PollEvery,
		clock:     opts.Clock,
		tokens:    newTokens(),
		scripts:   newRedisScripts(),
	}
	s.hub = newRedisHub(client, opts.Clock, opts.OpTimeout)
	return s, nil
}

// Owner returns the instance id written into this store's claims.
func (s *Redis) Owner() string { return s.lim.Owner }

// op returns the context of one operation: ctx bounded by OpTimeout.
func (s *Redis) op(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opTimeout)
}

// fail maps an error from Redis: ctx's own error when the caller's ctx
// ended, else an error wrapping ErrUnavailable.
func (s *Redis) fail(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("store: redis %s: %w", what, cerr)
	}
	return fmt.Errorf("%w: redis %s: %w", ErrUnavailable, what, err)
}

// Claim implements Store. One round trip decides the usual cases (a new key,
// or a duplicate of a live or completed one); taking over an expired or
// UnknownOutcome record takes a second, compare-and-set, round trip.
func (s *Redis) Claim(ctx context.Context, key string, args ClaimArgs) (*Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if err := checkKey("key", key); err != nil {
		return nil, false, err
	}
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	rec := newClaim(key, args, s.lim.Owner, s.tokens.new())
	blob := appendRecord(nil, rec)
	px := pxOf(rec.ExpiresAt.Sub(args.Now))
	rkey := s.keys.record(key)
	octx, cancel := s.op(ctx)
	defer cancel()
	expect := "" // the claim to replace (claimID); empty: the key must be absent
	for range maxClaimRounds {
		v, err := s.scripts.claim.Run(octx, s.client, []string{rkey}, blob, px, expect).Result()
		if err != nil {
			return nil, false, s.fail(ctx, "claim", err)
		}
		switch v := v.(type) {
		case int64:
			if v == 1 {
				return rec, true, nil
			}
			expect = "" // the record expected is gone: claim an absent key
			continue
		case string:
			cur, err := decodeRecord(key, []byte(v))
			if err != nil {
				return nil, false, err
			}
			if cur.Token == rec.Token && cur.State == InFlight {
				// go-redis retried a script whose first run took the key
				// but whose reply was lost: the claim is ours.
				return rec, true, nil
			}
			decision, view := decideClaim(cur, args)
			switch decision {
			case mismatch:
				return view, false, mismatchError(key)
			case answerExisting:
				return view, false, nil
			}
			expect = claimID([]byte(v))
		default:
			return nil, false, s.fail(ctx, "claim", fmt.Errorf("unexpected reply %T", v))
		}
	}
	return nil, false, s.fail(ctx, "claim", fmt.Errorf("key %q changed %d times during one claim", key, maxClaimRounds))
}

// Complete implements Store.
func (s *Redis) Complete(ctx context.Context, held *Record, resp *Response, now time.Time, ttl time.Duration) error {
	if err := checkHeld(held); err != nil {
		return err
	}
	if resp == nil {
		return invalidf("nil response")
	}
	if n := resp.Size(); n > s.lim.MaxResponseBytes {
		return tooLarge("response", n, s.lim.MaxResponseBytes)
	}
	if s.closed.Load() {
		return ErrClosed
	}
	blob := appendRecord(nil, completed(held, resp, now, ttl))
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.scripts.complete.Run(octx, s.client, []string{s.keys.record(held.Key)},
		tokenBytes(held.Token), blob, pxOf(ttlOrDefault(ttl))).Result()
	return s.heldResult(ctx, "complete", v, err)
}

// Release implements Store.
func (s *Redis) Release(ctx context.Context, held *Record) error {
	if err := checkHeld(held); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.scripts.release.Run(octx, s.client, []string{s.keys.record(held.Key)}, tokenBytes(held.Token)).Result()
	return s.heldResult(ctx, "release", v, err)
}

// heldResult maps the reply of a token-checked script: 1 done, 0 ErrNotHeld.
func (s *Redis) heldResult(ctx context.Context, what string, v any, err error) error {
	if err != nil {
		return s.fail(ctx, what, err)
	}
	n, err := scriptInt(v)
	switch {
	case err != nil:
		return s.fail(ctx, what, err)
	case n == 0:
		return ErrNotHeld
	}
	return nil
}

// Get implements Store.
func (s *Redis) Get(ctx context.Context, key string, now time.Time) (*Record, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	r, err := s.read(ctx, key)
	if err != nil {
		return nil, err
	}
	if r == nil || r.expired(now) {
		return nil, ErrNotFound
	}
	return r.viewAt(now), nil
}

// read returns the stored record of key, nil when absent.
func (s *Redis) read(ctx context.Context, key string) (*Record, error) {
	if err := checkKey("key", key); err != nil {
		return nil, err
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.client.Get(octx, s.keys.record(key)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil:
		return nil, s.fail(ctx, "get", err)
	}
	return decodeRecord(key, v)
}

// Close implements Store: blocked Waits return ErrClosed and every later
// call returns ErrClosed. It does not close the client. It is idempotent.
func (s *Redis) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.hub.close()
	}
	return nil
}

// pxOf converts a duration to Redis's PX milliseconds, rounding up; at
// least 1.
func pxOf(d time.Duration) int64 {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return max(int64(ms), 1)
}
