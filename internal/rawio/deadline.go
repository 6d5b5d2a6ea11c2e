package rawio

import (
	"errors"
	"sync"
	"time"
)

// A Conn keeps its deadlines lazily. An HTTP server or client moves a
// connection's deadline several times per request (the idle timeout before
// the request, the read timeout once it starts, a per-try deadline on an
// upstream connection and its clearing afterwards), and every move through
// the net package reads the clock twice and re-sorts a runtime timer. Yet
// almost every move is later than the deadline already set: time goes
// forward and the timeouts are long.
//
// So the socket's timer (armed) moves only when a deadline comes earlier
// than the one armed, or when none is armed. A later or cleared deadline is
// only recorded (want). When the armed timer fires first, the Read or Write
// that it interrupted (or the next one) re-arms to want and carries on; the
// operation fails with os.ErrDeadlineExceeded only once want has passed.
// Deadlines therefore fire exactly as set, never early, at the cost of one
// extra wake-up per armed period.

// deadlines are a Conn's two directions' deadlines, guarded by mu. Another
// goroutine may set them while a Read or Write waits.
type deadlines struct {
	mu          sync.Mutex
	read, write deadline
}

// deadline is one direction's: the one wanted, and the one the socket's
// timer is armed at (zero: none).
type deadline struct{ want, set time.Time }

// testHookRearm, when set by a test, runs each time a Read or Write
// re-arms a deadline that fired before the one wanted.
var testHookRearm func()

// SetDeadline sets the read and write deadlines, as net.Conn's does.
func (c *Conn) SetDeadline(t time.Time) error {
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	d.read.want, d.write.want = t, t
	if mustArm(t, d.read.set) && mustArm(t, d.write.set) {
		d.read.set, d.write.set = t, t
		return c.TCPConn.SetDeadline(t) // one call for both timers
	}
	return errors.Join(c.setLocked(false, t), c.setLocked(true, t))
}

// SetReadDeadline sets the read deadline, as net.Conn's does.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	return c.setLocked(false, t)
}

// SetWriteDeadline sets the write deadline, as net.Conn's does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	return c.setLocked(true, t)
}

// setLocked records t as the read (write) deadline and arms the socket
// only when it must; c.dl.mu is held.
func (c *Conn) setLocked(write bool, t time.Time) error {
	d := c.dl.dir(write)
	d.want = t
	if !mustArm(t, d.set) {
		return nil
	}
	return c.arm(write, t)
}

// arm moves the socket's read (write) timer to t; c.dl.mu is held.
func (c *Conn) arm(write bool, t time.Time) error {
	c.dl.dir(write).set = t
	if write {
		return c.TCPConn.SetWriteDeadline(t)
	}
	return c.TCPConn.SetReadDeadline(t)
}

func (d *deadlines) dir(write bool) *deadline {
	if write {
		return &d.write
	}
	return &d.read
}

// mustArm reports whether the socket's timer, now at set (zero: none), has
// to move for the deadline t: when t is earlier, or nothing is armed. A
// later or cleared t waits for set to fire.
func mustArm(t, set time.Time) bool {
	if t.IsZero() {
		return false
	}
	return set.IsZero() || t.Before(set)
}

// expired is called when a read (write when write is true) failed with
// os.ErrDeadlineExceeded. It reports whether the wanted deadline has passed;
// when it has not, it re-arms the socket's timer to it, and the operation
// goes on.
func (c *Conn) expired(write bool) bool {
	c.dl.mu.Lock()
	defer c.dl.mu.Unlock()
	want := c.dl.dir(write).want
	if !want.IsZero() && !time.Now().Before(want) {
		return true
	}
	// Setting a deadline fails only on a closed connection, and the
	// retried operation reports that.
	_ = c.arm(write, want)
	if testHookRearm != nil {
		testHookRearm()
	}
	return false
}
