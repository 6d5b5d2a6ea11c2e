//go:build linux

package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/store"
	"github.com/ballast-proxy/ballast/supervise"
)

// The child process of TestShutdownAlerts_StateFileFinalFlushFailure
// finds its state directory and the parent's webhook in these.
const (
	finalFlushDirEnv  = "BALLAST_TEST_FINAL_FLUSH_DIR"
	finalFlushHookEnv = "BALLAST_TEST_FINAL_FLUSH_HOOK"
)

// A disk fills up while the file store still holds answers it has not
// written: its final flush, in Shutdown, is refused, and raises a
// state_failing alert. Shutdown closed the notifier before the store, so
// that alert went nowhere and the operator never heard that the answers
// were lost (a retry after the restart reads outcome_unknown).
//
// The disk is real: the file store runs in a child process (this test
// binary again) whose files may not grow past 3 MiB (RLIMIT_FSIZE, as
// `prlimit --fsize` sets it; the kernel refuses with EFBIG, as a full disk
// does with ENOSPC). The child holds the store's background writes until
// Close (FileOptions.FlushDelay), so that the final flush is the write that
// fails; the parent is the webhook, and must have the alert by the time
// the child has shut down.
func TestShutdownAlerts_StateFileFinalFlushFailure(t *testing.T) {
	if dir := os.Getenv(finalFlushDirEnv); dir != "" {
		finalFlushChild(t, dir, os.Getenv(finalFlushHookEnv))
		return
	}
	url, events := webhookEvents(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestShutdownAlerts_StateFileFinalFlushFailure$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), finalFlushDirEnv+"="+t.TempDir(), finalFlushHookEnv+"="+url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	// The webhook took the event before it answered, and the child's
	// Shutdown returned only after that answer.
	select {
	case e := <-events:
		if e.Kind != supervise.KindStateFailing || !strings.Contains(e.Detail, "state file refused") {
			t.Fatalf("alert %+v; want state_failing for the state file's refusal\nchild:\n%s", e, out)
		}
	default:
		t.Fatalf("no alert reached the webhook before ballast had shut down: the final flush's state_failing was lost\nchild:\n%s", out)
	}
}

// finalFlushChild runs ballast on a file store in dir, under a 3 MiB file
// size limit, answers four keyed requests of 900 KiB each (their claims
// are journaled, their answers held in memory), and shuts down.
func finalFlushChild(t *testing.T, dir, hook string) {
	const answerSize = 900 << 10
	limit := syscall.Rlimit{Cur: 3 << 20, Max: 3 << 20}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limit); err != nil {
		t.Fatalf("setrlimit RLIMIT_FSIZE: %v", err)
	}
	answer := bytes.Repeat([]byte("x"), answerSize)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(answer)
	}))
	t.Cleanup(up.Close)
	path := filepath.Join(dir, "state.db")
	logs := &lockedLog{}
	s := newLoggedServer(t, fmt.Sprintf(`
state: {path: %q}
notify: {webhook: %q}
routes:
  - {name: orders, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}
`, path, hook, up.URL), logs)
	// The same file, opened again with the same handler of background
	// failures, but holding those writes until Close (or a synchronous
	// write, which these requests make none of).
	if err := s.state.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := store.OpenFile(path, store.FileOptions{FlushDelay: time.Hour, OnAsyncError: s.stateFileFailed})
	if err != nil {
		t.Fatal(err)
	}
	s.state = newTimedStore(f, "file", s.m)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c := &http.Client{Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	for i := range 4 {
		req, err := http.NewRequest("POST", "http://"+ln.Addr().String()+"/orders", strings.NewReader(`{"order":1}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Idempotency-Key", fmt.Sprintf("order-%d", i))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(body) != answerSize {
			t.Fatalf("keyed POST %d = %d, %d bytes, %v; want 200 with the answer", i, resp.StatusCode, len(body), err)
		}
	}
	c.CloseIdleConnections()
	failed := func() uint64 {
		return counterValue(s.m.stateErrors.WithLabelValues("claim")) + counterValue(s.m.stateErrors.WithLabelValues("complete"))
	}
	if n := failed(); n != 0 {
		t.Fatalf("%d background writes failed before Shutdown; the final flush must be the one that fails\n%s", n, logs.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Logf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if failed() == 0 {
		t.Fatalf("the final flush did not fail: the test's disk did not fill up\n%s", logs.String())
	}
	t.Logf("alerts: %+v\n%s", s.status.notifier.Stats(), logs.String())
}
