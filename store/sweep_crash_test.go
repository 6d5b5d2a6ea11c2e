package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// asCrashImage copies the state file and its claim journal of a live store,
// which is what a crash (kill -9) leaves on disk, and returns the copy's
// path.
func asCrashImage(t *testing.T, path string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "crash.db")
	for _, suffix := range []string{"", ".claims"} {
		raw, err := os.ReadFile(path + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+suffix, raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestSweptRecordStaysGoneAfterACrash: a record that completed,
// expired and was swept is gone: its key is free. A crash afterwards must
// not bring it back. With a ttl shorter than the lease (auto mode's window
// of 1m on a route whose total deadline is 2m gives a lease of 2m30s), the
// claim journal's stale entry would come back as an in-flight claim at the
// next open, and the free key would answer 409 outcome_unknown for the
// rest of the lease: the sweep journals a release of each record it
// removes.
func TestSweptRecordStaysGoneAfterACrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTestFile(t, path, FileOptions{})
	ctx := context.Background()
	a := ClaimArgs{Fingerprint: fp("a"), Now: t0, Lease: 150 * time.Second, TTL: time.Minute}
	held := mustClaim(t, s, "k", a)
	if err := s.Complete(ctx, held, resp(`{"ok":1}`), t0.Add(time.Second), time.Minute); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Sweep(t0.Add(2 * time.Minute)); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want the expired record removed", n, err)
	}
	now := t0.Add(2*time.Minute + time.Second)
	if _, err := s.Get(ctx, "k", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before the crash: Get = %v, want ErrNotFound", err)
	}
	c := openTestFile(t, asCrashImage(t, path), FileOptions{})
	rec, err := c.Get(ctx, "k", now)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("after the crash the swept key reads %+v, %v; want ErrNotFound (free)", rec, err)
	}
	if rec, owned, err := c.Claim(ctx, "k", ClaimArgs{Fingerprint: fp("a"), Now: now, Lease: 150 * time.Second, TTL: time.Minute}); err != nil || !owned {
		t.Errorf("after the crash a new request with the free key got %+v owned=%v err=%v; want to own it", rec, owned, err)
	}
}
