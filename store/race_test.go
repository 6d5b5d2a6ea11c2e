//go:build race

package store

// raceEnabled: the race detector makes sync.Pool drop items, so allocation
// gates are skipped under -race.
const raceEnabled = true
