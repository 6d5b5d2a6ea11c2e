package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// A journaled claim is answered once its journal entry is synced; its
// bbolt write follows. When that write fails (a full disk, an I/O error)
// the call it guards may already be running upstream, so these tests pin
// down what the key reads as afterwards: taken, until the claim's own
// completion or release says otherwise, and durable through the journal.

// unlandedClaim claims key on f, with f's commits failing, and returns the
// held claim once the failed write was reported; commits work again after.
func unlandedClaim(t *testing.T, f *File, errs *asyncErrors, key string) *Record {
	t.Helper()
	restore := breakCommits(t, f)
	held := mustClaim(t, f, key, args("a", t0))
	if err := <-errs.got; err == nil {
		t.Fatalf("OnAsyncError got nil for the failed commit of %s", key)
	}
	restore()
	return held
}

func pins(f *File) int {
	f.journal.mu.Lock()
	defer f.journal.mu.Unlock()
	return f.journal.pinned
}

// The bug: the failed write dropped the claim, so the key read as free
// while its call ran, and the agent's retry of that call (same key, same
// body) claimed it again and ran it a second time.
func TestJournal16_FailedClaimCommitKeepsTheKeyTaken(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	held := unlandedClaim(t, f, errs, "k")

	rec, owned, err := f.Claim(context.Background(), "k", args("a", t0.Add(time.Second)))
	if err != nil || owned {
		t.Fatalf("retry's Claim = %+v, owned=%v, %v; want the running claim, not owned", rec, owned, err)
	}
	if rec.State != InFlight || rec.Token != held.Token {
		t.Fatalf("retry's Claim read %+v; want the held claim (token %d) in flight", rec, held.Token)
	}
	if got, err := f.Get(context.Background(), "k", t0); err != nil || got.Token != held.Token {
		t.Fatalf("Get = %+v, %v; want the held claim", got, err)
	}
	if n := pins(f); n != 1 {
		t.Fatalf("journal pins = %d, want 1", n)
	}
}

// The claim's completion lands without the claim's record, unpins the
// journal, wakes the key's waiters with the answer, and the books agree
// with the file.
func TestJournal16_CompletionOfAnUnlandedClaimLands(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	held := unlandedClaim(t, f, errs, "k")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waited := make(chan *Record, 1)
	go func() {
		rec, err := f.Wait(ctx, "k")
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		waited <- rec
	}()
	awaitWaiters(t, f, "k", 1)
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if rec := <-waited; rec == nil || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("Wait = %+v; want the completion", rec)
	}
	awaitSettled(t, f)
	if rec := committed(t, f, "k"); rec == nil || rec.State != Completed || rec.Token != held.Token {
		t.Fatalf("file holds %+v; want the completion", rec)
	}
	checkRecordCount(t, f, 1)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the completion landed, want 0", n)
	}
	select {
	case err := <-errs.got:
		t.Fatalf("OnAsyncError after the completion: %v", err)
	default:
	}
}

// A release frees the key, lands, and unpins.
func TestJournal16_ReleaseOfAnUnlandedClaimFreesTheKey(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	held := unlandedClaim(t, f, errs, "k")
	if err := f.Release(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	checkRecordCount(t, f, 1)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the release landed, want 0", n)
	}
	if again := mustClaim(t, f, "k", args("a", t0)); again.Token == held.Token {
		t.Fatal("same token twice")
	}
}

// Until the claim's outcome lands, the journal is the claim's only trace:
// it must not start over, though later claims land and move its flushed
// mark past the claim's entry. A crash then brings the claim back as
// UnknownOutcome; without the pin the journal started over and the key
// came back free.
func TestJournal16_PinnedJournalSurvivesACrash(t *testing.T) {
	errs := newAsyncErrors()
	f, g := openGated(t, FileOptions{OnAsyncError: errs.hook})
	f.journal.reset = 1 // start over at every chance
	mustClaim(t, f, "a", args("a", t0))
	held := unlandedClaim(t, f, errs, "k")
	mustClaim(t, f, "b", args("b", t0))
	mustClaim(t, f, "c", args("c", t0))
	awaitIdle(f)
	g.hold()
	crash(t, f, g)

	re := openTestFile(t, f.Path(), FileOptions{})
	rec, err := re.Get(context.Background(), "k", t0)
	if err != nil || rec.State != UnknownOutcome || rec.Token != held.Token {
		t.Fatalf("Get(k) after the crash = %+v, %v; want the held claim as UnknownOutcome", rec, err)
	}
}

