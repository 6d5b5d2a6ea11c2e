package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
)

// A journal batch that failed to be written or synced failed its claims,
// whose callers were told, and dropped its releases, which nobody waits
// for. A release's entry is what keeps a restart from reviving its claim
// from the journal: without it, a claim released and deleted from the file
// came back after a crash as outcome unknown, though its holder had given
// the call up. Now the releases of a failed batch are written with the
// next one, up to journalRequeueMax of them.

func TestJournalRequeue_ReleaseOfAFailedBatchSurvivesACrash(t *testing.T) {
	ctx := context.Background()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{})
	held := mustClaim(t, f, "k", args("a", t0))
	if err := f.Release(ctx, held); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f) // the file no longer holds k; its release waits in the journal's buffer
	injected := failNextJournalSync(t)
	if _, owned, err := f.Claim(ctx, "other", args("b", t0)); !errors.Is(err, injected) || owned {
		t.Fatalf("Claim with a failing journal = owned %v, %v; want the failure", owned, err)
	}
	mustClaim(t, f, "next", args("c", t0)) // the journal writes again
	awaitSettled(t, f)
	crashIdle(t, f)

	re := openTestFile(t, f.Path(), FileOptions{})
	if rec, err := re.Get(ctx, "k", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(k) after a crash = %+v, %v; want it free (released)", rec, err)
	}
	if rec, err := re.Get(ctx, "other", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(other) after a crash = %+v, %v; want it free (refused)", rec, err)
	}
}

// A failed batch gives back at most requeueMax of its releases, the
// earliest, so a journal that keeps failing carries a bounded backlog.
func TestJournalRequeue_Bounded(t *testing.T) {
	j := startedJournal(t)
	j.requeueMax = 2
	for i := range 3 {
		j.addRelease(fmt.Sprintf("r%d", i), uint64(i+1))
	}
	x := j.add(journalClaim, "x", []byte("body"))
	injected := errors.New("injected sync failure")
	testHookJournalSynced = func(error) error {
		testHookJournalSynced = nil
		return injected
	}
	defer func() { testHookJournalSynced = nil }()
	if err := j.wait(x); !errors.Is(err, injected) {
		t.Fatalf("wait(x) = %v, want the injected failure", err)
	}
	y := j.add(journalClaim, "y", []byte("body"))
	if err := j.wait(y); err != nil {
		t.Fatal(err)
	}
	_, entries, err := openJournalEntries(j.path)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range entries {
		keys = append(keys, e.key)
	}
	if fmt.Sprint(keys) != "[r0 r1 y]" {
		t.Fatalf("journal reads back %v; want [r0 r1 y]", keys)
	}
}
