package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// The shared redis-server (see redis_test.go) is stopped before the leak
	// check: its reaper goroutine lives as long as the process.
	testRedis.close()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// t0 is the fixed start of every test's timeline.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

type backend struct {
	name string
	open func(t testing.TB, lim Limits) Store
}

func backends() []backend {
	return []backend{
		{"memory", func(t testing.TB, lim Limits) Store {
			s := OpenMemory(MemoryOptions{Limits: lim})
			t.Cleanup(func() { _ = s.Close() })
			return s
		}},
		{"file", func(t testing.TB, lim Limits) Store {
			return openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{Limits: lim})
		}},
		{"file-boltbatch", func(t testing.TB, lim Limits) Store {
			return openTestFile(t, filepath.Join(t.TempDir(), "state.db"), FileOptions{Limits: lim, BatchDelay: time.Millisecond})
		}},
		{"redis", func(t testing.TB, lim Limits) Store {
			return openTestRedis(t, RedisOptions{Limits: lim})
		}},
	}
}

// forEachBackend runs test, in a subtest named after each backend, against
// a fresh store of that backend with the limits lim: the contract every
// Store keeps.
func forEachBackend(t *testing.T, lim Limits, test func(t *testing.T, s Store)) {
	t.Helper()
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) {
			test(t, be.open(t, lim))
		})
	}
}

func openTestFile(t testing.TB, path string, opts FileOptions) *File {
	t.Helper()
	s, err := OpenFile(path, opts)
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func fp(s string) [32]byte { return Fingerprint([]byte("POST"), []byte("/v1"), []byte(s)) }

func args(body string, now time.Time) ClaimArgs {
	return ClaimArgs{Fingerprint: fp(body), Now: now, Lease: time.Minute, TTL: time.Hour}
}

func mustClaim(t testing.TB, s Store, key string, a ClaimArgs) *Record {
	t.Helper()
	rec, owned, err := s.Claim(context.Background(), key, a)
	if err != nil || !owned {
		t.Fatalf("Claim(%q) = %+v, owned=%v, err=%v; want owned", key, rec, owned, err)
	}
	return rec
}

func resp(body string) *Response {
	return &Response{Status: 200, Header: []byte("Content-Type: application/json\r\n"), Body: []byte(body)}
}

// waiters reports how many Waits are blocked on key.
func waiters(s Store, key string) int {
	switch x := s.(type) {
	case *Memory:
		return x.wakeup.waiting(key)
	case *File:
		return x.wakeup.waiting(key)
	case *Redis:
		return x.hub.blocked(x.keys.record(key))
	}
	return 0
}

// awaitWaiters yields until n Waits are blocked on key.
// waitOutcome is what one Store.Wait returned.
type waitOutcome struct {
	rec *Record
	err error
}

// startWait runs s.Wait(ctx, key) in the background and returns once the
// store counts it as a waiter; the Wait's result arrives on the channel.
func startWait(t testing.TB, ctx context.Context, s Store, key string) <-chan waitOutcome {
	t.Helper()
	done := make(chan waitOutcome, 1)
	go func() {
		rec, err := s.Wait(ctx, key)
		done <- waitOutcome{rec, err}
	}()
	awaitWaiters(t, s, key, 1)
	return done
}

func awaitWaiters(t testing.TB, s Store, key string, n int) {
	t.Helper()
	for waiters(s, key) < n {
		runtime.Gosched()
	}
}
