package ratelimit

import (
	"crypto/sha256"
	"encoding/binary"
)

// StableKeyHash returns the partition hash of a raw key that is the same in
// every process: the first 8 bytes of SHA-256(raw). The Redis limiter needs
// it, since replicas must find the same bucket for the same caller, and
// KeyHash is seeded per process. The raw key is never stored; note that a
// low-entropy key (a client IP) can be recovered from its hash by trying
// every candidate, so Redis should be as private as the proxy.
func StableKeyHash(raw []byte) uint64 {
	sum := sha256.Sum256(raw)
	return binary.BigEndian.Uint64(sum[:8])
}
