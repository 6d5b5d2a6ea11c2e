package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// A release means the holder decided its call had no effect, so the
// agent's retry may run it. When the release's write failed while the
// file held the claim (a full disk), the overlay entry went with the
// failure: the key read as that claim in flight again, so the retry got
// 409 in_progress until the claim's lease ended, and outcome unknown after
// that. Now the release is kept (file_release.go): the key is free in this
// process at once, and the write is retried with later commits.

// failedRelease claims key on f, lets the file hold the claim, and
// releases it while f's commits fail; commits work again after.
func failedRelease(t *testing.T, f *File, errs *asyncErrors, key string) *Record {
	t.Helper()
	held, restore := releaseFailing(t, f, errs, key)
	restore()
	return held
}

// releaseFailing is failedRelease with f's commits left failing until
// restore.
func releaseFailing(t *testing.T, f *File, errs *asyncErrors, key string) (held *Record, restore func()) {
	t.Helper()
	held = mustClaim(t, f, key, args("a", t0))
	awaitSettled(t, f)
	restore = breakCommits(t, f)
	if err := f.Release(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	if err := <-errs.got; err == nil {
		t.Fatalf("OnAsyncError got nil for the failed release of %s", key)
	}
	return held, restore
}

// noMoreAsyncErrors fails if OnAsyncError was called again.
func noMoreAsyncErrors(t *testing.T, errs *asyncErrors) {
	t.Helper()
	select {
	case err := <-errs.got:
		t.Fatalf("OnAsyncError called again: %v", err)
	default:
	}
}

func TestReleaseKept_FailedReleaseFreesTheKeyAtOnce(t *testing.T) {
	ctx := context.Background()
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	held, restore := releaseFailing(t, f, errs, "k")
	// The failed round ended, and the kept release started no other: it
	// waits for a commit that runs anyway.
	awaitIdle(f)
	if rec := committed(t, f, "k"); rec == nil || rec.Token != held.Token {
		t.Fatalf("file holds %+v; want the released claim, its delete not yet written", rec)
	}
	for _, now := range []time.Time{t0, t0.Add(2 * time.Minute)} { // within the lease, and after
		if rec, err := f.Get(ctx, "k", now); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(k) at %v after its failed release = %+v, %v; want it free", now.Sub(t0), rec, err)
		}
	}
	if err := f.Release(ctx, held); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("a second Release of the released claim = %v, want ErrNotHeld", err)
	}
	restore()

	retry := mustClaim(t, f, "k", args("a", t0.Add(time.Second))) // the agent's retry runs
	awaitSettled(t, f)
	if rec := committed(t, f, "k"); rec == nil || rec.Token != retry.Token {
		t.Fatalf("file holds %+v; want the retry's claim", rec)
	}
	checkRecordCount(t, f, 1)
	noMoreAsyncErrors(t, errs)
}

// The kept release lands with the next commit, whatever writes it, and
// the key stays free after a crash.
func TestReleaseKept_LandsWithTheNextCommit(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	failedRelease(t, f, errs, "k")
	mustClaim(t, f, "b", args("b", t0))
	awaitSettled(t, f)
	if rec := committed(t, f, "k"); rec != nil {
		t.Fatalf("file holds %+v after the next commit; want k's release written", rec)
	}
	checkRecordCount(t, f, 1)
	noMoreAsyncErrors(t, errs)
	crashIdle(t, f)

	re := openTestFile(t, f.Path(), FileOptions{})
	if rec, err := re.Get(context.Background(), "k", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k) after a crash = %+v, %v; want it free", rec, err)
	}
}

// With no later write, Close writes the kept release: after a clean
// restart the key is free, not outcome unknown.
func TestReleaseKept_CloseWritesIt(t *testing.T) {
	errs := newAsyncErrors()
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{OnAsyncError: errs.hook})
	failedRelease(t, f, errs, "k")
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	noMoreAsyncErrors(t, errs)
	re := openTestFile(t, path, FileOptions{})
	if rec, err := re.Get(context.Background(), "k", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k) after a clean restart = %+v, %v; want it free", rec, err)
	}
	if n := re.Recovery().UnknownOutcome; n != 0 {
		t.Fatalf("restart found %d claims in flight, want 0", n)
	}
}

// At most maxKept releases are kept: beyond that, the failed release
// reads as before (in flight until the lease ends), and its error says so.
func TestReleaseKept_Bounded(t *testing.T) {
	ctx := context.Background()
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	f.kept.max = 1
	k1 := mustClaim(t, f, "k1", args("a", t0))
	k2 := mustClaim(t, f, "k2", args("a", t0))
	awaitSettled(t, f)
	restore := breakCommits(t, f)
	for _, held := range []*Record{k1, k2} {
		if err := f.Release(ctx, held); err != nil {
			t.Fatal(err)
		}
		awaitIdle(f) // one round each: k1's is kept before k2's fails
	}
	if err := <-errs.got; err == nil || errors.Is(err, errReleaseDropped) {
		t.Fatalf("OnAsyncError for the kept release = %v; want the failure alone", err)
	}
	if err := <-errs.got; err == nil || !errors.Is(err, errReleaseDropped) {
		t.Fatalf("OnAsyncError beyond the bound = %v; want it to say the key stays in flight", err)
	}
	if _, err := f.Get(ctx, "k1", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k1), kept = %v; want it free", err)
	}
	if rec, err := f.Get(ctx, "k2", t0); err != nil || rec.State != InFlight {
		t.Fatalf("Get(k2), beyond the bound = %+v, %v; want it in flight", rec, err)
	}
	restore()
	mustClaim(t, f, "b", args("b", t0))
	awaitSettled(t, f)
	if rec := committed(t, f, "k1"); rec != nil {
		t.Fatalf("file holds %+v; want k1's kept release written", rec)
	}
	checkRecordCount(t, f, 1)
	if n := f.kept.len(); n != 0 {
		t.Fatalf("%d releases still kept, want 0", n)
	}
}

// The agent's retry claims the freed key while the file still refuses
// writes: its claim stands (pinned, from the journal), and once the file
// takes writes again the kept release and the retry's answer land in one
// commit, counted once.
func TestReleaseKept_RetryWhileTheFileStillRefuses(t *testing.T) {
	ctx := context.Background()
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	_, restore := releaseFailing(t, f, errs, "k")
	retry := mustClaim(t, f, "k", args("a", t0.Add(time.Second)))
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the retry's failed claim")
	}
	if rec, owned, err := f.Claim(ctx, "k", args("a", t0.Add(2*time.Second))); err != nil || owned || rec.Token != retry.Token {
		t.Fatalf("a duplicate of the retry = %+v, owned %v, %v; want the retry in flight", rec, owned, err)
	}
	restore()
	if err := f.Complete(ctx, retry, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	if rec := committed(t, f, "k"); rec == nil || rec.State != Completed || rec.Token != retry.Token {
		t.Fatalf("file holds %+v; want the retry's answer", rec)
	}
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d, want 0", n)
	}
	checkRecordCount(t, f, 1)
	noMoreAsyncErrors(t, errs)
}
