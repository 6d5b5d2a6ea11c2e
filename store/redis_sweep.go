package store

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// scanCount is the COUNT hint of Sweep's SCAN.
const scanCount = 512

// Sweep implements Store. Redis already expires records on its own (PX), so
// with a real clock this finds little; it remains for a caller whose now
// runs ahead of Redis's expiry (and it is what removes expired jobs, which
// carry no PX because their ExpiresAt is a time of the caller's clock). It
// SCANs the store's records (on every master of a Cluster) and reads each
// one's first 50 bytes, so its cost grows with the number of records: run
// it every few minutes, not per request. Each removal is a compare-and-set,
// so replicas may sweep at the same time. OpTimeout bounds each round trip.
func (s *Redis) Sweep(now time.Time) (int, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	ctx := context.Background()
	var (
		mu      sync.Mutex // a Cluster's masters are scanned concurrently
		removed int
	)
	err := scanKeys(ctx, s.client, s.keys.recordPattern(), s.opTimeout, func(keys []string) error {
		n, err := s.sweepRecords(ctx, keys, now)
		mu.Lock()
		removed += n
		mu.Unlock()
		return err
	})
	if err != nil {
		return removed, s.fail(ctx, "sweep", err)
	}
	n, err := s.sweepJobs(ctx, now)
	removed += n
	return removed, err
}

// sweepRecords removes the expired records among keys.
func (s *Redis) sweepRecords(ctx context.Context, keys []string, now time.Time) (int, error) {
	heads, err := s.heads(ctx, keys, 49)
	if err != nil {
		return 0, err
	}
	removed := 0
	for i, h := range heads {
		exp, ok := expiresAt(h)
		if _, _, okc := peekClaim(h); !ok || !okc || now.Before(exp) {
			continue
		}
		octx, cancel := s.op(ctx)
		v, err := s.scripts.sweepRecord.Run(octx, s.client, []string{keys[i]}, claimID(h)).Result()
		cancel()
		if err != nil {
			return removed, err
		}
		if n, _ := v.(int64); n == 1 {
			removed++
		}
	}
	return removed, nil
}

func (s *Redis) sweepJobs(ctx context.Context, now time.Time) (int, error) {
	ids, err := s.jobIDs(ctx)
	if err != nil {
		return 0, err
	}
	removed := 0
	for len(ids) > 0 {
		batch := ids[:min(jobBatch, len(ids))]
		ids = ids[len(batch):]
		keys := make([]string, len(batch))
		for i, id := range batch {
			keys[i] = s.keys.job(id)
		}
		heads, err := s.heads(ctx, keys, fixedHeaderLen-1)
		if err != nil {
			return removed, s.fail(ctx, "sweep", err)
		}
		for i, h := range heads {
			exp, ok := expiresAt(h)
			if !ok || exp.IsZero() || now.Before(exp) {
				continue
			}
			octx, cancel := s.op(ctx)
			v, err := s.scripts.deleteJob.Run(octx, s.client, []string{keys[i], s.keys.jobIndex()}, batch[i], string(h)).Result()
			cancel()
			if err != nil {
				return removed, s.fail(ctx, "sweep", err)
			}
			if n, _ := v.(int64); n == 1 {
				removed++
			}
		}
	}
	return removed, nil
}

// heads reads bytes 0..last of each key in one pipeline; a missing key
// reads as empty.
func (s *Redis) heads(ctx context.Context, keys []string, last int64) ([][]byte, error) {
	octx, cancel := s.op(ctx)
	defer cancel()
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.GetRange(octx, k, 0, last)
	}
	if _, err := pipe.Exec(octx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([][]byte, len(keys))
	for i, c := range cmds {
		out[i], _ = c.Bytes()
	}
	return out, nil
}

// scanKeys calls fn with each batch of keys matching pattern: on every
// master of a Cluster, else on the one server. timeout bounds each SCAN.
func scanKeys(ctx context.Context, c redis.UniversalClient, pattern string, timeout time.Duration, fn func(keys []string) error) error {
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scanNode(ctx, node, pattern, timeout, fn)
		})
	}
	return scanNode(ctx, c, pattern, timeout, fn)
}

func scanNode(ctx context.Context, c redis.Cmdable, pattern string, timeout time.Duration, fn func(keys []string) error) error {
	var cursor uint64
	for {
		octx, cancel := context.WithTimeout(ctx, timeout)
		keys, next, err := c.Scan(octx, cursor, pattern, scanCount).Result()
		cancel()
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := fn(keys); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}