// Close keeps the pinned journal for the next open too.
func TestJournal16_PinnedJournalSurvivesClose(t *testing.T) {
	errs := newAsyncErrors()
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{OnAsyncError: errs.hook})
	held := unlandedClaim(t, f, errs, "k")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	re := openTestFile(t, path, FileOptions{})
	rec, err := re.Get(context.Background(), "k", t0)
	if err != nil || rec.State != UnknownOutcome || rec.Token != held.Token {
		t.Fatalf("Get(k) after Close and open = %+v, %v; want the held claim as UnknownOutcome", rec, err)
	}
}

// When the completion's write fails too, the outcome stays in the overlay
// and replays are answered from it, rather than the key reading as free;
// the journal stays pinned, so a restart reads it as UnknownOutcome.
func TestJournal16_DoubleFailureKeepsTheOutcome(t *testing.T) {
	errs := newAsyncErrors()
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{OnAsyncError: errs.hook})
	restore := breakCommits(t, f)
	held := mustClaim(t, f, "k", args("a", t0))
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed claim commit")
	}
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed completion commit")
	}
	restore()

	rec, owned, err := f.Claim(context.Background(), "k", args("a", t0.Add(time.Second)))
	if err != nil || owned || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("retry's Claim = %+v, owned=%v, %v; want the stored answer replayed", rec, owned, err)
	}
	if n := pins(f); n != 1 {
		t.Fatalf("journal pins = %d, want 1", n)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	re := openTestFile(t, path, FileOptions{})
	if rec, err := re.Get(context.Background(), "k", t0); err != nil || rec.State != UnknownOutcome {
		t.Fatalf("Get(k) after restart = %+v, %v; want UnknownOutcome (the answer was never stored)", rec, err)
	}
}

// A claim that takes the key over once the unlanded claim has expired
// lands in the file, which then holds a later record of the key: the pin
// goes.
func TestJournal16_TakeoverUnpins(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	held := unlandedClaim(t, f, errs, "k")
	later := t0.Add(2 * time.Hour) // args' TTL is an hour
	over := mustClaim(t, f, "k", args("a", later))
	if over.Token == held.Token {
		t.Fatal("same token twice")
	}
	awaitSettled(t, f)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the takeover landed, want 0", n)
	}
	if err := f.Complete(context.Background(), held, resp("late"), later, time.Hour); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("the old holder's Complete = %v, want ErrNotHeld", err)
	}
	checkRecordCount(t, f, 1)
}

// A pinned completion (both writes failed) that expired is taken over like
// any record: the takeover lands, the pin goes, and the count, which the
// completion carried, is not taken twice.
func TestJournal16_TakeoverOfAPinnedCompletion(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	restore := breakCommits(t, f)
	held := mustClaim(t, f, "k", args("a", t0))
	<-errs.got
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	<-errs.got
	restore()
	mustClaim(t, f, "k", args("a", t0.Add(2*time.Hour))) // the answer expired
	awaitSettled(t, f)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the takeover landed, want 0", n)
	}
	checkRecordCount(t, f, 1)
}

// A claim the file holds in flight whose completion's write fails: the
// answer stays in the overlay and retries replay it, rather than waiting
// on the claim until its lease runs out. Once it expires, Sweep removes
// it and its pin, and the books agree with the file.
func TestJournal16_FailedCompletionOfALandedClaimIsReplayed(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	held := mustClaim(t, f, "k", args("a", t0))
	awaitSettled(t, f) // the file holds the claim in flight
	restore := breakCommits(t, f)
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed completion")
	}
	restore()
	rec, owned, err := f.Claim(context.Background(), "k", args("a", t0.Add(time.Second)))
	if err != nil || owned || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("retry's Claim = %+v, owned=%v, %v; want the answer replayed", rec, owned, err)
	}
	if n := pins(f); n != 1 {
		t.Fatalf("journal pins = %d, want 1", n)
	}
	if _, err := f.Sweep(t0.Add(2 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the sweep, want 0", n)
	}
	checkRecordCount(t, f, 1)
}
