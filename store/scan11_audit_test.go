package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// newcode11 audit: Memory.Scan's scan order kept consistent with the
// records a Scannable store holds, and Redis.Replace racing a Complete.

// TestScan11AuditNoSlotLeakUnderChurn: tens of thousands of seeded random
// operations on a small Scannable store (claims that fill it and evict
// answers from its LRU, completes, releases, forgets, take-overs of
// expired records, sweeps, claims refused as full, walks opened, stepped
// and closed, the clock moving on) never leave a slot behind: after every
// batch the scan order holds exactly the records the store holds, and once
// everything has expired and been swept, and the walks closed, it is
// empty. A leak would grow the fail_open local store's memory forever.
func TestScan11AuditNoSlotLeakUnderChurn(t *testing.T) {
	ctx := context.Background()
	const maxRecords = 64
	m := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: maxRecords}, Scannable: true})
	t.Cleanup(func() { _ = m.Close() })
	rng := rand.New(rand.NewPCG(11, 11))
	now := time.Unix(1_700_000_000, 0)
	var held []*Record // claims this test holds (some since taken from it)
	var walks []*Scan
	full, walked := 0, 0 // batches that found the LRU full; records walks returned
	for op := range 40_000 {
		switch k := rng.IntN(100); {
		case k < 35: // a claim, of a key often already held
			key := fmt.Sprintf("k%d", rng.IntN(8*maxRecords))
			fp := byte(1 + rng.IntN(2))
			h, owned, err := m.Claim(ctx, key, ClaimArgs{Fingerprint: [32]byte{fp}, Now: now,
				Lease: time.Duration(1+rng.IntN(60)) * time.Second, TTL: time.Duration(1+rng.IntN(900)) * time.Second})
			if err != nil && !errors.Is(err, ErrFull) && !errors.Is(err, ErrMismatch) {
				t.Fatalf("op %d: claim: %v", op, err)
			}
			if owned {
				held = append(held, h)
			}
		case k < 60 && len(held) > 0: // complete (an answer: may evict one)
			i := rng.IntN(len(held))
			_ = m.Complete(ctx, held[i], &Response{Status: 200}, now, time.Duration(1+rng.IntN(900))*time.Second)
			held = append(held[:i], held[i+1:]...)
		case k < 68 && len(held) > 0:
			i := rng.IntN(len(held))
			_ = m.Release(ctx, held[i])
			held = append(held[:i], held[i+1:]...)
		case k < 74 && len(held) > 0: // forget, in flight or completed since
			m.Forget(held[rng.IntN(len(held))].Key, held[rng.IntN(len(held))].Token)
		case k < 78:
			if _, err := m.Sweep(now); err != nil {
				t.Fatal(err)
			}
		case k < 84:
			_, _ = m.Get(ctx, fmt.Sprintf("k%d", rng.IntN(8*maxRecords)), now) // reorders the LRU
		case k < 87 && len(walks) < 4:
			walks = append(walks, m.Scan())
		case k < 95 && len(walks) > 0:
			i := rng.IntN(len(walks))
			recs, more := walks[i].Next(now)
			walked += len(recs)
			if !more {
				walks = append(walks[:i], walks[i+1:]...)
			}
		case k < 97 && len(walks) > 0:
			i := rng.IntN(len(walks))
			walks[i].Close()
			walks = append(walks[:i], walks[i+1:]...)
		default:
			now = now.Add(time.Duration(rng.IntN(20)) * time.Second)
		}
		if op%97 == 0 {
			rc11Order(t, m, len(walks))
			m.mu.Lock()
			if m.done.Len() == maxRecords {
				full++ // the next answer evicts one
			}
			m.mu.Unlock()
		}
		if len(held) > 4*maxRecords {
			held = held[len(held)-maxRecords:]
		}
	}
	rc11Order(t, m, len(walks))
	if full == 0 || walked == 0 {
		t.Fatalf("the churn never filled the LRU (%d looks found it full) or walked nothing (%d records)", full, walked)
	}
	for _, w := range walks {
		w.Close()
	}
	if _, err := m.Sweep(now.Add(24 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	rc11Order(t, m, 0)
	if n := m.Len(); n != 0 {
		t.Fatalf("the store holds %d records after everything expired and was swept", n)
	}
	m.mu.Lock()
	empty := m.order.root.next == &m.order.root && len(m.slots) == 0
	m.mu.Unlock()
	if !empty {
		t.Fatal("the scan order is not empty once the store is")
	}
}

// TestScan11AuditEvictBesideTheCursor: a walk's place sits between two
// completed records when the LRU evicts the one just before it and the one
// just after it (new answers filling the store). The walk goes on from
// where it was: it returns every record it has not yet passed that is
// still held, none twice, none evicted, and the order stays whole.
func TestScan11AuditEvictBesideTheCursor(t *testing.T) {
	ctx := context.Background()
	m := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: 4}, Scannable: true})
	t.Cleanup(func() { _ = m.Close() })
	now := time.Now()
	for _, k := range []string{"a", "b", "c", "d"} {
		h := rc10Claim(t, m, k, 1, now, time.Hour)
		if err := m.Complete(ctx, h, &Response{Status: 200}, now, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	// Least recently used first: a, b; then c and d made recent.
	_, _ = m.Get(ctx, "c", now)
	_, _ = m.Get(ctx, "d", now)
	s := m.Scan()
	defer s.Close()
	// One step by hand: the cursor goes after "a" ("a" is returned).
	m.mu.Lock()
	first := s.at.next
	m.mu.Unlock()
	if first.key != "a" {
		t.Fatalf("the walk starts at %q, want a", first.key)
	}
	// Walk exactly one record, then evict a (behind the cursor) and b
	// (just after it) with two new answers.
	got := map[string]int{}
	s2 := m.Scan() // a second walk starting at a: left at the front
	defer s2.Close()
	recs := scan11Step(t, m, s)
	for _, r := range recs {
		got[r.Key]++
	}
	for _, k := range []string{"e", "f"} {
		h := rc10Claim(t, m, k, 1, now, time.Hour)
		if err := m.Complete(ctx, h, &Response{Status: 200}, now, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := m.done.Peek("a"); ok {
		t.Fatal("a was not evicted")
	}
	if _, ok := m.done.Peek("b"); ok {
		t.Fatal("b was not evicted")
	}
	rc11Order(t, m, 2)
	for more := true; more; {
		var rs []*Record
		rs, more = s.Next(now)
		for _, r := range rs {
			got[r.Key]++
		}
	}
	want := map[string]int{"a": 1, "c": 1, "d": 1, "e": 1, "f": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the walk returned %v, want %v (b evicted before its turn, nothing twice)", got, want)
	}
	rc11Order(t, m, 1)
}

// scan11Step moves s one record on, as Next would with ScanChunk 1, and
// returns what it returned.
func scan11Step(t *testing.T, m *Memory, s *Scan) []*Record {
	t.Helper()
	m.mu.Lock()
	next := s.at.next
	m.order.remove(s.at)
	s.at.prev, s.at.next = next, next.next
	next.next.prev = s.at
	next.next = s.at
	r, _ := m.done.Peek(next.key)
	m.mu.Unlock()
	if r == nil {
		t.Fatalf("the first record %q is not held", next.key)
	}
	return []*Record{r}
}

// TestScan11AuditConcurrentWalksAndChurn: walks run to their end on their
// own goroutines while others claim, complete, release, forget and sweep
// on the same store (race detector on): no walk returns a record twice,
// and afterwards the scan order matches the store's records, with no walk
// place left behind.
func TestScan11AuditConcurrentWalksAndChurn(t *testing.T) {
	ctx := context.Background()
	m := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: 300}, Scannable: true})
	t.Cleanup(func() { _ = m.Close() })
	now := time.Now()
	for i := range 250 { // walks have something to walk from the start
		h := rc10Claim(t, m, fmt.Sprintf("p%d", i), 1, now, time.Hour)
		if i%2 == 0 {
			_ = m.Complete(ctx, h, &Response{Status: 200}, now, time.Hour)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("g%d-%d", g, rng.IntN(400))
				h, owned, err := m.Claim(ctx, key, ClaimArgs{Fingerprint: [32]byte{1}, Now: now, Lease: time.Minute, TTL: time.Hour})
				if err != nil || !owned {
					if h != nil && rng.IntN(4) == 0 {
						m.Forget(h.Key, h.Token)
					}
					continue
				}
				switch rng.IntN(3) {
				case 0:
					_ = m.Complete(ctx, h, &Response{Status: 200}, now, time.Hour)
				case 1:
					_ = m.Release(ctx, h)
				}
				if i%500 == 0 {
					_, _ = m.Sweep(now)
				}
			}
		}()
	}
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 30 {
				s := m.Scan()
				seen := map[string]uint64{}
				for more := true; more; {
					var recs []*Record
					recs, more = s.Next(now)
					for _, r := range recs {
						if tok, dup := seen[r.Key]; dup && tok == r.Token {
							errs <- fmt.Errorf("record %s (token %d) returned twice", r.Key, r.Token)
							s.Close()
							return
						}
						seen[r.Key] = r.Token
					}
				}
				s.Close()
			}
			errs <- nil
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	rc11Order(t, m, 0)
}

