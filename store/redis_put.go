package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Put writes rec, a record made by another store (a replica's local
// fallback store, say), under rec.Key unless Redis holds a live record of
// the key already: it never overwrites one. It returns the record Redis
// holds then (as of now) with stored == false, or rec with stored == true
// once written; the record keeps its state, owner, token and response, and
// expires in Redis when rec.ExpiresAt comes, as seen at now (its remaining
// time to live is kept). A record already expired at now is not written:
// Put returns nil, false, nil. The write is the claim script's put-if-absent
// (a record expired on the caller's clock counts as absent), so a claim and
// a Put of the same key never both win. An InFlight rec is a claim: its
// token is rec.Token, so Complete and Release with rec finish it in Redis.
func (s *Redis) Put(ctx context.Context, rec *Record, now time.Time) (*Record, bool, error) {
	if err := s.checkPut(ctx, "Put", rec); err != nil {
		return nil, false, err
	}
	if rec.expired(now) {
		return nil, false, nil
	}
	blob := appendRecord(nil, rec)
	px := pxOf(rec.ExpiresAt.Sub(now))
	rkey := s.keys.record(rec.Key)
	octx, cancel := s.op(ctx)
	defer cancel()
	expect := "" // the expired record to replace (claimID); empty: the key must be absent
	for range maxClaimRounds {
		v, err := s.scripts.claim.Run(octx, s.client, []string{rkey}, blob, px, expect).Result()
		if err != nil {
			return nil, false, s.fail(ctx, "put", err)
		}
		switch v := v.(type) {
		case int64:
			if v == 1 {
				return rec, true, nil
			}
			expect = ""
			continue
		case string:
			cur, err := decodeRecord(rec.Key, []byte(v))
			if err != nil {
				return nil, false, err
			}
			if cur.Token == rec.Token && cur.State == rec.State {
				// go-redis retried a script whose first run wrote rec but
				// whose reply was lost.
				return rec, true, nil
			}
			if !cur.expired(now) {
				return cur.viewAt(now), false, nil
			}
			expect = claimID([]byte(v))
		default:
			return nil, false, s.fail(ctx, "put", fmt.Errorf("unexpected reply %T", v))
		}
	}
	return nil, false, s.fail(ctx, "put", fmt.Errorf("key %q changed %d times during one put", rec.Key, maxClaimRounds))
}

// Replace writes rec, a record made by another store (as Put does), in
// place of old, a record of the same key that Redis holds and that is not
// completed: a claim in flight, or an outcome-unknown marker that Put
// wrote. It reports whether it did: false when Redis no longer holds old
// (it was completed, taken over, released, or expired), or rec has
// expired at now. rec expires in Redis when rec.ExpiresAt comes, as seen
// at now. Waiters on the key are woken.
func (s *Redis) Replace(ctx context.Context, old, rec *Record, now time.Time) (bool, error) {
	if err := s.checkPut(ctx, "Replace", rec); err != nil {
		return false, err
	}
	if old == nil || old.Token == 0 || old.Key != rec.Key {
		return false, invalidf("Replace needs the record it replaces, of the same key")
	}
	if rec.expired(now) {
		return false, nil
	}
	octx, cancel := s.op(ctx)
	defer cancel()
	v, err := s.scripts.complete.Run(octx, s.client, []string{s.keys.record(rec.Key)},
		tokenBytes(old.Token), appendRecord(nil, rec), pxOf(rec.ExpiresAt.Sub(now))).Result()
	switch err := s.heldResult(ctx, "replace", v, err); {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrNotHeld):
		return false, nil
	default:
		return false, err
	}
}

// checkPut checks rec, a record for op (Put, Replace) to write.
func (s *Redis) checkPut(ctx context.Context, op string, rec *Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if rec == nil || rec.Token == 0 || !rec.State.valid() || (rec.State == Completed) != (rec.Response != nil) {
		return invalidf("%s needs a record with a token, a state, and a response when completed", op)
	}
	if err := checkKey("key", rec.Key); err != nil {
		return err
	}
	if n := rec.Response.Size(); n > s.lim.MaxResponseBytes {
		return tooLarge("response", n, s.lim.MaxResponseBytes)
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}
