package ratelimit

import (
	"errors"
	"testing"
	"time"
)

func TestBucketArithmetic(t *testing.T) {
	// 10 tokens/s, burst 5: five at once, then one every 100ms.
	type step struct {
		name      string
		at        time.Duration
		n         int
		maxWait   time.Duration
		wantDelay time.Duration
		wantTaken int
		wantRetry time.Duration // for refusals
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "burst then queue",
			steps: []step{
				{name: "takes 5 of 5", n: 5, wantTaken: 5},
				{name: "6th waits one interval", n: 1, maxWait: time.Second, wantDelay: 100 * time.Millisecond, wantTaken: 1},
				{name: "7th waits two", n: 1, maxWait: time.Second, wantDelay: 200 * time.Millisecond, wantTaken: 1},
				{name: "8th refused with zero wait allowed", n: 1, wantRetry: 300 * time.Millisecond},
				{name: "8th refused: 300ms > 250ms", n: 1, maxWait: 250 * time.Millisecond, wantRetry: 300 * time.Millisecond},
				{name: "8th admitted within 300ms", n: 1, maxWait: 300 * time.Millisecond, wantDelay: 300 * time.Millisecond, wantTaken: 1},
			},
		},
		{
			name: "refill over time",
			steps: []step{
				{name: "drain", n: 5, wantTaken: 5},
				{name: "after 250ms two are back", at: 250 * time.Millisecond, n: 2, wantTaken: 2},
				{name: "third is 50ms away", at: 250 * time.Millisecond, n: 1, maxWait: time.Second, wantDelay: 50 * time.Millisecond, wantTaken: 1},
				{name: "refill caps at burst", at: time.Hour, n: 5, wantTaken: 5},
				{name: "nothing past burst", at: time.Hour, n: 1, wantRetry: 100 * time.Millisecond},
			},
		},
		{
			name: "n larger than burst is clamped",
			steps: []step{
				{name: "takes the whole bucket", n: 50, wantTaken: 5},
				{name: "then waits a full refill", n: 50, maxWait: time.Second, wantDelay: 500 * time.Millisecond, wantTaken: 5},
			},
		},
		{
			name: "n of zero takes nothing",
			steps: []step{
				{name: "zero", n: 0, wantTaken: 0},
				{name: "negative", n: -3, wantTaken: 0},
				{name: "bucket still full", n: 5, wantTaken: 5},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBucket(t, Config{Rate: 10, Burst: 5})
			for _, s := range tt.steps {
				r, err := b.Reserve(0, s.n, at(s.at), s.maxWait)
				if s.wantRetry > 0 {
					var le *LimitedError
					if !errors.As(err, &le) || !errors.Is(err, ErrLimited) {
						t.Fatalf("%s: err = %v, want *LimitedError", s.name, err)
					}
					if le.RetryAfter != s.wantRetry {
						t.Errorf("%s: RetryAfter = %v, want %v", s.name, le.RetryAfter, s.wantRetry)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				if r.Delay() != s.wantDelay || r.Tokens() != s.wantTaken {
					t.Errorf("%s: delay %v, taken %d; want %v, %d", s.name, r.Delay(), r.Tokens(), s.wantDelay, s.wantTaken)
				}
				if got := r.DelayFrom(at(s.at + s.wantDelay)); got != 0 {
					t.Errorf("%s: DelayFrom(at+delay) = %v, want 0", s.name, got)
				}
			}
		})
	}
}

func TestRefusalTakesNothing(t *testing.T) {
	b := mustBucket(t, Config{Rate: 1, Burst: 1})
	if _, err := b.Reserve(0, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		_, err := b.Reserve(0, 1, t0, 500*time.Millisecond)
		var le *LimitedError
		if !errors.As(err, &le) {
			t.Fatalf("refusal %d: err = %v", i, err)
		}
		if le.RetryAfter != time.Second {
			t.Fatalf("refusal %d: RetryAfter = %v, want 1s (a refusal must not queue)", i, le.RetryAfter)
		}
	}
	if got := b.Stats().Limited; got != 3 {
		t.Errorf("Stats().Limited = %d, want 3", got)
	}
	if _, err := b.Reserve(0, 1, at(time.Second), 0); err != nil {
		t.Errorf("token due at 1s not available: %v", err)
	}
}

func TestRefusalQuota(t *testing.T) {
	b := mustBucket(t, Config{Rate: 2, Burst: 4})
	if _, err := b.Reserve(0, 4, t0, 0); err != nil {
		t.Fatal(err)
	}
	_, err := b.Reserve(0, 1, t0, 0)
	var le *LimitedError
	if !errors.As(err, &le) {
		t.Fatalf("err = %v", err)
	}
	want := Quota{Limit: 4, Window: 2 * time.Second, Remaining: 0, Reset: 2 * time.Second}
	if le.Quota != want || le.RetryAfter != 500*time.Millisecond {
		t.Errorf("refusal = %+v, %v; want %+v, 500ms", le.Quota, le.RetryAfter, want)
	}
}

func TestQuota(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		taken int
		at    time.Duration
		want  Quota
	}{
		{name: "full", cfg: Config{Rate: 50, Burst: 10}, want: Quota{Limit: 50, Window: time.Second, Remaining: 10}},
		{name: "partly used", cfg: Config{Rate: 50, Burst: 10}, taken: 4, want: Quota{Limit: 50, Window: time.Second, Remaining: 6, Reset: 80 * time.Millisecond}},
		{name: "slow rate", cfg: Config{Rate: 0.5, Burst: 5}, taken: 5, want: Quota{Limit: 5, Window: 10 * time.Second, Reset: 10 * time.Second}},
		{name: "tokens per minute", cfg: PerMinute(6000), taken: 3000, at: 15 * time.Second, want: Quota{Limit: 6000, Window: time.Minute, Remaining: 4500, Reset: 15 * time.Second}},
		{name: "default burst", cfg: Config{Rate: 2.5}, want: Quota{Limit: 5, Window: 2 * time.Second, Remaining: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBucket(t, tt.cfg)
			if _, err := b.Reserve(0, tt.taken, t0, 0); err != nil {
				t.Fatal(err)
			}
			if got := b.Quota(0, at(tt.at)); got != tt.want {
				t.Errorf("Quota = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCancelReturnsTokens(t *testing.T) {
	b := mustBucket(t, Config{Rate: 10, Burst: 1})
	if _, err := b.Reserve(0, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	r, err := b.Reserve(0, 1, t0, time.Second)
	if err != nil || r.Delay() != 100*time.Millisecond {
		t.Fatalf("queued reservation: %v, %v", r.Delay(), err)
	}
	r.Cancel(at(40 * time.Millisecond))
	r.Cancel(at(40 * time.Millisecond)) // a second Cancel must not return tokens twice
	// The cancelled token is back: the next request waits 60ms, not 160ms.
	next, err := b.Reserve(0, 1, at(40*time.Millisecond), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := next.Delay(); got != 60*time.Millisecond {
		t.Errorf("after Cancel, delay = %v, want 60ms", got)
	}
}

func TestCancelAfterProceedingKeepsTokens(t *testing.T) {
	b := mustBucket(t, Config{Rate: 10, Burst: 1})
	r, err := b.Reserve(0, 1, t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.Cancel(at(time.Millisecond)) // already proceeded: the token was used
	if _, err := b.Reserve(0, 1, at(time.Millisecond), 0); err == nil {
		t.Error("Cancel after the reservation's time returned its token")
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		make func() error
	}{
		{name: "zero rate", make: func() error { _, err := NewBucket(Config{}); return err }},
		{name: "negative burst", make: func() error { _, err := NewBucket(Config{Rate: 1, Burst: -1}); return err }},
		{name: "keyed without max_keys", make: func() error { _, err := NewKeyed(KeyedConfig{Config: Config{Rate: 1}}); return err }},
		{name: "adaptive factor 1", make: func() error { _, err := NewAdaptive(AdaptiveConfig{Config: Config{Rate: 1}, Factor: 1}); return err }},
		{name: "adaptive floor above rate", make: func() error { _, err := NewAdaptive(AdaptiveConfig{Config: Config{Rate: 1}, Floor: 2}); return err }},
		{name: "bulkhead without slots", make: func() error { _, err := NewBulkhead(BulkheadConfig{}); return err }},
		{name: "bulkhead negative queue", make: func() error { _, err := NewBulkhead(BulkheadConfig{MaxConcurrency: 1, MaxQueue: -1}); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.make(); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("err = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// Regression: refusing by reserve-then-cancel leaked tokens whenever another
// reservation landed between the two, so under overload the bucket admitted
// less than its rate.
func TestRefusalsUnderContentionDoNotLeakTokens(t *testing.T) {
	b := mustBucket(t, Config{Rate: 10, Burst: 1})
	if _, err := b.Reserve(0, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 200 {
				if _, err := b.Reserve(0, 1, t0, 50*time.Millisecond); err == nil {
					t.Error("admitted a request 100ms away with max_wait 50ms")
					return
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	if r, err := b.Reserve(0, 1, at(100*time.Millisecond), 0); err != nil || r.Delay() != 0 {
		t.Errorf("token due at 100ms: delay %v, err %v", r.Delay(), err)
	}
}
