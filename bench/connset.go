package bench

import (
	"net"
	"sync"
)

// connSet holds a client's open connections, so that the end of a run can
// close them all at once: a request in flight on one then fails at once
// instead of at its timeout. Its zero value is empty and ready.
type connSet struct {
	mu     sync.Mutex
	open   map[*trackedConn]struct{}
	closed bool
}

// trackedConn is a connection that leaves its set when it closes.
type trackedConn struct {
	net.Conn
	set *connSet
}

// add returns c, tracked; once the set is closed, c is closed at once.
func (s *connSet) add(c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, set: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return tc
	}
	if s.open == nil {
		s.open = map[*trackedConn]struct{}{}
	}
	s.open[tc] = struct{}{}
	return tc
}

// closeAll closes every open connection, and every one added later.
func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	open := s.open
	s.open = nil
	s.mu.Unlock()
	for tc := range open {
		_ = tc.Conn.Close()
	}
}

func (c *trackedConn) Close() error {
	c.set.mu.Lock()
	delete(c.set.open, c)
	c.set.mu.Unlock()
	return c.Conn.Close()
}
