package store

import (
	"context"
	"testing"
	"time"
)

func TestMemoryGetDoesNotAllocate(t *testing.T) {
	s := OpenMemory(MemoryOptions{})
	defer s.Close()
	ctx := context.Background()
	held := mustClaim(t, s, "k", args("a", t0))
	if err := s.Complete(ctx, held, resp("body"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Minute)
	if n := testing.AllocsPerRun(200, func() {
		if _, err := s.Get(ctx, "k", now); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("Memory.Get of a completed record allocates %v times, want 0", n)
	}
	// A duplicate of a completed request (the replay path) is as cheap.
	a := args("a", now)
	if n := testing.AllocsPerRun(200, func() {
		if _, owned, err := s.Claim(ctx, "k", a); err != nil || owned {
			t.Fatal(err, owned)
		}
	}); n != 0 {
		t.Fatalf("Memory.Claim of a completed key allocates %v times, want 0", n)
	}
}
