package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// crash stops f as a killed process would: queued bbolt writes are never
// committed and nothing is flushed or truncated; the files are just
// closed. The commit gate, held, keeps the queued writes from landing.
func crash(t *testing.T, f *File, g *commitGate) {
	t.Helper()
	f.closed.Store(true)
	if err := f.journal.f.Close(); err != nil {
		t.Fatal(err)
	}
	closeQuietly(f.db)
	g.opened.Do(func() { close(g.open) }) // the held round now fails on the closed file
	<-g.held
}

// A claim is durable once Claim returns, though bbolt has not committed it:
// after a crash the journal brings it back, as UnknownOutcome.
func TestJournalClaimSurvivesACrash(t *testing.T) {
	f, g := openGated(t, FileOptions{})
	g.hold()
	held := mustClaim(t, f, "k", args("a", t0))
	if rec := committed(t, f, "k"); rec != nil {
		t.Fatalf("bbolt holds %+v while its commit is held; the test needs it queued", rec)
	}
	crash(t, f, g)

	re := openTestFile(t, f.Path(), FileOptions{})
	if got := re.Recovery(); got.Records != 1 || got.UnknownOutcome != 1 {
		t.Fatalf("Recovery = %+v, want the journaled claim as 1 unknown outcome", got)
	}
	rec, owned, err := re.Claim(context.Background(), "k", args("a", t0))
	if err != nil || owned || rec.State != UnknownOutcome || rec.Token != held.Token {
		t.Fatalf("Claim after the crash = %+v, owned=%v, %v; want the old claim as UnknownOutcome", rec, owned, err)
	}
	if _, entries, err := openJournalEntries(journalPath(f.Path())); err != nil || len(entries) != 0 {
		t.Fatalf("journal after recovery holds %d entries (%v); want it started over", len(entries), err)
	}
}

// A release in the journal frees the key after a crash, as it did before.
func TestJournalReleaseSurvivesACrash(t *testing.T) {
	f, g := openGated(t, FileOptions{})
	g.hold()
	held := mustClaim(t, f, "k", args("a", t0))
	if err := f.Release(context.Background(), held); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, f, "other", args("b", t0)) // its sync carries the release's entry
	crash(t, f, g)

	re := openTestFile(t, f.Path(), FileOptions{})
	if got := re.Recovery(); got.Records != 1 || got.UnknownOutcome != 1 {
		t.Fatalf("Recovery = %+v, want only the other claim", got)
	}
	if _, owned, err := re.Claim(context.Background(), "k", args("a", t0)); err != nil || !owned {
		t.Fatalf("Claim of the released key = owned %v, %v; want it free", owned, err)
	}
}

// What bbolt committed wins over the journal's older entry of the same
// claim: a completion that landed is not turned back into a claim.
func TestJournalKeepsCommittedCompletions(t *testing.T) {
	f, g := openGated(t, FileOptions{})
	held := mustClaim(t, f, "k", args("a", t0))
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	g.hold()
	crash(t, f, g) // the journal still has the claim: it started over only on open

	re := openTestFile(t, f.Path(), FileOptions{})
	rec, err := re.Get(context.Background(), "k", t0)
	if err != nil || rec.State != Completed || string(rec.Response.Body) != "done" {
		t.Fatalf("Get after the crash = %+v, %v; want the completion", rec, err)
	}
	if got := re.Recovery(); got.UnknownOutcome != 0 {
		t.Fatalf("Recovery = %+v, want no unknown outcome", got)
	}
}

// Replay stops at a torn or damaged entry: what follows was never
// acknowledged.
func TestJournalReplayStopsAtATornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	f, g := openGated(t, FileOptions{})
	_ = path
	g.hold()
	mustClaim(t, f, "a", args("a", t0))
	mustClaim(t, f, "b", args("b", t0))
	jpath := journalPath(f.Path())
	crash(t, f, g)

	data, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	_, entries, _ := readJournal(bytes.NewReader(data))
	if len(entries) != 2 {
		t.Fatalf("%d journal entries, want 2", len(entries))
	}
	// Damage the second entry's last byte.
	end := journalHeaderSize
	for range 2 {
		end += 8 + int(binary.BigEndian.Uint32(data[end:]))
	}
	data[end-1] ^= 0xff
	if err := os.WriteFile(jpath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	re := openTestFile(t, f.Path(), FileOptions{})
	if got := re.Recovery(); got.Records != 1 || got.UnknownOutcome != 1 {
		t.Fatalf("Recovery = %+v, want only the intact first claim", got)
	}
	if _, owned, err := re.Claim(context.Background(), "b", args("b", t0)); err != nil || !owned {
		t.Fatalf("Claim of the torn entry's key = owned %v, %v; want it free", owned, err)
	}
}

