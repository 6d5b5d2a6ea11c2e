package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// The tests in this file run against every backend: they pin the Store
// contract.

func TestConcurrentClaimsOneOwnerAllGetResponse(t *testing.T) {
	const n = 50
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		want := resp(`{"id":"x"}`)
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			owners   int
			attached = make(chan struct{}, n)
			got      = make([]*Record, n)
			errs     = make([]error, n)
		)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				rec, owned, err := s.Claim(ctx, "tenant/k", args("same", t0))
				if err != nil {
					errs[i] = err
					return
				}
				if owned {
					mu.Lock()
					owners++
					mu.Unlock()
					for range n - 1 {
						<-attached
					}
					awaitWaiters(t, s, "tenant/k", n-1)
					errs[i] = s.Complete(ctx, rec, want, t0.Add(time.Second), time.Hour)
					got[i] = &Record{State: Completed, Response: want}
					return
				}
				if rec.State != InFlight {
					errs[i] = fmt.Errorf("duplicate saw %v, want in_flight", rec.State)
				}
				attached <- struct{}{}
				got[i], err = s.Wait(ctx, "tenant/k")
				if err != nil {
					errs[i] = err
				}
			}()
		}
		close(start)
		wg.Wait()
		if owners != 1 {
			t.Fatalf("owners = %d, want 1", owners)
		}
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("goroutine %d: %v", i, errs[i])
			}
			r := got[i]
			if r == nil || r.State != Completed || r.Response.Status != 200 || !bytes.Equal(r.Response.Body, want.Body) || !bytes.Equal(r.Response.Header, want.Header) {
				t.Fatalf("goroutine %d got %+v, want the completed response", i, r)
			}
		}
	})
}

func TestReleaseLetsWaiterClaim(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		held := mustClaim(t, s, "k", args("b", t0))
		if rec, owned, err := s.Claim(ctx, "k", args("b", t0)); err != nil || owned || rec.State != InFlight {
			t.Fatalf("duplicate Claim = %+v, %v, %v; want in flight", rec, owned, err)
		}
		done := startWait(t, ctx, s, "k")
		if err := s.Release(ctx, held); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if r := <-done; r.err != nil || r.rec != nil {
			t.Fatalf("Wait after Release = %+v, %v; want nil, nil", r.rec, r.err)
		}
		again := mustClaim(t, s, "k", args("b", t0.Add(time.Second)))
		if again.Token == held.Token {
			t.Fatal("new claim reused the released token")
		}
		if err := s.Release(ctx, held); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("second Release of the old claim = %v, want ErrNotHeld", err)
		}
		if err := s.Complete(ctx, held, resp("x"), t0, 0); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Complete of the old claim = %v, want ErrNotHeld", err)
		}
	})
}

