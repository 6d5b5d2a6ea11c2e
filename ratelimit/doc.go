// Package ratelimit decides whether a request may go upstream now, later, or
// not at all.
//
// It offers four kinds of limit, all driven by explicit time values or an
// injected policy.Clock so that tests need no sleeping:
//
//   - Bucket: one token bucket (golang.org/x/time/rate) with a refill rate and
//     a burst. One *Bucket may be shared by several routes (a named limiter).
//   - Keyed: a token bucket per partition key (a uint64 from KeyHash), held in
//     a bounded LRU so that memory stays bounded however many keys arrive.
//   - Adaptive: a Bucket whose effective rate follows the upstream (AIMD): it
//     halves on a 429 and climbs back after a run of successes.
//   - Bulkhead: a bound on requests in flight, with a bounded, prioritised
//     queue in front of it.
//
// Token-aware limits for model APIs are Buckets sized in model tokens
// (PerMinute), reserved with EstimateTokens and settled with the usage that
// UsageFromBody reads from the response.
//
// The usual request path is:
//
//	now := clock.Now()
//	r, err := lim.Reserve(key, n, now, ratelimit.WaitBudget(ctx, now, maxWait))
//	if err != nil { ... } // *LimitedError: answer 429 with Retry-After
//	if err := ratelimit.Wait(ctx, clock, &r); err != nil { ... } // caller gone
//	... send ...
//	r.Settle(actual, clock.Now()) // token-aware limits only
//
// Admit does the first three steps in one call.
package ratelimit
