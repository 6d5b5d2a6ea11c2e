package cache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/valyala/fasthttp"
)

// Defaults for the zero Config fields.
const (
	DefaultMaxEntries = 10_000
	DefaultMaxBytes   = 64 << 20
)

// Config bounds a Cache and sets how long entries are used.
type Config struct {
	// MaxEntries bounds the number of entries; the least recently used is
	// evicted beyond it. 0 means DefaultMaxEntries.
	MaxEntries int
	// MaxBytes bounds the total Entry.Size of all entries; least recently
	// used entries are evicted until a new one fits. 0 means DefaultMaxBytes.
	MaxBytes int64
	// MaxEntryBytes refuses entries larger than this, so one big response
	// cannot flush the cache. 0 means MaxBytes.
	MaxEntryBytes int64
	// TTL is how long an entry is fresh (served without asking upstream).
	// 0 means never fresh: the cache is used only as a fallback.
	TTL time.Duration
	// Stale is how long after TTL an entry may still be served when
	// upstream fails (stale-if-error, RFC 5861). After TTL+Stale the entry
	// is gone. TTL and Stale may not both be 0.
	Stale time.Duration
}

// ErrConfig is matched by every error New returns.
var ErrConfig = errors.New("cache: invalid config")

// Cache is a size- and count-bounded LRU of responses with clocked expiry.
// It is safe for concurrent use. Entries are judged fresh while
// age < TTL and usable (stale) while age < TTL+Stale, age being
// now − Entry.StoredAt for the now the caller passes.
type Cache struct {
	ttl, stale    time.Duration
	maxBytes      int64
	maxEntryBytes int64

	mu          sync.Mutex
	lru         *simplelru.LRU[Key, *Entry]
	bytes       int64
	evictions   uint64
	expirations uint64
}

// Stats is a snapshot of a Cache, for the ballast_cache_* metrics.
type Stats struct {
	Entries     int    // entries held now
	Bytes       int64  // sum of Entry.Size held now (ballast_cache_bytes)
	Evictions   uint64 // entries dropped to make room (ballast_cache_evictions_total)
	Expirations uint64 // entries dropped because they outlived TTL+Stale
}

// Lookup is the result of a Get hit.
type Lookup struct {
	Entry *Entry
	// Age is now − Entry.Received(), never negative, plus the age the
	// response had on arrival (Entry.InitialAge). Send it as the Age header.
	Age time.Duration
	// Fresh is Age < the freshness lifetime: the TTL, or the upstream's own
	// lifetime when shorter (Entry.Lifetime). A stale entry (Fresh false)
	// may only be served when upstream failed.
	Fresh bool
	// Remaining is that lifetime − Age: the freshness left, negative once
	// stale (the Cache-Status ttl parameter).
	Remaining time.Duration
}

// New returns an empty cache, or an error matching ErrConfig.
func New(cfg Config) (*Cache, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, args...)))
	}
	if cfg.MaxEntries < 0 {
		bad("max_entries", "%d: must be >= 0", cfg.MaxEntries)
	}
	if cfg.MaxBytes < 0 {
		bad("max_bytes", "%d: must be >= 0", cfg.MaxBytes)
	}
	if cfg.MaxEntryBytes < 0 {
		bad("max_entry_bytes", "%d: must be >= 0", cfg.MaxEntryBytes)
	}
	if cfg.TTL < 0 {
		bad("ttl", "%v: must be >= 0", cfg.TTL)
	}
	if cfg.Stale < 0 {
		bad("stale", "%v: must be >= 0", cfg.Stale)
	}
	if cfg.TTL == 0 && cfg.Stale == 0 {
		bad("ttl", "ttl and stale are both 0: nothing stored could ever be served")
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxEntryBytes == 0 || cfg.MaxEntryBytes > cfg.MaxBytes {
		cfg.MaxEntryBytes = cfg.MaxBytes
	}
	c := &Cache{ttl: cfg.TTL, stale: cfg.Stale, maxBytes: cfg.MaxBytes, maxEntryBytes: cfg.MaxEntryBytes}
	// The callback runs under c.mu for every removal (eviction, Remove,
	// expiry, replacement): byte accounting lives in one place.
	lru, err := simplelru.NewLRU[Key, *Entry](cfg.MaxEntries, func(_ Key, e *Entry) { c.bytes -= e.Size() })
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c.lru = lru
	return c, nil
}

// Get returns the entry stored under key if it is still usable at now
// (age < TTL+Stale), marking it recently used. An entry past TTL+Stale is
// removed and reported as a miss. Get does not allocate.
func (c *Cache) Get(key Key, now time.Time) (Lookup, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(key)
	if !ok {
		return Lookup{}, false
	}
	age := max(now.Sub(e.Received()), 0)
	if age >= c.ttl+c.stale {
		c.lru.Remove(key)
		c.expirations++
		return Lookup{}, false
	}
	ttl := c.ttl
	if e.HasLifetime && e.Lifetime < ttl {
		ttl = e.Lifetime // the upstream's own freshness, capped by the route's
	}
	// The response's age counts what it had on arrival (RFC 9111 §4.2.3);
	// how long it may stay in this cache does not.
	current := age + e.InitialAge
	return Lookup{Entry: e, Age: current, Fresh: current < ttl, Remaining: ttl - current}, true
}

// Set stores e under key, replacing any previous entry, and evicts least
// recently used entries until the cache is within MaxBytes and MaxEntries.
// It reports false, storing nothing, when e alone exceeds MaxEntryBytes.
// The cache owns e from now on; nobody may modify it.
func (c *Cache) Set(key Key, e *Entry) bool {
	size := e.Size()
	if size > c.maxEntryBytes {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(key) // replacement: the callback un-charges the old entry
	for c.bytes+size > c.maxBytes {
		if _, _, ok := c.lru.RemoveOldest(); !ok {
			break
		}
		c.evictions++
	}
	c.bytes += size
	if c.lru.Add(key, e) {
		c.evictions++
	}
	return true
}

// Refresh records that resp, received at now, is the answer already
// stored under key: the same status, storable headers and body. The entry
// is then marked recently used and its age starts again from now, and
// Refresh returns it. When the cache holds another answer, or none, or one
// past TTL+Stale, or now is not after its last receipt, Refresh changes
// nothing and returns false; store resp with Set instead. Refresh does not
// allocate: a route that keeps receiving the same answer keeps one entry.
func (c *Cache) Refresh(key Key, resp *fasthttp.Response, now time.Time) (*Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(key)
	if !ok {
		return nil, false
	}
	last := e.Received()
	if !now.After(last) || now.Sub(last) >= c.ttl+c.stale || !e.matches(resp) {
		return nil, false
	}
	atomic.StoreInt64(&e.refreshed, now.UnixNano())
	c.lru.Get(key) // mark recently used
	return e, true
}

// Remove drops the entry under key, reporting whether there was one.
func (c *Cache) Remove(key Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Remove(key)
}

// Prune removes every entry past TTL+Stale at now and returns how many it
// removed. Expired entries are otherwise dropped lazily by Get or by LRU
// eviction; call Prune from a periodic task to return their memory sooner.
// It walks the whole cache under the lock.
func (c *Cache) Prune(now time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, k := range c.lru.Keys() {
		e, ok := c.lru.Peek(k)
		if ok && now.Sub(e.Received()) >= c.ttl+c.stale {
			c.lru.Remove(k)
			n++
		}
	}
	c.expirations += uint64(n)
	return n
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Entries: c.lru.Len(), Bytes: c.bytes, Evictions: c.evictions, Expirations: c.expirations}
}
