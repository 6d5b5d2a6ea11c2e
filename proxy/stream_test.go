package proxy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestSSEFirstEventArrivesWhileUpstreamStillStreams(t *testing.T) {
	release := make(chan struct{})
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select { // the upstream holds the stream open until the agent saw event 1
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "data: second\n\n")
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: llm, match: {path_prefix: /}, upstream: %q}]", url))
	resp, err := client(t).Get(b.base + "/v1/chat")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(release) // only now may the upstream finish
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("rest of the stream: %v", err)
	}
	if !strings.Contains(string(rest), "data: second") {
		t.Errorf("rest = %q", rest)
	}
}

func TestMidStreamUpstreamFailureIsAnErrorForTheAgent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fixed bool // Content-Length framing instead of chunked
	}{{"chunked", false}, {"content-length", true}} {
		t.Run(tc.name, func(t *testing.T) {
			url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.fixed {
					w.Header().Set("Content-Length", "100000")
				}
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(200)
				_, _ = io.WriteString(w, "data: partial\n\n")
				w.(http.Flusher).Flush()
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					conn.Close() // the upstream dies mid-body
				}
			})
			b := startBallast(t, fmt.Sprintf("routes: [{name: llm, match: {path_prefix: /}, upstream: %q}]", url))
			resp, err := client(t).Get(b.base + "/stream")
			var body []byte
			if err == nil { // the headers went out; the body must then fail
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if err == nil {
				t.Fatalf("the agent read a clean, complete %d response (%q); a truncated stream must be an error", resp.StatusCode, body)
			}
			if !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "reset") {
				t.Logf("agent error: %v", err)
			}
			waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "llm"}) == 1 })
			if !strings.Contains(b.logs.String(), "broke mid-stream") {
				t.Error("the truncation was not logged")
			}
		})
	}
}

func TestIdleTimeoutCutsASilentStream(t *testing.T) {
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // then silence
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    timeouts: {idle: 200ms, per_try: 5s}
`, url))
	resp, err := client(t).Get(b.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("a stream silent for longer than timeouts.idle ended cleanly; it must be cut")
	}
}

func TestStreamLongerThanPerTryIsNotCut(t *testing.T) {
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		for i := range 6 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond) // the upstream's pace, not a wait for behaviour
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    timeouts: {per_try: 250ms, idle: 1s, total: 10s}
`, url))
	resp, err := client(t).Get(b.base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.Contains(string(body), "data: 5") {
		t.Fatalf("per_try bounds the wait for headers only; the body was cut: %v %q", err, body)
	}
}

func TestLargeBodyStreamsWithoutBuffering(t *testing.T) {
	const size = 128 << 20
	chunk := []byte(strings.Repeat("x", 64<<10))
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: big, match: {path_prefix: /}, upstream: %q}]", url))
	resp, err := client(t).Get(b.base + "/blob")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	n, err := io.Copy(io.Discard, resp.Body)
	runtime.ReadMemStats(&after)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	// The whole process (upstream, ballast, client) allocated far less than
	// the body: it streamed through.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > size/4 {
		t.Errorf("allocated %d MiB while relaying a %d MiB body: it was buffered", grew>>20, size>>20)
	}
}

// waitFor polls cond until it holds; it bounds only how long a broken
// build waits, never what a passing one asserts.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An HTTP/1.0 agent has no chunked coding: a streamed answer of unknown
// length reaches it whole, delimited by the connection's close (as nginx
// sends it), and the stream's concurrency slot is freed at its end.
func TestStreamToHTTP10AgentIsCloseDelimited(t *testing.T) {
	payload := strings.Repeat("0123456789abcdef", 200<<10/16) // 200 KiB, chunked upstream
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < len(payload); i += 32 << 10 {
			_, _ = io.WriteString(w, payload[i:min(i+32<<10, len(payload))])
			w.(http.Flusher).Flush()
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: s, match: {path_prefix: /}, upstream: %q, concurrency: {max: 1, queue: 0}}
`, up))
	for i := range 2 { // the second proves the first freed its slot
		conn, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(conn, "GET /events HTTP/1.0\r\n\r\n")
		out, err := io.ReadAll(conn) // to the close
		conn.Close()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		head, body, _ := strings.Cut(string(out), "\r\n\r\n")
		if !strings.HasPrefix(head, "HTTP/1.1 200 ") || strings.Contains(strings.ToLower(head), "transfer-encoding") ||
			strings.Contains(strings.ToLower(head), "content-length") || body != payload {
			t.Fatalf("call %d: head %q, body %d bytes (want %d, unframed)", i, head, len(body), len(payload))
		}
	}
}
