package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Shared steps of the keyed stream replay tests: a stream held after its
// first event, the agent that reads that event and leaves, and the
// duplicate sent while the stream still runs.

// streamReplay11Held is an event stream of events that holds every event
// after the first until its next channel is closed.
func streamReplay11Held(events ...string) *streamReplay11Upstream {
	return &streamReplay11Upstream{ct: "text/event-stream", events: events, gate: 1, next: make(chan struct{})}
}

// streamReplay11Overflowing is an event stream of a short first event and
// then about 320KB, more than the sockets hold: once its agent has left,
// ballast's writes to it fail.
func streamReplay11Overflowing() []string {
	return append([]string{"data: first\n\n"}, sr11bEvents(40, 8000)...)
}

// streamReplay11Start serves up behind ballast on a keyed route named
// pay; extra is more of its idempotency block.
func streamReplay11Start(t *testing.T, up *streamReplay11Upstream, extra string) *ballast {
	t.Helper()
	u, _ := upstream(t, up.handler)
	return startBallast(t, idemRoute(u, extra))
}

// streamReplay11StartTooLarge is streamReplay11Start for a stream of three
// events ev, about 1.5KB, behind a ballast whose state.max_response_bytes
// (1KiB) it outgrows.
func streamReplay11StartTooLarge(t *testing.T) (ev string, up *streamReplay11Upstream, b *ballast) {
	t.Helper()
	ev = "data: " + strings.Repeat("x", 500) + "\n\n"
	up = &streamReplay11Upstream{ct: "text/event-stream", events: []string{ev, ev, ev}}
	u, _ := upstream(t, up.handler)
	return ev, up, startBallast(t, "state: {max_response_bytes: 1KiB}\n"+idemRoute(u, ""))
}

// streamReplay11RetryReplaysWhole sends the keyed retry of key to b and
// fails the test unless the whole of up's stream is replayed to it, and
// up ran once.
func streamReplay11RetryReplaysWhole(t *testing.T, b *ballast, up *streamReplay11Upstream, key string) {
	t.Helper()
	again, body := streamReplay11Post(t, client(t), b.base+"/v1/run", key)
	if want := strings.Join(up.events, ""); again.StatusCode != 200 || body != want || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry: %d replayed %q, %d bytes of %d", again.StatusCode, again.Header.Get("Idempotent-Replayed"), len(body), len(want))
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// streamReplay11ReadFirst reads the stream's first event from br and
// fails the test unless it is want.
func streamReplay11ReadFirst(t *testing.T, br *bufio.Reader, want string) {
	t.Helper()
	if ev := streamReplay11ReadEvent(t, br, "\n\n"); ev != want {
		t.Fatalf("first event %q", ev)
	}
}

// streamReplay11SendDup sends a keyed streamed POST to url from a
// goroutine of its own (see streamReplay11Async).
func streamReplay11SendDup(c *http.Client, url, key string) <-chan streamReplay11Answer {
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"stream":true}`))
	req.Header.Set("Idempotency-Key", key)
	return streamReplay11Async(c, req)
}

// streamReplay11Await returns the answer that arrives on dup within
// streamReplay11Bound; otherwise the test fails with failure.
func streamReplay11Await(t *testing.T, dup <-chan streamReplay11Answer, failure string) streamReplay11Answer {
	t.Helper()
	select {
	case got := <-dup:
		return got
	case <-time.After(streamReplay11Bound):
		t.Fatal(failure)
		return streamReplay11Answer{}
	}
}

// streamReplay11Leave sends the raw keyed request raw to addr, reads the
// stream up to its first event ("data: first") and hangs up.
func streamReplay11Leave(t *testing.T, addr, raw string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, raw)
	if ev := streamReplay11ReadEvent(t, bufio.NewReader(conn), "data: first\n\n"); !strings.HasSuffix(ev, "data: first\n\n") {
		t.Fatalf("first event: %q", ev)
	}
}
