// Package cache is ballast's response cache: fixed-size request keys, an LRU
// bounded by entry count and total bytes with clocked fresh/stale expiry,
// the rules for what may be stored, collapsing of concurrent misses, and the
// RFC 9211 Cache-Status and Age values that tell the agent what happened.
//
// Nothing here reads the wall clock or starts a goroutine: every expiry
// decision takes the current time as an argument, like x/time/rate's
// AllowN(t, n), so callers pass policy.Clock.Now() and tests pass explicit
// times.
//
// A typical request on a cached route:
//
//	kb := cache.NewKeyBuilder()          // one per worker, or from a sync.Pool
//	key := kb.Request(&ctx.Request, &opts)
//	if l, ok := c.Get(key, now); ok && l.Fresh {
//		l.Entry.WriteResponse(&ctx.Response)
//		// Cache-Status: ballast; hit; ttl=N    Age: N
//	}
//	// miss: forward (collapsed through a Group in fresh mode), validate,
//	// then if cache.Storable(...) { c.Set(key, cache.NewEntry(resp, now)) }
//	// on final failure, a stale l.Entry may still be served (stale-if-error).
package cache