// The journal starts over once bbolt holds everything in it, so it stays
// small however many claims pass.
func TestJournalStartsOverWhenFlushed(t *testing.T) {
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{})
	f.journal.reset = 1 // start over at every chance
	ctx := context.Background()
	for i := range 50 {
		key := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		held := mustClaim(t, f, key, args("x", t0))
		if err := f.Complete(ctx, held, resp("r"), t0, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	f.journal.mu.Lock()
	epoch, off := f.journal.epoch, f.journal.off
	f.journal.mu.Unlock()
	if epoch < 10 || off > 4<<10 {
		t.Fatalf("journal at epoch %d, offset %d after 50 claims; want it started over many times", epoch, off)
	}
}

// Concurrent claims of one key: exactly one owns it.
func TestJournalConcurrentClaimsOneOwner(t *testing.T) {
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	owners := 0
	for range 16 {
		wg.Go(func() {
			_, owned, err := f.Claim(context.Background(), "k", args("a", t0))
			if err != nil {
				t.Error(err)
			}
			if owned {
				mu.Lock()
				owners++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if owners != 1 {
		t.Fatalf("%d owners, want 1", owners)
	}
}

// When the journal cannot be written, Claim fails and the key is not left
// in flight.
func TestJournalWriteFailureFailsTheClaim(t *testing.T) {
	errs := newAsyncErrors()
	f := openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{OnAsyncError: errs.hook})
	f.journal.f.Close() // every write now fails
	_, owned, err := f.Claim(context.Background(), "k", args("a", t0))
	if err == nil || owned {
		t.Fatalf("Claim with a broken journal = owned %v, %v; want an error", owned, err)
	}
	if !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Claim error %v does not carry the write failure", err)
	}
	if _, err := f.Get(context.Background(), "k", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after the failed claim = %v, want ErrNotFound", err)
	}
}

// openJournalEntries reads the journal file at path as OpenFile would.
func openJournalEntries(path string) (uint64, []journalEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	return readJournal(f)
}

// Entries of an earlier epoch, left in the file past the current ones,
// never replay.
func TestJournalIgnoresEarlierEpochs(t *testing.T) {
	f, g := openGated(t, FileOptions{})
	held := mustClaim(t, f, "old", args("a", t0))
	if err := f.Complete(context.Background(), held, resp("done"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	awaitSettled(t, f)
	f.journal.mu.Lock()
	if err := f.journal.start(); err != nil { // a new epoch; "old" stays in the file
		t.Fatal(err)
	}
	f.journal.mu.Unlock()
	g.hold()
	mustClaim(t, f, "new", args("b", t0))
	crash(t, f, g)

	epoch, entries, err := openJournalEntries(journalPath(f.Path()))
	if err != nil || len(entries) != 1 || entries[0].key != "new" {
		t.Fatalf("epoch %d entries %+v, %v; want only the new claim", epoch, entries, err)
	}
}

// A claim that reached the file before its journal entry was synced (so
// it was never acknowledged) is newer than the journal's last entry of the
// key: replay keeps the file's record.
func TestJournalReplayKeepsANewerFileRecord(t *testing.T) {
	f, g := openGated(t, FileOptions{})
	mustClaim(t, f, "k", args("a", t0))
	awaitSettled(t, f)
	later := newClaim("k", args("a", t0.Add(time.Hour)), "", 42)
	if err := f.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRecords).Put([]byte("k"), appendRecord(nil, later))
	}); err != nil {
		t.Fatal(err)
	}
	g.hold()
	crash(t, f, g)

	re := openTestFile(t, f.Path(), FileOptions{})
	if rec := committed(t, re, "k"); rec == nil || rec.Token != 42 {
		t.Fatalf("file holds %+v after replay, want the newer record (token 42)", rec)
	}
}

// A leader writes for others only until its own entry is synced: entries
// queued during its write wait for the next leader, so no request is kept
// writing the journal under sustained load.
func TestJournalLeaderHandsOff(t *testing.T) {
	j := startedJournal(t)
	first := j.add(journalClaim, "a", []byte("x"))
	var later uint64
	testHookJournalWrite = func() {
		testHookJournalWrite = nil
		later = j.add(journalClaim, "b", []byte("y")) // arrives during the first write
	}
	defer func() { testHookJournalWrite = nil }()
	if err := j.wait(first); err != nil {
		t.Fatal(err)
	}
	j.mu.Lock()
	synced, queued := j.synced, len(j.buf)
	j.mu.Unlock()
	if synced != first+1 || queued == 0 {
		t.Fatalf("after the first wait: synced %d, %d bytes queued; want only the first entry written", synced, queued)
	}
	if err := j.wait(later); err != nil {
		t.Fatal(err)
	}
	if _, entries, err := openJournalEntries(j.path); err != nil || len(entries) != 2 {
		t.Fatalf("journal holds %d entries (%v), want 2", len(entries), err)
	}
}

// For each key the journal's last claim decides, and only a release of
// that claim's own token undoes it: a sweep's release of an older claim,
// journaled after a newer claim of the same key, must not drop the newer
// claim (acknowledged, so it must survive the crash).
func TestJournalReplayReleasesOnlyTheNamedClaim(t *testing.T) {
	release := func(key string, token uint64) journalEntry {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], token)
		return journalEntry{kind: journalRelease, key: key, body: b[:]}
	}
	claim := func(key string, token uint64) journalEntry {
		return journalEntry{kind: journalClaim, key: key, body: appendRecord(nil, newClaim(key, args("a", t0), "o", token))}
	}
	tests := []struct {
		name    string
		file    map[string]uint64 // in-flight claims the file holds
		entries []journalEntry
		want    map[string]uint64 // token per key after replay; absent: no record
	}{
		{name: "a claim is replayed", entries: []journalEntry{claim("k", 1)}, want: map[string]uint64{"k": 1}},
		{name: "a released claim is not", entries: []journalEntry{claim("k", 1), release("k", 1)}, want: map[string]uint64{}},
		{name: "a released claim the file holds in flight goes", file: map[string]uint64{"k": 1},
			entries: []journalEntry{claim("k", 1), release("k", 1)}, want: map[string]uint64{}},
		{name: "an older claim's release keeps the newer claim",
			entries: []journalEntry{claim("k", 1), claim("k", 2), release("k", 1)}, want: map[string]uint64{"k": 2}},
		{name: "a release before a new claim", entries: []journalEntry{claim("k", 1), release("k", 1), claim("k", 2)},
			want: map[string]uint64{"k": 2}},
		{name: "keys apart", entries: []journalEntry{claim("a", 1), claim("b", 2), release("a", 1)}, want: map[string]uint64{"b": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := bolt.Open(filepath.Join(t.TempDir(), "r.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			got := map[string]uint64{}
			err = db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket(bucketRecords)
				if err != nil {
					return err
				}
				for k, tok := range tt.file {
					if err := b.Put([]byte(k), appendRecord(nil, newClaim(k, args("a", t0), "o", tok))); err != nil {
						return err
					}
				}
				if err := replayJournal(b, tt.entries); err != nil {
					return err
				}
				return b.ForEach(func(k, v []byte) error {
					_, tok, _ := peekClaim(v)
					got[string(k)] = tok
					return nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("after replay the file holds %v, want %v", got, tt.want)
			}
		})
	}
}

// startedJournal opens and starts a claim journal in a fresh directory,
// closed with the test.
func startedJournal(t *testing.T) *journal {
	t.Helper()
	j, _, err := openJournal(filepath.Join(t.TempDir(), "j.claims"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.close() })
	if err := j.start(); err != nil {
		t.Fatal(err)
	}
	return j
}
