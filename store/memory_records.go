package store

import "time"

// ScanChunk is the most records a Scan looks at per call of Next, while
// it holds the store's lock: an operation on the store waits behind at
// most one chunk of a walk, however many records the store holds.
const ScanChunk = 256

// slot is a record's place in a Memory store's scan order (the order of
// the claims), or a Scan's place in it (key empty, cursor true).
type slot struct {
	key        string
	token      uint64
	cursor     bool
	prev, next *slot
}

// scanList is a circular list of slots around a sentinel.
type scanList struct{ root slot }

func (l *scanList) init() { l.root.prev, l.root.next = &l.root, &l.root }

func (l *scanList) pushBack(s *slot) {
	s.prev, s.next = l.root.prev, &l.root
	l.root.prev.next = s
	l.root.prev = s
}

func (l *scanList) remove(s *slot) {
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
}

// link places the new claim of key with token last in the scan order.
// m.mu must be held.
func (m *Memory) link(key string, token uint64) {
	if m.slots == nil {
		return // not Scannable
	}
	s := &slot{key: key, token: token}
	m.slots[key] = s
	m.order.pushBack(s)
}

// unlink takes key's record out of the scan order (it is no longer held);
// a no-op when it is not in it. m.mu must be held.
func (m *Memory) unlink(key string) {
	if s := m.slots[key]; s != nil {
		delete(m.slots, key)
		m.order.remove(s)
	}
}

// Scan is a walk over the records of a Memory store, a chunk at a time
// (see Memory.Scan). It is not safe for concurrent use; the walks of
// several goroutines each need their own Scan.
type Scan struct {
	m  *Memory
	at *slot // the walk's place in m.order; nil once the walk is over
	// steps is how many slots the last Next looked at with m.mu held.
	steps int
}

// Scan starts a walk over the records the store holds, oldest claim
// first, that Next returns a chunk at a time, releasing the store's lock
// between chunks (Records, in contrast, holds it for the whole walk).
// The store may change between chunks; a walk never returns a record (a
// claim, by its token, whether in flight or completed since) twice, and
// returns every record the store holds from the start of the walk to its
// end, in the state it has when its chunk is taken. A record made during
// the walk may be returned or not; one removed or taken over before its
// chunk is not. Close ends a walk that is not run to its end. On a store
// not opened Scannable the walk is empty.
func (m *Memory) Scan() *Scan {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &Scan{m: m}
	if m.closed || m.slots == nil {
		return s
	}
	s.at = &slot{cursor: true}
	s.at.prev, s.at.next = &m.order.root, m.order.root.next
	m.order.root.next.prev = s.at
	m.order.root.next = s.at
	return s
}

// Next returns the records live at now of the walk's next chunk, each as
// seen at now (an InFlight record past its lease reads as
// UnknownOutcome), and whether the walk goes on. It looks at no more than
// ScanChunk records, so it may return none while more is true. Once the
// walk is over (or the store closed) it returns nil, false.
func (s *Scan) Next(now time.Time) (recs []*Record, more bool) {
	s.steps = 0
	if s.at == nil {
		return nil, false
	}
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		s.end()
		return nil, false
	}
	for s.steps < ScanChunk {
		next := s.at.next
		if next == &m.order.root {
			s.end()
			return recs, false
		}
		s.steps++
		// Step over next: the cursor goes after it.
		m.order.remove(s.at)
		s.at.prev, s.at.next = next, next.next
		next.next.prev = s.at
		next.next = s.at
		if next.cursor {
			continue // another walk's place
		}
		r := m.inflight[next.key]
		if r == nil {
			r, _ = m.done.Peek(next.key)
		}
		if r == nil || r.Token != next.token || r.expired(now) {
			continue
		}
		recs = append(recs, r.viewAt(now))
	}
	return recs, true
}

// Close ends the walk; Next then returns nil, false. It may be called
// more than once.
func (s *Scan) Close() {
	if s.at == nil {
		return
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.end()
}

// end takes the walk's place out of the store's order. m.mu must be held.
func (s *Scan) end() {
	if s.at != nil && s.at.next != nil {
		s.m.order.remove(s.at)
	}
	s.at = nil
}

// Records returns up to max of the records the store holds that are live
// at now, each as seen at now (an InFlight record past its lease reads as
// UnknownOutcome): the claims in flight first, then the completed records,
// least recently used first. It does not change what is recently used.
// max ≤ 0 means no bound beyond the store's own (MaxRecords). It holds the
// store's lock for the whole walk: a store of many records that serves
// requests meanwhile is walked with Scan, a chunk at a time.
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
		m.unlink(key)
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