func TestClaimAnswers(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(t *testing.T, s Store) // acts at t0 on key "k" with body "a"
		body      string
		at        time.Duration
		takeOver  bool
		wantOwned bool
		wantState State
		wantErr   error
	}{
		{name: "absent key is claimed", setup: func(*testing.T, Store) {}, body: "a", wantOwned: true, wantState: InFlight},
		{name: "in flight, same request", setup: claimOnly, body: "a", wantState: InFlight},
		{name: "in flight, other request is a mismatch", setup: claimOnly, body: "b", wantState: InFlight, wantErr: ErrMismatch},
		{name: "completed, same request replays", setup: claimComplete, body: "a", at: time.Minute, wantState: Completed},
		{name: "completed, other request is a mismatch", setup: claimComplete, body: "b", at: time.Minute, wantState: Completed, wantErr: ErrMismatch},
		{name: "completed and expired is free again", setup: claimComplete, body: "b", at: 2 * time.Hour, wantOwned: true, wantState: InFlight},
		{name: "lease expired reads unknown outcome", setup: claimOnly, body: "a", at: time.Minute, wantState: UnknownOutcome},
		{name: "lease expired, mismatch still reported", setup: claimOnly, body: "b", at: time.Minute, wantState: UnknownOutcome, wantErr: ErrMismatch},
		{name: "unknown outcome taken over by an idempotent route", setup: claimOnly, body: "a", at: time.Minute, takeOver: true, wantOwned: true, wantState: InFlight},
		{name: "take-over does not apply to a live claim", setup: claimOnly, body: "a", at: time.Second, takeOver: true, wantState: InFlight},
		{name: "released key is free", setup: claimRelease, body: "b", wantOwned: true, wantState: InFlight},
	}
	for _, be := range backends() {
		for _, tt := range tests {
			t.Run(be.name+"/"+tt.name, func(t *testing.T) {
				s := be.open(t, Limits{})
				tt.setup(t, s)
				a := args(tt.body, t0.Add(tt.at))
				a.TakeOverUnknown = tt.takeOver
				rec, owned, err := s.Claim(context.Background(), "k", a)
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if owned != tt.wantOwned {
					t.Fatalf("owned = %v, want %v", owned, tt.wantOwned)
				}
				if rec == nil || rec.State != tt.wantState {
					t.Fatalf("rec = %+v, want state %v", rec, tt.wantState)
				}
				if rec.Key != "k" {
					t.Fatalf("rec.Key = %q", rec.Key)
				}
				if !owned && !rec.StartedAt.Equal(t0) {
					t.Fatalf("StartedAt = %v, want the original request's %v", rec.StartedAt, t0)
				}
			})
		}
	}
}

func claimOnly(t *testing.T, s Store) { mustClaim(t, s, "k", args("a", t0)) }

func claimComplete(t *testing.T, s Store) {
	held := mustClaim(t, s, "k", args("a", t0))
	if err := s.Complete(context.Background(), held, resp("ok"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
}

func claimRelease(t *testing.T, s Store) {
	held := mustClaim(t, s, "k", args("a", t0))
	if err := s.Release(context.Background(), held); err != nil {
		t.Fatal(err)
	}
}

func TestTTLExpiryAndSweep(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		held := mustClaim(t, s, "done", args("a", t0))
		if err := s.Complete(ctx, held, resp("r"), t0.Add(time.Second), 10*time.Minute); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "stuck", ClaimArgs{Fingerprint: fp("a"), Now: t0, Lease: time.Minute, TTL: 30 * time.Minute})

		tests := []struct {
			name      string
			key       string
			at        time.Time
			wantState State // 0: not found
		}{
			{"completed before ttl", "done", t0.Add(10 * time.Minute), Completed},
			{"completed at ttl", "done", t0.Add(10*time.Minute + time.Second), 0},
			{"stuck within lease", "stuck", t0.Add(59 * time.Second), InFlight},
			{"stuck after lease", "stuck", t0.Add(time.Minute), UnknownOutcome},
			{"stuck after ttl", "stuck", t0.Add(30 * time.Minute), 0},
		}
		for _, tt := range tests {
			rec, err := s.Get(ctx, tt.key, tt.at)
			switch {
			case tt.wantState == 0 && !errors.Is(err, ErrNotFound):
				t.Errorf("%s: Get = %+v, %v; want ErrNotFound", tt.name, rec, err)
			case tt.wantState != 0 && (err != nil || rec.State != tt.wantState):
				t.Errorf("%s: Get = %+v, %v; want %v", tt.name, rec, err, tt.wantState)
			}
		}
		if n, err := s.Sweep(t0.Add(10 * time.Minute)); err != nil || n != 0 {
			t.Fatalf("early Sweep = %d, %v; want 0", n, err)
		}
		if n, err := s.Sweep(t0.Add(time.Hour)); err != nil || n != 2 {
			t.Fatalf("Sweep = %d, %v; want 2", n, err)
		}
		if _, err := s.Get(ctx, "done", t0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("swept record still there: %v", err)
		}
		// The swept in-flight claim is no longer held.
		if err := s.Release(ctx, &Record{Key: "stuck", Token: 1}); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Release after sweep = %v", err)
		}
	})
}

