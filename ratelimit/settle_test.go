package ratelimit

import (
	"testing"
	"time"
)

// settleCases are Settle's cases for a limit of 6000 tokens per minute
// (100 per second, burst 6000), each from a full bucket: a reservation of
// estimate settled at actual leaves wantRemaining, and a request of 1000
// at the same instant then waits nextDelay.
var settleCases = []struct {
	name          string
	estimate      int
	actual        int
	wantRemaining int64
	nextDelay     time.Duration
}{
	{name: "exact", estimate: 1000, actual: 1000, wantRemaining: 5000},
	{name: "used less: difference returned", estimate: 1000, actual: 400, wantRemaining: 5600},
	{name: "used nothing", estimate: 1000, actual: 0, wantRemaining: 6000},
	{name: "negative actual reads as zero", estimate: 1000, actual: -5, wantRemaining: 6000},
	{name: "used more: difference taken", estimate: 1000, actual: 5500, wantRemaining: 500, nextDelay: 5 * time.Second},
	{name: "used far more: debt beyond the burst", estimate: 6000, actual: 12000, wantRemaining: 0, nextDelay: 70 * time.Second},
	{name: "wild usage: debt capped at 16 bursts", estimate: 1, actual: 1 << 30, wantRemaining: 0, nextDelay: 910010 * time.Millisecond},
}

func TestSettle(t *testing.T) {
	for _, tt := range settleCases {
		t.Run(tt.name, func(t *testing.T) {
			b := mustBucket(t, PerMinute(6000))
			r, err := b.Reserve(0, tt.estimate, t0, 0)
			if err != nil {
				t.Fatal(err)
			}
			r.Settle(tt.actual, t0)
			r.Settle(tt.actual*2, t0)  // a second Settle does nothing
			r.Cancel(at(-time.Second)) // nor does a Cancel after Settle
			if got := b.Quota(0, t0).Remaining; got != tt.wantRemaining {
				t.Errorf("remaining after Settle = %d, want %d", got, tt.wantRemaining)
			}
			next, err := b.Reserve(0, 1000, t0, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if got := next.Delay(); !closeTo(got, tt.nextDelay) {
				t.Errorf("next 1000 tokens wait %v, want %v", got, tt.nextDelay)
			}
		})
	}
}

func TestSettleRefundIsCappedAtBurst(t *testing.T) {
	b := mustBucket(t, PerMinute(600))
	r, err := b.Reserve(0, 100, t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A minute later the bucket is full again; the refund must not lift it
	// past its burst.
	r.Settle(0, at(time.Minute))
	if got := b.Quota(0, at(time.Minute)).Remaining; got != 600 {
		t.Errorf("remaining = %d, want 600 (the burst)", got)
	}
	if _, err := b.Reserve(0, 600, at(time.Minute), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reserve(0, 1, at(time.Minute), 0); err == nil {
		t.Error("refund lifted the bucket past its burst")
	}
}

func TestSettleOnKeyedBucket(t *testing.T) {
	k := mustKeyed(t, KeyedConfig{Config: PerMinute(6000), MaxKeys: 10})
	r, err := k.Reserve(7, 2000, t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.Settle(500, t0)
	if got := k.Quota(7, t0).Remaining; got != 5500 {
		t.Errorf("key 7 remaining = %d, want 5500", got)
	}
	if got := k.Quota(8, t0).Remaining; got != 6000 {
		t.Errorf("key 8 remaining = %d, want 6000", got)
	}
}

// recordingSettler stands in for a distributed backend.
type recordingSettler struct {
	cancels []string
	adjusts []int
}

func (s *recordingSettler) CancelReservation(key uint64, n int, at, now time.Time) {
	s.cancels = append(s.cancels, at.Sub(now).String())
}

func (s *recordingSettler) AdjustReservation(key uint64, delta int, now time.Time) {
	s.adjusts = append(s.adjusts, delta)
}

var _ Settler = (*recordingSettler)(nil)

func TestRemoteReservationCallsBack(t *testing.T) {
	s := &recordingSettler{}
	r := NewReservation(s, 1, 100, t0, time.Second)
	if r.Delay() != time.Second || r.DelayFrom(at(400*time.Millisecond)) != 600*time.Millisecond || r.Tokens() != 100 {
		t.Fatalf("reservation = %v, %v, %d", r.Delay(), r.DelayFrom(at(400*time.Millisecond)), r.Tokens())
	}
	r.Cancel(at(400 * time.Millisecond))
	r.Cancel(at(400 * time.Millisecond))
	if len(s.cancels) != 1 || s.cancels[0] != "600ms" {
		t.Errorf("cancels = %v, want one, 600ms before its time", s.cancels)
	}

	r2 := NewReservation(s, 1, 100, t0, 0)
	r2.Settle(130, t0)
	r3 := NewReservation(s, 1, 100, t0, 0)
	r3.Settle(40, t0)
	if len(s.adjusts) != 2 || s.adjusts[0] != 30 || s.adjusts[1] != -60 {
		t.Errorf("adjusts = %v, want [30 -60]", s.adjusts)
	}
}

func TestZeroReservationIsInert(t *testing.T) {
	var r Reservation
	r.Cancel(t0)
	r.Settle(100, t0)
	if r.Delay() != 0 || r.Tokens() != 0 {
		t.Error("zero Reservation is not empty")
	}
}

func closeTo(got, want time.Duration) bool {
	d := got - want
	return d > -time.Millisecond && d < time.Millisecond
}
