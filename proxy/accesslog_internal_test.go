package proxy

import (
	"bytes"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// recordingWriter keeps every Write call separately and signals each one.
type recordingWriter struct {
	mu     sync.Mutex
	writes []string
	wrote  chan struct{}
}

func newRecordingWriter() *recordingWriter {
	return &recordingWriter{wrote: make(chan struct{}, 64)}
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, string(p))
	w.mu.Unlock()
	w.wrote <- struct{}{}
	return len(p), nil
}

func (w *recordingWriter) calls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.writes...)
}

// waitWaiters waits until clock has n pending timers.
func waitWaiters(t *testing.T, clock *policy.FakeClock, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for clock.Waiters() != n {
		if time.Now().After(deadline) {
			t.Fatalf("clock has %d waiters, want %d", clock.Waiters(), n)
		}
		runtime.Gosched() // let the flush goroutine run
	}
}

func TestAccessLogBatchesUntilTheInterval(t *testing.T) {
	clock := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	w := newRecordingWriter()
	l := newAccessLog(w, clock, time.Second)
	defer l.close()

	for i := range 3 {
		l.write([]byte("line " + string(rune('a'+i)) + "\n"))
	}
	waitWaiters(t, clock, 1) // one scheduled flush for the batch, not one per line
	if got := w.calls(); len(got) != 0 {
		t.Fatalf("written before the interval: %q", got)
	}
	clock.Advance(999 * time.Millisecond)
	if got := w.calls(); len(got) != 0 {
		t.Fatalf("written before the interval: %q", got)
	}
	clock.Advance(time.Millisecond)
	<-w.wrote
	if got := w.calls(); len(got) != 1 || got[0] != "line a\nline b\nline c\n" {
		t.Fatalf("writes = %q, want the three lines in one write, in order", got)
	}

	// The next line starts a new batch with its own timer.
	l.write([]byte("line d\n"))
	waitWaiters(t, clock, 1)
	clock.Advance(time.Second)
	<-w.wrote
	if got := w.calls(); len(got) != 2 || got[1] != "line d\n" {
		t.Fatalf("writes = %q", got)
	}
}

func TestAccessLogWritesAFullBufferAtOnce(t *testing.T) {
	clock := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	w := newRecordingWriter()
	l := newAccessLog(w, clock, time.Hour)
	defer l.close()

	line := []byte(strings.Repeat("x", 1023) + "\n")
	for range accessLogBuffer / len(line) {
		l.write(line)
	}
	if got := w.calls(); len(got) != 0 {
		t.Fatalf("%d writes before the buffer filled", len(got))
	}
	l.write(line) // does not fit: the full buffer goes out first
	got := w.calls()
	if len(got) != 1 || len(got[0]) != accessLogBuffer {
		t.Fatalf("writes = %d (first %d bytes), want one of %d bytes", len(got), len(got[0]), accessLogBuffer)
	}
	l.Flush()
	if got := w.calls(); len(got) != 2 || got[1] != string(line) {
		t.Fatalf("Flush did not write the pending line: %d writes", len(got))
	}

	huge := bytes.Repeat([]byte("y"), accessLogBuffer+10)
	l.write(huge)
	if got := w.calls(); len(got) != 3 || len(got[2]) != len(huge) {
		t.Fatal("a line larger than the buffer was not written at once")
	}
}

func TestAccessLogZeroIntervalWritesEachLine(t *testing.T) {
	w := newRecordingWriter()
	l := newAccessLog(w, policy.SystemClock{}, 0)
	defer l.close()
	l.write([]byte("one\n"))
	l.write([]byte("two\n"))
	if got := w.calls(); len(got) != 2 || got[0] != "one\n" || got[1] != "two\n" {
		t.Fatalf("writes = %q", got)
	}
}

func TestAccessLogCloseFlushesAndStopsTheTimer(t *testing.T) {
	clock := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	w := newRecordingWriter()
	l := newAccessLog(w, clock, time.Second)
	l.write([]byte("pending\n"))
	waitWaiters(t, clock, 1)
	l.close()
	if got := w.calls(); len(got) != 1 || got[0] != "pending\n" {
		t.Fatalf("close wrote %q", got)
	}
	waitWaiters(t, clock, 0) // the scheduled flush gave up (goleak checks it ended)
	l.write([]byte("late\n"))
	if got := w.calls(); len(got) != 2 || got[1] != "late\n" {
		t.Fatalf("a line after close was not written at once: %q", got)
	}
	l.close() // twice is harmless
}

func TestAccessLogSetIntervalZeroFlushes(t *testing.T) {
	clock := policy.NewFakeClock(time.Unix(1_700_000_000, 0))
	w := newRecordingWriter()
	l := newAccessLog(w, clock, time.Second)
	defer l.close()
	l.write([]byte("a\n"))
	l.setInterval(0)
	if got := w.calls(); len(got) != 1 || got[0] != "a\n" {
		t.Fatalf("setInterval(0) left lines pending: %q", got)
	}
	l.write([]byte("b\n"))
	if got := w.calls(); len(got) != 2 {
		t.Fatalf("after setInterval(0) lines wait: %q", got)
	}
}
