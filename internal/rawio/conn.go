// Package rawio wraps TCP connections so that their reads and writes skip
// the Go scheduler's system-call bookkeeping.
//
// The net package's sockets are non-blocking: a read or write either
// completes at once or fails with EAGAIN, and the netpoller parks the
// goroutine until the socket is ready. Yet each one still goes through
// syscall.Syscall, which tells the scheduler the thread may block
// (entersyscall/exitsyscall). When the process has just been idle, that
// notice wakes the sysmon thread, which then polls every 20 µs for a
// millisecond; a syscall that sysmon sees twice gets its P handed to
// another thread. At a few thousand requests per second those wake-ups
// and hand-offs, not the proxying, are the largest share of a Go proxy's
// CPU. A Conn issues the same read and write system calls through
// syscall.RawConn with RawSyscall, which is correct precisely because the
// socket never blocks, and leaves waiting to the netpoller as before.
package rawio

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
)

// Conn is a *net.TCPConn whose Read and Write use raw system calls.
// Everything else (Close, addresses, CloseWrite) is the TCPConn's.
// Deadlines fire as usual, the waits being the netpoller's, but the
// socket's timer moves only when a deadline comes earlier (deadline.go).
//
// Like a net.Conn, a Conn allows one Read and one Write at a time, each
// from its own goroutine.
type Conn struct {
	*net.TCPConn
	raw syscall.RawConn

	// The read in progress: the callback given to raw.Read is bound once
	// (readFn) and finds its buffer and leaves its result here, so that a
	// Read allocates nothing.
	rbuf   []byte
	rn     int
	rerrno syscall.Errno
	readFn func(fd uintptr) bool

	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool

	// PeerGone's and PeerHungUp's peek, bound once like readFn: its
	// recvfrom result (peekN bytes, or the error peekErrno).
	peekBuf   [1]byte
	peekN     int
	peekErrno syscall.Errno
	peekFn    func(fd uintptr)

	dl deadlines

	// wrote is set by a Write (on a Listener's connection, not by one of
	// an interim 1xx response) and cleared by the next Read, which then
	// yields first (see Read). Atomic: a Write may run beside a Read.
	wrote atomic.Bool

	// heads: the connection is an agent's (Listener), whose request
	// heads Read follows (head.go); head is the one being read.
	heads bool
	head  headWatch

	// stop is the Listener's Stop (nil: none); stopErr is the error the
	// read callback found it calls for (stop.go).
	stop    *Stop
	stopErr error
}

var _ net.Conn = (*Conn)(nil)

// Wrap returns c as a Conn when it is a TCP connection whose file
// descriptor is reachable, and c itself otherwise (and always on Windows,
// which lacks the raw calls: see sys_windows.go).
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok || !canWrap {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	rc := &Conn{TCPConn: tc, raw: raw}
	rc.readFn = rc.read
	rc.writeFn = rc.write
	rc.peekFn = rc.peek
	return rc
}

// Read reads up to len(p) bytes. It returns io.EOF when the peer has
// closed its side and no data is left.
//
// The first Read after a Write yields the processor before it reads
// (runtime.Gosched). On an HTTP connection that read waits for the answer
// to what was just written: the upstream's response, or the agent's next
// request, which it sends only once it has the response. Reading at once
// nearly always fails with EAGAIN, which costs a system call and a trip
// through the netpoller before the real read. Yielding first lets the
// other goroutines that are ready run, and when this one resumes, under
// load, the answer is usually there. When nothing else is ready the yield
// returns at once, so an idle proxy pays about a hundred nanoseconds.
// Measured at saturation on one core (bench/RESULTS.md): 2.3 reads per
// proxied request instead of 3.45, and about 20% more throughput; the
// price is the yielded goroutine's wait behind the others, which lowers
// p50 and p90 there but raises p99 under a closed loop.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.wrote.Load() {
		c.wrote.Store(false)
		if c.heads {
			c.head.start() // a response went out: the next request's head
		}
		if testHookYield != nil {
			testHookYield()
		}
		runtime.Gosched()
	}
	if c.heads && c.head.stalled() {
		return 0, ErrBareLFHead
	}
	c.rbuf, c.rn, c.rerrno = p, 0, 0
	err := c.raw.Read(c.readFn)
	for err != nil && unwrapOp(err) == os.ErrDeadlineExceeded && !c.expired(false) {
		err = c.raw.Read(c.readFn)
	}
	n, errno := c.rn, c.rerrno
	c.rbuf = nil
	if stopErr := c.stopErr; stopErr != nil {
		c.stopErr = nil
		return 0, c.opError("read", stopErr)
	}
	switch {
	case err != nil: // deadline, closed connection
		return 0, c.opError("read", unwrapOp(err))
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	if c.heads && c.head.on {
		c.head.saw(p[:n])
	}
	return n, nil
}

