package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Transactions. Writes share commits (a committer, or DB.Batch), which may
// run a function more than once and re-run the rest of a batch when one
// function fails; so the functions reset their results on entry and report
// domain outcomes (mismatch, not held, full) in their results, returning an
// error only for a failure of the file itself.

func (f *File) view(op string, fn func(tx *bolt.Tx) error) (err error) {
	if f.closed.Load() {
		return ErrClosed
	}
	defer func() {
		if p := recover(); p != nil {
			err = f.wrap(op, fmt.Errorf("%w: %v", ErrCorrupt, p))
		}
	}()
	return f.wrap(op, f.db.View(fn))
}

func (f *File) batch(op string, fn func(tx *bolt.Tx) error) error {
	if f.closed.Load() {
		return ErrClosed
	}
	return f.wrap(op, f.write(fn))
}

func (f *File) wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen), errors.Is(err, ErrClosed):
		return ErrClosed
	}
	return fmt.Errorf("store: %s in %s: %w", op, f.path, err)
}

// read returns the record of key (nil when absent) as it is once the writes
// already queued are committed: a pending completion or release, else the
// committed record. The pending overlay is read first: an entry removed
// meanwhile was committed before, so the file then has it.
func (f *File) read(op, key string) (rec *Record, err error) {
	if f.closed.Load() {
		return nil, ErrClosed
	}
	if p := f.pending.get(key); p != nil {
		if p.enc == nil {
			return nil, nil
		}
		rec, err = decodeRecord(key, p.enc)
		return rec, f.wrap(op, err)
	}
	err = f.view(op, func(tx *bolt.Tx) (err error) {
		rec, err = readRecord(tx, key)
		return err
	})
	return rec, err
}

// readRecord returns the stored record of key (nil when absent).
func readRecord(tx *bolt.Tx, key string) (*Record, error) {
	v := tx.Bucket(bucketRecords).Get([]byte(key))
	if v == nil {
		return nil, nil
	}
	return decodeRecord(key, v)
}

// Claim implements Store. A key that is already taken is answered from a
// read-only transaction; only a new claim pays for a (batched) commit.
func (f *File) Claim(ctx context.Context, key string, args ClaimArgs) (*Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	if err := checkKey("key", key); err != nil {
		return nil, false, err
	}
	if f.journal != nil {
		return f.claimJournaled(key, args)
	}
	cur, err := f.read("claim", key)
	if err != nil {
		return nil, false, err
	}
	switch decision, view := decideClaim(cur, args); decision {
	case mismatch:
		return view, false, mismatchError(key)
	case answerExisting:
		return view, false, nil
	}

	rec := newClaim(key, args, f.lim.Owner, f.tokens.new())
	t := &claimTx{f: f, key: key, bkey: []byte(key), args: args, rec: rec, enc: appendRecord(nil, rec)}
	if err := f.batch("claim", t.run); err != nil {
		return nil, false, err
	}
	if t.replaced {
		f.wakeup.wake(key)
	}
	return t.out, t.owned, t.outErr
}

// claimTx is Claim's transaction function (run) with its inputs and
// results, in one allocation.
type claimTx struct {
	f    *File
	key  string
	bkey []byte
	args ClaimArgs
	rec  *Record // the new claim
	enc  []byte  // rec encoded
	// Results, reset by each run.
	out      *Record
	owned    bool
	outErr   error
	replaced bool // an in-flight claim was taken over

	// A journaled claim (queued; decided and answered already): its
	// journal entry and overlay entry; newKey: it was counted in
	// File.records as a new key; countFix, set by run, is what to add to
	// that count once the record has landed.
	journaled bool
	seq       uint64
	pending   *pendingRecord
	newKey    bool
	countFix  int64
	// supersedes is the overlay entry this claim replaced, if any: when it
	// is pinned (its own write failed), this claim's landing unpins it.
	supersedes *pendingRecord
}

// supersedesCounted reports whether the entry this claim replaced stands
// for a record the file never got and is counted in File.records.
func (t *claimTx) supersedesCounted() bool {
	s := t.supersedes
	return s != nil && s.pinned.Load() && s.newKey
}

