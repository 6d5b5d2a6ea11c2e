package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// checkRecordCount fails unless File.records, the count MaxRecords
// applies to, equals the records in the file. f must be settled (no write
// queued or pending).
func checkRecordCount(t *testing.T, f *File, phase int) {
	t.Helper()
	var keys []string
	if err := f.view("test", func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRecords).ForEach(func(k, _ []byte) error {
			keys = append(keys, string(k))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if n := f.records.Load(); n != int64(len(keys)) {
		t.Fatalf("phase %d: File.records = %d, the file holds %d", phase, n, len(keys))
	}
}

// owners tracks the claims the workers hold, to catch two owners of one
// key at once. Each claim is kept with the clock read after its Claim
// returned: no operation used a later time before it was decided. Two
// claims whose leases both run past the later of those reads were both
// live at both decisions (a claim whose lease has run out reads as
// outcome unknown, which these claims may take over), so the second was
// decided against a live first: two owners. (Comparing start times instead would blame a claim whose Now was
// read before another worker's sweep removed the expired record.) A worker
// drops its claim before it completes or releases it.
type owners struct {
	mu   sync.Mutex
	held map[string][]heldClaim
}

type heldClaim struct {
	rec   *Record
	after time.Time // the clock, read once Claim returned
}

func (o *owners) take(t *testing.T, rec *Record, after time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, h := range o.held[rec.Key] {
		latest := h.after
		if after.After(latest) {
			latest = after
		}
		if h.rec.LeaseUntil.After(latest) && rec.LeaseUntil.After(latest) {
			t.Errorf("two owners of %q: claims from %v and %v, both leased at %v",
				rec.Key, h.rec.StartedAt.Sub(t0), rec.StartedAt.Sub(t0), latest.Sub(t0))
		}
	}
	o.held[rec.Key] = append(o.held[rec.Key], heldClaim{rec, after})
}

func (o *owners) drop(rec *Record) {
	o.mu.Lock()
	defer o.mu.Unlock()
	hs := o.held[rec.Key]
	for i, h := range hs {
		if h.rec == rec {
			o.held[rec.Key] = append(hs[:i], hs[i+1:]...)
			return
		}
	}
}

// Claims, completions, releases and sweeps on a few keys at once, with
// records expiring under them (takeovers, sweeps racing claims): after
// each phase the count MaxRecords uses is exact, and no key ever has two
// owners whose claims overlap. A drift here is a write
// the books missed; the first one this found was a release that hid a
// takeover (TestSweep13_ReleaseCannotHideATakeover), two owners of a key.
func TestSweep13_RecordCountExactUnderRaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFile(t, path, FileOptions{Limits: Limits{MaxRecords: 1 << 20}})
	ctx := context.Background()
	var clock atomic.Int64 // seconds after t0
	now := func() time.Time { return t0.Add(time.Duration(clock.Load()) * time.Second) }
	var ops [5]atomic.Int64 // claimed, answered, completed, released, swept
	own := &owners{held: map[string][]heldClaim{}}
	for phase := range 6 {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(phase), uint64(w)))
				var held []*Record
				for range 400 {
					switch r := rng.IntN(20); {
					case r < 10:
						key := fmt.Sprintf("k%d", rng.IntN(24))
						a := ClaimArgs{Fingerprint: fp("x"), Now: now(), Lease: 5 * time.Second, TTL: 20 * time.Second, TakeOverUnknown: true}
						rec, owned, err := f.Claim(ctx, key, a)
						switch {
						case err != nil:
							t.Errorf("claim %s: %v", key, err)
							return
						case owned:
							ops[0].Add(1)
							own.take(t, rec, now())
							held = append(held, rec)
						default:
							ops[1].Add(1)
						}
					case r < 14 && len(held) > 0:
						h := held[len(held)-1]
						held = held[:len(held)-1]
						own.drop(h)
						if err := f.Complete(ctx, h, resp("r"), now(), time.Duration(1+rng.IntN(20))*time.Second); err == nil {
							ops[2].Add(1)
						} else if !errors.Is(err, ErrNotHeld) {
							t.Errorf("complete: %v", err)
						}
					case r < 17 && len(held) > 0:
						h := held[len(held)-1]
						held = held[:len(held)-1]
						own.drop(h)
						if err := f.Release(ctx, h); err == nil {
							ops[3].Add(1)
						} else if !errors.Is(err, ErrNotHeld) {
							t.Errorf("release: %v", err)
						}
					case r < 18:
						n, err := f.Sweep(now())
						if err != nil {
							t.Errorf("sweep: %v", err)
						}
						ops[4].Add(int64(n))
					default:
						clock.Add(int64(rng.IntN(4)))
					}
				}
			}()
		}
		wg.Wait()
		awaitSettled(t, f)
		checkRecordCount(t, f, phase)
	}
	for i, name := range []string{"claimed", "answered", "completed", "released", "swept"} {
		if ops[i].Load() == 0 {
			t.Errorf("no operation %s: the races were not run", name)
		}
	}
	t.Logf("claimed %d, answered %d, completed %d, released %d, swept %d", ops[0].Load(), ops[1].Load(), ops[2].Load(), ops[3].Load(), ops[4].Load())
}
