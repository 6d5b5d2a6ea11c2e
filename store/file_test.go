package store

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// seedCrashState claims "lost" (left in flight), completes "kept" and puts a
// pending job, as a process does just before it is killed.
func seedCrashState(t testing.TB, s Store) {
	t.Helper()
	ctx := context.Background()
	mustClaim(t, s, "lost", args("a", t0))
	held := mustClaim(t, s, "kept", args("a", t0))
	if err := s.Complete(ctx, held, resp(`{"ok":1}`), t0.Add(time.Second), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJob(ctx, testJob("job1", JobRunning, t0)); err != nil {
		t.Fatal(err)
	}
}

// checkRecovered checks what a store opened after seedCrashState must report.
func checkRecovered(t *testing.T, s *File) {
	t.Helper()
	ctx := context.Background()
	want := Recovery{Records: 2, UnknownOutcome: 1, Jobs: 1, PendingJobs: 1}
	if got := s.Recovery(); got != want {
		t.Errorf("Recovery = %+v, want %+v", got, want)
	}
	now := t0.Add(2 * time.Second) // still within the lease: the restart alone decides
	lost, err := s.Get(ctx, "lost", now)
	if err != nil || lost.State != UnknownOutcome || !lost.StartedAt.Equal(t0) {
		t.Fatalf("lost claim = %+v, %v; want unknown_outcome started at %v", lost, err, t0)
	}
	rec, owned, err := s.Claim(ctx, "lost", args("a", now))
	if err != nil || owned || rec.State != UnknownOutcome {
		t.Fatalf("duplicate of the lost claim = %+v, %v, %v; want unknown outcome", rec, owned, err)
	}
	kept, err := s.Get(ctx, "kept", now)
	if err != nil || kept.State != Completed || string(kept.Response.Body) != `{"ok":1}` || kept.Response.Status != 200 {
		t.Fatalf("completed record = %+v, %v", kept, err)
	}
	pending, err := s.ListJobs(ctx, JobQueued, JobRunning)
	if err != nil || len(pending) != 1 || pending[0].ID != "job1" || string(pending[0].Request.Body) != `{"model":"m"}` {
		t.Fatalf("pending jobs = %+v, %v", pending, err)
	}
	a := args("a", now)
	a.TakeOverUnknown = true
	held := mustClaim(t, s, "lost", a)
	if err := s.Complete(ctx, held, resp("redo"), now, time.Hour); err != nil {
		t.Fatal(err)
	}
}

func TestFileReopenAfterUncleanStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seedCrashState(t, s)
	if err := s.Close(); err != nil { // the claim on "lost" is never finished
		t.Fatal(err)
	}
	checkRecovered(t, openTestFile(t, path, FileOptions{}))
}

func TestFileCopiedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	s := openTestFile(t, path, FileOptions{})
	seedCrashState(t, s)
	// A raw copy of the file of a live process is what a crash leaves.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "copy.db")
	if err := os.WriteFile(copyPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, openTestFile(t, copyPath, FileOptions{}))
}

// TestFileCrashChild is the process that TestFileSurvivesSIGKILL kills.
func TestFileCrashChild(t *testing.T) {
	path := os.Getenv("BALLAST_STORE_CRASH_PATH")
	if path == "" {
		t.Skip("helper process for TestFileSurvivesSIGKILL")
	}
	journalOnly := os.Getenv("BALLAST_STORE_CRASH_MODE") == "journal"
	opts := FileOptions{}
	if journalOnly {
		opts.FlushDelay = time.Hour // queued writes never reach bbolt on their own
	}
	s, err := OpenFile(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	seedCrashState(t, s) // its PutJob commits everything queued before it
	if journalOnly {
		mustClaim(t, s, "journaled", args("j", t0)) // on disk in the journal only
	}
	os.Stdout.WriteString("ready\n")
	select {} // wait for SIGKILL
}

func TestFileSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := filepath.Join(t.TempDir(), "state.db")
	killCrashChild(t, path, "")
	checkRecovered(t, openTestFile(t, path, FileOptions{}))
}

// A claim that only the journal holds when the process is killed comes
// back as UnknownOutcome, next to everything bbolt had.
func TestFileJournalSurvivesSIGKILL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	killCrashChild(t, path, "journal")
	s := openTestFile(t, path, FileOptions{})
	want := Recovery{Records: 3, UnknownOutcome: 2, Jobs: 1, PendingJobs: 1}
	if got := s.Recovery(); got != want {
		t.Fatalf("Recovery = %+v, want %+v", got, want)
	}
	rec, err := s.Get(context.Background(), "journaled", t0.Add(time.Second))
	if err != nil || rec.State != UnknownOutcome || !rec.StartedAt.Equal(t0) {
		t.Fatalf("journaled claim = %+v, %v; want unknown_outcome started at %v", rec, err, t0)
	}
}

