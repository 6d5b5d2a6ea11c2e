// Package logsink is the writer ballast's logs go through: it never makes
// a caller wait for the log's destination.
//
// ballast logs to stderr, which is usually a pipe to a container runtime's
// log collector. When that reader stalls — a log driver in blocking mode
// under back-pressure, `ballast run | less` left unscrolled — a plain
// write to the pipe blocks, and with it every request that logs: one
// stuck reader becomes an outage. A Sink hands what it is given to its own
// goroutine, which does the writing. While the destination is stuck,
// lines queue up to a bound; past it they are dropped and counted, and
// once the destination takes writes again the Sink says, in one JSON log
// line, how many were lost.
package logsink

import (
	"bytes"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultLimit is the default bound on bytes waiting to be written.
const DefaultLimit = 4 << 20

// Sink is an io.Writer that queues each Write whole and writes it to its
// destination from its own goroutine, in order. Write never blocks on the
// destination. Callers should write whole lines: a Write is kept or
// dropped whole, and batches are written as they were queued, so lines are
// never split or interleaved.
//
// The goroutine starts with the first Write and ends with Close. The zero
// value is not usable: use New.
type Sink struct {
	w     io.Writer
	limit int
	now   func() time.Time // the drop notice's timestamp

	mu      sync.Mutex
	pending []byte // queued, not yet handed to the goroutine
	spare   []byte // the buffer the goroutine last wrote, for reuse
	writing bool   // the goroutine holds a batch
	started bool
	closed  bool
	lost    uint64          // lines dropped since the last notice
	waiters []chan struct{} // Flush callers, woken when nothing is queued or being written

	dropped atomic.Uint64 // lines dropped, ever
	wake    chan struct{} // cap 1: something is queued, or close
	done    chan struct{} // closed when the goroutine ends
}

// New returns a Sink writing to w that queues at most limit bytes
// (DefaultLimit when limit ≤ 0).
func New(w io.Writer, limit int) *Sink {
	if limit <= 0 {
		limit = DefaultLimit
	}
	return &Sink{w: w, limit: limit, now: time.Now, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Write queues p and returns len(p), nil. When p does not fit in what
// remains of the bound, or the Sink is closed, p is dropped and counted
// instead, a line per '\n' in it (at least one).
func (s *Sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.closed || len(s.pending)+len(p) > s.limit {
		n := uint64(max(bytes.Count(p, []byte{'\n'}), 1))
		s.lost += n
		s.dropped.Add(n)
		s.mu.Unlock()
		return len(p), nil
	}
	s.pending = append(s.pending, p...)
	if !s.started {
		s.started = true
		go s.run()
	}
	s.mu.Unlock()
	s.signal()
	return len(p), nil
}

// Dropped is how many lines were dropped since New.
func (s *Sink) Dropped() uint64 { return s.dropped.Load() }

// Flush waits until everything written before it has reached the
// destination, for at most timeout. It reports whether it all did.
func (s *Sink) Flush(timeout time.Duration) bool {
	s.mu.Lock()
	if len(s.pending) == 0 && !s.writing {
		s.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	s.mu.Unlock()
	s.signal()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// Close flushes (waiting at most timeout) and stops the goroutine; later
// Writes are dropped. It reports whether everything was written. A
// destination still stuck after timeout keeps the goroutine until its
// write returns.
func (s *Sink) Close(timeout time.Duration) bool {
	ok := s.Flush(timeout)
	s.mu.Lock()
	s.closed = true
	started := s.started
	s.mu.Unlock()
	if started {
		s.signal()
		if ok {
			<-s.done
		}
	}
	return ok
}

func (s *Sink) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run writes what is queued, a batch at a time, until Close.
func (s *Sink) run() {
	defer close(s.done)
	for range s.wake {
		for {
			s.mu.Lock()
			batch, lost := s.pending, s.lost
			if len(batch) == 0 {
				waiters, closed := s.waiters, s.closed
				s.waiters = nil
				s.mu.Unlock()
				for _, ch := range waiters {
					close(ch)
				}
				if closed {
					return
				}
				break
			}
			s.pending, s.spare, s.lost, s.writing = s.spare[:0], nil, 0, true
			s.mu.Unlock()

			_, _ = s.w.Write(batch)
			if lost > 0 {
				_, _ = s.w.Write(s.notice(lost))
			}

			s.mu.Lock()
			s.spare, s.writing = batch[:0], false
			s.mu.Unlock()
		}
	}
}

// notice is the log line that reports n lost lines, in slog's JSON form.
func (s *Sink) notice(n uint64) []byte {
	b := []byte(`{"time":"`)
	b = s.now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"WARN","msg":"the log output was stuck: lines were dropped","dropped_lines":`...)
	b = strconv.AppendUint(b, n, 10)
	return append(b, "}\n"...)
}