func (t *claimTx) run(tx *bolt.Tx) error {
	t.out, t.owned, t.outErr, t.replaced = nil, false, nil, false
	b := tx.Bucket(bucketRecords)
	if t.journaled {
		// Decided when queued, against everything queued before it, and
		// counted then (File.records): the record only lands. The bucket's
		// count goes unmaintained with the journal; opening recounts it.
		// A claim that takes a record over was not counted: a sweep
		// queued before it may have deleted (and uncounted) that expired
		// record, and then the claim's record is a new one after all.
		// Nor was one that takes over a claim whose own write failed and
		// that was counted as a new key: the count stands for this one.
		// And a claim counted (itself, or through that claim) that finds
		// a record was decided against a release whose write failed: it
		// replaces the released claim, which is counted already.
		t.countFix = 0
		counted := t.newKey || t.supersedesCounted()
		if counted && !t.f.writeFailed.Load() {
			return b.Put(t.bkey, t.enc) // no failed release left a record
		}
		switch exists := b.Get(t.bkey) != nil; {
		case counted && exists:
			t.countFix = -1
		case !counted && !exists:
			t.countFix = 1
		}
		return b.Put(t.bkey, t.enc)
	}
	cur, err := readRecord(tx, t.key)
	if err != nil {
		return err
	}
	switch decision, view := decideClaim(cur, t.args); decision {
	case mismatch:
		t.out, t.outErr = view, mismatchError(t.key)
		return nil
	case answerExisting:
		t.out = view
		return nil
	}
	if cur == nil {
		n := b.Sequence()
		if n >= uint64(t.f.lim.MaxRecords) {
			t.outErr = ErrFull
			return nil
		}
		if err := b.SetSequence(n + 1); err != nil {
			return err
		}
	}
	if err := b.Put(t.bkey, t.enc); err != nil {
		return err
	}
	t.out, t.owned, t.replaced = t.rec, true, cur != nil && cur.State == InFlight
	return nil
}

// claimJournaled is Claim with the journal: the claim is decided against
// the pending overlay and the file under claimMu, shown in the overlay,
// queued for bbolt and added to the journal, and Claim returns once the
// journal entry is synced. Waiting happens outside claimMu, so concurrent
// claims share the journal's fdatasync.
func (f *File) claimJournaled(key string, args ClaimArgs) (*Record, bool, error) {
	f.claimMu.Lock()
	cur, err := f.read("claim", key)
	if err != nil {
		f.claimMu.Unlock()
		return nil, false, err
	}
	switch decision, view := decideClaim(cur, args); decision {
	case mismatch:
		f.claimMu.Unlock()
		return view, false, mismatchError(key)
	case answerExisting:
		f.claimMu.Unlock()
		return view, false, nil
	}
	newKey := cur == nil
	if newKey {
		if f.records.Load() >= int64(f.lim.MaxRecords) {
			f.claimMu.Unlock()
			return nil, false, ErrFull
		}
		f.records.Add(1)
	}
	rec := newClaim(key, args, f.lim.Owner, f.tokens.new())
	enc := appendRecord(nil, rec)
	t := &claimTx{f: f, key: key, bkey: []byte(key), rec: rec, enc: enc, journaled: true, newKey: newKey}
	t.supersedes = f.pending.get(key)
	t.pending = f.pending.putEntry(key, &pendingRecord{enc: enc, newKey: newKey})
	// Journal order is queue order (both under claimMu), which the
	// journal's flushed mark relies on.
	t.seq = f.journal.add(journalClaim, key, enc)
	f.journal.expectFlush()
	if err := f.commit.enqueue(t.run, t.after); err != nil {
		f.journal.markUnflushed()
		f.journal.addRelease(key, rec.Token) // replay must not revive it
		f.pending.remove(key, t.pending)
		if newKey {
			f.records.Add(-1)
		}
		f.claimMu.Unlock()
		return nil, false, f.wrap("claim", err)
	}
	f.claimMu.Unlock()

	if err := f.journal.wait(t.seq); err != nil {
		// Not durable: free the key again rather than leave it in flight.
		_ = f.finish("release", rec, nil)
		return nil, false, f.wrap("claim", err)
	}
	if cur != nil && cur.State == InFlight {
		f.wakeup.wake(key)
	}
	return rec, true, nil
}

