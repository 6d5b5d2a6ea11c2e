package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// Audit of the recoverable journal failures (journal16_recover_test.go):
// a failed batch fails only its own claims, and the next batch is written
// in its place.

// expiredRecord claims and completes key on f, with an answer that expires
// a minute after t0, and waits until the file holds it.
func expiredRecord(t *testing.T, f *File, key string) {
	t.Helper()
	held := mustClaim(t, f, key, args(key, t0))
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Minute); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
}

// failNextJournalSync makes the next journal batch fail as a failed
// fdatasync would, once.
func failNextJournalSync(t *testing.T) error {
	injected := errors.New("injected journal sync failure")
	testHookJournalSynced = func(error) error {
		testHookJournalSynced = nil
		return injected
	}
	t.Cleanup(func() { testHookJournalSynced = nil })
	return injected
}

// Sweep waits for the journal releases of what it removed. Only a batch's
// claims were told of its failure, so a sweep whose releases were in a
// failed batch waited for an entry nobody would write: with nothing else
// queued, its wait led an empty journal over and over, holding the
// journal's lock, and every later claim, sweep and Close hung with it.
func TestJournal16c_SweepWithAFailedReleaseBatchReturns(t *testing.T) {
	f, err := OpenFile(filepath.Join(t.TempDir(), "state.db"), FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	expiredRecord(t, f, "k")
	injected := failNextJournalSync(t)

	swept := make(chan error, 1)
	go func() {
		_, err := f.Sweep(t0.Add(time.Hour))
		swept <- err
	}()
	select {
	case err := <-swept:
		if !errors.Is(err, injected) {
			t.Fatalf("Sweep = %v, want the journal's failure", err)
		}
	case <-time.After(10 * time.Second):
		// Not closed: Close would wait for the journal's lock for good.
		t.Fatal("Sweep hangs on the release of a failed journal batch")
	}
	mustClaim(t, f, "next", args("next", t0)) // the journal writes again
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// When another entry was queued behind the failed batch, the sweep's wait
// ended once that entry's batch was synced past the lost release, and
// Sweep reported the release as written.
func TestJournal16c_SweepReportsItsLostRelease(t *testing.T) {
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{})
	expiredRecord(t, f, "k")
	injected := failNextJournalSync(t)
	testHookJournalWrite = func() {
		testHookJournalWrite = nil
		f.journal.addRelease("other", 1) // arrives during the failed write
	}
	t.Cleanup(func() { testHookJournalWrite = nil })
	if _, err := f.Sweep(t0.Add(time.Hour)); !errors.Is(err, injected) {
		t.Fatalf("Sweep = %v, want the journal's failure", err)
	}
}

// Close keeps a pinned journal for the next open (TestJournal16_Pinned
// JournalSurvivesClose), but left what was not yet written out of it and
// what a failed batch had written in it: a release queued behind the last
// claim (nobody waits for releases), so the released claim came back as
// UnknownOutcome after a clean restart; and the entries of a failed batch,
// never overwritten, so a claim that Claim had refused (its call never
// ran) came back as UnknownOutcome too.
func TestJournal16c_CloseOfAPinnedJournalKeepsOnlyItsClaims(t *testing.T) {
	tests := []struct {
		name string
		// give claims key and gives it up; bbolt lands both.
		give func(t *testing.T, f *File, key string)
	}{
		{name: "released", give: func(t *testing.T, f *File, key string) {
			held := mustClaim(t, f, key, args(key, t0))
			if err := f.Release(context.Background(), held); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "refused by a failed batch", give: func(t *testing.T, f *File, key string) {
			injected := failNextJournalSync(t)
			if _, owned, err := f.Claim(context.Background(), key, args(key, t0)); !errors.Is(err, injected) || owned {
				t.Fatalf("Claim(%s) with a failing journal = owned %v, %v; want the failure", key, owned, err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := newAsyncErrors()
			path := filepath.Join(t.TempDir(), "state.db")
			f := openTestFile(t, path, FileOptions{OnAsyncError: errs.hook})
			held := unlandedClaim(t, f, errs, "pinned")
			tt.give(t, f, "k")
			awaitIdle(f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}

			re := openTestFile(t, path, FileOptions{})
			if rec, err := re.Get(context.Background(), "k", t0); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get(k) after Close and open = %+v, %v; want it free", rec, err)
			}
			if rec, err := re.Get(context.Background(), "pinned", t0); err != nil || rec.Token != held.Token || rec.State != UnknownOutcome {
				t.Fatalf("Get(pinned) after Close and open = %+v, %v; want the held claim as UnknownOutcome", rec, err)
			}
		})
	}
}