func TestLeaseTakeOverFencesOldHolder(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		old := mustClaim(t, s, "k", args("a", t0))
		a := args("a", t0.Add(2*time.Minute))
		a.TakeOverUnknown = true
		fresh := mustClaim(t, s, "k", a)
		if err := s.Complete(ctx, old, resp("old"), t0.Add(3*time.Minute), time.Hour); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("old holder Complete = %v, want ErrNotHeld", err)
		}
		if err := s.Complete(ctx, fresh, resp("new"), t0.Add(3*time.Minute), time.Hour); err != nil {
			t.Fatal(err)
		}
		rec, err := s.Get(ctx, "k", t0.Add(4*time.Minute))
		if err != nil || string(rec.Response.Body) != "new" {
			t.Fatalf("Get = %+v, %v; want the new response", rec, err)
		}
		if err := s.Complete(ctx, fresh, resp("again"), t0.Add(5*time.Minute), time.Hour); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("second Complete = %v, want ErrNotHeld", err)
		}
	})
}

func TestLateCompleteAfterLeaseStillStores(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		held := mustClaim(t, s, "k", args("a", t0))
		if err := s.Complete(context.Background(), held, resp("late"), t0.Add(5*time.Minute), time.Hour); err != nil {
			t.Fatalf("Complete after lease, not taken over: %v", err)
		}
		rec, err := s.Get(context.Background(), "k", t0.Add(6*time.Minute))
		if err != nil || rec.State != Completed {
			t.Fatalf("Get = %+v, %v", rec, err)
		}
	})
}

func TestCompleteTooLargeKeepsClaim(t *testing.T) {
	forEachBackend(t, Limits{MaxResponseBytes: 16}, func(t *testing.T, s Store) {
		ctx := context.Background()
		held := mustClaim(t, s, "k", args("a", t0))
		big := &Response{Status: 200, Header: []byte("A: b\r\n"), Body: []byte("0123456789!")}
		if err := s.Complete(ctx, held, big, t0, time.Hour); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Complete(17 bytes) = %v, want ErrTooLarge", err)
		}
		if rec, err := s.Get(ctx, "k", t0); err != nil || rec.State != InFlight {
			t.Fatalf("after ErrTooLarge Get = %+v, %v; want still in flight", rec, err)
		}
		fits := &Response{Status: 200, Header: []byte("A: b\r\n"), Body: []byte("0123456789")}
		if err := s.Complete(ctx, held, fits, t0, time.Hour); err != nil {
			t.Fatalf("Complete(16 bytes) = %v", err)
		}
	})
}

func TestCompleteCopiesResponse(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		held := mustClaim(t, s, "k", args("a", t0))
		r := resp("original")
		if err := s.Complete(ctx, held, r, t0, time.Hour); err != nil {
			t.Fatal(err)
		}
		copy(r.Body, "XXXXXXXX")
		copy(r.Header, "XXXXXXXX")
		rec, err := s.Get(ctx, "k", t0)
		if err != nil || string(rec.Response.Body) != "original" || !bytes.HasPrefix(rec.Response.Header, []byte("Content-Type")) {
			t.Fatalf("stored response changed with the caller's buffer: %+v, %v", rec, err)
		}
	})
}

func TestWaitEnds(t *testing.T) {
	tests := []struct {
		name    string
		end     func(s Store, cancel context.CancelFunc, held *Record)
		wantErr error
		wantRec bool
	}{
		{name: "context cancelled", end: func(_ Store, cancel context.CancelFunc, _ *Record) { cancel() }, wantErr: context.Canceled},
		{name: "store closed", end: func(s Store, _ context.CancelFunc, _ *Record) { _ = s.Close() }, wantErr: ErrClosed},
		{name: "record swept", end: func(s Store, _ context.CancelFunc, _ *Record) { _, _ = s.Sweep(t0.Add(48 * time.Hour)) }},
		{name: "completed", end: func(s Store, _ context.CancelFunc, h *Record) {
			_ = s.Complete(context.Background(), h, resp("x"), t0, time.Hour)
		}, wantRec: true},
	}
	for _, be := range backends() {
		for _, tt := range tests {
			t.Run(be.name+"/"+tt.name, func(t *testing.T) {
				s := be.open(t, Limits{})
				held := mustClaim(t, s, "k", args("a", t0))
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				done := startWait(t, ctx, s, "k")
				tt.end(s, cancel, held)
				r := <-done
				if !errors.Is(r.err, tt.wantErr) || (tt.wantErr == nil) != (r.err == nil) {
					t.Fatalf("Wait err = %v, want %v", r.err, tt.wantErr)
				}
				if (r.rec != nil) != tt.wantRec {
					t.Fatalf("Wait rec = %+v, want rec: %v", r.rec, tt.wantRec)
				}
			})
		}
	}
}

