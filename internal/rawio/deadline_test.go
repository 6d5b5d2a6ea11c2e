package rawio_test

import (
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
)

// A deadline moved later is only recorded; the earlier one still armed on
// the socket fires first, and the Read re-arms and goes on instead of
// failing. Here the armed deadline has already passed when the Read starts.
func TestALaterDeadlineOverridesAnArmedOne(t *testing.T) {
	c, s := pair(t)
	var rearms atomic.Int32
	defer rawio.SetTestHookRearm(func() { rearms.Add(1) })()

	if err := c.SetReadDeadline(time.Now().Add(-time.Second)); err != nil { // armed, expired
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(time.Hour)); err != nil { // later: recorded
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if n, err := c.Read(buf); err != nil || n != 1 {
		t.Fatalf("Read under a later deadline = %d, %v", n, err)
	}
	if rearms.Load() != 1 {
		t.Fatalf("re-armed %d times, want 1", rearms.Load())
	}
	// Once re-armed, the socket's deadline is the wanted one.
	if _, err := s.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); err != nil || n != 1 {
		t.Fatalf("second Read = %d, %v", n, err)
	}
	if rearms.Load() != 1 {
		t.Fatalf("re-armed %d times after the second Read, want still 1", rearms.Load())
	}
}

// Clearing a deadline is recorded the same way: the Read goes on with none.
func TestAClearedDeadlineOverridesAnArmedOne(t *testing.T) {
	c, s := pair(t)
	if err := c.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 8)); err != nil || n != 1 {
		t.Fatalf("Read with the deadline cleared = %d, %v", n, err)
	}
	if n, err := c.Write([]byte("pong")); err != nil || n != 4 {
		t.Fatalf("Write with the deadline cleared = %d, %v", n, err)
	}
}

// A Read already waiting when its armed deadline fires keeps waiting for
// the later one, and gets the data that arrives in between.
func TestAWaitingReadOutlivesAnEarlierArmedDeadline(t *testing.T) {
	c, s := pair(t)
	rearmed := make(chan struct{}, 1)
	defer rawio.SetTestHookRearm(func() { rearmed <- struct{}{} })()

	if err := c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		done <- err
	}()
	<-rearmed // the 20 ms timer fired and the Read re-armed to the hour
	if _, err := s.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Read = %v, want the data sent after the first deadline", err)
	}
}

// The wanted deadline, not the armed one, decides when a Read times out:
// never before it.
func TestATimeoutWaitsForTheWantedDeadline(t *testing.T) {
	c, _ := pair(t)
	start := time.Now()
	want := start.Add(60 * time.Millisecond)
	if err := c.SetReadDeadline(start.Add(10 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(want); err != nil {
		t.Fatal(err)
	}
	_, err := c.Read(make([]byte, 8))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %v, want os.ErrDeadlineExceeded", err)
	}
	if now := time.Now(); now.Before(want) {
		t.Fatalf("timed out %v before the wanted deadline", want.Sub(now))
	}
}

// An earlier deadline moves the socket's timer at once, also for a Read
// already waiting: the way servers unblock readers on shutdown.
func TestAnEarlierDeadlineInterruptsAWaitingRead(t *testing.T) {
	c, _ := pair(t)
	if err := c.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		close(started)
		_, err := c.Read(make([]byte, 8))
		done <- err
	}()
	<-started
	runtime.Gosched()
	if err := c.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read = %v, want os.ErrDeadlineExceeded", err)
	}
}

// A write that cannot drain re-arms the same way and resumes where it
// stopped, then times out at the wanted deadline with a partial count.
func TestAWriteOutlivesAnEarlierArmedDeadline(t *testing.T) {
	c, _ := pair(t)
	var rearms atomic.Int32
	defer rawio.SetTestHookRearm(func() { rearms.Add(1) })()
	big := make([]byte, 64<<20) // before the deadlines: zeroing it takes time
	start := time.Now()
	want := start.Add(80 * time.Millisecond)
	if err := c.SetWriteDeadline(start.Add(10 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := c.SetWriteDeadline(want); err != nil {
		t.Fatal(err)
	}
	n, err := c.Write(big) // the peer never reads
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || n == 64<<20 {
		t.Fatalf("Write = %d, %v; want a partial write and a timeout", n, err)
	}
	if time.Now().Before(want) {
		t.Fatal("the write timed out before the wanted deadline")
	}
	if rearms.Load() != 1 {
		t.Fatalf("re-armed %d times, want 1", rearms.Load())
	}
}

// Moving a deadline later, the common case, does not allocate.
func TestSettingALaterDeadlineDoesNotAllocate(t *testing.T) {
	c, _ := pair(t)
	base := time.Now().Add(time.Hour)
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		i++
		_ = c.SetReadDeadline(base.Add(time.Duration(i) * time.Millisecond))
		_ = c.SetDeadline(time.Time{})
	})
	if allocs != 0 {
		t.Fatalf("%v allocations, want 0", allocs)
	}
}
