package proxy

import "github.com/ballast-proxy/ballast/supervise"

// HealthEntries is how many breakers and retry budgets the server keeps,
// for tests of what a reload leaves behind.
func (s *Server) HealthEntries() int {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	return len(s.health.all)
}

// BoardRoutes is how many routes the status board keeps state for.
func (s *Server) BoardRoutes() int { return s.status.board.Len() }

// DescribeFault is how /status words a failure (an upstream's
// last_failure.reason, a failure's detail).
func DescribeFault(f *supervise.Fault) string { return faultText(f) }

// CollapsedWaiters is how many fresh-mode cache misses on route wait for
// an identical one already sent upstream (0 for a route without a cache).
func (s *Server) CollapsedWaiters(route string) int {
	for _, r := range s.table.Load().routes {
		if r.name == route && r.cache != nil {
			return r.cache.group.AllWaiters()
		}
	}
	return 0
}
