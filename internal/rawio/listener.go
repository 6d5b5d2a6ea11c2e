package rawio

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// Listener wraps the connections a TCP listener accepts (see Wrap). It
// is for a listener of HTTP/1 agents: its connections also follow each
// request head as it is read, and end a read that waits for more of a
// head that a bare LF already ended with ErrBareLFHead.
type Listener struct {
	net.Listener
	// Stop, when not nil, is how the server stops its connections
	// without losing requests (see Stop).
	Stop *Stop
	// Short, when not nil, hears of the shortages Accept waits out (see
	// Accept): with the error when one begins, and with nil when a
	// connection is accepted again. It is called from Accept's goroutine,
	// once per change, never per failed try.
	Short func(err error)
}

// Accept pauses between tries of an accept that failed for want of a
// local resource: 5ms, doubling up to acceptPauseMax.
const (
	acceptPauseMin = 5 * time.Millisecond
	acceptPauseMax = 100 * time.Millisecond
)

// Accept waits for the next connection and returns it wrapped.
//
// When the process or the system is out of what a new connection needs —
// file descriptors (EMFILE, ENFILE) or socket memory (ENOBUFS, ENOMEM) —
// Accept does not return the error: fasthttp's Serve ends on any accept
// error but a timeout, and the server would stop serving for good over a
// shortage that ends as soon as a connection closes. Nor may it simply try
// again: Linux's accept takes the descriptor before it looks for a
// connection, so it fails at once, connection or not, for as long as the
// shortage lasts. A connection stays in the listen backlog instead, and
// Accept tries again after a pause that doubles from 5ms up to 100ms
// (net/http's rule, with a lower ceiling, so that a connection waits at
// most that long once a descriptor is free), which costs a few system
// calls a second rather than a spinning core. A listener closed during a
// pause ends Accept at the next try, with the closed listener's error.
func (l Listener) Accept() (net.Conn, error) {
	var pause time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !shortage(err) {
				return nil, err
			}
			if pause == 0 {
				pause = acceptPauseMin
				if l.Short != nil {
					l.Short(err)
				}
			} else {
				pause = min(2*pause, acceptPauseMax)
			}
			time.Sleep(pause)
			continue
		}
		if pause != 0 && l.Short != nil {
			l.Short(nil)
		}
		w := Wrap(c)
		if rc, ok := w.(*Conn); ok {
			rc.heads = true
			rc.head.start()
			rc.stop = l.Stop
		}
		return w, nil
	}
}

// shortage reports an accept error that says a local resource ran out,
// which a connection closing elsewhere ends.
func shortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
