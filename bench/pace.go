package bench

import (
	"context"
	"runtime"
	"time"
)

// A pacer wakes the open loop's schedule at each request's intended time,
// to within tens of microseconds.
//
// A Go timer cannot: when the process has nothing else to run, the
// runtime sleeps in epoll_wait, whose timeout is whole milliseconds, so a
// 500 µs wait (2,000 rps) ends 0 to 1 ms late. Every latency counts from
// the intended time (no coordinated omission), so that lateness was
// charged to the target: direct requests, about 0.1 ms on loopback, read
// 0.6 ms at p50 and 1.2 ms at p99, and a proxy's added latency was a small
// difference between two large, noisy figures. The pacer instead sleeps
// in nanosleep(2), its goroutine locked to a thread whose timer slack
// (50 µs by default) is set to 1 ns. What remains is the kernel's wake-up,
// about 30 µs here (BenchmarkPacerLateness). Long waits first sleep on a
// Go timer, so that a cancelled context still ends them at once. (Timer
// slack and nanosleep are Linux's, pace_linux.go; elsewhere the pacer
// sleeps with time.Sleep, which is as coarse as the platform's timers.)
type pacer struct{ timer *time.Timer }

// coarseWait is how far ahead of its deadline a long wait hands over from
// the Go timer to nanosleep: more than the timer's 1 ms granularity.
const coarseWait = 2 * time.Millisecond

// newPacer locks the calling goroutine to its thread and sets the
// thread's timer slack; stop undoes both. A failed prctl leaves the
// default slack (the pacer is then 50 µs coarser, never wrong).
//
// The thread must outlive the pacer: ending it instead (a goroutine that
// returns still locked) would kill every child process that thread
// started, since the harness starts them with Pdeathsig, which follows
// the parent thread, not the process.
func newPacer() *pacer {
	runtime.LockOSThread()
	setTimerSlack(1)
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &pacer{timer: t}
}

// stop restores the thread's default timer slack and unlocks it. It must
// run on newPacer's goroutine.
func (p *pacer) stop() {
	p.timer.Stop()
	setTimerSlack(0) // 0: the thread's default
	runtime.UnlockOSThread()
}

// sleepUntil returns at at (or at once when at has passed), or false as
// soon as ctx ends.
func (p *pacer) sleepUntil(ctx context.Context, at time.Time) bool {
	if wait := time.Until(at); wait > coarseWait {
		p.timer.Reset(wait - coarseWait)
		select {
		case <-p.timer.C:
		case <-ctx.Done():
			p.timer.Stop()
			return false
		}
	}
	for {
		wait := time.Until(at)
		if wait <= 0 {
			return ctx.Err() == nil
		}
		sleepFinely(wait)
	}
}
