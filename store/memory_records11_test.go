package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Unit tests of Memory.Scan (the chunked walk fail_open reconciliation
// takes over the local store) and Redis.Replace.

// rc11Order checks that m's scan order holds exactly the records m holds,
// and no walk's place (cursor) but those of the walks listed in open.
func rc11Order(t *testing.T, m *Memory, open int) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	records, cursors := 0, 0
	for s := m.order.root.next; s != &m.order.root; s = s.next {
		if s.next.prev != s {
			t.Fatalf("the scan order is broken after %q", s.key)
		}
		if s.cursor {
			cursors++
			continue
		}
		records++
		r := m.inflight[s.key]
		if r == nil {
			r, _ = m.done.Peek(s.key)
		}
		if r == nil || r.Token != s.token || m.slots[s.key] != s {
			t.Fatalf("slot %q (token %d) names no record the store holds", s.key, s.token)
		}
	}
	if held := len(m.inflight) + m.done.Len(); records != held || len(m.slots) != held {
		t.Fatalf("scan order holds %d records (%d slots), the store %d", records, len(m.slots), held)
	}
	if cursors != open {
		t.Fatalf("scan order holds %d walks' places, want %d", cursors, open)
	}
}

// TestReconcile11ScanChunksUnderChurn: a walk over thousands of records
// looks at no more than ScanChunk of them per lock hold (Scan.steps, the
// bound on what a request waits behind), while the store changes between
// chunks: records added, completed, released, forgotten, taken over,
// evicted, and made recently used (which reorders the LRU). No record is
// returned twice, and every record held from the start of the walk to its
// end is returned.
func TestReconcile11ScanChunksUnderChurn(t *testing.T) {
	ctx := context.Background()
	const n = 3000
	m := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: n}, Scannable: true})
	t.Cleanup(func() { _ = m.Close() })
	now := time.Now()
	held := make([]*Record, 0, n)
	for i := range n {
		h := rc10Claim(t, m, fmt.Sprintf("k%05d", i), 1, now, time.Hour)
		if i%3 != 0 { // one in three stays in flight
			if err := m.Complete(ctx, h, &Response{Status: 200}, now, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		held = append(held, h)
	}
	// Records the churn below leaves alone, by key: held for the whole walk.
	stable := map[string]uint64{}
	for i, h := range held {
		if i%7 != 0 && i%11 != 0 {
			stable[h.Key] = h.Token
		}
	}
	other := m.Scan() // a second walk, left open: its place is stepped over
	s := m.Scan()
	seen := map[string]uint64{} // key → token returned
	for chunk, more := 0, true; more; chunk++ {
		var recs []*Record
		recs, more = s.Next(now)
		if s.steps > ScanChunk || len(recs) > ScanChunk {
			t.Fatalf("chunk %d looked at %d slots and returned %d records with the lock held; the bound is %d",
				chunk, s.steps, len(recs), ScanChunk)
		}
		for _, r := range recs {
			if tok, dup := seen[r.Key]; dup && tok == r.Token {
				t.Fatalf("record %s (token %d) returned twice in one walk", r.Key, r.Token)
			}
			seen[r.Key] = r.Token
		}
		// Churn between chunks, over the whole key range (before and after
		// the walk's place).
		for j := chunk; j < n; j += 97 {
			h := held[j]
			switch {
			case j%7 == 0 && j%3 == 0: // in flight: released, then claimed anew
				_ = m.Release(ctx, h)
				if h2, owned, err := m.Claim(ctx, h.Key, ClaimArgs{Fingerprint: [32]byte{1}, Now: now, Lease: time.Minute, TTL: time.Hour}); err == nil && owned {
					held[j] = h2
				}
			case j%7 == 0: // completed: forgotten
				m.Forget(h.Key, h.Token)
			case j%11 == 0 && j%3 == 0: // in flight: completed
				_ = m.Complete(ctx, h, &Response{Status: 201}, now, time.Hour)
			case j%11 == 0: // completed: taken over by a claim after its expiry
				if h2, owned, err := m.Claim(ctx, h.Key, ClaimArgs{Fingerprint: [32]byte{1}, Now: now.Add(2 * time.Hour), TTL: 3 * time.Hour}); err == nil && owned {
					held[j] = h2
				}
			default: // made recently used
				_, _ = m.Get(ctx, h.Key, now)
			}
		}
		// And new records, some evicting the least recently used answer.
		for j := range 5 {
			h := rc10Claim(t, m, fmt.Sprintf("new-%d-%d", chunk, j), 1, now, time.Hour)
			if j%2 == 0 {
				_ = m.Complete(ctx, h, &Response{Status: 200}, now, time.Hour)
			}
		}
		rc11Order(t, m, 2-boolInt(!more))
	}
	for k, tok := range stable {
		if _, still := m.inflight[k]; !still {
			if r, ok := m.done.Peek(k); !ok || r.Token != tok {
				continue // evicted by the new answers: not held for the whole walk
			}
		}
		if seen[k] != tok {
			t.Fatalf("record %s (token %d), held for the whole walk, was not returned (got token %d)", k, tok, seen[k])
		}
	}
	if len(seen) < len(stable)/2 {
		t.Fatalf("the walk returned %d records", len(seen))
	}
	if recs, more := s.Next(now); recs != nil || more {
		t.Fatalf("Next after the end = %d records, %v", len(recs), more)
	}
	other.Close()
	other.Close()
	rc11Order(t, m, 0)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestReconcile11ScanSkipsExpiredWithinTheBound: a run of expired records
// longer than a chunk costs Next no more than ScanChunk steps per call (it
// returns none, with more still true), and the walk ends on the live
// record after them, seen as outcome unknown past its lease. The sweeper
// removing records between chunks, the walk's own place included in its
// neighbours, does not break it; nor does the store closing.
func TestReconcile11ScanSkipsExpiredWithinTheBound(t *testing.T) {
	ctx := context.Background()
	m := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: 2000}, Scannable: true})
	t.Cleanup(func() { _ = m.Close() })
	now := time.Now()
	for i := range 3 * ScanChunk {
		h := rc10Claim(t, m, fmt.Sprintf("old%d", i), 1, now, time.Second)
		_ = m.Complete(ctx, h, &Response{Status: 200}, now, time.Second)
	}
	live := rc10Claim(t, m, "live", 1, now, time.Hour)
	later := now.Add(2 * time.Minute) // past the old ones' ttl and live's lease
	s := m.Scan()
	recs, more := s.Next(later)
	if len(recs) != 0 || !more || s.steps != ScanChunk {
		t.Fatalf("first Next: %d records, more %v, %d steps; want none, more, %d steps", len(recs), more, s.steps, ScanChunk)
	}
	if _, err := m.Sweep(later); err != nil {
		t.Fatal(err)
	}
	recs, more = s.Next(later)
	if len(recs) != 1 || more || recs[0].Token != live.Token || recs[0].State != UnknownOutcome {
		t.Fatalf("Next after the sweep: %v, more %v; want live as unknown_outcome, the end", recs, more)
	}
	rc11Order(t, m, 0)

	s = m.Scan()
	_ = m.Close()
	if recs, more := s.Next(later); recs != nil || more {
		t.Fatalf("Next on a closed store = %v, %v", recs, more)
	}
	if recs, more := m.Scan().Next(later); recs != nil || more {
		t.Fatalf("a walk of a closed store = %v, %v", recs, more)
	}
}

