package proxy

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/ballast-proxy/ballast/store"
)

// The results of ballast_state_reconciled_total.
const (
	// reconcilePublished: a record (or job) made locally was written to
	// Redis, or its answer completed the claim Redis held for it.
	reconcilePublished = "published"
	// reconcilePresent: Redis held the same record already.
	reconcilePresent = "present"
	// reconcileConflict: Redis held another record of the key; Redis's is
	// kept, the local one dropped.
	reconcileConflict = "conflict"
)

// reconcileRetry is how soon a reconciliation pass that Redis cut short
// is tried again.
const reconcileRetry = time.Second

// recordPutter is what reconciliation needs of the Redis store: writing a
// record made elsewhere unless Redis holds one (store.Redis.Put), or in
// place of one that is not completed (store.Redis.Replace), and the owner
// id written into this replica's Redis claims.
type recordPutter interface {
	Put(ctx context.Context, rec *store.Record, now time.Time) (*store.Record, bool, error)
	Replace(ctx context.Context, old, rec *store.Record, now time.Time) (bool, error)
	Owner() string
}

// poke asks the reconciler for a pass, without waiting: something was
// written to the local store while the health check says Redis answers
// (an operation failed on a blip), or a local claim that a pass published
// to Redis has ended.
func (f *failoverStore) poke() {
	if f.sh.failOpen && !f.sh.down() {
		f.sh.poke()
	}
}

// poke asks the reconciler for a pass; it never blocks.
func (sh *shared) poke() {
	select {
	case sh.back <- struct{}{}:
	default: // a pass is asked for already
	}
}

// reconcile brings what the local store holds back to Redis (fail_open),
// until ctx ends: a pass runs each time the health check sees Redis
// answer again, each time the request path asks for one (poke), and a
// second after a pass that Redis cut short. See reconcilePass.
func (f *failoverStore) reconcile(ctx context.Context) {
	var retry *time.Timer
	var again <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.sh.back:
		case <-again:
		}
		again = nil
		if f.reconcilePass(ctx) && ctx.Err() == nil {
			if retry == nil {
				retry = time.NewTimer(reconcileRetry)
			} else {
				retry.Reset(reconcileRetry)
			}
			again = retry.C
		}
	}
}