// TestScan11AuditReplaceRacesComplete: a reconciliation pass's Replace of
// an outcome-unknown marker races the Complete of the claim the marker
// stands for (same token), over many rounds. Redis's script makes them
// exclusive: exactly one wins each round, and Redis holds the winner's
// answer, never a mix or the marker.
func TestScan11AuditReplaceRacesComplete(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	ctx := context.Background()
	now := time.Now()
	for round := range 40 {
		key := fmt.Sprintf("race-%d", round)
		marker := &Record{Key: key, Fingerprint: [32]byte{1}, State: UnknownOutcome, Owner: "local-a", Token: uint64(100 + round),
			StartedAt: now, LeaseUntil: now, ExpiresAt: now.Add(time.Hour)}
		if _, stored, err := s.Put(ctx, marker, now); err != nil || !stored {
			t.Fatalf("Put marker: %v %v", stored, err)
		}
		retry := rc10Completed(t, key, "retry", now, 30*time.Minute)
		var replaced bool
		var rerr, cerr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); replaced, rerr = s.Replace(ctx, marker, retry, now) }()
		go func() {
			defer wg.Done()
			cerr = s.Complete(ctx, marker, &Response{Status: 200, Body: []byte("original")}, now, time.Hour)
		}()
		wg.Wait()
		if rerr != nil || cerr != nil && !errors.Is(cerr, ErrNotHeld) {
			t.Fatalf("round %d: Replace %v, Complete %v", round, rerr, cerr)
		}
		completed := cerr == nil
		if replaced == completed {
			t.Fatalf("round %d: Replace won %v and Complete won %v; want exactly one", round, replaced, completed)
		}
		cur, err := s.Get(ctx, key, now)
		if err != nil || cur.State != Completed {
			t.Fatalf("round %d: Redis holds %+v, %v; want an answer", round, cur, err)
		}
		want := "original"
		if replaced {
			want = "retry"
		}
		if string(cur.Response.Body) != want {
			t.Fatalf("round %d: Redis holds %q, want the winner's %q", round, cur.Response.Body, want)
		}
	}
}