// after ends a journaled claim's queued write once its commit ended: the
// overlay entry goes (unless a completion replaced it), and the journal
// learns that bbolt holds the entries up to this one.
//
// A failed write leaves the claim standing: Claim has answered (or will,
// once the entry is synced) and the call may be running upstream, so the
// key must keep reading as in flight, or a retry of the call would claim
// it again and repeat it. The overlay entry stays, pinned, and so does the
// journal's entry, which is then all that records the claim; the claim's
// completion or release writes its outcome without it (finishTx.run).
// When the entry it replaced is pinned (it took over a claim that never
// landed either), that entry's pin and count pass to this one: nothing
// else refers to that entry any more.
func (t *claimTx) after(err error) {
	f := t.f
	if err != nil {
		f.writeFailed.Store(true)
		f.journal.markUnflushed() // a journal writer must not wait for it
		if s := t.supersedes; s != nil && s.pinned.CompareAndSwap(true, false) {
			t.pending.newKey = t.pending.newKey || s.newKey
		} else {
			f.journal.pin()
		}
		t.pending.pinned.Store(true)
		f.asyncError("claim", t.key, f.wrap("claim", err))
		return
	}
	f.pending.remove(t.key, t.pending)
	if s := t.supersedes; s != nil && s.pinned.CompareAndSwap(true, false) {
		f.journal.unpin() // the file now holds a later record of the key
	}
	f.records.Add(t.countFix)
	f.journal.markFlushed(t.seq + 1)
}

// Complete implements Store. By default it returns once the completion is
// queued for the next group commit (see FileOptions.SyncComplete).
func (f *File) Complete(ctx context.Context, held *Record, resp *Response, now time.Time, ttl time.Duration) error {
	if err := checkHeld(held); err != nil {
		return err
	}
	if resp == nil {
		return invalidf("nil response")
	}
	if n := resp.Size(); n > f.lim.MaxResponseBytes {
		return tooLarge("response", n, f.lim.MaxResponseBytes)
	}
	return f.finish("complete", held, appendRecord(nil, completed(held, resp, now, ttl)))
}

// Release implements Store. By default it returns once the release is
// queued for the next group commit (see FileOptions.SyncComplete).
func (f *File) Release(ctx context.Context, held *Record) error {
	if err := checkHeld(held); err != nil {
		return err
	}
	return f.finish("release", held, nil)
}

// finish replaces the claim held with enc, or deletes it when enc is nil,
// and wakes the key's waiters once that is committed. Asynchronously it
// checks first that the claim is held, so that ErrNotHeld is returned at
// once in the usual cases (released, completed, taken over); a change
// between that check and the commit goes to OnAsyncError.
func (f *File) finish(op string, held *Record, enc []byte) error {
	t := &finishTx{held: held, bkey: []byte(held.Key), enc: enc}
	if !f.async {
		err := f.batch(op, t.run)
		switch {
		case err != nil:
			return err
		case t.notHeld:
			return ErrNotHeld
		}
		f.wakeup.wake(held.Key)
		return nil
	}
	// Under claimMu, as a claim's decision: a claim taking the key over
	// between the check and the overlay entry would be hidden by that
	// entry (read as released, or as this completion, which may have
	// expired), and the next claim would take the key while the
	// takeover's call runs. Also, the entry and the queued write must not
	// be split by a claim's: a claim decided against a release's entry
	// but queued ahead of it lands first, and the release then finds it
	// and leaves the books one record over. The cost, completions waiting
	// behind claims' read-only transactions, is measured in RESULTS.md.
	f.claimMu.Lock()
	defer f.claimMu.Unlock()
	if err := f.checkHeld(op, held); err != nil {
		return err
	}
	if testHookFinishChecked != nil {
		testHookFinishChecked(f)
	}
	t.f, t.op = f, op
	if p := f.pending.get(held.Key); p != nil {
		// The claim's own entry (checkHeld found it held): its write may
		// yet fail, and then this one must land without it.
		t.claim = p
	}
	if enc == nil && f.journal != nil {
		f.journal.addRelease(held.Key, held.Token)
	}
	t.pending = f.pending.put(held.Key, enc)
	if err := f.commit.enqueue(t.run, t.after); err != nil {
		f.pending.remove(held.Key, t.pending)
		return f.wrap(op, err)
	}
	return nil
}

// testHookFinishChecked, when set by a test, runs in finish between the
// check that the claim is held and its overlay entry.
var testHookFinishChecked func(*File)

