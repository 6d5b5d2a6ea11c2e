package proxy

import (
	"io"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// accessLogBuffer is how many bytes of trail lines accumulate before they
// are written without waiting for the flush interval.
const accessLogBuffer = 64 << 10

// accessLog writes decision-trail lines to w in batches: a line waits in
// memory at most the flush interval after the first line of its batch, a
// batch is written once it reaches accessLogBuffer bytes, and Flush writes
// what is pending (Shutdown calls it). With an interval of 0 each line is
// written at once. Lines are never split or reordered: one mutex covers
// the buffer and the writes.
//
// Writing a line per request costs a write syscall per request (and a
// wake-up of whatever reads the pipe); batching is how nginx and Envoy
// keep access logs cheap.
type accessLog struct {
	clock policy.Clock

	mu       sync.Mutex
	w        io.Writer
	buf      []byte
	interval time.Duration
	armed    bool          // a flush is scheduled for the pending lines
	closed   bool          // after close lines are written at once
	stop     chan struct{} // closed by close: a scheduled flush gives up
}

func newAccessLog(w io.Writer, clock policy.Clock, interval time.Duration) *accessLog {
	return &accessLog{w: w, clock: clock, interval: interval, buf: make([]byte, 0, accessLogBuffer), stop: make(chan struct{})}
}

// setInterval changes the flush interval (a reload). Lines already pending
// keep their scheduled flush.
func (l *accessLog) setInterval(d time.Duration) {
	l.mu.Lock()
	l.interval = d
	if d <= 0 {
		l.flushLocked()
	}
	l.mu.Unlock()
}

// write appends one line (which ends in '\n'). It does not keep line.
func (l *accessLog) write(line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.interval <= 0 || l.closed {
		l.flushLocked()
		_, _ = l.w.Write(line)
		return
	}
	if len(l.buf)+len(line) > accessLogBuffer {
		l.flushLocked()
		if len(line) > accessLogBuffer {
			_, _ = l.w.Write(line)
			return
		}
	}
	l.buf = append(l.buf, line...)
	if !l.armed {
		l.armed = true
		go l.flushAfter(l.clock.NewTimer(l.interval))
	}
}

// flushAfter flushes when t fires. One runs per batch, not per line.
func (l *accessLog) flushAfter(t policy.Timer) {
	select {
	case <-t.C():
	case <-l.stop:
		t.Stop()
		return
	}
	l.mu.Lock()
	l.armed = false
	l.flushLocked()
	l.mu.Unlock()
}

// Flush writes the pending lines now.
func (l *accessLog) Flush() {
	l.mu.Lock()
	l.flushLocked()
	l.mu.Unlock()
}

// close flushes and makes later lines (of requests still finishing) go
// out at once. A flush that is still scheduled finds nothing to write.
func (l *accessLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.stop)
	l.flushLocked()
}

func (l *accessLog) flushLocked() {
	if len(l.buf) == 0 {
		return
	}
	_, _ = l.w.Write(l.buf)
	l.buf = l.buf[:0]
}
