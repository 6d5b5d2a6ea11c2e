package store

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync/atomic"
)

// Limits bound a store. The zero value uses the defaults.
type Limits struct {
	// Owner is this instance's id, written into the records it claims.
	// Empty: a random id.
	Owner string
	// MaxRecords bounds the idempotency records (DefaultMaxRecords when ≤ 0).
	// Memory evicts the least recently used completed record when full and
	// refuses new claims with ErrFull only when every record is in flight;
	// File refuses new claims with ErrFull (evicting a stored response would
	// silently turn a replay into a second execution; refusing is visible).
	MaxRecords int
	// MaxJobs bounds the async jobs (DefaultMaxJobs when ≤ 0); a new job
	// beyond it gets ErrFull.
	MaxJobs int
	// MaxResponseBytes bounds a stored response's Header+Body, and a job's
	// request and response each (DefaultMaxResponseBytes when ≤ 0).
	MaxResponseBytes int
}

func (l Limits) withDefaults() Limits {
	if l.Owner == "" {
		l.Owner = randomOwner()
	}
	if l.MaxRecords <= 0 {
		l.MaxRecords = DefaultMaxRecords
	}
	if l.MaxJobs <= 0 {
		l.MaxJobs = DefaultMaxJobs
	}
	if l.MaxResponseBytes <= 0 {
		l.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return l
}

func (l Limits) checkJob(j *Job) error {
	if j == nil {
		return invalidf("nil job")
	}
	if err := checkKey("job id", j.ID); err != nil {
		return err
	}
	if !j.State.valid() {
		return invalidf("job %q state %d", j.ID, j.State)
	}
	if n := j.Request.size(); n > l.MaxResponseBytes {
		return tooLarge("job request", n, l.MaxResponseBytes)
	}
	if n := j.Response.Size(); n > l.MaxResponseBytes {
		return tooLarge("job response", n, l.MaxResponseBytes)
	}
	return nil
}

func randomOwner() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}

// tokens hands out claim tokens: a random 64-bit start per store, then
// sequential, never 0. Tokens from different instances collide with
// negligible probability.
type tokens struct{ next atomic.Uint64 }

func newTokens() *tokens {
	var b [8]byte
	_, _ = rand.Read(b[:])
	t := &tokens{}
	t.next.Store(binary.LittleEndian.Uint64(b[:]))
	return t
}

func (t *tokens) new() uint64 {
	for {
		if v := t.next.Add(1); v != 0 {
			return v
		}
	}
}
