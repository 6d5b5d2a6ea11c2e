package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Audit of the unlanded-claim change (journal16_unlanded_test.go): a
// journaled claim whose bbolt write failed stands, pinned in the overlay
// and in the journal, until a later write of its key lands.

// roundStepper holds every commit round of a File until the test lets it
// run, and first runs the test's function on the leader (which may point
// the committer at a broken file for that round only).
type roundStepper struct {
	next chan func()
	done chan struct{}
	once sync.Once
}

// stepRounds makes each of f's commit rounds wait for a step. Set it
// before the first write.
func stepRounds(t *testing.T, f *File) *roundStepper {
	s := &roundStepper{next: make(chan func()), done: make(chan struct{})}
	f.commit.beforeRound = func() {
		select {
		case fn := <-s.next:
			if fn != nil {
				fn()
			}
		case <-s.done:
		}
	}
	// Runs before openTestFile's Close: every later round runs at once.
	t.Cleanup(s.run)
	return s
}

// run stops holding rounds: every later one runs at once.
func (s *roundStepper) run() { s.once.Do(func() { close(s.done) }) }

// step lets the next round run, after fn (nil: none); it returns once a
// leader took it, not once the round ended.
func (s *roundStepper) step(fn func()) { s.next <- fn }

// brokenDB returns a closed bbolt file: a commit on it fails.
func brokenDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "broken.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return db
}

// awaitLeaderWaitsForBolt yields until a journal leader has taken its
// batch and waits, in order to start the file over, for bbolt to hold
// every entry synced: it is in the wait if it holds the lead, the batch is
// taken, and a queued commit is still to move the flushed mark.
func awaitLeaderWaitsForBolt(f *File) {
	j := f.journal
	for {
		j.mu.Lock()
		waiting := j.writing && len(j.buf) == 0 && j.synced < j.next && j.flushed < j.synced && j.marking > 0
		j.mu.Unlock()
		if waiting {
			return
		}
		runtime.Gosched()
	}
}

// crashIdle stops f as a killed process would, with nothing queued.
func crashIdle(t *testing.T, f *File) {
	t.Helper()
	f.closed.Store(true)
	if err := f.journal.f.Close(); err != nil {
		t.Fatal(err)
	}
	closeQuietly(f.db)
}

// A journal leader due to start the file over checked the pin once, then
// waited for bbolt to catch up. When the write of a claim synced before it
// failed meanwhile (the pin came during the wait) and a later claim landed,
// the flushed mark passed the failed claim's entry and the leader started
// the file over: the claim's only durable trace was gone, and after a
// crash its key read as free though its call had run.
func TestJournal16b_PinStopsALeaderAlreadyWaiting(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook, BatchSize: 1})
	s := stepRounds(t, f)
	held := mustClaim(t, f, "k", args("a", t0)) // synced; its round waits for a step
	mustClaim(t, f, "b", args("b", t0))
	f.journal.mu.Lock()
	f.journal.reset = 1 // the next leader starts over once bbolt has k and b
	f.journal.mu.Unlock()
	claimed := make(chan error, 1)
	go func() {
		_, _, err := f.Claim(context.Background(), "c", args("c", t0))
		claimed <- err
	}()
	awaitLeaderWaitsForBolt(f)

	broken := brokenDB(t)
	s.step(func() { f.commit.db = broken }) // k's round fails: pinned
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed commit of k")
	}
	s.step(func() { f.commit.db = f.db }) // b lands, moving the mark past k
	if err := <-claimed; err != nil {
		t.Fatal(err)
	}
	s.step(nil) // c lands
	awaitIdle(f)
	if n := pins(f); n != 1 {
		t.Fatalf("journal pins = %d, want 1 (k)", n)
	}
	crashIdle(t, f)

	re := openTestFile(t, f.Path(), FileOptions{})
	rec, err := re.Get(context.Background(), "k", t0)
	if err != nil || rec.State != UnknownOutcome || rec.Token != held.Token {
		t.Fatalf("Get(k) after the crash = %+v, %v; want the held claim as UnknownOutcome", rec, err)
	}
}

// A claim that takes over an unlanded claim (expired) and whose own write
// fails too: the first claim's pin and count must pass to it. The pin was
// left on an entry nothing referred to any more, so the journal never
// started over again though the key's outcome landed; and the takeover,
// not counted as a new key, was counted again when its completion landed.
func TestJournal16b_FailedTakeoverOfAnUnlandedClaim(t *testing.T) {
	errs := newAsyncErrors()
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	unlandedClaim(t, f, errs, "k")
	later := t0.Add(2 * time.Hour) // args' TTL is an hour
	restore := breakCommits(t, f)
	over := mustClaim(t, f, "k", args("a", later))
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed commit of the takeover")
	}
	restore()
	if err := f.Complete(context.Background(), over, resp("done"), later, time.Hour); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the takeover's completion landed, want 0", n)
	}
	checkRecordCount(t, f, 1)
	if rec := committed(t, f, "k"); rec == nil || rec.State != Completed || rec.Token != over.Token {
		t.Fatalf("file holds %+v; want the takeover's completion", rec)
	}
}

