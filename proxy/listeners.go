package proxy

import (
	"net"
	"sync"
)

// listenerSet holds the listeners Serve and ServeAdmin were given, so that
// Shutdown closes each of them whether or not fasthttp's Serve had reached
// it yet. fasthttp's Shutdown closes only the listeners its Serve has
// registered: a Shutdown that came first returned at once, and the Serve
// that followed accepted connections forever.
type listenerSet struct {
	mu     sync.Mutex
	closed bool
	lns    []net.Listener
}

// add keeps ln for close and runs start (when not nil), both before any
// close that follows, so what start begins is there for Shutdown to end.
// It reports false, and closes ln, when the set was closed already: the
// server is shutting down and must not serve it.
func (l *listenerSet) add(ln net.Listener, start func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = ln.Close()
		return false
	}
	l.lns = append(l.lns, ln)
	if start != nil {
		start()
	}
	return true
}

// close closes every listener added, and every one added later. A
// listener fasthttp closed already reports an error, which is ignored.
func (l *listenerSet) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for _, ln := range l.lns {
		_ = ln.Close()
	}
	l.lns = nil
}
