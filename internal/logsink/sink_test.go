package logsink

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// buffer is a destination safe to read while the Sink writes to it.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// stuck blocks every write until released, like a pipe nobody reads.
type stuck struct {
	buffer
	release chan struct{}
	entered chan struct{} // gets a value when a write starts waiting
}

func (s *stuck) Write(p []byte) (int, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return s.buffer.Write(p)
}

func TestWritesArriveWholeAndInOrder(t *testing.T) {
	var dst buffer
	s := New(&dst, 0)
	var want strings.Builder
	var wg sync.WaitGroup
	var mu sync.Mutex // orders the expected text with the writes
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				line := fmt.Sprintf("{\"g\":%d,\"i\":%d}\n", g, i)
				mu.Lock()
				want.WriteString(line)
				_, _ = s.Write([]byte(line))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if !s.Close(5 * time.Second) {
		t.Fatal("Close did not flush")
	}
	if got := dst.String(); got != want.String() {
		t.Fatalf("destination differs from what was written (%d bytes, want %d)", len(got), want.Len())
	}
	if s.Dropped() != 0 {
		t.Fatalf("%d lines dropped with a free destination", s.Dropped())
	}
}

// A stuck destination never blocks a writer: lines queue to the bound,
// the rest are dropped and counted, and once the destination moves again
// the queued lines arrive, followed by a notice of the loss.
func TestStuckDestinationDropsAndCounts(t *testing.T) {
	dst := &stuck{release: make(chan struct{}), entered: make(chan struct{}, 1)}
	line := []byte(strings.Repeat("x", 99) + "\n") // 100 bytes
	s := New(dst, 1000)
	s.now = func() time.Time { return time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC) }
	_, _ = s.Write(line) // taken by the goroutine, whose write then blocks
	<-dst.entered
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 25 {
			_, _ = s.Write(line) // 10 fit in the bound, 15 do not
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write blocked on a stuck destination")
	}
	if got := s.Dropped(); got != 15 {
		t.Fatalf("Dropped() = %d, want 15", got)
	}
	if s.Flush(10 * time.Millisecond) {
		t.Fatal("Flush reported success while the destination is stuck")
	}
	close(dst.release)
	if !s.Close(5 * time.Second) {
		t.Fatal("Close did not flush once the destination moved")
	}
	lines := strings.Split(strings.TrimSuffix(dst.String(), "\n"), "\n")
	if len(lines) != 12 {
		t.Fatalf("%d lines arrived, want 1 + 10 queued + 1 notice", len(lines))
	}
	var notice struct {
		Time, Level, Msg string
		Dropped          int `json:"dropped_lines"`
	}
	if err := json.Unmarshal([]byte(lines[11]), &notice); err != nil {
		t.Fatalf("the notice is not JSON: %v: %s", err, lines[11])
	}
	if notice.Dropped != 15 || notice.Level != "WARN" || notice.Time != "2026-11-27T08:00:00Z" {
		t.Fatalf("notice %+v", notice)
	}
}

func TestWriteAfterCloseIsDropped(t *testing.T) {
	var dst buffer
	s := New(&dst, 0)
	_, _ = s.Write([]byte("a\n"))
	s.Close(time.Second)
	if n, err := s.Write([]byte("b\nc\n")); n != 4 || err != nil {
		t.Fatalf("Write after Close = %d, %v", n, err)
	}
	if dst.String() != "a\n" || s.Dropped() != 2 {
		t.Fatalf("destination %q, dropped %d", dst.String(), s.Dropped())
	}
}

func TestUnusedSinkStartsNothing(t *testing.T) {
	s := New(&buffer{}, 0)
	if !s.Flush(time.Millisecond) || !s.Close(time.Millisecond) {
		t.Fatal("an unused Sink has nothing to wait for")
	}
}

func BenchmarkWrite(b *testing.B) {
	var dst buffer
	s := New(&dst, 0)
	defer s.Close(time.Second)
	line := []byte(`{"time":"2026-11-27T08:00:00Z","level":"INFO","msg":"request","route":"openai","status":200}` + "\n")
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Write(line)
	}
}
