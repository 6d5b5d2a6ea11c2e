package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cooldown shares upstreams' pauses across replicas: after a provider's
// 429 (with Retry-After) one replica extends the pause, and every replica
// sees it before sending. Providers limit per API key, so a pause belongs
// to an upstream and a credential: an opaque name for the key the requests
// carry (the proxy's hash of it; "" for requests without one). An
// upstream's pauses are one Redis hash per upstream,
// <prefix>cooldowns:{<sha256(upstream)[:8] in hex>}, mapping each
// credential to the end of its pause in Unix milliseconds; extending drops
// the pauses that have ended, and the hash expires with its last pause (so
// nothing needs cleaning).
//
// The end is a wall-clock time of the caller: replicas should keep their
// clocks in sync (NTP); skews of milliseconds do not matter for pauses of
// seconds. Every method is bounded by ctx and the op timeout and returns an
// error wrapping ErrUnavailable when Redis does not answer (the proxy then
// relies on its local cool-down). Cooldown is safe for concurrent use.
type Cooldown struct {
	client    redis.UniversalClient
	prefix    string
	opTimeout time.Duration
	extend    *redis.Script
}

// NewCooldown returns a Cooldown on client with keys under prefix
// (DefaultRedisPrefix when empty), each call bounded by opTimeout
// (DefaultRedisOpTimeout when ≤ 0). It does not contact Redis.
func NewCooldown(client redis.UniversalClient, prefix string, opTimeout time.Duration) (*Cooldown, error) {
	if client == nil {
		return nil, configError("cooldown: nil client")
	}
	if prefix == "" {
		prefix = DefaultRedisPrefix
	}
	if len(prefix) > maxRedisPrefixBytes || strings.ContainsAny(prefix, "{}") {
		return nil, configError("cooldown: prefix %q must be at most %d bytes without braces", prefix, maxRedisPrefixBytes)
	}
	if opTimeout <= 0 {
		opTimeout = DefaultRedisOpTimeout
	}
	return &Cooldown{client: client, prefix: prefix, opTimeout: opTimeout, extend: redis.NewScript(extendScript)}, nil
}

func (c *Cooldown) key(upstream string) string {
	sum := sha256.Sum256([]byte(upstream))
	return c.prefix + "cooldowns:{" + hex.EncodeToString(sum[:8]) + "}"
}

// Extend pauses credential's requests to upstream until until, unless
// they are already paused at least as long (a pause only grows) or until
// has passed. It reports whether it extended the pause.
func (c *Cooldown) Extend(ctx context.Context, upstream, credential string, until time.Time) (bool, error) {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	n, err := c.extend.Run(octx, c.client, []string{c.key(upstream)}, credential, until.UnixMilli()).Int64()
	if err != nil {
		return false, cooldownError(ctx, "extend", err)
	}
	return n == 1, nil
}

// Get returns the ends of upstream's pauses by credential; pauses that
// have ended by now are left out, and an upstream with none gets an empty
// map.
func (c *Cooldown) Get(ctx context.Context, upstream string, now time.Time) (map[string]time.Time, error) {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	all, err := c.client.HGetAll(octx, c.key(upstream)).Result()
	if err != nil {
		return nil, cooldownError(ctx, "get", err)
	}
	out := make(map[string]time.Time, len(all))
	for cred, v := range all {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: cooldown get: value %q: %w", ErrUnavailable, v, err)
		}
		if until := time.UnixMilli(ms); until.After(now) {
			out[cred] = until
		}
	}
	return out, nil
}

// cooldownError reports ctx's own error when the caller's ctx ended, else
// an error wrapping ErrUnavailable.
func cooldownError(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("ratelimit: cooldown %s: %w", what, cerr)
	}
	return fmt.Errorf("%w: cooldown %s: %w", ErrUnavailable, what, err)
}
