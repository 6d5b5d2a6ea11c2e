//go:build race

package supervise

// raceEnabled reports a -race build, whose instrumentation allocates and so
// voids the allocation gates.
const raceEnabled = true
