package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
)

// DefaultRedisPrefix starts every key the Redis store writes.
const DefaultRedisPrefix = "ballast:"

// maxPrefixBytes bounds RedisOptions.Prefix.
const maxPrefixBytes = 256

// redisKeys lays out the Redis keys of one store. Every key starts with the
// prefix (so an ACL such as ~ballast:* covers them) and carries a hash tag,
// so that Redis Cluster and Valkey cluster route them:
//
//	<prefix>idem:{<h>}:<key>   a record: the codec's binary encoding, with PX
//	<prefix>{jobs}             the set of job ids
//	<prefix>{jobs}:<id>        a job: the codec's binary encoding
//
// <h> is the first 8 bytes of SHA-256(key) in hex. Every record operation
// touches that one key, so the tag only has to spread records evenly over
// the slots; a tag per tenant (the caller's key starts with a tenant hash)
// would pile a large tenant onto one shard, and the store does not look
// inside keys. Because the tag comes first, braces in an Idempotency-Key
// cannot choose the slot. Jobs share the tag {jobs}: PutJob checks MaxJobs
// against the id set and DeleteJob updates both atomically, which Cluster
// allows only within one slot; jobs are few, so one slot holds them.
//
// The channel on which a record's completion or release is published is the
// record's key itself (channels and keys are separate namespaces).
type redisKeys struct{ prefix string }

func (k redisKeys) record(key string) string {
	sum := sha256.Sum256([]byte(key))
	var b strings.Builder
	b.Grow(len(k.prefix) + len("idem:{}:") + 16 + len(key))
	b.WriteString(k.prefix)
	b.WriteString("idem:{")
	var h [16]byte
	hex.Encode(h[:], sum[:8])
	b.Write(h[:])
	b.WriteString("}:")
	b.WriteString(key)
	return b.String()
}

// recordPattern matches every record key of the store (for SCAN).
func (k redisKeys) recordPattern() string { return k.prefix + "idem:{*" }

func (k redisKeys) jobIndex() string     { return k.prefix + "{jobs}" }
func (k redisKeys) job(id string) string { return k.prefix + "{jobs}:" + id }

// checkPrefix rejects prefixes that would break the hash tags (braces) or
// the SCAN pattern (glob metacharacters).
func checkPrefix(p string) error {
	if len(p) > maxPrefixBytes {
		return invalidf("redis prefix of %d bytes, want at most %d", len(p), maxPrefixBytes)
	}
	if i := strings.IndexAny(p, "{}*?[]\\"); i >= 0 {
		return invalidf("redis prefix %q contains %q; braces and glob characters are not allowed", p, p[i])
	}
	return nil
}

// claimID is the part of an encoded record a compare-and-set checks: its
// state byte and its token. Scripts read the same bytes (see redisScripts).
func claimID(v []byte) string {
	return string(v[stateOffset:stateOffset+1]) + string(v[tokenOffset:tokenOffset+8])
}

func tokenBytes(token uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], token)
	return string(b[:])
}
