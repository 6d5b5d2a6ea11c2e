package bench

import (
	"time"

	"golang.org/x/sys/unix"
)

// setTimerSlack sets the calling thread's timer slack in nanoseconds (0:
// the thread's default). A failed prctl leaves the slack as it was.
func setTimerSlack(ns uintptr) { _ = unix.Prctl(unix.PR_SET_TIMERSLACK, ns, 0, 0, 0) }

// sleepFinely sleeps for d in nanosleep(2), on the calling thread, within
// the thread's timer slack. An EINTR (the runtime's signals) returns
// early; the caller's loop sleeps again.
func sleepFinely(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil)
}