// The release of an unlanded claim of a new key whose own write fails: the
// key is free either way (its entry goes), but the claim was counted as a
// new key and is in neither the overlay nor the file any more; the count
// kept it, one over the file for good.
func TestJournal16b_FailedReleaseOfAnUnlandedClaimIsUncounted(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	mustClaim(t, f, "a", args("a", t0))
	restore := breakCommits(t, f)
	held := mustClaim(t, f, "k", args("a", t0))
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed claim commit")
	}
	if err := f.Release(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	if err := <-errs.got; err == nil {
		t.Fatal("OnAsyncError got nil for the failed release commit")
	}
	restore()
	awaitSettled(t, f)
	if n := pins(f); n != 0 {
		t.Fatalf("journal pins = %d after the release, want 0", n)
	}
	checkRecordCount(t, f, 1)
	if again := mustClaim(t, f, "k", args("a", t0)); again.Token == held.Token {
		t.Fatal("same token twice")
	}
}

// A pinned entry stays in the overlay until a later write of its key lands;
// when none comes (the agent does not retry an answered call, or the
// holder never finishes), Sweep must remove it once it has expired, as it
// removes an expired record from the file. It never did: the entry, its
// journal pin and, for a new key, its count stayed for the life of the
// process, so a spell of failed writes left the journal growing and the
// count short of MaxRecords for good.
func TestJournal16b_SweepRemovesExpiredPinnedEntries(t *testing.T) {
	tests := []struct {
		name string
		// finish ends the held claim with the file's commits failing (or
		// not at all), after which its entry stays pinned.
		finish func(t *testing.T, f *File, errs *asyncErrors, held *Record)
	}{
		{name: "the claim", finish: func(*testing.T, *File, *asyncErrors, *Record) {}},
		{name: "its answer", finish: func(t *testing.T, f *File, errs *asyncErrors, held *Record) {
			restore := breakCommits(t, f)
			if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
				t.Fatal(err)
			}
			if err := <-errs.got; err == nil {
				t.Fatal("OnAsyncError got nil for the failed completion commit")
			}
			restore()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := newAsyncErrors()
			f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
			later := t0.Add(2 * time.Hour) // k's claim and answer expire an hour after t0
			mustClaim(t, f, "a", args("a", later))
			held := unlandedClaim(t, f, errs, "k")
			tt.finish(t, f, errs, held)

			if n, err := f.Sweep(t0); err != nil || n != 0 {
				t.Fatalf("Sweep before k expired = %d, %v; want nothing removed", n, err)
			}
			if rec, err := f.Get(context.Background(), "k", t0); err != nil || rec.Token != held.Token {
				t.Fatalf("Get(k) before it expired = %+v, %v; want it standing", rec, err)
			}
			if n, err := f.Sweep(later); err != nil || n != 1 {
				t.Fatalf("Sweep after k expired = %d, %v; want k removed", n, err)
			}
			awaitIdle(f)
			if n := f.pending.len(); n != 0 {
				t.Fatalf("%d entries left in the overlay after the sweep, want none", n)
			}
			if n := pins(f); n != 0 {
				t.Fatalf("journal pins = %d after the sweep, want 0", n)
			}
			checkRecordCount(t, f, 1)
			if err := f.Complete(context.Background(), held, resp("late"), later, time.Hour); !errors.Is(err, ErrNotHeld) {
				t.Fatalf("the holder's Complete after the sweep = %v, want ErrNotHeld", err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			re := openTestFile(t, f.Path(), FileOptions{})
			if rec, err := re.Get(context.Background(), "k", later); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Get(k) after a restart = %+v, %v; want it gone", rec, err)
			}
		})
	}
}

