package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// breakCommits makes the committer's rounds fail (bbolt reports the
// database closed) until the returned function restores them. Call it
// while no round runs.
func breakCommits(t *testing.T, f *File) (restore func()) {
	t.Helper()
	broken, err := bolt.Open(filepath.Join(t.TempDir(), "broken.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := broken.Close(); err != nil {
		t.Fatal(err)
	}
	awaitIdle(f)
	f.commit.mu.Lock()
	f.commit.db = broken
	f.commit.mu.Unlock()
	return func() {
		awaitIdle(f)
		f.commit.mu.Lock()
		f.commit.db = f.db
		f.commit.mu.Unlock()
	}
}

// awaitIdle waits until the committer has nothing queued or running.
func awaitIdle(f *File) {
	for {
		f.commit.mu.Lock()
		idle := !f.commit.busy && len(f.commit.queue) == 0
		f.commit.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// A journaled claim's commit that fails (a full disk, an I/O error) never
// moves the journal's flushed mark. Once the journal is due to start over,
// the leader of the next claim waits for bbolt to hold everything synced;
// when that claim's own commit fails too, nothing queued will ever move
// the mark: the claim hangs though its entry could be written, until an
// unrelated claim lands, and Close, which waits for the journal's writer,
// hangs with it when none comes.
func TestJournal15_FailedCommitDoesNotStrandTheJournalWriter(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	f.journal.reset = 1 // start over at every chance
	mustClaim(t, f, "a", args("x", t0))

	restore := breakCommits(t, f)
	mustClaim(t, f, "b", args("x", t0)) // journaled; its commit fails
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed commit of b")
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := f.Claim(context.Background(), "c", args("x", t0))
		done <- err
	}()
	if err := <-errs.got; err == nil { // c's commit failed too
		t.Fatal("OnAsyncError got nil for the failed commit of c")
	}
	restore()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		f.journal.mu.Lock()
		flushed, synced := f.journal.flushed, f.journal.synced
		f.journal.mu.Unlock()
		closed := make(chan error, 1)
		go func() { closed <- f.Close() }()
		select {
		case <-closed:
			t.Errorf("Claim(c) stuck in the journal (flushed %d, synced %d) after its commit failed", flushed, synced)
		case <-time.After(5 * time.Second):
			t.Errorf("Claim(c) stuck in the journal (flushed %d, synced %d) after its commit failed; Close hangs with it", flushed, synced)
		}
		f.journal.markFlushed(synced) // free them, so the test ends
		<-done
		<-closed
	}
}
