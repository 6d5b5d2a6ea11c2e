package store

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A claim that takes over an expired record while a sweep that will delete
// that record waits to commit: the sweep deletes it, the claim writes it
// back, and the count MaxRecords applies to must still count it. It used
// to be decremented for the sweep alone, so the file then held more
// records than MaxRecords allows.
func TestSweep13_TakeoverBehindSweepStaysCounted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{Limits: Limits{MaxRecords: 2}, FlushDelay: time.Hour})
	ctx := context.Background()
	a := mustClaim(t, f, "a", args("x", t0))
	if err := f.Complete(ctx, a, resp("r"), t0, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Sweep(t0); err != nil { // commits what is queued; nothing expired yet
		t.Fatal(err)
	}

	// Hold the next commit round until the takeover is decided.
	var once sync.Once
	hold, held := make(chan struct{}), make(chan struct{})
	f.commit.mu.Lock()
	f.commit.beforeRound = func() { once.Do(func() { close(held); <-hold }) }
	f.commit.mu.Unlock()
	later := t0.Add(2 * time.Minute) // a has expired
	swept := make(chan error, 1)
	go func() { _, err := f.Sweep(later); swept <- err }()
	<-held
	mustClaim(t, f, "a", args("x", later)) // takes the expired record over
	close(hold)
	if err := <-swept; err != nil {
		t.Fatal(err)
	}
	if _, err := f.Sweep(later); err != nil { // commits the takeover
		t.Fatal(err)
	}
	var inFile int
	if err := f.view("test", func(tx *bolt.Tx) error {
		inFile = tx.Bucket(bucketRecords).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inFile != 1 {
		t.Fatalf("the file holds %d records, want 1 (a's takeover)", inFile)
	}
	mustClaim(t, f, "b", args("x", later))
	if _, _, err := f.Claim(ctx, "c", args("x", later)); !errors.Is(err, ErrFull) {
		t.Fatalf("a third record (a, b held, MaxRecords 2): Claim = %v, want ErrFull", err)
	}
}
