package store

import (
	"testing"
	"time"
)

// FuzzPeeks is a differential test of the fast peeks the stores run on
// raw values (the sweeper's expiresAt, the Redis scripts' peekClaim)
// against the full decoders, over arbitrary bytes read from a state file
// or Redis: they never panic, and on every value the decoder accepts they
// read the same ExpiresAt, state and token it does.
func FuzzPeeks(f *testing.F) {
	f.Add(appendRecord(nil, newClaim("k", args("a", t0), "o", 1)))
	f.Add(appendRecord(nil, completed(newClaim("k", args("a", t0), "o", 7), resp("x"), t0, time.Hour)))
	f.Add(appendJob(nil, testJob("j", JobQueued, t0)))
	f.Add([]byte{codecVersion, 1, 0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		at, atOK := expiresAt(v)
		s, token, claimOK := peekClaim(v)
		if r, err := decodeRecord("k", v); err == nil {
			if !atOK || !at.Equal(r.ExpiresAt) {
				t.Fatalf("expiresAt = %v, %v; the record expires at %v", at, atOK, r.ExpiresAt)
			}
			if !claimOK || s != r.State || token != r.Token {
				t.Fatalf("peekClaim = %v, %d, %v; the record is %v, %d", s, token, claimOK, r.State, r.Token)
			}
		}
		if j, err := decodeJob("j", v); err == nil && (!atOK || !at.Equal(j.ExpiresAt)) {
			t.Fatalf("expiresAt = %v, %v; the job expires at %v", at, atOK, j.ExpiresAt)
		}
	})
}
