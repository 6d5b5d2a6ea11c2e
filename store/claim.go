package store

import (
	"fmt"
	"time"
)

// claimDecision is what Claim does with the record it finds; both backends
// share decideClaim so that they cannot disagree.
type claimDecision uint8

const (
	// answerExisting: return the existing record (owned == false).
	answerExisting claimDecision = iota
	// takeKey: write a new InFlight record; the caller owns the key.
	takeKey
	// mismatch: return the existing record with ErrMismatch.
	mismatch
)

// decideClaim decides a claim against cur, the stored record (nil when
// absent), and returns the record to answer with (viewed at args.Now).
func decideClaim(cur *Record, args ClaimArgs) (claimDecision, *Record) {
	if cur == nil || cur.expired(args.Now) {
		return takeKey, nil
	}
	v := cur.viewAt(args.Now)
	switch {
	case v.Fingerprint != args.Fingerprint:
		return mismatch, v
	case v.State == UnknownOutcome && args.TakeOverUnknown:
		return takeKey, nil
	}
	return answerExisting, v
}

// newClaim builds the InFlight record of a successful claim.
func newClaim(key string, args ClaimArgs, owner string, token uint64) *Record {
	lease := args.lease()
	life := ttlOrDefault(args.TTL)
	if life < lease {
		life = lease
	}
	return &Record{
		Key:         key,
		Fingerprint: args.Fingerprint,
		State:       InFlight,
		Owner:       owner,
		Token:       token,
		StartedAt:   args.Now,
		LeaseUntil:  args.Now.Add(lease),
		ExpiresAt:   args.Now.Add(life),
	}
}

// holds reports whether cur is still the claim held.
func holds(cur, held *Record) bool {
	return cur != nil && cur.Token == held.Token && cur.State != Completed
}

// completed builds the Completed record that replaces the claim cur. resp
// must already be a private copy.
func completed(cur *Record, resp *Response, now time.Time, ttl time.Duration) *Record {
	c := *cur
	c.State = Completed
	c.CompletedAt = now
	c.ExpiresAt = now.Add(ttlOrDefault(ttl))
	c.Response = resp
	return &c
}

func mismatchError(key string) error {
	return fmt.Errorf("%w (key %q)", ErrMismatch, key)
}

func checkHeld(held *Record) error {
	if held == nil || held.Token == 0 {
		return invalidf("Complete/Release need the record returned by an owning Claim")
	}
	return checkKey("key", held.Key)
}
