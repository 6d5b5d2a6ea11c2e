package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cooldown shares an upstream's pause across replicas: after a provider's
// 429 (with Retry-After) one replica extends the pause, and every replica
// sees it before sending. A pause is one Redis key per upstream,
// <prefix>cooldown:{<sha256(upstream)[:8] in hex>}, holding the end of the
// pause in Unix milliseconds and expiring then (so nothing needs cleaning).
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
	return c.prefix + "cooldown:{" + hex.EncodeToString(sum[:8]) + "}"
}

// Extend pauses upstream until until, unless it is already paused at least
// as long (a pause only grows) or until has passed. It reports whether it
// extended the pause.
func (c *Cooldown) Extend(ctx context.Context, upstream string, until time.Time) (bool, error) {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	n, err := c.extend.Run(octx, c.client, []string{c.key(upstream)}, until.UnixMilli()).Int64()
	if err != nil {
		return false, cooldownError(ctx, "extend", err)
	}
	return n == 1, nil
}

// Get returns the end of upstream's pause, or the zero time when it is not
// paused.
func (c *Cooldown) Get(ctx context.Context, upstream string) (time.Time, error) {
	octx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	s, err := c.client.Get(octx, c.key(upstream)).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return time.Time{}, nil
	case err != nil:
		return time.Time{}, cooldownError(ctx, "get", err)
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: cooldown get: value %q: %w", ErrUnavailable, s, err)
	}
	return time.UnixMilli(ms), nil
}

// cooldownError reports ctx's own error when the caller's ctx ended, else
// an error wrapping ErrUnavailable.
func cooldownError(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("ratelimit: cooldown %s: %w", what, cerr)
	}
	return fmt.Errorf("%w: cooldown %s: %w", ErrUnavailable, what, err)
}
