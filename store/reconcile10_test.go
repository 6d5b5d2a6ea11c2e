package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// Unit tests of what fail_open reconciliation (proxy/reconcile.go) asks
// of the stores: Redis.Put, Memory.Records and Memory.Forget.

// rc10Claim claims key in m at now (lease 1m, ttl) and fails t otherwise.
func rc10Claim(t *testing.T, m *Memory, key string, fp byte, now time.Time, ttl time.Duration) *Record {
	t.Helper()
	rec, owned, err := m.Claim(context.Background(), key, ClaimArgs{Fingerprint: [32]byte{fp}, Now: now, Lease: time.Minute, TTL: ttl})
	if err != nil || !owned {
		t.Fatalf("claim %s: owned %v, %v", key, owned, err)
	}
	return rec
}

// rc10Completed is a record of key completed in a memory store at now,
// living ttl, answered with body.
func rc10Completed(t *testing.T, key, body string, now time.Time, ttl time.Duration) *Record {
	t.Helper()
	m := OpenMemory(MemoryOptions{})
	t.Cleanup(func() { _ = m.Close() })
	held := rc10Claim(t, m, key, 1, now, ttl)
	if err := m.Complete(context.Background(), held, &Response{Status: 200, Body: []byte(body)}, now, ttl); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Get(context.Background(), key, now)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestReconcile10PutWritesAbsentKeyKeepingRemainingTTL: a record Redis
// does not hold is written as it is (state, owner, token, response), and
// lives in Redis for what was left of its ttl at now, not its whole ttl.
func TestReconcile10PutWritesAbsentKeyKeepingRemainingTTL(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	ctx := context.Background()
	made := time.Now()
	rec := rc10Completed(t, "tenantA/k1", "answer", made, time.Hour)
	now := made.Add(40 * time.Minute) // 20 minutes left
	got, stored, err := s.Put(ctx, rec, now)
	if err != nil || !stored || got != rec {
		t.Fatalf("Put = %+v, %v, %v; want rec stored", got, stored, err)
	}
	cur, err := s.Get(ctx, "tenantA/k1", now)
	if err != nil || cur.State != Completed || cur.Token != rec.Token || cur.Owner != rec.Owner ||
		string(cur.Response.Body) != "answer" || !cur.ExpiresAt.Equal(rec.ExpiresAt) {
		t.Fatalf("Redis holds %+v, %v; want the record put", cur, err)
	}
	pttl, err := s.client.PTTL(ctx, s.keys.record("tenantA/k1")).Result()
	if err != nil || pttl <= 19*time.Minute || pttl > 20*time.Minute {
		t.Errorf("PTTL %v (%v), want the 20m left of the record's ttl", pttl, err)
	}
	// Another tenant's key is another record: nothing is answered there.
	if _, err := s.Get(ctx, "tenantB/k1", now); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of another tenant's key: %v, want ErrNotFound", err)
	}
}

// TestReconcile10PutNeverOverwrites: a live record Redis holds (another
// replica's claim or answer) stays; Put returns it, stored false.
func TestReconcile10PutNeverOverwrites(t *testing.T) {
	s := openTestRedis(t, RedisOptions{Limits: Limits{Owner: "replica-b"}})
	ctx := context.Background()
	now := time.Now()
	theirs, owned, err := s.Claim(ctx, "k", ClaimArgs{Fingerprint: [32]byte{2}, Now: now, Lease: time.Minute, TTL: time.Hour})
	if err != nil || !owned {
		t.Fatal(owned, err)
	}
	for _, rec := range []*Record{
		rc10Completed(t, "k", "mine", now, time.Hour),
		{Key: "k", Fingerprint: [32]byte{1}, State: InFlight, Owner: "local", Token: 7, StartedAt: now, LeaseUntil: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)},
	} {
		got, stored, err := s.Put(ctx, rec, now)
		if err != nil || stored || got == nil || got.Token != theirs.Token || got.State != InFlight {
			t.Fatalf("Put %v over a live claim = %+v, %v, %v; want the claim Redis holds, not stored", rec.State, got, stored, err)
		}
	}
	if err := s.Complete(ctx, theirs, &Response{Status: 200, Body: []byte("theirs")}, now, time.Hour); err != nil {
		t.Fatalf("the claim's holder could not complete it after the Puts: %v", err)
	}
	got, stored, err := s.Put(ctx, rc10Completed(t, "k", "mine", now, time.Hour), now)
	if err != nil || stored || got.State != Completed || string(got.Response.Body) != "theirs" {
		t.Fatalf("Put over an answer = %+v, %v, %v; want the answer kept", got, stored, err)
	}
}

