package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
)

// defaultAgentCheck is how often the agent watch looks at long calls
// (Options.AgentCheckEvery).
const defaultAgentCheck = time.Second

// agentWatch calls off upstream work for agents that have hung up. An
// agent's HTTP client gives up on a slow model call (its own timeout, a
// user's Ctrl-C) and closes the connection; without the watch, ballast
// would wait for the upstream's answer to the end of the attempt — holding
// a concurrency slot, spending the provider's tokens, for nobody. Like
// Envoy and nginx (proxy_ignore_client_abort off), ballast then closes the
// upstream connection, so the upstream sees its client go, too.
//
// Calls register for the time ballast works on them: the wait for a
// concurrency slot (acquireSlot), the attempts and the waits between them
// (exchangeUpstream). Every interval, the watch looks
// at the calls that have run for at least an interval — short calls cost
// no system call at all — with one non-consuming peek at each agent's
// socket (rawio.Conn.HungUpNow). A call whose agent has hung up has its
// attempt called off (tryCancel) and its waits cut short (gone).
//
// Calls detached from their agent register without a connection, which
// the watch never looks at: an idempotency-guarded call runs on so that
// the agent's retry attaches to it, and an async job has no agent. They
// are there for halt: when Shutdown's drain runs out of time, every call
// still registered is called off as if its agent had left, and
// watchedCall.why then says "shutting_down".
type agentWatch struct {
	every time.Duration

	mu     sync.Mutex
	calls  watchedCall // sentinel of a circular list
	pool   sync.Pool
	halted bool // under mu: calls that register are called off at once
}

// watchedCall is one registered call. Pooled; its fields are reset on add.
type watchedCall struct {
	conn  *rawio.Conn
	since time.Time // when the request arrived (wall clock)
	// cancel calls the running attempt off; once the agent is gone, every
	// later attempt is called off at once too.
	cancel tryCancel
	// gone is signalled (once, never closed, so the call can be pooled)
	// when the agent is found gone, waking a wait in pause.
	gone chan struct{}
	// onLeave, when set, is called (under agentWatch.mu) when the agent
	// is found gone: it ends a wait that selects on a context, such as
	// the wait for a concurrency slot.
	onLeave func()
	left    bool // under agentWatch.mu
	// halted: Shutdown called the call off (agentWatch.halt), not its
	// agent. Set before the call is cancelled.
	halted atomic.Bool

	prev, next *watchedCall
}

func newAgentWatch(every time.Duration) *agentWatch {
	if every <= 0 {
		every = defaultAgentCheck
	}
	w := &agentWatch{every: every}
	w.calls.prev, w.calls.next = &w.calls, &w.calls
	return w
}

// add registers a call from the agent on conn, which arrived at since.
// The caller must remove it before the request's handler returns (the
// connection then serves the agent's next request).
func (w *agentWatch) add(conn *rawio.Conn, since time.Time) *watchedCall {
	return w.addLeaving(conn, since, nil)
}

// addLeaving is add with onLeave, called when the agent is found gone.
func (w *agentWatch) addLeaving(conn *rawio.Conn, since time.Time, onLeave func()) *watchedCall {
	c, _ := w.pool.Get().(*watchedCall)
	if c == nil {
		c = &watchedCall{gone: make(chan struct{}, 1)}
	}
	c.conn, c.since, c.left = conn, since, false
	c.cancel = tryCancel{}
	c.onLeave = onLeave
	c.halted.Store(false)
	select {
	case <-c.gone: // a signal its previous call never read
	default:
	}
	w.mu.Lock()
	c.prev, c.next = w.calls.prev, &w.calls
	w.calls.prev.next = c
	w.calls.prev = c
	if w.halted {
		w.haltLocked(c)
	}
	w.mu.Unlock()
	return c
}

// halt calls off every call registered, and every one that registers
// later (Shutdown, when its drain runs out of time): each one's attempt
// returns at once and its waits end, as when its agent leaves.
func (w *agentWatch) halt() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.halted = true
	for c := w.calls.next; c != &w.calls; c = c.next {
		w.haltLocked(c)
	}
}

func (w *agentWatch) haltLocked(c *watchedCall) {
	if c.left {
		return
	}
	c.left = true
	c.halted.Store(true)
	c.cancel.cancel()
	c.gone <- struct{}{}
	if c.onLeave != nil {
		c.onLeave()
	}
}

// isHalted reports whether halt was called.
func (w *agentWatch) isHalted() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.halted
}

// remove unregisters c; the watch no longer touches its connection.
func (w *agentWatch) remove(c *watchedCall) {
	w.mu.Lock()
	c.prev.next, c.next.prev = c.next, c.prev
	c.prev, c.next = nil, nil
	w.mu.Unlock()
	c.conn, c.onLeave = nil, nil
	w.pool.Put(c)
}

// scan checks the calls that arrived at least an interval before now and
// calls off those whose agent has hung up. It returns how many it called
// off. The peeks run under the lock, so that no call is removed (and its
// connection handed back to the server) while its socket is looked at.
func (w *agentWatch) scan(now time.Time) int {
	old := now.Add(-w.every)
	n := 0
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := w.calls.next; c != &w.calls; c = c.next {
		if c.since.After(old) {
			// Calls register in about their order of arrival (one that
			// queued for a bulkhead slot comes later): stop at the first
			// young one.
			break
		}
		if c.left || c.conn == nil || !c.conn.HungUpNow() {
			continue
		}
		c.left = true
		c.cancel.cancel()
		c.gone <- struct{}{}
		if c.onLeave != nil {
			c.onLeave()
		}
		n++
	}
	return n
}

// run scans every interval until ctx ends.
func (w *agentWatch) run(ctx context.Context) {
	tick := time.NewTicker(w.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			w.scan(now)
		}
	}
}

// leftC is the channel a wait selects on to end when c's agent hangs up;
// nil (never ready) when c is nil.
func (c *watchedCall) leftC() <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.gone
}

// attemptCancel is what calls c's attempts off; nil when c is nil.
func (c *watchedCall) attemptCancel() *tryCancel {
	if c == nil {
		return nil
	}
	return &c.cancel
}

// hungUp reports whether the watch found c's agent gone, or Shutdown
// called c off (see why).
func (c *watchedCall) hungUp() bool {
	return c != nil && c.cancel.isCanceled()
}

// why is the reason a call that hungUp stopped: ReasonShuttingDown when
// Shutdown called it off, ReasonAgentGone otherwise.
func (c *watchedCall) why() Reason {
	if c != nil && c.halted.Load() {
		return ReasonShuttingDown
	}
	return ReasonAgentGone
}
