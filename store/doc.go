// Package store keeps ballast's durable idempotency state: claims on
// idempotency keys, the responses stored for them, and async jobs.
//
// One interface, Store, has three backends: Memory (bounded, in-process,
// lost on restart), File (bbolt on local disk, survives SIGKILL) and Redis
// (shared by the replicas of a deployment). In Redis a claim is a Lua
// compare-and-set with an expiry of the record's life, a completion
// overwrites it with the response guarded by the claim's Token and
// publishes on a channel for the key, and Wait subscribes to that channel
// (one connection per store) and polls as a safety net.
//
// # Semantics
//
// The first request with a key claims it (Claim returns owned == true) and
// must finish with exactly one of Complete (store the response: the caller
// does this for 2xx and 4xx by default) or Release (forget the claim, so a
// retry can run again: transport failures and 5xx). A duplicate that arrives
// while the claim is in flight gets the in-flight record and calls Wait,
// bounded by its own context. A duplicate after completion gets the stored
// response until the record expires (ttl, DefaultTTL when zero). A duplicate
// with a different fingerprint gets ErrMismatch (422 at the proxy).
//
// A claim whose outcome is lost — the File store was killed while the claim
// was in flight or before its completion was committed (Complete returns
// before the fsync; see FileOptions.SyncComplete), or the lease of a live
// owner expired — reads as
// UnknownOutcome with the original StartedAt. The caller answers 409
// (outcome_unknown) unless the route is idempotent, in which case it claims
// again with ClaimArgs.TakeOverUnknown.
//
// # Keys and tenants
//
// The store never looks inside a key. The caller builds it and MUST include
// a hash of the caller's identity (tenant), for example
// hex(sha256(Authorization))[:16] + "/" + route + "/" + Idempotency-Key, so
// that records never cross tenants. Keys are 1 to MaxKeyBytes bytes.
//
// # Time
//
// Every decision takes now as a parameter (as golang.org/x/time/rate does);
// the store never reads the wall clock. Expired records are removed by Sweep,
// which the caller runs periodically (RunSweeper does so with a
// policy.Clock); until then an expired record already reads as absent.
//
// # Ownership of returned values
//
// Records, Responses and Jobs returned by a Store, and the byte slices in
// them, are read-only for the caller: the Memory backend shares them with its
// index. Values passed in (Response, Job) are copied, so the caller may reuse
// its buffers after the call returns.
package store