// TestReconcile10PutExpiredAndReplaced: a record expired at now is not
// written; a record Redis still holds but that expired on the caller's
// clock counts as absent and is replaced.
func TestReconcile10PutExpiredAndReplaced(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	ctx := context.Background()
	made := time.Now()
	old := rc10Completed(t, "k", "old", made, time.Minute)
	if got, stored, err := s.Put(ctx, old, made.Add(time.Minute)); got != nil || stored || err != nil {
		t.Fatalf("Put of a record expired at now = %+v, %v, %v; want nothing written", got, stored, err)
	}
	if n, _ := s.client.Exists(ctx, s.keys.record("k")).Result(); n != 0 {
		t.Fatal("an expired record was written")
	}
	// Written while live; then, on a clock past its expiry, a new record
	// of the key takes its place (Redis's PX has not run out yet).
	if _, stored, err := s.Put(ctx, old, made); !stored || err != nil {
		t.Fatal(stored, err)
	}
	later := made.Add(2 * time.Minute)
	fresh := rc10Completed(t, "k", "fresh", later, time.Hour)
	if got, stored, err := s.Put(ctx, fresh, later); !stored || err != nil || got != fresh {
		t.Fatalf("Put over a record expired on the caller's clock = %+v, %v, %v; want stored", got, stored, err)
	}
	if cur, err := s.Get(ctx, "k", later); err != nil || string(cur.Response.Body) != "fresh" {
		t.Fatalf("Redis holds %+v, %v; want the fresh record", cur, err)
	}
}

// TestReconcile10PutInFlightIsAClaim: an in-flight record put in Redis is
// a claim with its own token: duplicates on other replicas find it in
// flight and wait, and Complete with the record finishes it for them; a
// second Put of the same record (go-redis's retry of a lost reply) reads
// as stored.
func TestReconcile10PutInFlightIsAClaim(t *testing.T) {
	rs := replicas(t, 2, RedisOptions{})
	ctx := context.Background()
	now := time.Now()
	m := OpenMemory(MemoryOptions{})
	t.Cleanup(func() { _ = m.Close() })
	held := rc10Claim(t, m, "k", 1, now, time.Hour)
	for i := range 2 {
		if got, stored, err := rs[0].Put(ctx, held, now); !stored || err != nil || got != held {
			t.Fatalf("Put #%d = %+v, %v, %v; want stored", i+1, got, stored, err)
		}
	}
	dup, owned, err := rs[1].Claim(ctx, "k", ClaimArgs{Fingerprint: [32]byte{1}, Now: now, TTL: time.Hour})
	if err != nil || owned || dup.State != InFlight {
		t.Fatalf("a duplicate on another replica: %+v owned %v %v; want the claim in flight", dup, owned, err)
	}
	waited := make(chan *Record, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, _ := rs[1].Wait(wctx, "k")
		waited <- r
	}()
	if err := rs[0].Complete(ctx, held, &Response{Status: 200, Body: []byte("done")}, now, time.Hour); err != nil {
		t.Fatalf("Complete with the record put: %v", err)
	}
	if r := <-waited; r == nil || r.State != Completed || string(r.Response.Body) != "done" {
		t.Fatalf("the waiting duplicate got %+v, want the answer", r)
	}
}

// TestReconcile10PutRefusesBadRecords: Put checks what it is given as a
// claim would, and what Redis would refuse to keep is never written.
func TestReconcile10PutRefusesBadRecords(t *testing.T) {
	s := openTestRedis(t, RedisOptions{Limits: Limits{MaxResponseBytes: 16}})
	ctx := context.Background()
	now := time.Now()
	good := func() *Record {
		return &Record{Key: "k", State: Completed, Token: 9, StartedAt: now, ExpiresAt: now.Add(time.Hour), Response: &Response{Status: 200}}
	}
	for _, tt := range []struct {
		name string
		edit func(r *Record)
		want error
	}{
		{name: "no token", edit: func(r *Record) { r.Token = 0 }, want: ErrInvalid},
		{name: "completed without a response", edit: func(r *Record) { r.Response = nil }, want: ErrInvalid},
		{name: "in flight with a response", edit: func(r *Record) { r.State = InFlight }, want: ErrInvalid},
		{name: "empty key", edit: func(r *Record) { r.Key = "" }, want: ErrInvalid},
		{name: "over max_response_bytes", edit: func(r *Record) { r.Response.Body = []byte(strings.Repeat("x", 17)) }, want: ErrTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := good()
			tt.edit(rec)
			if got, stored, err := s.Put(ctx, rec, now); !errors.Is(err, tt.want) || stored || got != nil {
				t.Fatalf("Put = %+v, %v, %v; want %v", got, stored, err, tt.want)
			}
		})
	}
	if n, _ := s.client.Exists(ctx, s.keys.record("k")).Result(); n != 0 {
		t.Error("a refused record was written")
	}
	if _, _, err := s.Put(ctx, nil, now); !errors.Is(err, ErrInvalid) {
		t.Errorf("Put(nil): %v, want ErrInvalid", err)
	}
	_ = s.Close()
	if _, _, err := s.Put(ctx, good(), now); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v, want ErrClosed", err)
	}
}

