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
