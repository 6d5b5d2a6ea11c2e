package proxy

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"
)

// sharedCacheWrites bounds a route's Redis cache writes in flight; a store
// that finds them all busy is not shared (the local tier still has it).
const sharedCacheWrites = 16

// sharedCache is a route cache's second tier in Redis (cache.shared with
// state.backend redis). The local LRU stays the first tier: entries are
// written here after a local store, and read here only on a local miss,
// then kept locally. Redis failures are misses: a cache never fails a
// request. A nil *sharedCache is a valid, disabled tier.
type sharedCache struct {
	sh     *shared
	prefix string        // <key_prefix>cache:{<route>}:
	life   time.Duration // ttl+stale: how long an entry is any use
	writes chan struct{} // semaphore of writes in flight
	errs   prometheus.Counter
}

// newSharedCache returns the route's Redis tier, or nil when the route
// does not share its cache or there is no Redis.
func (s *Server) newSharedCache(rc *config.Route) *sharedCache {
	if !rc.Cache.Shared || s.shared == nil {
		return nil
	}
	return &sharedCache{
		sh:     s.shared,
		prefix: s.shared.cfg.KeyPrefix + "cache:{" + rc.Name + "}:",
		life:   rc.Cache.TTL.D() + rc.Cache.Stale.D(),
		writes: make(chan struct{}, sharedCacheWrites),
		errs:   s.shared.errs.WithLabelValues("cache"),
	}
}

// redisKey is <key_prefix>cache:{<route>}:<hex key>. The braces make the
// route a Redis Cluster hash tag.
func (sc *sharedCache) redisKey(key cache.Key) string {
	var buf [2 * len(cache.Key{})]byte
	hex.Encode(buf[:], key[:])
	return sc.prefix + string(buf[:])
}

// put shares e under key without holding up the caller: the write runs in
// the background, at most sharedCacheWrites at a time per route, and is
// dropped when they are all busy or Redis is known to be down. e must be
// immutable (it is once handed to cache.Cache.Set).
func (sc *sharedCache) put(key cache.Key, e *cache.Entry) {
	if sc == nil || !sc.sh.up.Load() {
		return
	}
	select {
	case sc.writes <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-sc.writes }()
		c, cancel := context.WithTimeout(context.Background(), sc.sh.cfg.OpTimeout.D())
		defer cancel()
		if err := sc.sh.client.Set(c, sc.redisKey(key), encodeEntry(nil, e), sc.life).Err(); err != nil {
			sc.errs.Inc()
		}
	}()
}

// get reads the entry under key from Redis, bounded by the op timeout.
// Absent, undecodable and unreachable all report false; the last two are
// counted in ballast_state_errors_total{op="cache"}. While the health
// watcher knows Redis is down it does not ask, so an outage costs a miss,
// not an op timeout per request.
func (sc *sharedCache) get(ctx context.Context, key cache.Key) (*cache.Entry, bool) {
	if sc == nil || !sc.sh.up.Load() {
		return nil, false
	}
	c, cancel := context.WithTimeout(ctx, sc.sh.cfg.OpTimeout.D())
	defer cancel()
	val, err := sc.sh.client.Get(c, sc.redisKey(key)).Bytes()
	if err != nil {
		if !errors.Is(err, redis.Nil) {
			sc.errs.Inc()
		}
		return nil, false
	}
	e, err := decodeEntry(val)
	if err != nil {
		sc.errs.Inc()
		return nil, false
	}
	return e, true
}

// fill looks key up in Redis and keeps what it finds in the local cache c,
// unless c already holds an entry at least as recent. It returns c's view
// of the result (age and freshness by the local TTL and clock), and false
// when neither tier has a usable entry.
func (sc *sharedCache) fill(ctx context.Context, c *cache.Cache, key cache.Key, now time.Time) (cache.Lookup, bool) {
	e, ok := sc.get(ctx, key)
	if !ok {
		return cache.Lookup{}, false
	}
	if cur, ok := c.Get(key, now); ok && !cur.Entry.Received().Before(e.Received()) {
		return cur, true
	}
	if !c.Set(key, e) {
		return cache.Lookup{}, false
	}
	return c.Get(key, now)
}

// sharedHit answers a fresh-mode local miss from the route's Redis tier
// when it holds a fresh entry, exactly as a local hit is answered. It
// reports whether it answered; a stale entry found there is kept locally
// for stale-if-error but not served. bound ends at the request's deadline
// (never a context parented on a RequestCtx): a slow Redis read costs the
// request at most its own time, and the miss then goes upstream.
func (s *Server) sharedHit(ctx *fasthttp.RequestCtx, bound context.Context, r *route, key cache.Key) bool {
	rc := r.cache
	if rc.remote == nil {
		return false
	}
	l, ok := rc.remote.fill(bound, rc.c, key, s.clock.Now())
	if !ok || !l.Fresh {
		return false
	}
	rc.results[cacheHit].Inc()
	s.serveEntry(ctx, l, cache.Hit(l), 0)
	s.observe(ctx, r, policy.OK, "")
	return true
}

