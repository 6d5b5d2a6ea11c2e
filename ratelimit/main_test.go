package ratelimit

import (
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is the start of every test's timeline.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func mustBucket(t testing.TB, cfg Config) *Bucket {
	t.Helper()
	b, err := NewBucket(cfg)
	if err != nil {
		t.Fatalf("NewBucket(%+v): %v", cfg, err)
	}
	return b
}

func runtimeGosched() { runtime.Gosched() }