// TestReconcile11RedisReplace: Replace writes a record in place of one
// that is not completed (an outcome-unknown marker Put wrote, a claim in
// flight) with its remaining ttl, and does nothing when Redis no longer
// holds that record (completed, or another one), or for records it must
// refuse.
func TestReconcile11RedisReplace(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	ctx := context.Background()
	now := time.Now()
	marker := &Record{Key: "k", Fingerprint: [32]byte{1}, State: UnknownOutcome, Owner: "local-a", Token: 7,
		StartedAt: now, LeaseUntil: now, ExpiresAt: now.Add(time.Hour)}
	if _, stored, err := s.Put(ctx, marker, now); err != nil || !stored {
		t.Fatalf("Put marker: %v %v", stored, err)
	}
	answer := rc10Completed(t, "k", "retry", now, 30*time.Minute)
	if ok, err := s.Replace(ctx, &Record{Key: "k", Token: 8}, answer, now); ok || err != nil {
		t.Fatalf("Replace of another token = %v, %v; want false", ok, err)
	}
	if ok, err := s.Replace(ctx, marker, answer, now); !ok || err != nil {
		t.Fatalf("Replace = %v, %v; want true", ok, err)
	}
	cur, err := s.Get(ctx, "k", now)
	if err != nil || cur.State != Completed || cur.Token != answer.Token || string(cur.Response.Body) != "retry" {
		t.Fatalf("Redis holds %+v, %v; want the answer", cur, err)
	}
	if pttl, err := s.client.PTTL(ctx, s.keys.record("k")).Result(); err != nil || pttl > 30*time.Minute || pttl < 29*time.Minute {
		t.Fatalf("PTTL = %v, %v; want the answer's 30m", pttl, err)
	}
	// A completed record is never replaced.
	if ok, err := s.Replace(ctx, answer, rc10Completed(t, "k", "other", now, time.Hour), now); ok || err != nil {
		t.Fatalf("Replace of a completed record = %v, %v; want false", ok, err)
	}
	for name, c := range map[string]struct{ old, rec *Record }{
		"nil old":     {nil, answer},
		"another key": {&Record{Key: "j", Token: 7}, answer},
		"no token":    {marker, &Record{Key: "k", State: Completed, Response: &Response{}}},
	} {
		if ok, err := s.Replace(ctx, c.old, c.rec, now); ok || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Replace = %v, %v; want ErrInvalid", name, ok, err)
		}
	}
}

// TestMemoryNotScannableWalksNothing: a store opened without Scannable
// (the memory backend's) keeps no scan order, so its claims pay nothing
// for it, and a walk of it returns nothing.
func TestMemoryNotScannableWalksNothing(t *testing.T) {
	m := OpenMemory(MemoryOptions{})
	defer m.Close()
	ctx := context.Background()
	now := time.Now()
	for i := range 3 {
		if _, _, err := m.Claim(ctx, fmt.Sprintf("k%d", i), ClaimArgs{Fingerprint: [32]byte{1}, Lease: time.Minute, TTL: time.Hour, Now: now}); err != nil {
			t.Fatal(err)
		}
	}
	if m.slots != nil || m.order.root.next != &m.order.root {
		t.Fatalf("a store that is not Scannable kept a scan order")
	}
	if recs, more := m.Scan().Next(now); recs != nil || more {
		t.Fatalf("a walk of a store that is not Scannable = %v, %v", recs, more)
	}
}