// reconcilePass makes one pass over what this replica wrote to its local
// store while Redis could not be asked, and reports whether Redis cut it
// short (some of it is left for the next pass). It does nothing while
// the health check knows Redis to be down. In order:
//
//   - This replica's Redis claims still running are written back to Redis
//     when Redis lost them (it restarted empty), so that a duplicate sent
//     to another replica attaches to the call instead of running it. One
//     whose call ended while it was written back is released again.
//   - Each live local record, at most state.max_records of them, is
//     written to Redis unless Redis holds a record of the key (never
//     overwritten), keeping its remaining time to live. A completed or
//     outcome-unknown record is then dropped from the local store: Redis
//     answers for the key from now on. When Redis held another record of
//     the key (another replica answered it during the outage, say), that
//     is a conflict: Redis's record is kept, the local one dropped, and
//     the pass logs one WARN line with the number of conflicts. Two cases
//     are not conflicts: Redis holding this replica's own claim of the
//     key, in flight or lost, whose answer it could not take (the local
//     answer completes it), and Redis holding the same answer. Nor is
//     Redis holding the outcome-unknown marker a pass of this replica
//     wrote for the key, when a retry on an idempotent route took the key
//     over locally meanwhile: the retry's claim or answer replaces the
//     marker (see takesOverMarker). The records are taken from the local
//     store a chunk at a time (store.Scan).
//   - A local claim still in flight is published (its call goes on here,
//     and its duplicates on this replica keep attaching to it locally):
//     another replica's duplicate then finds it in flight in Redis and
//     waits. When the call ends, the next pass completes it in Redis with
//     its answer (or releases it, when the call kept no answer), which
//     wakes those duplicates. A call whose key Redis already held another
//     record of runs on unpublished; its answer is then a conflict.
//   - A record or job Redis will not take (it holds something that is not
//     a record under its key, or refuses its size) stays local until it
//     expires; the pass goes on with the others.
//   - Async jobs of the local store that are final (succeeded, failed)
//     are written to Redis and dropped locally, once no delete of theirs
//     from Redis is in flight (forgetJob); jobs still pending stay on
//     this replica, which runs them, until they end.
func (f *failoverStore) reconcilePass(ctx context.Context) (left bool) {
	if f.remote == nil || f.sh.down() {
		return false
	}
	now := f.clock.Now()
	var counts [3]int // published, present, conflict
	defer func() {
		// The log lines first: whoever sees the counters move (an
		// operator's dashboard, a test) finds the lines that say why.
		if counts[0] > 0 {
			f.sh.log.Info("redis answers again: records and jobs made locally during the outage were written to it",
				"published", counts[0], "present", counts[1])
		}
		if counts[2] > 0 {
			f.sh.log.Warn("redis answers again and held other records for keys this replica answered locally during the outage: "+
				"redis's records are kept and the local ones dropped (the call may have run on more than one replica)",
				"conflicts", counts[2])
		}
		for i, r := range []string{reconcilePublished, reconcilePresent, reconcileConflict} {
			if counts[i] > 0 {
				f.sh.reconciled.WithLabelValues(r).Add(float64(counts[i]))
			}
		}
	}()
	fail := func(err error) bool {
		if unavailable(err) {
			f.sh.errs.WithLabelValues("reconcile").Inc()
		}
		return true
	}
	// skip reports whether err is about one record or job alone (Redis
	// holds something under its key that is not a record, or refuses it):
	// the pass goes on without it, which stays local until it expires,
	// rather than stop there on every pass and leave the rest unpublished.
	skip := func(err error) bool { return !unavailable(err) && ctx.Err() == nil }
	for _, held := range f.runningClaims() {
		// Only a claim Redis lost is written back: Put would read one it
		// holds as its own write retried, and count it again every pass.
		if _, err := f.Store.Get(ctx, held.Key, f.clock.Now()); !errors.Is(err, store.ErrNotFound) {
			if err != nil && !skip(err) {
				return fail(err)
			}
			continue
		}
		_, stored, err := f.remote.Put(ctx, held, f.clock.Now())
		if err != nil {
			if skip(err) {
				continue
			}
			return fail(err)
		}
		if !stored {
			continue
		}
		if !f.stillRunning(held) {
			// The call ended meanwhile, its Release or Complete finding the
			// key absent: the claim written back would be finished by no
			// one. Published, it is released below (or by a later pass).
			f.publish(held)
			continue
		}
		counts[0]++
	}
	// The local store is walked a chunk at a time (store.ScanChunk), so
	// the requests served from it meanwhile never wait for the whole walk.
	scan := f.local.Scan()
	defer scan.Close()
	for seen, more := 0, true; more; {
		var chunk []*store.Record
		chunk, more = scan.Next(f.clock.Now())
		for _, rec := range chunk {
			if ctx.Err() != nil {
				return true
			}
			if f.maxKnown > 0 && seen == f.maxKnown {
				more = false
				break
			}
			seen++
			if f.isMirror(rec) {
				continue // the local copy of a Redis claim still running (see mirror)
			}
			// The time of each write, not of the pass's start: a record keeps
			// the ttl it has left when written, and one that ran out during
			// the pass is not written.
			result, err := f.reconcileRecord(ctx, rec, f.clock.Now())
			if err != nil {
				if skip(err) {
					continue
				}
				return fail(err)
			}
			switch result {
			case reconcilePublished:
				counts[0]++
			case reconcilePresent:
				counts[1]++
			case reconcileConflict:
				counts[2]++
			}
		}
	}
	for _, pub := range f.publishedClaims() {
		if cur, err := f.local.Get(ctx, pub.Key, now); err == nil && cur.Token == pub.Token {
			continue // still running, or its answer is left for the next pass
		}
		// The call ended with no answer kept (released), or its record is
		// gone: free the key in Redis too.
		if err := f.Store.Release(ctx, pub); err != nil && !errors.Is(err, store.ErrNotHeld) && !skip(err) {
			return fail(err)
		}
		f.unpublish(pub.Key, pub.Token)
	}
	jobs, err := f.local.ListJobs(ctx, store.JobSucceeded, store.JobFailed)
	if err != nil {
		return fail(err)
	}
	for _, j := range jobs {
		if j.Expired(f.clock.Now()) || f.forgettingJob(j.ID) {
			continue // the sweeper removes it; forgetJob pokes once its delete has ended
		}
		if err := f.Store.PutJob(ctx, j); err != nil {
			if skip(err) {
				continue // full, too large: it stays here until it expires
			}
			return fail(err)
		}
		if cur, err := f.local.GetJob(ctx, j.ID); err == nil && cur.State == j.State {
			_ = f.local.DeleteJob(ctx, j.ID)
		}
		counts[0]++
	}
	return false
}

