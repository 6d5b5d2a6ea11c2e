package cache

import (
	"context"
	"errors"
	"sync"
)

// ErrLeaderPanicked is returned to callers collapsed onto a call whose
// function panicked (the panic itself propagates in the leader).
var ErrLeaderPanicked = errors.New("cache: collapsed call panicked")

// Group collapses concurrent calls for the same Key into one: the first
// caller (the leader) runs fn, and every caller that arrives before fn
// returns waits for and shares its result. Use it for fresh-mode misses so a
// burst of identical requests costs one upstream call. The zero Group is
// ready to use; it starts no goroutines.
type Group[T any] struct {
	mu    sync.Mutex
	calls map[Key]*call[T]
}

type call[T any] struct {
	done    chan struct{}
	val     T
	err     error
	waiters int // callers collapsed onto this call; guarded by Group.mu
}

// Do runs fn once for all concurrent callers with the same key and returns
// its result. shared is true for callers that waited on another's call (the
// RFC 9211 "collapsed" parameter). A waiter whose ctx ends first returns
// ctx.Err() without disturbing the others; the leader is not bound by ctx
// here: fn should use it. The shared value is the same for all callers:
// it must be read-only (an *Entry is).
func (g *Group[T]) Do(ctx context.Context, key Key, fn func() (T, error)) (v T, err error, shared bool) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[Key]*call[T])
	}
	if c, ok := g.calls[key]; ok {
		c.waiters++
		g.mu.Unlock()
		select {
		case <-c.done:
			return c.val, c.err, true
		case <-ctx.Done():
			g.mu.Lock()
			c.waiters--
			g.mu.Unlock()
			var zero T
			return zero, ctx.Err(), true
		}
	}
	c := &call[T]{done: make(chan struct{}), err: ErrLeaderPanicked}
	g.calls[key] = c
	g.mu.Unlock()

	defer func() {
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(c.done)
	}()
	c.val, c.err = fn()
	return c.val, c.err, false
}

// Waiters reports how many callers are waiting on the call running for key
// (0 when none is); waiters that gave up on their context are not counted.
func (g *Group[T]) Waiters(key Key) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.calls[key]; ok {
		return c.waiters
	}
	return 0
}

// AllWaiters reports how many callers are waiting, on every key's call
// together (see Waiters).
func (g *Group[T]) AllWaiters() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.calls {
		n += c.waiters
	}
	return n
}

// InFlight reports how many keys have a call running.
func (g *Group[T]) InFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.calls)
}
