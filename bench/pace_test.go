package bench

import (
	"context"
	"testing"
	"time"
)

// onPacer runs f with a pacer and stops it.
func onPacer(tb testing.TB, f func(p *pacer)) {
	tb.Helper()
	p := newPacer()
	defer p.stop()
	f(p)
}

func TestPacerNeverWakesEarly(t *testing.T) {
	onPacer(t, func(p *pacer) {
		// Waits below, around and above the hand-over from the Go timer.
		for _, wait := range []time.Duration{0, 50 * time.Microsecond, 500 * time.Microsecond, coarseWait, coarseWait + 700*time.Microsecond} {
			for range 5 {
				at := time.Now().Add(wait)
				if !p.sleepUntil(context.Background(), at) {
					t.Fatalf("wait %v: reported a cancelled context", wait)
				}
				if now := time.Now(); now.Before(at) {
					t.Fatalf("wait %v: woke %v early", wait, at.Sub(now))
				}
			}
		}
	})
}

func TestPacerPastInstantReturnsAtOnce(t *testing.T) {
	onPacer(t, func(p *pacer) {
		if !p.sleepUntil(context.Background(), time.Now().Add(-time.Hour)) {
			t.Error("a live context reported as cancelled")
		}
	})
}

func TestPacerEndsLongWaitWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	onPacer(t, func(p *pacer) {
		go cancel()
		if p.sleepUntil(ctx, time.Now().Add(time.Hour)) {
			t.Error("an hour's wait returned true after its context ended")
		}
	})
	// A cancelled context ends even a wait short enough for nanosleep.
	onPacer(t, func(p *pacer) {
		if p.sleepUntil(ctx, time.Now().Add(100*time.Microsecond)) {
			t.Error("a short wait returned true with its context ended")
		}
	})
}

// BenchmarkPacerLateness reports how late the pacer wakes for the 500 µs
// waits of a 2,000 rps open loop (late-µs/op): about 30 µs here, where a
// Go timer wakes about 0.6 ms late (see pacer).
func BenchmarkPacerLateness(b *testing.B) {
	onPacer(b, func(p *pacer) {
		var late time.Duration
		b.ResetTimer()
		for range b.N {
			at := time.Now().Add(500 * time.Microsecond)
			p.sleepUntil(context.Background(), at)
			late += time.Since(at)
		}
		b.ReportMetric(float64(late.Microseconds())/float64(b.N), "late-µs/op")
	})
}
