package store

import (
	"path/filepath"
	"testing"
	"time"
)

// A sweep journals a release for each record it removes and waits for
// them to be synced. Once the journal is due to start over, the writer
// waits until bbolt holds everything synced before (flushed), but only
// a claim's commit moves that mark: a sweep whose releases were the
// last entries synced left it behind for good, and the next sweep that
// had something to remove then waited for a claim that may never come
// (a quiet proxy's sweeper, stuck; and Close, which waits for the
// journal's writer, with it).
func TestJournal14_SweepAfterSweepDoesNotWaitForAClaim(t *testing.T) {
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{})
	f.journal.reset = 1                                // start over at every chance
	mustClaim(t, f, "a", args("x", t0))                // expires at t0+1h
	mustClaim(t, f, "b", args("x", t0.Add(time.Hour))) // expires at t0+2h
	if n, err := f.Sweep(t0.Add(time.Hour)); n != 1 || err != nil {
		t.Fatalf("first sweep = %d, %v; want a removed", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.Sweep(t0.Add(2 * time.Hour))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		f.journal.mu.Lock()
		flushed, synced := f.journal.flushed, f.journal.synced
		f.journal.mu.Unlock()
		t.Errorf("the second sweep is stuck in the journal (flushed %d, synced %d): it waits for a claim to move the flushed mark", flushed, synced)
		mustClaim(t, f, "c", args("x", t0.Add(2*time.Hour))) // a claim frees it (else Close would hang too)
		<-done
	}
}
