package rawio

import (
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
	mu                  sync.Mutex
	readWant, readSet   time.Time
	writeWant, writeSet time.Time
}

// testHookRearm, when set by a test, runs each time a Read or Write
// re-arms a deadline that fired before the one wanted.
var testHookRearm func()

// SetDeadline sets the read and write deadlines, as net.Conn's does.
func (c *Conn) SetDeadline(t time.Time) error {
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	d.readWant, d.writeWant = t, t
	r, w := mustArm(t, d.readSet), mustArm(t, d.writeSet)
	switch {
	case r && w:
		d.readSet, d.writeSet = t, t
		return c.TCPConn.SetDeadline(t)
	case r:
		d.readSet = t
		return c.TCPConn.SetReadDeadline(t)
	case w:
		d.writeSet = t
		return c.TCPConn.SetWriteDeadline(t)
	}
	return nil
}

// SetReadDeadline sets the read deadline, as net.Conn's does.
func (c *Conn) SetReadDeadline(t time.Time) error {
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	d.readWant = t
	if !mustArm(t, d.readSet) {
		return nil
	}
	d.readSet = t
	return c.TCPConn.SetReadDeadline(t)
}

// SetWriteDeadline sets the write deadline, as net.Conn's does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writeWant = t
	if !mustArm(t, d.writeSet) {
		return nil
	}
	d.writeSet = t
	return c.TCPConn.SetWriteDeadline(t)
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
	d := &c.dl
	d.mu.Lock()
	defer d.mu.Unlock()
	want := d.readWant
	if write {
		want = d.writeWant
	}
	if !want.IsZero() && !time.Now().Before(want) {
		return true
	}
	// Setting a deadline fails only on a closed connection, and the
	// retried operation reports that.
	if write {
		d.writeSet = want
		_ = c.TCPConn.SetWriteDeadline(want)
	} else {
		d.readSet = want
		_ = c.TCPConn.SetReadDeadline(want)
	}
	if testHookRearm != nil {
		testHookRearm()
	}
	return false
}
