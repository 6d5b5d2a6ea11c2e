package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
	"github.com/valyala/fasthttp"
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
	// served counts the Serves that add let start, until they return.
	served sync.WaitGroup
}

// add keeps ln for close and runs start (when not nil), both before any
// close that follows, so what start begins is there for Shutdown to end.
// It reports false, and closes ln, when the set was closed already: the
// server is shutting down and must not serve it. When it reports true,
// the caller serves ln and calls l.served.Done when that ends.
func (l *listenerSet) add(ln net.Listener, start func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = ln.Close()
		return false
	}
	l.lns = append(l.lns, ln)
	l.served.Add(1)
	if start != nil {
		start()
	}
	return true
}

// wait waits until every Serve add let start has returned (each does
// once its listener is closed), or ctx ends.
func (l *listenerSet) wait(ctx context.Context) {
	done := make(chan struct{})
	go func() { l.served.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
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

// conns are a fasthttp.Server's connections and the state of each, for
// Shutdown to end them without losing a request. fasthttp's own drain
// loses requests and waits for nothing:
//   - it closes a keep-alive connection it finds idle even when the
//     agent's next request has arrived, or is being read by the
//     connection's goroutine: a request sent before the drain began was
//     dropped unanswered, and many agent HTTP clients do not retry a
//     POST (RFC 9112 §9.6 lets them, it does not make them);
//   - it counts a new connection as idle only 5s after it opened
//     (net/http's rule), so a client's spare connection, dialled while
//     another came free and parked unused in its pool, held every
//     Shutdown up for up to 5s with nothing in flight.
//
// So no connection is closed from outside. Shutdown stops accepting
// first, then drains (rawio.Stop.Drain) and wakes every connection: one
// waiting for a request reads what has arrived and serves it (its answer,
// like every answer given once Shutdown has begun, says Connection: close:
// see closeWhenDraining), or, with nothing there, ends having read
// nothing, as nginx ends a keep-alive connection. A request's bytes that
// reached ballast before its listener stopped are therefore answered, and
// those sent later are never read. drain waits for every connection to
// end; what still runs when Shutdown's context ends is called off (halt).
type conns struct {
	states sync.Map // net.Conn → *atomic.Int32 holding a fasthttp.ConnState
	// stop is the connections' rawio.Stop (rawio.Listener.Stop).
	stop rawio.Stop
	// mu orders a new connection's registration with drain's wake-up:
	// one registered later reads a stop already set.
	mu       sync.Mutex
	draining atomic.Bool
	// changed is signalled (never closed) when, draining, a connection
	// changes state, so that drain looks again.
	changed chan struct{}
}

// state is the fasthttp.Server's ConnState hook. Per request it costs two
// lookups and stores, and allocates nothing.
func (cs *conns) state(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		v := new(atomic.Int32)
		v.Store(int32(st))
		cs.mu.Lock()
		cs.states.Store(c, v)
		cs.mu.Unlock()
	case fasthttp.StateActive, fasthttp.StateIdle:
		if v, ok := cs.states.Load(c); ok {
			v.(*atomic.Int32).Store(int32(st))
		}
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		cs.states.Delete(c)
	}
	if cs.draining.Load() {
		select {
		case cs.changed <- struct{}{}:
		default:
		}
	}
}

// waker is a connection whose reads a rawio.Stop ends (a *rawio.Conn).
type waker interface{ Wake() }

// drain ends the connections (see conns) and waits until they have all
// ended, or ctx ends. The caller has stopped accepting.
//
// A connection that is not a *rawio.Conn (an embedder's listener of
// another kind) cannot be woken: drain waits while a request has arrived
// on one that has yet to read it (asked); one that is new is closed once
// two looks a millisecond apart found it new and silent, and an idle one
// is left to fasthttp's drain, whose close races a request sent after
// drain's last look.
func (cs *conns) drain(ctx context.Context) {
	cs.mu.Lock()
	if cs.changed == nil {
		cs.changed = make(chan struct{}, 1)
	}
	cs.draining.Store(true)
	cs.stop.Drain()
	cs.mu.Unlock()
	cs.states.Range(func(k, _ any) bool {
		if w, ok := k.(waker); ok {
			w.Wake()
		}
		return true
	})
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	quiet := map[net.Conn]bool{} // not wakeable, new and silent at the last look
	for {
		// settled: no connection is left to wait for; poll: one that
		// cannot be woken must be looked at again.
		settled, poll := true, false
		cs.states.Range(func(k, v any) bool {
			c := k.(net.Conn)
			if _, ok := c.(waker); ok {
				settled = false // it ends by itself, changing state
				return true
			}
			// asked before idle: a request that has arrived on an idle
			// connection is taken up (the connection goes active) before
			// fasthttp's drain closes the idle ones.
			switch st := fasthttp.ConnState(v.(*atomic.Int32).Load()); {
			case st == fasthttp.StateActive:
				settled = false // its answer changes its state
				delete(quiet, c)
			case asked(c):
				settled, poll = false, true
				delete(quiet, c)
			case st == fasthttp.StateIdle:
			case quiet[c]:
				_ = c.Close()
				delete(quiet, c)
			default:
				settled, poll = false, true
				quiet[c] = true
			}
			return true
		})
		if settled {
			return
		}
		var again <-chan time.Time
		if poll {
			again = tick.C
		}
		select {
		case <-cs.changed:
		case <-again:
		case <-ctx.Done():
			return
		}
	}
}

// halt makes the connections still reading a request stop waiting for
// the rest of it (rawio.Stop.Halt): their reads fail with
// rawio.ErrHalted, and the request is answered 503 shutting_down.
func (cs *conns) halt() {
	cs.stop.Halt()
	cs.states.Range(func(k, _ any) bool {
		if w, ok := k.(waker); ok {
			w.Wake()
		}
		return true
	})
}

// quiet waits until no connection is serving a request, or ctx ends.
func (cs *conns) quiet(ctx context.Context) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := false
		cs.states.Range(func(_, v any) bool {
			busy = fasthttp.ConnState(v.(*atomic.Int32).Load()) == fasthttp.StateActive
			return !busy
		})
		if !busy {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// asked reports, without blocking or consuming anything, whether bytes
// wait to be read on c: a request its server has yet to read. A FIN, an
// error or a closed connection is not a request.
func asked(c net.Conn) bool { return rawio.Pending(c) }
