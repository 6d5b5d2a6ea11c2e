//go:build !linux

package bench

import "time"

// setTimerSlack does nothing: timer slack is Linux's.
func setTimerSlack(uintptr) {}

// sleepFinely sleeps for d with time.Sleep, as finely as the platform's
// timers allow.
func sleepFinely(d time.Duration) { time.Sleep(d) }