// finishTx is finish's transaction function (run), which sets notHeld
// instead of writing when the claim is no longer held, and, for a queued
// write, what runs after its commit (after).
type finishTx struct {
	held    *Record
	bkey    []byte
	enc     []byte // nil: delete
	notHeld bool
	deleted bool
	// Queued writes only.
	f       *File
	op      string
	pending *pendingRecord
	// claim is the held claim's overlay entry when it was still queued
	// (journaled); countFix is what to add to File.records once a write
	// for a claim whose own write failed has landed.
	claim    *pendingRecord
	countFix int64
	// keptOp is the write of a kept release (file_release.go).
	keptOp *commitOp
}

func (t *finishTx) run(tx *bolt.Tx) error {
	t.notHeld, t.deleted, t.countFix = false, false, 0
	b := tx.Bucket(bucketRecords)
	v := b.Get(t.bkey)
	if t.unlanded() {
		return t.runUnlanded(b, v != nil)
	}
	state, token, ok := peekClaim(v)
	if !ok || token != t.held.Token || state == Completed {
		t.notHeld = true
		return nil
	}
	if t.enc != nil {
		return b.Put(t.bkey, t.enc)
	}
	if err := b.Delete(t.bkey); err != nil {
		return err
	}
	t.deleted = true
	return addSequence(b, -1)
}

// unlanded reports whether the held claim's own write failed, so the file
// has no trace of it.
func (t *finishTx) unlanded() bool { return t.claim != nil && t.claim.pinned.Load() }

// runUnlanded writes the outcome of a claim that the file never got. It
// was decided held under claimMu against the overlay, where it stayed, so
// the record the file may hold for the key is the one it took over, or,
// for a claim counted as a new key, the one a release before it was to
// delete (its write failed). Each is counted, and so is a new key's claim.
func (t *finishTx) runUnlanded(b *bolt.Bucket, existed bool) error {
	if t.enc != nil {
		switch {
		case !existed && !t.claim.newKey:
			// The record it took over, which counted for it, was swept.
			t.countFix = 1
		case existed && t.claim.newKey:
			t.countFix = -1 // the released claim's record is replaced
		}
		return b.Put(t.bkey, t.enc)
	}
	if existed {
		if err := b.Delete(t.bkey); err != nil {
			return err
		}
		if err := addSequence(b, -1); err != nil {
			return err
		}
		t.countFix--
	}
	if t.claim.newKey {
		t.countFix--
	}
	return nil
}

// after ends a queued write once its commit ended: the overlay entry goes,
// waiters wake, and a failure goes to OnAsyncError.
//
// The completion of a claim that the file never got keeps its entry when
// its own write fails too: the overlay is then the only place the outcome
// lives, and replays read it there; the journal keeps the claim, pinned,
// so a restart reads the key as UnknownOutcome. So does a failed
// completion of a claim the file holds in flight (pinned like the others,
// so that Sweep or a later write of the key ends it). A failed release of
// a claim the file holds is kept, its entry with it, and written again
// with later commits (file_release.go), up to maxKeptReleases. A failed
// release of a claim the file never got needs no such care: the key is
// free either way (and its claim, if counted as a new key, is uncounted).
func (t *finishTx) after(err error) {
	f, key := t.f, t.held.Key
	if err != nil || t.notHeld {
		f.writeFailed.Store(true)
	}
	kept, dropped := false, false
	if err != nil && t.enc == nil && f.kept != nil && !t.unlanded() {
		kept = f.kept.keep(t)
		dropped = !kept
	}
	switch {
	case err != nil && t.enc != nil && t.unlanded():
		t.pending.newKey = t.claim.newKey // and the count with it
		t.pending.pinned.Store(true)      // the pin passes to this entry
		t.claim.pinned.Store(false)
	case err != nil && t.enc != nil && f.journal != nil:
		// The file holds the claim in flight, counted: without this entry
		// a retry would wait on it until its lease ran out, and then read
		// it as UnknownOutcome, though the answer is here.
		t.pending.pinned.Store(true)
		f.journal.pin()
	case kept:
		// The file holds the released claim, counted: without this entry
		// its key would read as in flight until the claim's lease ended,
		// though its holder gave the call up.
	default:
		f.pending.remove(key, t.pending)
		switch {
		case err == nil:
			f.records.Add(t.countFix)
			if t.deleted {
				f.records.Add(-1)
			}
		case t.unlanded() && t.claim.newKey:
			// A failed release: the key is free all the same, and the
			// claim counted as a new key is neither here nor in the file.
			f.records.Add(-1)
		}
		if t.claim != nil && t.claim.pinned.CompareAndSwap(true, false) {
			f.journal.unpin()
		}
	}
	f.wakeup.wake(key)
	switch {
	case dropped:
		f.asyncError(t.op, key, fmt.Errorf("%w; %w", f.wrap(t.op, err), errReleaseDropped))
	case err != nil:
		f.asyncError(t.op, key, f.wrap(t.op, err))
	case t.notHeld:
		f.asyncError(t.op, key, ErrNotHeld)
	}
}

