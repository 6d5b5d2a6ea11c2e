package store

import "time"

// Records returns up to max of the records the store holds that are live
// at now, each as seen at now (an InFlight record past its lease reads as
// UnknownOutcome): the claims in flight first, then the completed records,
// least recently used first. It does not change what is recently used.
// max ≤ 0 means no bound beyond the store's own (MaxRecords).
func (m *Memory) Records(now time.Time, max int) []*Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	if max <= 0 {
		max = len(m.inflight) + m.done.Len()
	}
	out := make([]*Record, 0, min(max, len(m.inflight)+m.done.Len()))
	for _, r := range m.inflight {
		if len(out) == max {
			return out
		}
		if !r.expired(now) {
			out = append(out, r.viewAt(now))
		}
	}
	for _, k := range m.done.Keys() {
		if len(out) == max {
			break
		}
		if r, ok := m.done.Peek(k); ok && !r.expired(now) {
			out = append(out, r)
		}
	}
	return out
}

// Forget removes the record of key whose claim token is token, in any
// state, and reports whether it did; a record of the key with another
// token (a later claim) stays. The waiters of a claim in flight it removes
// are woken and find the key free. A holder of a removed claim gets
// ErrNotHeld from Complete and Release.
func (m *Memory) Forget(key string, token uint64) bool {
	m.mu.Lock()
	if r := m.inflight[key]; r != nil && r.Token == token {
		delete(m.inflight, key)
		m.mu.Unlock()
		m.wakeup.wake(key)
		return true
	}
	defer m.mu.Unlock()
	if r, ok := m.done.Peek(key); ok && r.Token == token {
		m.done.Remove(key)
		return true
	}
	return false
}