// testHookYield, when set by a test, runs each time a Read yields.
var testHookYield func()

// read is the raw.Read callback: true when done (data, EOF or an error),
// false to wait for the socket to become readable.
func (c *Conn) read(fd uintptr) bool {
	for {
		n, errno := sysRead(fd, c.rbuf)
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			c.stopErr = c.stopped()
			return c.stopErr != nil
		}
		c.rerrno = errno
		return true
	}
}

// Write writes all of p, waiting for the socket to drain as needed.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werrno = p, 0, 0
	err := c.raw.Write(c.writeFn)
	for err != nil && unwrapOp(err) == os.ErrDeadlineExceeded && !c.expired(true) {
		err = c.raw.Write(c.writeFn) // goes on from c.wn
	}
	n, errno := c.wn, c.werrno
	c.wbuf = nil
	switch {
	case err != nil:
		return n, c.opError("write", unwrapOp(err))
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	if !c.wrote.Load() && !(c.heads && interim(p)) {
		c.wrote.Store(true)
	}
	return n, nil
}

// write is the raw.Write callback: true when all of wbuf is written or
// an error stops it, false to wait for room in the socket buffer.
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, errno := sysWrite(fd, rest)
		switch errno {
		case 0:
			c.wn += int(n)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.werrno = errno
		return true
	}
	return true
}

// PeerGone reports, without blocking or consuming anything, whether the
// connection is unusable for a new request: the peer has closed it (its FIN
// is pending), sent something unasked (a stray byte on an idle HTTP
// connection would be read as the start of the next response), or reset it
// (a pending socket error), or the connection is closed here. It returns
// false when nothing is pending, that is when the peer is still there and
// silent.
//
// It is meant for a connection taken from an idle pool, before a request is
// written on it, and must not run beside a Read. It costs one recvfrom(2)
// with MSG_PEEK|MSG_DONTWAIT and does not allocate.
func (c *Conn) PeerGone() bool {
	if err := c.raw.Control(c.peekFn); err != nil {
		return true // closed here
	}
	return c.peekErrno != syscall.EAGAIN
}

// PeerHungUp reports, without blocking or consuming anything, whether the
// peer has closed the connection (its FIN is pending) or reset it, or the
// connection is closed here. Unlike PeerGone, data waiting to be read (an
// agent's next, pipelined request) does not count: the peer is still
// there. It is meant for an agent's connection while its request is being
// served, and must not run beside a Read. One recvfrom(2), no allocation.
func (c *Conn) PeerHungUp() bool {
	if err := c.raw.Control(c.peekFn); err != nil {
		return true // closed here
	}
	return c.peekErrno != syscall.EAGAIN && (c.peekErrno != 0 || c.peekN == 0)
}

// HungUpNow is PeerHungUp for a goroutine other than the one serving the
// connection: it keeps its result on its own stack, so it may run beside
// PeerGone, PeerHungUp and the connection's Read. One recvfrom(2); the
// callback allocates.
func (c *Conn) HungUpNow() bool {
	var (
		buf   [1]byte
		n     uintptr
		errno syscall.Errno
	)
	err := c.raw.Control(func(fd uintptr) { n, errno = sysPeek(fd, buf[:]) })
	if err != nil {
		return true // closed here
	}
	return errno != syscall.EAGAIN && (errno != 0 || n == 0)
}

// peek is the raw.Control callback of PeerGone and PeerHungUp. recvfrom
// returns 0 on a FIN, 1 when data is pending and EAGAIN when there is
// nothing to read.
func (c *Conn) peek(fd uintptr) {
	n, errno := sysPeek(fd, c.peekBuf[:])
	c.peekN, c.peekErrno = int(n), errno
}

// opError reports err as the net package would for this connection, so
// that callers' checks (errors.Is(err, os.ErrDeadlineExceeded),
// net.ErrClosed, net.Error.Timeout) hold unchanged.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// unwrapOp strips the *net.OpError that RawConn wraps its errors in
// ("raw-read"), keeping the cause.
func unwrapOp(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}

// Pending reports, without blocking or consuming anything, whether bytes
// wait to be read on c: a request its server has yet to read. A FIN, an
// error, a closed connection, a connection without a descriptor and a
// platform without the peek (Windows) all report false. It may run beside
// the connection's Read; one recvfrom(2), and the callback allocates.
func Pending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		buf   [1]byte
		n     uintptr
		errno syscall.Errno = syscall.EAGAIN
	)
	_ = raw.Control(func(fd uintptr) { n, errno = sysPeek(fd, buf[:]) })
	return errno == 0 && n > 0
}