// reconcileRecord reconciles rec, a live record of the local store, with
// Redis (see reconcilePass) and returns the result to count, if any.
func (f *failoverStore) reconcileRecord(ctx context.Context, rec *store.Record, now time.Time) (string, error) {
	cur, stored, err := f.remote.Put(ctx, rec, now)
	if err != nil {
		return "", err
	}
	if !stored && cur != nil && f.takesOverMarker(cur, rec) {
		if stored, err = f.remote.Replace(ctx, cur, rec, now); err != nil {
			return "", err
		}
		if !stored {
			return "", nil // it changed meanwhile: the next pass looks again
		}
		cur = rec
	}
	if rec.State == store.InFlight {
		if stored || cur != nil && cur.Token == rec.Token {
			f.publish(rec)
		}
		if stored {
			return reconcilePublished, nil
		}
		return "", nil
	}
	result := reconcileConflict
	expires := rec.ExpiresAt
	switch {
	case stored:
		result = reconcilePublished
	case cur == nil: // expired meanwhile
		result = ""
	case cur.Token == rec.Token || f.ownLostClaim(cur, rec):
		// Redis holds the claim of this record, published in flight, or
		// this replica's own Redis claim whose answer Redis did not take:
		// the local answer completes it.
		if rec.State == store.Completed && cur.State != store.Completed {
			if err := f.Store.Complete(ctx, cur, rec.Response, now, rec.ExpiresAt.Sub(now)); err != nil {
				if errors.Is(err, store.ErrNotHeld) {
					return "", nil // it changed meanwhile: the next pass looks again
				}
				return "", err
			}
			result = reconcilePublished
		} else {
			result = reconcilePresent
		}
	case sameRecord(cur, rec):
		result = reconcilePresent
	default:
		expires = cur.ExpiresAt
	}
	f.unpublish(rec.Key, rec.Token)
	f.local.Forget(rec.Key, rec.Token)
	f.remember(rec.Key, expires)
	return result, nil
}

// ownLostClaim reports whether cur, Redis's record of rec's key, is a
// claim this replica made in Redis for the same request, no longer
// running here: its call ended while Redis could not take its answer,
// which the local store kept as rec (see completeLocally).
func (f *failoverStore) ownLostClaim(cur, rec *store.Record) bool {
	if cur.State == store.Completed || cur.Owner != f.remote.Owner() || cur.Fingerprint != rec.Fingerprint {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[cur.Key] == nil
}

// takesOverMarker reports whether rec, a claim or answer of the local
// store, took over the outcome-unknown record that a pass of this replica
// wrote to Redis as cur (the local store's owner is in it), and so
// replaces it there. A pass may write an outcome-unknown marker just as
// a retry on a route with idempotency.idempotent takes over its local
// original (the retry runs the call again, as it would were Redis
// answering): the retry's claim, and then its answer, are the key's
// record from then on, not a conflict that Redis's marker wins (after
// which the next retry would run the call yet again).
func (f *failoverStore) takesOverMarker(cur, rec *store.Record) bool {
	return cur.State == store.UnknownOutcome && cur.Owner == f.local.Owner() && cur.Token != rec.Token &&
		cur.Fingerprint == rec.Fingerprint && rec.State != store.UnknownOutcome
}

// sameRecord reports whether a and b record the same outcome of the same
// request.
func sameRecord(a, b *store.Record) bool {
	if a.Fingerprint != b.Fingerprint || a.State != b.State {
		return false
	}
	if a.State != store.Completed {
		return true
	}
	return a.Response.Status == b.Response.Status && bytes.Equal(a.Response.Header, b.Response.Header) &&
		bytes.Equal(a.Response.Body, b.Response.Body)
}

// runningClaims returns this replica's Redis claims still running.
func (f *failoverStore) runningClaims() []*store.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	held := make([]*store.Record, 0, len(f.running))
	for _, c := range f.running {
		held = append(held, c.held)
	}
	return held
}

// stillRunning reports whether held is this replica's Redis claim whose
// call still runs.
func (f *failoverStore) stillRunning(held *store.Record) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.running[held.Key]
	return c != nil && c.held.Token == held.Token
}

// isMirror reports whether rec is the local mirror of a Redis claim this
// replica still runs.
func (f *failoverStore) isMirror(rec *store.Record) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.running[rec.Key]
	return c != nil && c.mirror != nil && c.mirror.Token == rec.Token
}

// publish notes that rec, a local claim in flight, is in Redis too.
func (f *failoverStore) publish(rec *store.Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.published == nil {
		f.published = make(map[string]*store.Record)
	}
	f.published[rec.Key] = rec
}

// unpublish forgets the published claim of key with token.
func (f *failoverStore) unpublish(key string, token uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.published[key]; p != nil && p.Token == token {
		delete(f.published, key)
	}
}

// publishedClaims returns the local claims published to Redis in flight.
func (f *failoverStore) publishedClaims() []*store.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	pub := make([]*store.Record, 0, len(f.published))
	for _, p := range f.published {
		pub = append(pub, p)
	}
	return pub
}

// forgettingJob reports whether forgetJob is deleting the job with id
// from Redis.
func (f *failoverStore) forgettingJob(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forgetting[id] > 0
}
