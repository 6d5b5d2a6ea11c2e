package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// failedLandedCompletion claims key on f with a, lets the claim land, and
// completes it with ttl while f's commits fail: the answer then lives only
// in the overlay, pinned, over the claim the file holds in flight.
func failedLandedCompletion(t *testing.T, f *File, errs *asyncErrors, key string, a ClaimArgs, ttl time.Duration) *Record {
	t.Helper()
	held := mustClaim(t, f, key, a)
	awaitSettled(t, f)
	restore := breakCommits(t, f)
	if err := f.Complete(context.Background(), held, resp("done"), a.Now, ttl); err != nil {
		t.Fatal(err)
	}
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed completion")
	}
	restore()
	return held
}

// A claim's record lives max(TTL, lease), its answer ttl from completion:
// with a lease longer than the TTL (auto mode's window shorter than
// timeouts.total), the answer kept in the overlay over a landed claim
// expires first. Once expired it frees the key, but Sweep removed it and
// left the claim's record: the key read as that claim again, in flight
// until its lease ran out, so a retry waited on a call that had ended
// (and got 409 in_progress), where without the sweep it was free.
func TestJournal16d_SweptAnswerDoesNotBringItsClaimBack(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	a := args("a", t0)
	a.Lease, a.TTL = 2*time.Hour, time.Minute // the claim's record lives until t0+2h
	failedLandedCompletion(t, f, errs, "k", a, time.Minute)

	later := t0.Add(10 * time.Minute) // the answer expired at t0+1m
	if rec, err := f.Get(context.Background(), "k", later); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k) once its answer expired = %+v, %v; want it free", rec, err)
	}
	if n, err := f.Sweep(later); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want k's record (claim and answer) removed, once", n, err)
	}
	if rec, err := f.Get(context.Background(), "k", later); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k) after the sweep = %+v, %v; want it free, as before the sweep", rec, err)
	}
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the sweep, want 0", n)
	}
	checkRecordCount(t, f, 1)
	retry := args("a", later)
	retry.Lease, retry.TTL = 2*time.Hour, time.Minute
	rec, owned, err := f.Claim(context.Background(), "k", retry)
	if err != nil || !owned {
		t.Fatalf("retry's Claim after the sweep = %+v, owned=%v, %v; want the key taken anew", rec, owned, err)
	}
	awaitSettled(t, f)
	checkRecordCount(t, f, 2)
}

// The same sweep, then a restart: the key stays free (the claim's record
// and its journal entry are both released).
func TestJournal16d_SweptAnswerStaysFreeAfterRestart(t *testing.T) {
	errs := newAsyncErrors()
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{OnAsyncError: errs.hook})
	a := args("a", t0)
	a.Lease, a.TTL = 2*time.Hour, time.Minute
	failedLandedCompletion(t, f, errs, "k", a, time.Minute)
	later := t0.Add(10 * time.Minute)
	if _, err := f.Sweep(later); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	re := openTestFile(t, path, FileOptions{})
	if rec, err := re.Get(context.Background(), "k", later); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k) after the sweep and a restart = %+v, %v; want it free", rec, err)
	}
	if n := re.Recovery().Records; n != 0 {
		t.Fatalf("records after the restart = %d, want 0", n)
	}
}