// checkHeld returns ErrNotHeld unless held is the key's current claim,
// counting queued writes: a pending completion or release of the key means
// the claim is finished.
func (f *File) checkHeld(op string, held *Record) error {
	if f.closed.Load() {
		return ErrClosed
	}
	if p := f.pending.get(held.Key); p != nil {
		// A queued claim (journaled) is held by its token; a queued
		// completion or release means the claim is finished.
		if s, token, ok := peekClaim(p.enc); ok && token == held.Token && s == InFlight {
			return nil
		}
		return ErrNotHeld
	}
	var holds bool
	err := f.view(op, func(tx *bolt.Tx) error {
		state, token, ok := peekClaim(tx.Bucket(bucketRecords).Get([]byte(held.Key)))
		holds = ok && token == held.Token && state != Completed
		return nil
	})
	switch {
	case err != nil:
		return err
	case !holds:
		return ErrNotHeld
	}
	return nil
}

func (f *File) asyncError(op, key string, err error) {
	if f.onAsyncError != nil {
		f.onAsyncError(op, key, err)
	}
}

// Wait implements Store.
func (f *File) Wait(ctx context.Context, key string) (*Record, error) {
	return waitFor(ctx, f.wakeup, key, func() (*Record, error) {
		return f.read("wait", key)
	}, f.closed.Load)
}

// Get implements Store.
func (f *File) Get(ctx context.Context, key string, now time.Time) (*Record, error) {
	rec, err := f.read("get", key)
	switch {
	case err != nil:
		return nil, err
	case rec == nil || rec.expired(now):
		return nil, ErrNotFound
	}
	return rec.viewAt(now), nil
}

// PutJob implements Store. It returns once the job is on disk.
func (f *File) PutJob(ctx context.Context, job *Job) error {
	if err := f.lim.checkJob(job); err != nil {
		return err
	}
	enc := appendJob(nil, job)
	id := []byte(job.ID)
	var full bool
	err := f.batch("put job", func(tx *bolt.Tx) error {
		full = false
		b := tx.Bucket(bucketJobs)
		if b.Get(id) == nil {
			n := b.Sequence()
			if n >= uint64(f.lim.MaxJobs) {
				full = true
				return nil
			}
			if err := b.SetSequence(n + 1); err != nil {
				return err
			}
		}
		return b.Put(id, enc)
	})
	switch {
	case err != nil:
		return err
	case full:
		return ErrFull
	}
	return nil
}

// GetJob implements Store.
func (f *File) GetJob(ctx context.Context, id string) (*Job, error) {
	var job *Job
	err := f.view("get job", func(tx *bolt.Tx) (err error) {
		if v := tx.Bucket(bucketJobs).Get([]byte(id)); v != nil {
			job, err = decodeJob(id, v)
		}
		return err
	})
	switch {
	case err != nil:
		return nil, err
	case job == nil:
		return nil, ErrNotFound
	}
	return job, nil
}