// killCrashChild runs TestFileCrashChild on path in mode, waits until it
// has seeded its state, and kills it with SIGKILL.
func killCrashChild(t *testing.T, path, mode string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "BALLAST_STORE_CRASH_PATH="+path, "BALLAST_STORE_CRASH_MODE="+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child said %q, %v", line, err)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL on Unix
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

func TestFileUnusable(t *testing.T) {
	tests := []struct {
		name    string
		write   func(t *testing.T, path string)
		wantErr error
	}{
		{"garbage", func(t *testing.T, path string) {
			writeFile(t, path, []byte(strings.Repeat("not a database at all ", 2000)))
		}, ErrCorrupt},
		{"short garbage", func(t *testing.T, path string) { writeFile(t, path, []byte("xyz")) }, ErrCorrupt},
		{"truncated state file", func(t *testing.T, path string) {
			s, err := OpenFile(path, FileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			seedCrashState(t, s)
			_ = s.Close()
			if err := os.Truncate(path, 5000); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"foreign bbolt file", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err })
			_ = db.Close()
		}, ErrCorrupt},
		{"newer format", func(t *testing.T, path string) {
			withBolt(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, []byte("ballast-store/99")) })
		}, ErrCorrupt},
		{"damaged record", func(t *testing.T, path string) {
			withBolt(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketRecords).Put([]byte("bad"), []byte{1, 2, 3}) })
		}, ErrCorrupt},
		{"damaged job", func(t *testing.T, path string) {
			withBolt(t, path, func(tx *bolt.Tx) error { return tx.Bucket(bucketJobs).Put([]byte("bad"), []byte{1, 9}) })
		}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			tt.write(t, path)
			s, err := OpenFile(path, FileOptions{})
			if err == nil {
				_ = s.Close()
				t.Fatal("OpenFile succeeded on an unusable file")
			}
			var fe *FileError
			if !errors.Is(err, tt.wantErr) || !errors.As(err, &fe) || fe.Path != path {
				t.Fatalf("err = %v (%T), want *FileError wrapping %v", err, err, tt.wantErr)
			}
			msg := err.Error()
			for _, want := range []string{path, "move it aside", "restore"} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q lacks %q", msg, want)
				}
			}
		})
	}
}

// withBolt creates a valid state file at path and then edits it with fn.
func withBolt(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	s, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFileEmptyFileIsFreshState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	writeFile(t, path, nil)
	s := openTestFile(t, path, FileOptions{})
	if s.Recovery() != (Recovery{}) {
		t.Fatalf("Recovery = %+v", s.Recovery())
	}
	mustClaim(t, s, "k", args("a", t0))
}

func TestFileLockedByAnotherOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	openTestFile(t, path, FileOptions{})
	_, err := OpenFile(path, FileOptions{LockTimeout: 20 * time.Millisecond})
	var fe *FileError
	if !errors.Is(err, ErrLocked) || !errors.As(err, &fe) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second OpenFile = %v, want *FileError wrapping ErrLocked naming the path", err)
	}
}

func TestFileMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "state.db")
	_, err := OpenFile(path, FileOptions{})
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("OpenFile = %v, want a not-exist error naming the path", err)
	}
}

func TestFileMaxRecordsRefuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openTestFile(t, path, FileOptions{Limits: Limits{MaxRecords: 2}})
	ctx := context.Background()
	a := mustClaim(t, s, "a", args("x", t0))
	mustClaim(t, s, "b", args("x", t0))
	if err := s.Complete(ctx, a, resp("r"), t0, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Claim(ctx, "c", args("x", t0)); !errors.Is(err, ErrFull) {
		t.Fatalf("third claim = %v, want ErrFull", err)
	}
	// An expired record may be reused in place without counting twice.
	mustClaim(t, s, "a", args("x", t0.Add(2*time.Minute)))
	if _, _, err := s.Claim(ctx, "c", args("x", t0.Add(2*time.Minute))); !errors.Is(err, ErrFull) {
		t.Fatalf("claim after reuse = %v, want ErrFull", err)
	}
	if n, err := s.Sweep(t0.Add(3 * time.Hour)); err != nil || n != 2 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	mustClaim(t, s, "c", args("x", t0.Add(3*time.Hour)))
	// The count survives a reopen (it is recounted from the file).
	_ = s.Close()
	s2 := openTestFile(t, path, FileOptions{Limits: Limits{MaxRecords: 2}})
	mustClaim(t, s2, "d", args("x", t0.Add(3*time.Hour)))
	if _, _, err := s2.Claim(ctx, "e", args("x", t0.Add(3*time.Hour))); !errors.Is(err, ErrFull) {
		t.Fatalf("claim after reopen = %v, want ErrFull", err)
	}
}

func TestMemoryMaxRecordsEvictsCompleted(t *testing.T) {
	s := OpenMemory(MemoryOptions{Limits: Limits{MaxRecords: 2}})
	defer s.Close()
	ctx := context.Background()
	a := mustClaim(t, s, "a", args("x", t0))
	b := mustClaim(t, s, "b", args("x", t0))
	if _, _, err := s.Claim(ctx, "c", args("x", t0)); !errors.Is(err, ErrFull) {
		t.Fatalf("claim with every record in flight = %v, want ErrFull", err)
	}
	for _, h := range []*Record{a, b} {
		if err := s.Complete(ctx, h, resp("r"), t0, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Get(ctx, "b", t0); err != nil { // b becomes most recently used
		t.Fatal(err)
	}
	c := mustClaim(t, s, "c", args("x", t0))
	if err := s.Complete(ctx, c, resp("r"), t0, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "a", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("least recently used record a = %v, want evicted", err)
	}
	for _, k := range []string{"b", "c"} {
		if _, err := s.Get(ctx, k, t0); err != nil {
			t.Fatalf("record %s evicted: %v", k, err)
		}
	}
	if s.Len() != 2 {
		t.Fatalf("Len = %d, want 2", s.Len())
	}
}
