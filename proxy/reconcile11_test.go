package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/store"
)

// Probes of fail_open reconciliation (reconcile.go): the outcome-unknown
// marker a pass writes while a retry on an idempotent route takes its key
// over, and a pass over more records than one chunk of the local store.

// TestReconcile11RetryReplacesOwnUnknownMarker: a pass writes a local
// outcome-unknown record to Redis just as a retry on an idempotent route
// (TakeOverUnknown) takes the key over locally and runs the call again.
// The retry's claim, then its answer, must become the key's record in
// Redis. Before the fix, Redis's marker won as a conflict: the retry's
// answer was dropped, and the next retry (anywhere) read outcome unknown
// and, on that route, ran the call a third time.
func TestReconcile11RetryReplacesOwnUnknownMarker(t *testing.T) {
	for _, tc := range []struct {
		name string
		// inFlightPass: a pass runs while the retry's call still runs.
		inFlightPass bool
	}{
		{name: "answer before the next pass"},
		{name: "claim in flight at the next pass", inFlightPass: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("rc11u%v:", tc.inFlightPass)
			g := st10NewRig(t, prefix)
			ctx := context.Background()
			fp := [32]byte{1}
			if _, owned, err := g.f.local.Claim(ctx, "k", store.ClaimArgs{Fingerprint: fp, Now: g.clock.Now(), Lease: time.Minute, TTL: time.Hour}); err != nil || !owned {
				t.Fatalf("local claim: %v %v", owned, err)
			}
			g.clock.Advance(2 * time.Minute) // past its lease: outcome unknown
			var retry *store.Record
			g.remote.before[1] = func() { // the pass has read the record and writes it now
				var owned bool
				var err error
				retry, owned, err = g.f.Claim(ctx, "k", store.ClaimArgs{Fingerprint: fp, Now: g.clock.Now(),
					Lease: time.Minute, TTL: time.Hour, TakeOverUnknown: true})
				if err != nil || !owned {
					t.Errorf("the retry did not take the key over: %v %v", owned, err)
				}
			}
			if left := g.f.reconcilePass(ctx); left {
				t.Fatal("pass cut short")
			}
			if got := g.redisBody(t, "k"); got != "unknown_outcome" {
				t.Fatalf("after the racing pass Redis holds %q, want the marker", got)
			}
			if tc.inFlightPass {
				g.f.reconcilePass(ctx)
				if got := g.redisBody(t, "k"); got != "in_flight" {
					t.Errorf("with the retry running, Redis holds %q; want its claim (other replicas wait for it)", got)
				}
			}
			if err := g.f.Complete(ctx, retry, &store.Response{Status: 200, Body: []byte("retry-answer")}, g.clock.Now(), time.Hour); err != nil {
				t.Fatal(err)
			}
			if left := g.f.reconcilePass(ctx); left {
				t.Fatal("pass cut short")
			}
			if got := g.redisBody(t, "k"); got != "retry-answer" {
				t.Fatalf("Redis holds %q for the key; want the retry's answer, not the marker it replaced", got)
			}
			if n := g.reconciled(reconcileConflict); n != 0 {
				t.Errorf("conflicts = %v, want 0", n)
			}
			if _, ok := g.f.heldLocally("k"); ok {
				t.Error("the answer written to Redis is still answered locally")
			}
			// The next retry, on any replica, replays it instead of running.
			rec, owned, err := g.f.Claim(ctx, "k", store.ClaimArgs{Fingerprint: fp, Now: g.clock.Now(),
				Lease: time.Minute, TTL: time.Hour, TakeOverUnknown: true})
			if err != nil || owned || rec.State != store.Completed || string(rec.Response.Body) != "retry-answer" {
				t.Fatalf("next retry: owned %v, %+v, %v; want the retry's answer replayed", owned, rec, err)
			}
		})
	}
}

// TestReconcile11OtherMarkersStillWin: the replacement is for this
// replica's own marker only. An outcome-unknown record that another
// replica's pass wrote to Redis (another owner) is Redis's truth: the
// local answer of the same request is a conflict, dropped, as the docs
// say of any record Redis holds.
func TestReconcile11OtherMarkersStillWin(t *testing.T) {
	g := st10NewRig(t, "rc11o:")
	ctx := context.Background()
	now := g.clock.Now()
	theirs := &store.Record{Key: "k", Fingerprint: [32]byte{1}, State: store.UnknownOutcome, Owner: "another-replica",
		Token: 99, StartedAt: now, LeaseUntil: now, ExpiresAt: now.Add(time.Hour)}
	if _, stored, err := g.rs.Put(ctx, theirs, now); err != nil || !stored {
		t.Fatalf("Put: %v %v", stored, err)
	}
	g.answerLocally(t, "k", "local", time.Hour)
	g.f.reconcilePass(ctx)
	if got := g.redisBody(t, "k"); got != "unknown_outcome" {
		t.Fatalf("Redis holds %q; another replica's record must not be replaced", got)
	}
	if n := g.reconciled(reconcileConflict); n != 1 {
		t.Errorf("conflicts = %v, want 1", n)
	}
}

// TestReconcile11PassOverManyChunks: a pass takes the local store a chunk
// at a time; every record, across several chunks, reaches Redis in one
// pass, and records made while the pass runs (after its place) too.
func TestReconcile11PassOverManyChunks(t *testing.T) {
	g := st10NewRig(t, "rc11c:")
	ctx := context.Background()
	n := 2*store.ScanChunk + 17
	for i := range n {
		g.answerLocally(t, fmt.Sprintf("key-%d", i), fmt.Sprintf("answer-%d", i), time.Hour)
	}
	g.remote.before[store.ScanChunk+1] = func() { // in the second chunk
		g.answerLocally(t, "late", "answer-late", time.Hour)
	}
	if left := g.f.reconcilePass(ctx); left {
		t.Fatal("pass cut short")
	}
	if got := g.reconciled(reconcilePublished); got != float64(n+1) {
		t.Fatalf("published %v, want %d", got, n+1)
	}
	for _, k := range []string{"key-0", fmt.Sprintf("key-%d", n-1), "late"} {
		if _, ok := g.f.heldLocally(k); ok {
			t.Errorf("%s still answered locally", k)
		}
	}
	if got := g.redisBody(t, "late"); got != "answer-late" {
		t.Errorf("late: Redis holds %q", got)
	}
	if l := g.f.local.Len(); l != 0 {
		t.Errorf("the local store holds %d records after the pass", l)
	}
}
