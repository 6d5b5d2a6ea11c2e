package store

import (
	"context"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// openCounted opens a File whose commit rounds are counted.
func openCounted(t testing.TB, opts FileOptions) (*File, *atomic.Int64) {
	t.Helper()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), opts)
	var rounds atomic.Int64
	f.commit.beforeRound = func() { rounds.Add(1) }
	return f, &rounds
}

// awaitSettled yields until no write is pending or queued, failing after a
// generous bound.
func awaitSettled(t testing.TB, f *File) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); runtime.Gosched() {
		f.commit.mu.Lock()
		busy, queued := f.commit.busy, len(f.commit.queue)
		f.commit.mu.Unlock()
		if f.pending.len() == 0 && !busy && queued == 0 {
			return
		}
	}
	t.Fatal("queued writes were not committed")
}

// A completion queued while the committer is idle waits for the next claim
// and shares its commit.
func TestFileCompletionRidesNextClaim(t *testing.T) {
	ctx := context.Background()
	f, rounds := openCounted(t, FileOptions{NoJournal: true, FlushDelay: time.Hour})
	held := mustClaim(t, f, "a", args("a", t0))
	if err := f.Complete(ctx, held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if rec := committed(t, f, "a"); rec == nil || rec.State != InFlight {
		t.Fatalf("file holds %+v before the next claim, want the claim in flight", rec)
	}
	if got := rounds.Load(); got != 1 {
		t.Fatalf("%d commit rounds before the next claim, want 1 (the claim)", got)
	}
	mustClaim(t, f, "b", args("b", t0))
	if got := rounds.Load(); got != 2 {
		t.Fatalf("%d commit rounds after the next claim, want 2", got)
	}
	if rec := committed(t, f, "a"); rec == nil || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("file holds %+v after the next claim's commit, want the completion", rec)
	}
	if n := f.pending.len(); n != 0 {
		t.Fatalf("%d writes still pending", n)
	}
}

// Without a claim to ride, a queued completion or release commits on its
// own once FlushDelay has passed (at once with a negative FlushDelay).
func TestFileQueuedWriteCommitsAlone(t *testing.T) {
	tests := []struct {
		name    string
		delay   time.Duration
		release bool
	}{
		{name: "complete after delay", delay: time.Millisecond},
		{name: "release after delay", delay: time.Millisecond, release: true},
		{name: "complete at once", delay: -1},
		{name: "release at once", delay: -1, release: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f, rounds := openCounted(t, FileOptions{NoJournal: true, FlushDelay: tt.delay})
			held := mustClaim(t, f, "k", args("a", t0))
			var err error
			if tt.release {
				err = f.Release(ctx, held)
			} else {
				err = f.Complete(ctx, held, resp("done"), t0, time.Hour)
			}
			if err != nil {
				t.Fatal(err)
			}
			awaitSettled(t, f)
			if got := rounds.Load(); got != 2 {
				t.Fatalf("%d commit rounds, want 2 (claim, then the queued write alone)", got)
			}
			rec := committed(t, f, "k")
			switch {
			case tt.release && rec != nil:
				t.Fatalf("file holds %+v after the release, want none", rec)
			case !tt.release && (rec == nil || rec.State != Completed):
				t.Fatalf("file holds %+v, want the completion", rec)
			}
		})
	}
}

// Close commits completions that are waiting for FlushDelay.
func TestFileCloseFlushesDelayedCompletions(t *testing.T) {
	ctx := context.Background()
	f, _ := openCounted(t, FileOptions{NoJournal: true, FlushDelay: time.Hour})
	held := mustClaim(t, f, "k", args("a", t0))
	if err := f.Complete(ctx, held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	re := openTestFile(t, f.Path(), FileOptions{})
	if got := re.Recovery(); got.UnknownOutcome != 0 || got.Records != 1 {
		t.Fatalf("after reopen Recovery = %+v, want 1 record and none unknown", got)
	}
	if rec, err := re.Get(ctx, "k", t0); err != nil || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("after reopen = %+v, %v; want completed", rec, err)
	}
}

// A waiter attached to a claim whose completion waits for FlushDelay is
// woken once the completion is committed.
func TestFileWaitWakesAfterDelayedCommit(t *testing.T) {
	ctx := context.Background()
	f, _ := openCounted(t, FileOptions{NoJournal: true, FlushDelay: time.Millisecond})
	held := mustClaim(t, f, "k", args("a", t0))
	got := make(chan *Record, 1)
	go func() {
		rec, err := f.Wait(ctx, "k")
		if err != nil {
			t.Error(err)
		}
		got <- rec
	}()
	awaitWaiters(t, f, "k", 1)
	if err := f.Complete(ctx, held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if rec := <-got; rec == nil || rec.State != Completed {
		t.Fatalf("Wait = %+v, want the completion", rec)
	}
}

// Group commits start at least CommitGap apart.
func TestFileCommitGap(t *testing.T) {
	const gap = 30 * time.Millisecond
	f, rounds := openCounted(t, FileOptions{NoJournal: true, CommitGap: gap})
	start := time.Now()
	mustClaim(t, f, "a", args("a", t0))
	mustClaim(t, f, "b", args("b", t0))
	if got := time.Since(start); got < gap {
		t.Fatalf("two claims took %v, want their commits at least %v apart", got, gap)
	}
	if got := rounds.Load(); got != 2 {
		t.Fatalf("%d commit rounds, want 2", got)
	}
}
