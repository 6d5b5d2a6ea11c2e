package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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

// conns are a fasthttp.Server's connections and the state of each, for
// Shutdown to settle them before fasthttp's own drain begins. Left to
// itself, that drain lost requests and waited for nothing:
//   - it counts a new connection as idle only 5s after it opened
//     (net/http's rule), so a client's spare connection, dialled while
//     another came free and parked unused in its pool, held every
//     Shutdown up for up to 5s with nothing in flight;
//   - it closes a keep-alive connection it finds idle even when the next
//     request has arrived and its goroutine has not yet woken to read it:
//     a request sent before the drain began was dropped unanswered.
//
// drain waits (a second at most) until every connection on which a
// request has arrived has taken it up (its answer then ends the
// connection: see closeWhenDraining), and closes the new connections on
// which nothing has arrived, as nginx does; fasthttp's drain then closes
// the idle ones. A connection accepted after that (just before the
// listener closed) is closed as it comes, unless its request is there.
type conns struct {
	states  sync.Map // net.Conn → *atomic.Int32 holding a fasthttp.ConnState
	mu      sync.Mutex
	closing bool
}

// state is the fasthttp.Server's ConnState hook. Per request it costs two
// lookups and stores, and allocates nothing.
func (cs *conns) state(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if cs.closing {
			closeUnlessAsked(c)
			return
		}
		v := new(atomic.Int32)
		v.Store(int32(st))
		cs.states.Store(c, v)
	case fasthttp.StateActive, fasthttp.StateIdle:
		if v, ok := cs.states.Load(c); ok {
			v.(*atomic.Int32).Store(int32(st))
		}
	case fasthttp.StateClosed, fasthttp.StateHijacked:
		cs.states.Delete(c)
	}
}

// drain settles the connections before fasthttp's drain (see conns), for
// a second at most or until ctx ends.
//
// It waits while a request waits to be read on any connection: one
// finishing an answer given just before the drain began (without
// Connection: close) is idle next, and fasthttp's drain, which ends such
// a connection as soon as its answer is out, would drop the agent's next
// request, sent before the drain began, unread. An idle connection is
// left to fasthttp, whose close cannot race its goroutine's read of a
// request that arrives meanwhile. A new one is closed here once two looks
// a millisecond apart found it new and silent: a goroutine that has just
// read its first request (the socket is silent again) has by the second
// look marked the connection active. A request sent after the last look
// on a connection whose last answer went out before the drain began is
// still dropped, as by any server that closes idle keep-alive
// connections (RFC 9112 §9.6: the client retries it).
func (cs *conns) drain(ctx context.Context) {
	cs.mu.Lock()
	cs.closing = true
	cs.mu.Unlock()
	give, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	quiet := map[net.Conn]bool{} // new and silent at the last look
	for {
		settled := true
		cs.states.Range(func(k, v any) bool {
			c := k.(net.Conn)
			switch st := fasthttp.ConnState(v.(*atomic.Int32).Load()); {
			case asked(c):
				settled = false
				delete(quiet, c)
			case st != fasthttp.StateNew:
				delete(quiet, c)
			case quiet[c]:
				_ = c.Close()
				delete(quiet, c)
			default:
				settled = false
				quiet[c] = true
			}
			return true
		})
		if settled {
			return
		}
		select {
		case <-tick.C:
		case <-give.Done():
			return
		}
	}
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

// closeUnlessAsked closes c unless a request waits on it (see asked).
// fasthttp's goroutine for c then ends on net.ErrClosed, which it answers
// with nothing.
func closeUnlessAsked(c net.Conn) {
	if !asked(c) {
		_ = c.Close()
	}
}

// asked reports, without blocking or consuming anything, whether bytes
// wait to be read on c: a request its server has yet to read. A FIN, an
// error or a closed connection is not a request.
func asked(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var pending bool
	var buf [1]byte
	_ = raw.Control(func(fd uintptr) {
		for {
			n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err != syscall.EINTR {
				pending = err == nil && n > 0
				return
			}
		}
	})
	return pending
}
