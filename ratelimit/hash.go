package ratelimit

import "hash/maphash"

// keySeed is chosen once per process and never changes, so KeyHash is stable
// for the life of the process (and differs between processes, which makes
// the hashes useless to anyone who reads them from memory or a dump).
var keySeed = maphash.MakeSeed()

// KeyHash returns the partition hash of a raw key (a header value, a client
// IP, a JSON field). Limiters store only this hash, never the raw key. Two
// keys colliding share a bucket; with 64 bits that is negligible.
func KeyHash(raw []byte) uint64 { return maphash.Bytes(keySeed, raw) }
