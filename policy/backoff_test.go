package policy

import (
	"math"
	"testing"
	"time"
)

func TestBackoffCeiling(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}
	tests := []struct {
		name    string
		backoff Backoff
		retry   int
		want    time.Duration
	}{
		{name: "first retry", backoff: b, retry: 0, want: 100 * time.Millisecond},
		{name: "second retry doubles", backoff: b, retry: 1, want: 200 * time.Millisecond},
		{name: "sixth retry", backoff: b, retry: 6, want: 6400 * time.Millisecond},
		{name: "capped at max", backoff: b, retry: 7, want: 10 * time.Second},
		{name: "exactly max", backoff: Backoff{Base: time.Second, Max: 4 * time.Second}, retry: 2, want: 4 * time.Second},
		{name: "large n does not overflow", backoff: b, retry: 1000, want: 10 * time.Second},
		{name: "n at the shift limit", backoff: b, retry: 63, want: 10 * time.Second},
		{name: "max int n", backoff: b, retry: math.MaxInt, want: 10 * time.Second},
		{name: "huge max still overflow-safe", backoff: Backoff{Base: time.Second, Max: math.MaxInt64}, retry: 40, want: math.MaxInt64},
		{name: "huge max, just below overflow", backoff: Backoff{Base: 1, Max: math.MaxInt64}, retry: 61, want: 1 << 61},
		{name: "negative n is the first retry", backoff: b, retry: -5, want: 100 * time.Millisecond},
		{name: "zero value", backoff: Backoff{}, retry: 3, want: 0},
		{name: "zero max", backoff: Backoff{Base: time.Second}, retry: 0, want: 0},
		{name: "negative base", backoff: Backoff{Base: -time.Second, Max: time.Second}, retry: 0, want: 0},
		{name: "base above max", backoff: Backoff{Base: time.Minute, Max: time.Second}, retry: 0, want: time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.backoff.Ceiling(tt.retry); got != tt.want {
				t.Errorf("Ceiling(%d) = %v, want %v", tt.retry, got, tt.want)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}
	highest := func(n int64) int64 { return n - 1 }
	lowest := func(int64) int64 { return 0 }
	tests := []struct {
		name   string
		retry  int
		int63n func(int64) int64
		want   time.Duration
	}{
		{name: "lowest draw", retry: 3, int63n: lowest, want: 0},
		{name: "highest draw is just below the ceiling", retry: 0, int63n: highest, want: 100*time.Millisecond - 1},
		{name: "highest draw when capped", retry: 50, int63n: highest, want: 10*time.Second - 1},
		{name: "faulty source above range is clamped", retry: 0, int63n: func(n int64) int64 { return n * 3 }, want: 100*time.Millisecond - 1},
		{name: "faulty negative source is clamped", retry: 0, int63n: func(int64) int64 { return -7 }, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.Delay(tt.retry, tt.int63n); got != tt.want {
				t.Errorf("Delay(%d) = %v, want %v", tt.retry, got, tt.want)
			}
		})
	}
	t.Run("source receives the ceiling", func(t *testing.T) {
		var seen int64
		b.Delay(2, func(n int64) int64 { seen = n; return 0 })
		if seen != int64(400*time.Millisecond) {
			t.Errorf("int63n called with %d, want %d", seen, int64(400*time.Millisecond))
		}
	})
	t.Run("zero ceiling does not call the source", func(t *testing.T) {
		Backoff{}.Delay(0, func(int64) int64 { t.Fatal("int63n called"); return 0 })
	})
}

// With the default random source the delay is uniform in [0, ceiling):
// always inside the range, and spread across it.
func TestBackoffDelayFullJitter(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}
	for retry := range 10 {
		ceiling := b.Ceiling(retry)
		var low, high int
		for range 2000 {
			d := b.Delay(retry, nil)
			if d < 0 || d >= ceiling {
				t.Fatalf("Delay(%d) = %v outside [0, %v)", retry, d, ceiling)
			}
			if d < ceiling/4 {
				low++
			}
			if d >= ceiling*3/4 {
				high++
			}
		}
		// Each quarter expects 500 of 2000; 350 is over 7 standard deviations away.
		if low < 350 || high < 350 {
			t.Errorf("retry %d: %d draws in the lowest quarter, %d in the highest; want about 500 each", retry, low, high)
		}
	}
}
