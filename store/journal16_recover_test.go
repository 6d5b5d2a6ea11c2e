package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A failed write or sync of the claim journal (a disk full for a moment,
// an I/O error) used to be sticky: every later claim failed with it until
// ballast restarted, so a keyed route answered 503 for good after one bad
// moment. Now only the claims of the failed batch fail.

// closedFile returns an *os.File that is already closed: every write and
// sync on it fails.
func closedFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "closed"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f
}

func TestJournal16_WriteFailureIsNotSticky(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	real, broken := f.journal.f, closedFile(t)
	f.journal.f = broken // no leader runs: the test is alone
	if _, owned, err := f.Claim(context.Background(), "a", args("a", t0)); err == nil || owned {
		t.Fatalf("Claim with a broken journal = owned %v, %v; want an error", owned, err)
	}
	f.journal.f = real

	b := mustClaim(t, f, "b", args("b", t0))
	again := mustClaim(t, f, "a", args("a", t0)) // a was given up, not left in flight
	for _, held := range []*Record{b, again} {
		if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	awaitSettled(t, f)
	checkRecordCount(t, f, 1)
	errs.none(t)
}

// The bytes of a failed batch may have reached the disk (the write went
// through, the sync failed). The next batch is written in its place, and
// when it is shorter, what is left of the failed one must not read back
// as entries: two failed claims, then one entry the size of the first,
// left the second one whole and valid after it.
func TestJournal16_FailedBatchLeavesNoEntryBehind(t *testing.T) {
	j := startedJournal(t)
	x1 := j.add(journalClaim, "x1", []byte("body"))
	x2 := j.add(journalClaim, "x2", []byte("body"))
	injected := errors.New("injected sync failure")
	testHookJournalSynced = func(err error) error {
		testHookJournalSynced = nil
		if err != nil {
			t.Errorf("the write itself failed: %v", err)
		}
		return injected
	}
	defer func() { testHookJournalSynced = nil }()
	if err := j.wait(x1); !errors.Is(err, injected) {
		t.Fatalf("wait(x1) = %v, want the injected failure", err)
	}
	if err := j.wait(x2); !errors.Is(err, injected) {
		t.Fatalf("wait(x2) = %v, want the injected failure", err)
	}
	y := j.add(journalClaim, "y1", []byte("body")) // as long as x1's
	if err := j.wait(y); err != nil {
		t.Fatal(err)
	}
	_, entries, err := openJournalEntries(j.path)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].key != "y1" {
		keys := make([]string, len(entries))
		for i, e := range entries {
			keys[i] = e.key
		}
		t.Fatalf("journal reads back %v; want only y1", keys)
	}
}

// A failed start-over may leave the header torn, so no entry may be
// written under it: the claims of that moment fail, and the next batch
// starts the file over first.
func TestJournal16_FailedStartOverIsRetried(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	f.journal.reset = 1 // start over at every chance
	mustClaim(t, f, "a", args("a", t0))
	awaitSettled(t, f) // bbolt holds a: the next batch starts over
	real := f.journal.f
	f.journal.f = closedFile(t)
	if _, owned, err := f.Claim(context.Background(), "b", args("b", t0)); err == nil || owned {
		t.Fatalf("Claim with a failing start-over = owned %v, %v; want an error", owned, err)
	}
	f.journal.f = real
	f.journal.mu.Lock()
	epoch := f.journal.epoch
	f.journal.mu.Unlock()

	mustClaim(t, f, "c", args("c", t0))
	f.journal.mu.Lock()
	restart, now := f.journal.restart, f.journal.epoch
	f.journal.mu.Unlock()
	if restart || now != epoch+1 {
		t.Fatalf("after the next claim: restart %v, epoch %d → %d; want the file started over once", restart, epoch, now)
	}
	_, entries, err := openJournalEntries(journalPath(f.Path()))
	if err != nil {
		t.Fatal(err)
	}
	var claims []string
	for _, e := range entries {
		if e.kind == journalClaim {
			claims = append(claims, e.key)
		}
	}
	if len(claims) != 1 || claims[0] != "c" {
		t.Fatalf("journal's claims after the start-over: %v, want [c]", claims)
	}
	errs.none(t)
}

// A claim caught waiting on the journal while the File closes reads as
// ErrClosed, shutdown, which the proxy neither alerts on nor words as a
// failure of the store.
func TestJournal16_ClosedJournalIsErrClosed(t *testing.T) {
	j, _, err := openJournal(filepath.Join(t.TempDir(), "j.claims"))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.start(); err != nil {
		t.Fatal(err)
	}
	if err := j.close(); err != nil {
		t.Fatal(err)
	}
	n := j.add(journalClaim, "k", []byte("body"))
	if err := j.wait(n); !errors.Is(err, ErrClosed) {
		t.Fatalf("wait after close = %v, want ErrClosed", err)
	}
}