func TestWaitOnSettledKeyReturnsAtOnce(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		if rec, err := s.Wait(ctx, "absent"); rec != nil || err != nil {
			t.Fatalf("Wait(absent) = %+v, %v", rec, err)
		}
		claimComplete(t, s)
		if rec, err := s.Wait(ctx, "k"); err != nil || rec.State != Completed {
			t.Fatalf("Wait(completed) = %+v, %v", rec, err)
		}
	})
}

func TestInvalidArguments(t *testing.T) {
	long := string(make([]byte, MaxKeyBytes+1))
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx := context.Background()
		tests := []struct {
			name string
			call func() error
		}{
			{"empty key", func() error { _, _, err := s.Claim(ctx, "", args("a", t0)); return err }},
			{"long key", func() error { _, _, err := s.Claim(ctx, long, args("a", t0)); return err }},
			{"complete nil record", func() error { return s.Complete(ctx, nil, resp("a"), t0, 0) }},
			{"complete nil response", func() error { return s.Complete(ctx, &Record{Key: "k", Token: 1}, nil, t0, 0) }},
			{"release without token", func() error { return s.Release(ctx, &Record{Key: "k"}) }},
			{"nil job", func() error { return s.PutJob(ctx, nil) }},
			{"job without id", func() error { return s.PutJob(ctx, &Job{State: JobQueued}) }},
			{"job without state", func() error { return s.PutJob(ctx, &Job{ID: "j"}) }},
			{"lease without job id", func() error { _, err := s.LeaseJob(ctx, "", t0, 0); return err }},
		}
		for _, tt := range tests {
			if err := tt.call(); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: err = %v, want ErrInvalid", tt.name, err)
			}
		}
	})
}

func TestClaimCancelledContext(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, err := s.Claim(ctx, "k", args("a", t0)); !errors.Is(err, context.Canceled) {
			t.Fatalf("Claim = %v, want context.Canceled", err)
		}
	})
}

func TestClosedStore(t *testing.T) {
	forEachBackend(t, Limits{}, func(t *testing.T, s Store) {
		held := mustClaim(t, s, "k", args("a", t0))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close = %v", err)
		}
		ctx := context.Background()
		calls := map[string]func() error{
			"Claim":     func() error { _, _, err := s.Claim(ctx, "x", args("a", t0)); return err },
			"Complete":  func() error { return s.Complete(ctx, held, resp("a"), t0, 0) },
			"Release":   func() error { return s.Release(ctx, held) },
			"Wait":      func() error { _, err := s.Wait(ctx, "k"); return err },
			"Get":       func() error { _, err := s.Get(ctx, "k", t0); return err },
			"PutJob":    func() error { return s.PutJob(ctx, &Job{ID: "j", State: JobQueued}) },
			"GetJob":    func() error { _, err := s.GetJob(ctx, "j"); return err },
			"ListJobs":  func() error { _, err := s.ListJobs(ctx); return err },
			"DeleteJob": func() error { return s.DeleteJob(ctx, "j") },
			"LeaseJob":  func() error { _, err := s.LeaseJob(ctx, "j", t0, 0); return err },
			"Sweep":     func() error { _, err := s.Sweep(t0); return err },
		}
		for name, call := range calls {
			if err := call(); !errors.Is(err, ErrClosed) {
				t.Errorf("%s after Close = %v, want ErrClosed", name, err)
			}
		}
	})
}