// TestReconcile10PutCorruptRecordInRedis: a value under the key that is
// not a record is reported as corrupt, not overwritten.
func TestReconcile10PutCorruptRecordInRedis(t *testing.T) {
	s := openTestRedis(t, RedisOptions{})
	ctx := context.Background()
	now := time.Now()
	if err := s.client.Set(ctx, s.keys.record("k"), "not a record", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if _, stored, err := s.Put(ctx, rc10Completed(t, "k", "mine", now, time.Hour), now); !errors.Is(err, ErrCorrupt) || stored {
		t.Fatalf("Put over a corrupt value: stored %v, %v; want ErrCorrupt", stored, err)
	}
	if v, _ := s.client.Get(ctx, s.keys.record("k")).Result(); v != "not a record" {
		t.Errorf("the value was overwritten: %q", v)
	}
}

// TestReconcile10MemoryRecords: Records lists the live records, claims in
// flight first (one past its lease as outcome unknown), then the
// completed ones least recently used first, bounded by max, and leaves
// what is recently used as it was.
func TestReconcile10MemoryRecords(t *testing.T) {
	ctx := context.Background()
	m := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: 3}})
	now := time.Now()
	complete := func(k string, at time.Time, ttl time.Duration) {
		t.Helper()
		held := rc10Claim(t, m, k, 1, at, time.Hour)
		if err := m.Complete(ctx, held, &Response{Status: 200, Body: []byte(k)}, at, ttl); err != nil {
			t.Fatal(err)
		}
	}
	complete("a", now, time.Hour)
	complete("gone", now, time.Second)
	complete("b", now, time.Hour)
	flying := rc10Claim(t, m, "f", 1, now, time.Hour)
	later := now.Add(2 * time.Minute) // past f's lease and gone's ttl
	keys := func(recs []*Record) string {
		var b strings.Builder
		for _, r := range recs {
			b.WriteString(r.Key + ":" + r.State.String() + " ")
		}
		return b.String()
	}
	all := m.Records(later, 0)
	if got, want := keys(all), "f:unknown_outcome a:completed b:completed "; got != want {
		t.Fatalf("Records = %q, want %q", got, want)
	}
	if all[0].Token != flying.Token {
		t.Errorf("the claim in flight has token %d, want %d", all[0].Token, flying.Token)
	}
	if got := keys(m.Records(later, 2)); got != "f:unknown_outcome a:completed " {
		t.Errorf("Records(max 2) = %q", got)
	}
	// Records did not make "a" recently used: a new answer evicts it, the
	// least recently used completed record (the expired one first).
	complete("c", later, time.Hour)
	complete("d", later, time.Hour)
	if _, err := m.Get(ctx, "a", later); !errors.Is(err, ErrNotFound) {
		t.Errorf("a was kept and b evicted: Records changed what is recently used")
	}
	if _, err := m.Get(ctx, "b", later); err != nil {
		t.Errorf("b: %v", err)
	}
	_ = m.Close()
	if recs := m.Records(later, 0); recs != nil {
		t.Errorf("Records after Close = %v, want nil", recs)
	}
}

// TestReconcile10MemoryForget: Forget removes the record with the token
// it names only, in flight or completed; the waiters of a claim it removes
// wake and find the key free, and its holder can no longer finish it.
func TestReconcile10MemoryForget(t *testing.T) {
	ctx := context.Background()
	m := OpenMemory(MemoryOptions{})
	t.Cleanup(func() { _ = m.Close() })
	now := time.Now()
	held := rc10Claim(t, m, "k", 1, now, time.Hour)
	if m.Forget("k", held.Token+1) {
		t.Fatal("Forget with another token removed the claim")
	}
	waited := make(chan error, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, err := m.Wait(wctx, "k")
		if err == nil && r != nil {
			err = errors.New("the waiter got a record: " + r.State.String())
		}
		waited <- err
	}()
	// The waiter is parked on the claim once Watch's channel exists; it
	// returns nil, nil whether it saw the claim or not, so no race here.
	if !m.Forget("k", held.Token) {
		t.Fatal("Forget of the claim in flight reported nothing removed")
	}
	if err := <-waited; err != nil {
		t.Fatalf("the waiter: %v; want it woken with the key free", err)
	}
	if err := m.Complete(ctx, held, &Response{Status: 200}, now, time.Hour); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Complete of a forgotten claim: %v, want ErrNotHeld", err)
	}
	if err := m.Release(ctx, held); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Release of a forgotten claim: %v, want ErrNotHeld", err)
	}
	// A later claim of the key, completed, is not removed by the first
	// claim's token (a record replaced while reconciliation looked at it).
	again := rc10Claim(t, m, "k", 1, now, time.Hour)
	if err := m.Complete(ctx, again, &Response{Status: 200, Body: []byte("2")}, now, time.Hour); err != nil {
		t.Fatal(err)
	}
	if m.Forget("k", held.Token) {
		t.Fatal("Forget with the old token removed the new record")
	}
	if r, err := m.Get(ctx, "k", now); err != nil || string(r.Response.Body) != "2" {
		t.Fatalf("the new record: %+v, %v", r, err)
	}
	if !m.Forget("k", again.Token) {
		t.Fatal("Forget of the completed record reported nothing removed")
	}
	if _, err := m.Get(ctx, "k", now); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Forget: %v, want ErrNotFound", err)
	}
}