// A journaled claim decided against a queued release of the key's landed
// claim was counted as a new key; when the release's write failed, the
// file still held the released claim, and the new claim's record (or its
// answer, written without it when its own write failed as well) replaced
// that one: File.records was one over the file for good, or two when the
// new claim was released in turn.
func TestJournal16b_ClaimBehindAFailedReleaseIsCountedOnce(t *testing.T) {
	tests := []struct {
		name string
		// claimFails: the new claim's write fails too (the same full disk).
		claimFails bool
		// finish ends the new claim once the file's commits work again.
		finish func(f *File, held *Record) error
	}{
		{name: "claim lands, completes", finish: func(f *File, h *Record) error {
			return f.Complete(context.Background(), h, resp("done"), t0, time.Hour)
		}},
		{name: "claim lands, releases", finish: func(f *File, h *Record) error {
			return f.Release(context.Background(), h)
		}},
		{name: "claim fails, completes", claimFails: true, finish: func(f *File, h *Record) error {
			return f.Complete(context.Background(), h, resp("done"), t0, time.Hour)
		}},
		{name: "claim fails, releases", claimFails: true, finish: func(f *File, h *Record) error {
			return f.Release(context.Background(), h)
		}},
		{name: "claim fails, is taken over", claimFails: true, finish: func(f *File, h *Record) error {
			later := t0.Add(2 * time.Hour) // args' TTL is an hour
			over, owned, err := f.Claim(context.Background(), "k", args("a", later))
			if err != nil || !owned {
				return fmt.Errorf("takeover = owned %v, %v", owned, err)
			}
			return f.Complete(context.Background(), over, resp("done"), later, time.Hour)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := newAsyncErrors()
			f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook, BatchSize: 1})
			s := stepRounds(t, f)
			mustClaim(t, f, "a", args("a", t0))
			s.step(nil)
			first := mustClaim(t, f, "k", args("a", t0))
			s.step(nil)
			awaitIdle(f)
			if err := f.Release(context.Background(), first); err != nil {
				t.Fatal(err)
			}
			second := mustClaim(t, f, "k", args("a", t0)) // decided against the release
			broken := brokenDB(t)
			s.step(func() { f.commit.db = broken }) // the release's round
			if err := <-errs.got; err == nil {
				t.Fatal("OnAsyncError got nil for the failed release")
			}
			if tt.claimFails {
				s.step(nil) // the claim's round
				if err := <-errs.got; err == nil {
					t.Fatal("OnAsyncError got nil for the failed claim")
				}
			} else {
				s.step(func() { f.commit.db = f.db }) // the claim's round
			}
			s.run()
			awaitIdle(f)
			f.commit.mu.Lock()
			f.commit.db = f.db
			f.commit.mu.Unlock()
			if err := tt.finish(f, second); err != nil {
				t.Fatal(err)
			}
			awaitSettled(t, f)
			select {
			case err := <-errs.got:
				t.Fatalf("OnAsyncError after the commits worked again: %v", err)
			default:
			}
			checkRecordCount(t, f, 1)
		})
	}
}

// Claims, completions, releases, takeovers and sweeps on a few keys at
// once while a third of the commit rounds fail: once the commits work
// again and a sweep has removed everything expired, nothing is left in
// the overlay, the journal is unpinned, and the count MaxRecords applies
// to matches the file. This found the takeover case of
// TestJournal16b_ClaimBehindAFailedReleaseIsCountedOnce.
func TestJournal16b_RecordCountExactWithFailingCommits(t *testing.T) {
	for seed := range 8 {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{Limits: Limits{MaxRecords: 1 << 20}, FlushDelay: -1})
			broken := brokenDB(t)
			var failing atomic.Bool
			failing.Store(true)
			rounds := rand.New(rand.NewPCG(uint64(seed), 0))
			f.commit.beforeRound = func() { // on the leader, which alone reads db
				if failing.Load() && rounds.IntN(3) == 0 {
					f.commit.db = broken
				} else {
					f.commit.db = f.db
				}
			}
			ctx := context.Background()
			var clock atomic.Int64 // seconds after t0
			now := func() time.Time { return t0.Add(time.Duration(clock.Load()) * time.Second) }
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(seed), uint64(w)+1))
					var held []*Record
					for range 300 {
						switch r := rng.IntN(20); {
						case r < 10:
							key := fmt.Sprintf("k%d", rng.IntN(12))
							a := ClaimArgs{Fingerprint: fp("x"), Now: now(), Lease: 5 * time.Second, TTL: 20 * time.Second, TakeOverUnknown: rng.IntN(2) == 0}
							rec, owned, err := f.Claim(ctx, key, a)
							if err != nil {
								t.Errorf("claim %s: %v", key, err)
								return
							}
							if owned {
								held = append(held, rec)
							}
						case r < 14 && len(held) > 0:
							h := held[len(held)-1]
							held = held[:len(held)-1]
							ttl := time.Duration(1+rng.IntN(20)) * time.Second
							if err := f.Complete(ctx, h, resp("r"), now(), ttl); err != nil && !errors.Is(err, ErrNotHeld) {
								t.Errorf("complete: %v", err)
							}
						case r < 17 && len(held) > 0:
							h := held[len(held)-1]
							held = held[:len(held)-1]
							if err := f.Release(ctx, h); err != nil && !errors.Is(err, ErrNotHeld) {
								t.Errorf("release: %v", err)
							}
						case r < 18:
							_, _ = f.Sweep(now()) // its commit may fail
						default:
							clock.Add(int64(rng.IntN(4)))
						}
					}
				})
			}
			wg.Wait()
			failing.Store(false)
			awaitIdle(f)
			if _, err := f.Sweep(now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			awaitIdle(f)
			if n := f.pending.len(); n != 0 {
				t.Fatalf("%d entries left in the overlay after the last sweep, want none", n)
			}
			if n := pins(f); n != 0 {
				t.Fatalf("journal pins = %d after the last sweep, want 0", n)
			}
			checkRecordCount(t, f, 0)
		})
	}
}
