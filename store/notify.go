package store

import "sync"

// notifier wakes the Waits on a key when its claim finishes. A waiter
// subscribes before it reads the record, so a wake-up between the read and
// the wait is never lost. Entries live only while someone waits.
type notifier struct {
	mu     sync.Mutex
	subs   map[string]*subscription
	closed bool
}

type subscription struct {
	ch   chan struct{}
	refs int
}

func newNotifier() *notifier { return &notifier{subs: make(map[string]*subscription)} }

// subscribe returns a channel closed at the next wake(key) or closeAll, and
// a function that must be called when the waiter stops waiting.
func (n *notifier) subscribe(key string) (<-chan struct{}, func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.subs[key]
	if s == nil {
		s = &subscription{ch: make(chan struct{})}
		if n.closed {
			close(s.ch)
		} else {
			n.subs[key] = s
		}
	}
	s.refs++
	return s.ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		s.refs--
		if s.refs == 0 && n.subs[key] == s {
			delete(n.subs, key)
		}
	}
}

// wake wakes every waiter of key.
func (n *notifier) wake(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s := n.subs[key]; s != nil {
		close(s.ch)
		delete(n.subs, key)
	}
}

// closeAll wakes every waiter and makes later subscriptions fire at once.
func (n *notifier) closeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for k, s := range n.subs {
		close(s.ch)
		delete(n.subs, k)
	}
}

// waiting reports how many keys have waiters (tests use it to know that a
// goroutine has started waiting).
func (n *notifier) waiting(key string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s := n.subs[key]; s != nil {
		return s.refs
	}
	return 0
}