// cachedOrShared is the stored entry for key, any age within ttl+stale:
// from the local cache, else from the Redis tier (then kept locally) when
// the request has time left before deadline for the read: the deadline is
// law for a wait on Redis too.
func (s *Server) cachedOrShared(rc *routeCache, key cache.Key, deadline time.Time) (cache.Lookup, bool) {
	now := s.clock.Now()
	if l, ok := rc.c.Get(key, now); ok || rc.remote == nil || !now.Before(deadline) {
		return l, ok
	}
	bound, cancel := context.WithDeadline(context.Background(), s.wall(deadline))
	defer cancel()
	return rc.remote.fill(bound, rc.c, key, now)
}

// The shared encoding of an entry (version 1), compact and binary:
//
//	byte     version (1)
//	8 bytes  received (Entry.Received) less the age the answer had on
//	         arrival (Entry.InitialAge), Unix nanoseconds, big-endian: the
//	         instant it was new, so every replica computes the same Age
//	2 bytes  Status, big-endian
//	uvarint  len(Header)
//	         Header ("Name: value\r\n" lines)
//	         Body (the rest)
const (
	entryVersion    = 1
	entryFixedBytes = 1 + 8 + 2
)

// errSharedEntry is matched by every decodeEntry error.
var errSharedEntry = errors.New("proxy: malformed shared cache entry")

// encodeEntry appends e's shared encoding to dst.
func encodeEntry(dst []byte, e *cache.Entry) []byte {
	dst = append(dst, entryVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Received().Add(-e.InitialAge).UnixNano()))
	dst = binary.BigEndian.AppendUint16(dst, uint16(e.Status))
	dst = binary.AppendUvarint(dst, uint64(len(e.Header)))
	dst = append(dst, e.Header...)
	return append(dst, e.Body...)
}

// decodeEntry parses a shared encoding. The entry's Header and Body alias
// b, which the caller must not modify afterwards. Redis content is outside
// input: a wrong version, a status outside 100-599, a header length past
// the end or not minimally encoded, or a header line that is not
// "token: value\r\n" (no CR, LF or NUL in the value) is an error matching
// errSharedEntry. Every accepted input encodes back to the same bytes.
func decodeEntry(b []byte) (*cache.Entry, error) {
	if len(b) < entryFixedBytes {
		return nil, fmt.Errorf("%w: %d bytes", errSharedEntry, len(b))
	}
	if b[0] != entryVersion {
		return nil, fmt.Errorf("%w: version %d", errSharedEntry, b[0])
	}
	stored := int64(binary.BigEndian.Uint64(b[1:9]))
	status := int(binary.BigEndian.Uint16(b[9:11]))
	if status < 100 || status > 599 {
		return nil, fmt.Errorf("%w: status %d", errSharedEntry, status)
	}
	rest := b[entryFixedBytes:]
	n, w := binary.Uvarint(rest)
	var canon [binary.MaxVarintLen64]byte
	if w <= 0 || binary.PutUvarint(canon[:], n) != w || n > uint64(len(rest)-w) {
		return nil, fmt.Errorf("%w: header length", errSharedEntry) // overlong, truncated or past the end
	}
	rest = rest[w:]
	header, body := rest[:n:n], rest[n:]
	if !validHeaderLines(header) {
		return nil, fmt.Errorf("%w: header lines", errSharedEntry)
	}
	e := &cache.Entry{Status: status, Header: header, Body: body, StoredAt: time.Unix(0, stored)}
	e.Lifetime, e.HasLifetime = cache.Lifetime(header, e.StoredAt)
	return e, nil
}

// validHeaderLines reports whether h is a sequence of "token: value\r\n"
// lines whose values hold no CR, LF or NUL, so that writing them cannot
// split or smuggle a response.
func validHeaderLines(h []byte) bool {
	for len(h) > 0 {
		i := 0
		for i < len(h) && h[i] != ':' {
			if !tokenChar(h[i]) {
				return false
			}
			i++
		}
		if i == 0 || len(h)-i < 2 || h[i+1] != ' ' {
			return false
		}
		h = h[i+2:]
		j := 0
		for j < len(h) && h[j] != '\r' {
			if h[j] == '\n' || h[j] == 0 {
				return false
			}
			j++
		}
		if len(h)-j < 2 || h[j+1] != '\n' {
			return false
		}
		h = h[j+2:]
	}
	return true
}

// tokenChar reports whether c may appear in an RFC 9110 token.
func tokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}