// ListJobs implements Store.
func (f *File) ListJobs(ctx context.Context, states ...JobState) ([]*Job, error) {
	var out []*Job
	err := f.view("list jobs", func(tx *bolt.Tx) error {
		out = out[:0]
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			if len(v) > stateOffset && !matchState(JobState(v[stateOffset]), states) {
				return nil
			}
			j, err := decodeJob(string(k), v)
			if err != nil {
				return err
			}
			out = append(out, j)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sortJobs(out)
	return out, nil
}

// DeleteJob implements Store.
func (f *File) DeleteJob(ctx context.Context, id string) error {
	bid := []byte(id)
	return f.batch("delete job", func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		if b.Get(bid) == nil {
			return nil
		}
		if err := b.Delete(bid); err != nil {
			return err
		}
		return addSequence(b, -1)
	})
}

// LeaseJob implements Store. The file is locked to one process, which owns
// every job in it: LeaseJob reports false only for a final job.
func (f *File) LeaseJob(ctx context.Context, id string, now time.Time, lease time.Duration) (bool, error) {
	if err := checkKey("job id", id); err != nil {
		return false, err
	}
	pending := true
	err := f.view("lease job", func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketJobs).Get([]byte(id)); len(v) > stateOffset {
			pending = JobState(v[stateOffset]).Pending()
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	return pending, nil
}

// Sweep implements Store. It runs in one transaction. With the claim
// journal it also removes the expired overlay entries that failed writes
// left pinned (see claimTx.after), which no commit would remove.
func (f *File) Sweep(now time.Time) (int, error) {
	if f.closed.Load() {
		return 0, ErrClosed
	}
	var swept []string
	var tokens []uint64 // of the swept records, for the journal
	removed := 0
	// With the journal, claims reach the file in the background: the sweep
	// queues behind them, so that it sees every claim made before it.
	update := f.db.Update
	if f.journal != nil {
		update = f.write
	}
	err := f.wrap("sweep", update(func(tx *bolt.Tx) error {
		swept, tokens, removed = swept[:0], tokens[:0], 0
		for _, spec := range []struct {
			name    []byte
			records bool
		}{{bucketRecords, true}, {bucketJobs, false}} {
			b := tx.Bucket(spec.name)
			var dead [][]byte
			err := b.ForEach(func(k, v []byte) error {
				exp, ok := expiresAt(v)
				if !ok {
					return fmt.Errorf("%w: %s %q too short", ErrCorrupt, spec.name, k)
				}
				if (spec.records || !exp.IsZero()) && !now.Before(exp) {
					dead = append(dead, append([]byte(nil), k...))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if spec.records && f.journal != nil {
				dead = appendAnsweredClaims(dead, b, f.pending.expiredPinnedAnswers(now), now)
			}
			for _, k := range dead {
				if spec.records {
					_, token, _ := peekClaim(b.Get(k))
					swept, tokens = append(swept, string(k)), append(tokens, token)
				}
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			if err := addSequence(b, -len(dead)); err != nil {
				return err
			}
			removed += len(dead)
		}
		return nil
	}))
	if err != nil {
		return 0, err
	}
	f.records.Add(-int64(len(swept)))
	for _, k := range swept {
		f.wakeup.wake(k)
	}
	if f.journal == nil {
		return removed, nil
	}
	f.claimMu.Lock()
	// An overlay entry pinned by a failed write (claimTx.after) goes only
	// when a later write of its key lands; once expired it is swept here
	// like a record in the file, its pin and count with it. The file
	// holds at most the record its claim took over, swept above if due,
	// or, under an answer, its own claim in flight, swept above with it.
	inFile := len(swept)
	for key, e := range f.pending.takeExpiredPinned(now) {
		_, token, _ := peekClaim(e.enc)
		if e.newKey {
			f.records.Add(-1)
		}
		f.journal.unpin()
		f.wakeup.wake(key)
		if sweptWith(swept[:inFile], tokens[:inFile], key, token) {
			continue // counted and released with its claim's record
		}
		swept, tokens = append(swept, key), append(tokens, token)
		removed++
	}
	if len(swept) > 0 {
		// The journal may still hold these keys' claims: without a release
		// after them, a crash would bring the swept claims back as
		// outcome unknown.
		//
		// bbolt has their deletions already, but the journal starts over
		// only once its flushed mark passes every entry synced, and only
		// a commit's after function moves that mark: a no-op queued
		// behind every claim journaled before these releases (claimMu:
		// journal order is queue order) moves it past them once those
		// claims have landed. Without it, the mark stayed behind until
		// the next claim, and a later sweep's wait for a journal due to
		// start over waited for that claim (and Close with it).
		last := f.journal.addReleases(swept, tokens)
		f.journal.expectFlush()
		err := f.commit.enqueue(func(*bolt.Tx) error { return nil }, func(err error) {
			if err == nil {
				f.journal.markFlushed(last + 1)
			} else {
				f.journal.markUnflushed()
			}
		})
		if err != nil {
			f.journal.markUnflushed() // closed: nothing will move the mark
		}
		f.claimMu.Unlock()
		if err := f.journal.wait(last); err != nil {
			return removed, f.wrap("sweep", err)
		}
		return removed, nil
	}
	f.claimMu.Unlock()
	return removed, nil
}

// sweptWith reports whether keys and tokens, a sweep's records, hold the
// claim of key with token.
func sweptWith(keys []string, tokens []uint64, key string, token uint64) bool {
	for i, k := range keys {
		if k == key && tokens[i] == token {
			return true
		}
	}
	return false
}

// appendAnsweredClaims appends to dead the keys of answers, expired
// pinned completions by key with their tokens, whose claims b holds in
// flight and are not yet due themselves (those are in dead already): a
// claim lives max(TTL, lease), its answer ttl from its completion, so the
// answer can expire first, and the key it leaves must read as free, as it
// would had the answer been written, not as that claim in flight again.
func appendAnsweredClaims(dead [][]byte, b *bolt.Bucket, answers map[string]uint64, now time.Time) [][]byte {
	for key, token := range answers {
		v := b.Get([]byte(key))
		if exp, ok := expiresAt(v); !ok || !now.Before(exp) {
			continue
		}
		if state, t, ok := peekClaim(v); ok && state == InFlight && t == token {
			dead = append(dead, []byte(key))
		}
	}
	return dead
}

// addSequence adds delta to the bucket's count (its sequence), never going
// below zero.
func addSequence(b *bolt.Bucket, delta int) error {
	n := int64(b.Sequence()) + int64(delta)
	return b.SetSequence(uint64(max(n, 0)))
}

// replayJournal applies the claim journal of the previous run to the
// records bucket, before recovery turns claims in flight into
// UnknownOutcome. For each key the last claim decides: unless a later
// release names it, it is written when the file does not hold its token,
// unless the file's record started later (a claim whose entry was never
// synced, so never acknowledged, can reach the file first); released, it
// is deleted if the file still holds it, or an earlier claim of the key
// that the journal releases too, in flight, and never written. A
// release is journaled when a claim is given up and when its record is
// swept, so that a swept key does not come back. Counts are redone by
// recovery.
func replayJournal(b *bolt.Bucket, entries []journalEntry) error {
	type outcome struct {
		claim    int // index of the key's last claim entry, -1 for none
		token    uint64
		released bool // a release of that claim follows it
		// gone: the tokens of the key's claims that a later release
		// names, the last one's included.
		gone map[uint64]bool
	}
	keys := make(map[string]*outcome, len(entries))
	order := make([]string, 0, len(entries))
	for i, e := range entries {
		o := keys[e.key]
		if o == nil {
			o = &outcome{claim: -1}
			keys[e.key] = o
			order = append(order, e.key)
		}
		switch e.kind {
		case journalClaim:
			claim, err := decodeRecord(e.key, e.body)
			if err != nil {
				return fmt.Errorf("%w: %w", errBadJournal, err)
			}
			o.claim, o.token, o.released = i, claim.Token, false
			if o.gone == nil {
				o.gone = make(map[uint64]bool)
			}
			o.gone[claim.Token] = false
		case journalRelease:
			if len(e.body) != 8 || o.claim < 0 {
				break
			}
			token := binary.BigEndian.Uint64(e.body)
			if _, ok := o.gone[token]; ok {
				o.gone[token] = true
			}
			if token == o.token {
				o.released = true
			}
		default:
			return fmt.Errorf("%w: unknown kind %d", errBadJournal, e.kind)
		}
	}
	for _, key := range order {
		o := keys[key]
		if o.claim < 0 {
			continue
		}
		state, token, ok := peekClaim(b.Get([]byte(key)))
		if o.released {
			// The file may hold an earlier claim of the key, released
			// too, whose release's commit the crash lost.
			if ok && state == InFlight && o.gone[token] {
				if err := b.Delete([]byte(key)); err != nil {
					return err
				}
			}
			continue
		}
		if ok && token == o.token {
			continue // the file has it, or its outcome
		}
		claim := entries[o.claim]
		if ok {
			// A later claim whose own entry the crash cut off may have
			// reached the file first: keep the newer record.
			cur, err := decodeRecord(key, b.Get([]byte(key)))
			if err != nil {
				return err
			}
			rec, err := decodeRecord(key, claim.body)
			if err != nil {
				return err
			}
			if cur.StartedAt.After(rec.StartedAt) {
				continue
			}
		}
		if err := b.Put([]byte(key), claim.body); err != nil {
			return err
		}
	}
	return nil
}
