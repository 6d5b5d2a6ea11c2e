package store

import (
	"context"
	"errors"
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

// A journaled claim whose commit fails used to leave the pending overlay,
// and the key then read as free, without waking the key's waiters, which
// slept until their deadline. The claim now stands (see
// journal16_unlanded_test.go): the waiters sleep on while its call runs,
// and wake with its completion, which lands without the claim's record.
func TestJournal15_FailedClaimCommitWakesWaiters(t *testing.T) {
	errs := newAsyncErrors()
	f, g := openGated(t, FileOptions{OnAsyncError: errs.hook})
	g.hold()
	held := mustClaim(t, f, "k", args("a", t0)) // journaled; its commit queues behind the gate
	broken, err := bolt.Open(filepath.Join(t.TempDir(), "broken.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	broken.Close()
	f.commit.mu.Lock()
	f.commit.db = broken // the held round fails
	f.commit.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startWait(t, ctx, f, "k")
	g.opened.Do(func() { close(g.open) })
	<-g.held
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed claim commit")
	}
	awaitIdle(f)
	f.commit.mu.Lock()
	f.commit.db = f.db
	f.commit.mu.Unlock()
	if rec, err := f.Get(context.Background(), "k", t0); err != nil || rec.Token != held.Token || rec.State != InFlight {
		t.Fatalf("Get after the failed commit = %+v, %v; want the claim standing", rec, err)
	}
	select {
	case r := <-done:
		t.Fatalf("Wait = %+v, %v while the claim stands; want it asleep", r.rec, r.err)
	default:
	}
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.rec == nil || r.rec.State != Completed {
			t.Fatalf("Wait = %+v, %v; want the completion", r.rec, r.err)
		}
	case <-time.After(5 * time.Second):
		cancel()
		<-done
		t.Fatal("Wait still asleep 5s after the claim it waited for completed")
	}
}

// A journaled claim of a new key is counted in File.records when it is
// queued. When its commit fails the claim stands, so it stays counted, and
// its completion, which lands in its place, is not counted again: the
// count and the file agree once it has landed.
func TestJournal15_FailedClaimCommitIsCountedOnce(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("x", t0))
	restore := breakCommits(t, f)
	held := mustClaim(t, f, "b", args("x", t0)) // journaled; its commit fails
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed commit of b")
	}
	restore()
	if n := f.records.Load(); n != 2 {
		t.Fatalf("File.records = %d while b stands, want 2", n)
	}
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	checkRecordCount(t, f, 1)
}

// A journaled release frees its key after a crash (the file's in-flight
// claim is deleted), but replay looked only at the key's last claim: when
// the key was claimed and released again after it, the first release was
// ignored, and the first claim, which the file still held in flight (its
// release's commit had not landed), came back as UnknownOutcome though
// both of the key's claims were released.
func TestJournal15_EveryJournaledReleaseIsReplayed(t *testing.T) {
	f, g := openGated(t, FileOptions{})
	first := mustClaim(t, f, "k", args("a", t0))
	awaitSettled(t, f) // the file holds the first claim in flight
	g.hold()
	if err := f.Release(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	second := mustClaim(t, f, "k", args("a", t0)) // its sync carries the first release
	if second.Token == first.Token {
		t.Fatal("same token twice")
	}
	if err := f.Release(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, f, "other", args("b", t0)) // its sync carries the second release
	if rec := committed(t, f, "k"); rec == nil || rec.Token != first.Token || rec.State != InFlight {
		t.Fatalf("file holds %+v; the test needs the first claim in flight", rec)
	}
	crash(t, f, g)

	re := openTestFile(t, f.Path(), FileOptions{})
	if rec, err := re.Get(context.Background(), "k", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(k) after the crash = %+v, %v; want it free (both claims were released)", rec, err)
	}
	if got := re.Recovery(); got.Records != 1 || got.UnknownOutcome != 1 {
		t.Errorf("Recovery = %+v, want only the other claim", got)
	}
}
