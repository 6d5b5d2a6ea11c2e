package ratelimit

import (
	"testing"
	"time"
)

func TestAdaptiveSteps(t *testing.T) {
	type event struct {
		at        time.Duration
		throttle  bool
		successes int
		wantRate  float64
	}
	tests := []struct {
		name   string
		cfg    AdaptiveConfig
		events []event
	}{
		{
			name: "defaults: halve to the floor, climb by a tenth",
			cfg:  AdaptiveConfig{Config: Config{Rate: 100}},
			events: []event{
				{throttle: true, wantRate: 50},
				{at: 2 * time.Second, throttle: true, wantRate: 25},
				{at: 4 * time.Second, throttle: true, wantRate: 12.5},
				{at: 6 * time.Second, throttle: true, wantRate: 10},
				{at: 8 * time.Second, throttle: true, wantRate: 10},
				{at: 9 * time.Second, successes: 9, wantRate: 10},
				{at: 9 * time.Second, successes: 1, wantRate: 20},
				{at: 9 * time.Second, successes: 70, wantRate: 90},
				{at: 9 * time.Second, successes: 10, wantRate: 100},
				{at: 9 * time.Second, successes: 30, wantRate: 100},
			},
		},
		{
			name: "throttles within the cooldown count once",
			cfg:  AdaptiveConfig{Config: Config{Rate: 100}},
			events: []event{
				{throttle: true, wantRate: 50},
				{at: 100 * time.Millisecond, throttle: true, wantRate: 50},
				{at: 999 * time.Millisecond, throttle: true, wantRate: 50},
				{at: time.Second, throttle: true, wantRate: 25},
			},
		},
		{
			name: "a throttle restarts the run of successes",
			cfg:  AdaptiveConfig{Config: Config{Rate: 100}, Cooldown: -1},
			events: []event{
				{throttle: true, wantRate: 50},
				{successes: 9, wantRate: 50},
				{throttle: true, wantRate: 25},
				{successes: 9, wantRate: 25},
				{successes: 1, wantRate: 35},
			},
		},
		{
			name: "custom factor, floor, run and step",
			cfg:  AdaptiveConfig{Config: Config{Rate: 40}, Factor: 0.25, Floor: 1, Successes: 2, Step: 3, Cooldown: -1},
			events: []event{
				{throttle: true, wantRate: 10},
				{throttle: true, wantRate: 2.5},
				{throttle: true, wantRate: 1},
				{successes: 3, wantRate: 4},
				{successes: 1, wantRate: 7},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewAdaptive(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got := a.EffectiveRate(); got != tt.cfg.Rate {
				t.Fatalf("initial rate %v, want %v", got, tt.cfg.Rate)
			}
			for i, e := range tt.events {
				if e.throttle {
					a.OnThrottle(at(e.at))
				}
				for range e.successes {
					a.OnSuccess(at(e.at))
				}
				if got := a.EffectiveRate(); got != e.wantRate {
					t.Fatalf("event %d: rate %v, want %v", i, got, e.wantRate)
				}
				if got := a.Stats().Rate; got != e.wantRate {
					t.Fatalf("event %d: Stats().Rate %v, want %v", i, got, e.wantRate)
				}
			}
		})
	}
}

func TestAdaptiveRateGovernsRefill(t *testing.T) {
	a, err := NewAdaptive(AdaptiveConfig{Config: Config{Rate: 10, Burst: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reserve(0, 1, t0, 0); err != nil {
		t.Fatal(err)
	}
	a.OnThrottle(t0) // 10/s → 5/s: the next token is 200ms away, not 100ms
	r, err := a.Reserve(0, 1, t0, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Delay() != 200*time.Millisecond {
		t.Errorf("delay after throttle = %v, want 200ms", r.Delay())
	}
}
