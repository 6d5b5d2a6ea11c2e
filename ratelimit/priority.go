package ratelimit

import "bytes"

// Priority orders requests waiting in a Bulkhead queue. The zero value is
// PriorityNormal.
type Priority uint8

const (
	// PriorityNormal is interactive work: always admitted before any waiting
	// low-priority request, and may take a low-priority request's place in a
	// full queue.
	PriorityNormal Priority = iota
	// PriorityLow is background work: it waits behind every normal request.
	PriorityLow
)

// String returns "normal" or "low".
func (p Priority) String() string {
	if p == PriorityLow {
		return "low"
	}
	return "normal"
}

// ParsePriority reads an X-Ballast-Priority value: "low" (any case,
// surrounding spaces ignored) is PriorityLow; anything else, absent included,
// is PriorityNormal, so that a malformed header never demotes a request.
func ParsePriority(v []byte) Priority {
	if bytes.EqualFold(bytes.TrimSpace(v), []byte("low")) {
		return PriorityLow
	}
	return PriorityNormal
}
