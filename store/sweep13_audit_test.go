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

// A claim that takes over an expired claim while its holder releases or
// completes it must not be hidden by that write: the holder used to check
// that it held the claim, then put its write in the overlay. A takeover
// decided in between was queued, but the overlay then read the key as
// released (or as the old holder's completed answer, already expired), so
// the next claim took the key as new while the takeover's call was
// running: two owners of one key.
func TestSweep13_FinishCannotHideATakeover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		finish func(*File, *Record) error
	}{
		{"release", func(f *File, h *Record) error { return f.Release(context.Background(), h) }},
		{"completion", func(f *File, h *Record) error {
			return f.Complete(context.Background(), h, resp("r"), t0, time.Second) // expired by the next claim
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{FlushDelay: time.Hour})
			ctx := context.Background()
			held := mustClaim(t, f, "k", args("x", t0)) // lease 1 minute, ttl 1 hour
			later := t0.Add(2 * time.Hour)              // the claim has expired
			takeOver := func() {
				if _, owned, err := f.Claim(ctx, "k", args("x", later)); err != nil || !owned {
					t.Errorf("takeover of the expired claim: owned %v, %v", owned, err)
				}
			}
			tookOver := false
			testHookFinishChecked = func(f *File) {
				testHookFinishChecked = nil
				// Between the holder's check and its overlay entry. With
				// claims locked out, as they must be here, there is no
				// window: the takeover comes after the holder's write.
				if f.claimMu.TryLock() {
					f.claimMu.Unlock()
					takeOver()
					tookOver = true
				}
			}
			defer func() { testHookFinishChecked = nil }()
			if err := tc.finish(f, held); err != nil && !errors.Is(err, ErrNotHeld) {
				t.Fatal(err)
			}
			if !tookOver {
				takeOver()
			}
			if rec, owned, err := f.Claim(ctx, "k", args("x", later)); err != nil || owned {
				t.Fatalf("a claim while the takeover runs: owned %v (record %+v), %v; want the takeover's claim in flight", owned, rec, err)
			}
		})
	}
}
