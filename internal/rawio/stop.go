package rawio

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Stop tells a Listener's connections how their server is stopping, so
// that it can end them without losing a request it has begun to read, or
// reading one it will not answer. Closing a keep-alive connection from
// outside cannot do that: the agent's next request may arrive just as it
// closes, and once its goroutine has read the request, the close drops it
// unanswered.
//
// The zero value is serving: reads wait as usual.
type Stop struct{ v atomic.Int32 }

const (
	serving int32 = iota
	draining
	halted
)

// Drain makes every read that waits for the first byte of a request (on a
// new connection, or on a kept-alive one whose last answer went out) take
// what has arrived and wait for nothing more: a request already there is
// read and served, and with nothing there the read fails at once with
// net.ErrClosed, having read nothing, so the server closes the connection
// and whatever the agent sends later is never read. Reads of a request
// begun (the rest of a head, a body) still wait, under their deadlines.
// A read waiting already goes on waiting until the connection's Wake.
func (s *Stop) Drain() { s.v.CompareAndSwap(serving, draining) }

// Halt is Drain, and makes the reads of a request begun stop waiting too:
// with nothing more there they fail with ErrHalted. A server calls it when
// it will wait no longer (its drain ran out of time), to answer such a
// request rather than cut its connection.
func (s *Stop) Halt() { s.v.Store(halted) }

// ErrHalted is the error of a read of a request begun, after Stop.Halt,
// that would have had to wait for more of it.
var ErrHalted = errors.New("rawio: the server stopped waiting for the rest of the request")

// stopped is what a read of c that found nothing to read should do under
// its Stop: nil to wait, or the error to fail with at once.
func (c *Conn) stopped() error {
	if c.stop == nil {
		return nil
	}
	switch st := c.stop.v.Load(); {
	case st == serving:
		return nil
	case c.head.first:
		return net.ErrClosed // nothing of a request read: nothing lost
	case st == halted:
		return ErrHalted
	}
	return nil
}

// Wake makes a Read of c that waits on the socket look again at once, for
// its Stop to end it; it goes on waiting when the Stop lets it. It
// changes no deadline c has, and a Read that is not waiting is not
// disturbed. It may run beside Read and Write.
func (c *Conn) Wake() {
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	// A deadline in the past wakes the waiting Read, or fails the next
	// wait at once; either way expired then finds the wanted deadline
	// still ahead, re-arms it, and the Read tries its read again.
	_ = c.arm(false, time.Unix(0, 1))
}
