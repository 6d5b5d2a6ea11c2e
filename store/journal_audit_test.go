package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Audit probes of the file store's claim journal: truncation at any byte,
// damage inside an entry, entries that checksum but do not decode, and a
// journal path that cannot be opened.

// auditCrashedJournal leaves, in a fresh directory, a state file and a
// journal holding n acknowledged claims bbolt never committed, and
// returns the state file's path, the two files' bytes, and the offsets
// where each journal entry ends.
func auditCrashedJournal(t *testing.T, n int) (string, []byte, []byte, []int) {
	t.Helper()
	f, g := openGated(t, FileOptions{})
	g.hold()
	for i := range n {
		mustClaim(t, f, string(rune('a'+i)), args(string(rune('a'+i)), t0))
	}
	path := f.Path()
	crash(t, f, g)
	db, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	jr, err := os.ReadFile(journalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	var ends []int
	end := journalHeaderSize
	for range n {
		end += 8 + int(binary.BigEndian.Uint32(jr[end:]))
		ends = append(ends, end)
	}
	return path, db, jr, ends
}

// auditPlace writes a state file and journal into a fresh directory.
func auditPlace(t *testing.T, db, jr []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	if jr != nil {
		if err := os.WriteFile(journalPath(path), jr, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestFwdJournalTruncatedMidEntry: a journal cut at any point (inside
// the header, inside an entry's length, checksum, key or body) opens, and
// replays exactly the entries that are whole.
func TestFwdJournalTruncatedMidEntry(t *testing.T) {
	t.Run("damaged first entry", auditDamagedFirstEntry)
	_, db, jr, ends := auditCrashedJournal(t, 3)
	cuts := map[int]int{0: 0, 1: 0, journalHeaderSize - 1: 0, journalHeaderSize: 0}
	prev := journalHeaderSize
	for i, e := range ends {
		for _, c := range []int{prev + 1, prev + 4, prev + 7, prev + 8, prev + 9, prev + 11, (prev + e) / 2, e - 1} {
			cuts[c] = i
		}
		cuts[e] = i + 1
		prev = e
	}
	for cut, want := range cuts {
		path := auditPlace(t, db, jr[:cut])
		f, err := OpenFile(path, FileOptions{})
		if err != nil {
			t.Errorf("journal cut at %d: %v", cut, err)
			continue
		}
		if got := f.Recovery(); got.Records != want || got.UnknownOutcome != want {
			t.Errorf("journal cut at %d: Recovery %+v; want %d claims back as unknown outcome", cut, got, want)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// auditDamagedFirstEntry: damage inside the first entry ends
// the replay there, even though a later entry checksums (a crash can
// persist a batch's later blocks without its earlier ones, and nothing in
// an unsynced batch was acknowledged). Opening succeeds and the journal
// starts over.
func auditDamagedFirstEntry(t *testing.T) {
	_, db, jr, ends := auditCrashedJournal(t, 2)
	for _, at := range []int{journalHeaderSize + 2, journalHeaderSize + 5, journalHeaderSize + 8, ends[0] - 1} {
		bad := bytes.Clone(jr)
		bad[at] ^= 0x5a
		path := auditPlace(t, db, bad)
		f, err := OpenFile(path, FileOptions{})
		if err != nil {
			t.Errorf("damage at %d: %v", at, err)
			continue
		}
		if got := f.Recovery(); got.Records != 0 {
			t.Errorf("damage at %d: Recovery %+v; want nothing replayed past the damage", at, got)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if _, entries, err := openJournalEntries(journalPath(path)); err != nil || len(entries) != 0 {
			t.Errorf("damage at %d: the journal still holds %d entries (%v)", at, len(entries), err)
		}
	}
}

// TestFwdJournalPathUnusable: a journal path that cannot be opened (a
// directory stands there) fails the open with an error naming the
// journal, and leaves the state file unlocked.
func TestFwdJournalPathUnusable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.Mkdir(journalPath(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if f, err := OpenFile(path, FileOptions{}); err == nil {
		_ = f.Close()
		t.Fatal("OpenFile succeeded with a directory as its journal")
	} else if !strings.Contains(err.Error(), journalPath(path)) {
		t.Errorf("OpenFile = %v; want an error naming %s", err, journalPath(path))
	}
	if err := os.Remove(journalPath(path)); err != nil {
		t.Fatal(err)
	}
	f := openTestFile(t, path, FileOptions{LockTimeout: 1}) // not left locked
	if f.Recovery().Records != 0 {
		t.Fatal(f.Recovery())
	}
}

// auditJournal builds a journal file of one epoch with the given raw
// payloads, each with a valid checksum.
func auditJournal(epoch uint64, payloads ...[]byte) []byte {
	b := make([]byte, journalHeaderSize)
	copy(b, journalMagic[:])
	binary.BigEndian.PutUint64(b[8:], epoch)
	binary.BigEndian.PutUint32(b[16:], crc32.Checksum(b[:16], castagnoli))
	for _, p := range payloads {
		var h [8]byte
		binary.BigEndian.PutUint32(h[:], uint32(len(p)))
		binary.BigEndian.PutUint32(h[4:], entrySum(epoch, p))
		b = append(append(b, h[:]...), p...)
	}
	return b
}

func auditPayload(kind byte, key string, body []byte) []byte {
	p := []byte{kind, 0, 0}
	binary.BigEndian.PutUint16(p[1:], uint16(len(key)))
	return append(append(p, key...), body...)
}

// TestJournalCorruptErrorNamesTheJournal: a journal entry that
// checksums but cannot be replayed (a claim whose record does not decode,
// as after a downgrade across a record-format change, or an unknown entry
// kind) fails the open, as it should, and the error names the journal
// (<path>.claims), which is what is damaged: moving the state file aside
// would not help, since the same journal would fail the next open.
func TestJournalCorruptErrorNamesTheJournal(t *testing.T) {
	for _, tt := range []struct {
		name    string
		payload []byte
	}{
		{"undecodable claim", auditPayload(journalClaim, "k", []byte{0xee, 1, 2, 3})},
		{"unknown kind", auditPayload(9, "k", nil)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.db")
			if err := os.WriteFile(journalPath(path), auditJournal(7, tt.payload), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := OpenFile(path, FileOptions{})
			if err == nil {
				_ = f.Close()
				t.Fatal("OpenFile replayed an entry it cannot decode")
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("OpenFile = %v; want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), journalPath(path)) {
				t.Errorf("OpenFile error does not name the damaged journal %s:\n%v", journalPath(path), err)
			}
			// Following the advice the error gives today: move the state
			// file aside. The open must then not fail on the same
			// advice about the (new, empty) state file.
			if err := os.Rename(path, path+".bad"); err != nil {
				t.Fatal(err)
			}
			f, err = OpenFile(path, FileOptions{})
			if err == nil {
				_ = f.Close()
			} else if !strings.Contains(err.Error(), journalPath(path)) {
				t.Errorf("after moving the state file aside as advised, OpenFile still fails without naming the journal:\n%v", err)
			}
		})
	}
}

// A journal whose header is damaged cannot be replayed; the open goes on
// (the claims of the last milliseconds are lost) but says so, for the
// operator's log. A journal never written, or read fine, says nothing.
func TestDamagedJournalHeaderIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTestFile(t, path, FileOptions{})
	mustClaim(t, s, "k", args("a", t0))
	image := asCrashImage(t, path)
	if rec := openTestFile(t, asCrashImage(t, image), FileOptions{}).Recovery(); rec.JournalDiscarded {
		t.Fatal("a readable journal reported as discarded")
	}
	j, err := os.OpenFile(journalPath(image), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.WriteAt([]byte("garbage!"), 0); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if rec := openTestFile(t, image, FileOptions{}).Recovery(); !rec.JournalDiscarded {
		t.Fatal("a journal with a damaged header was dropped without a word")
	}
}
