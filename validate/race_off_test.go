//go:build !race

package validate

// raceEnabled reports a -race build, whose instrumentation allocates and so
// voids the allocation gates.
const raceEnabled = false
