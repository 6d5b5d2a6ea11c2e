package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// ssaSilentUpstream is a raw loopback upstream that answers every request
// with an event stream's headers and one event, then says nothing more.
// closed receives the request's path once ballast closed that connection.
func ssaSilentUpstream(t *testing.T) (url string, closed <-chan string) {
	t.Helper()
	out := make(chan string, 8)
	addr := serveConns(t, func(c net.Conn, br *bufio.Reader) {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		path := strings.Fields(line)[1]
		for {
			h, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if h == "\r\n" {
				break
			}
		}
		ev := "data: one\n\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(ev), ev)
		_, _ = io.Copy(io.Discard, br) // silent until ballast hangs up
		out <- path
	})
	return "http://" + addr, out
}

// ssaOpenStream sends a raw request for path over proto and returns once
// the agent has read the stream's first event.
func ssaOpenStream(t *testing.T, addr, method, path, proto string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	fmt.Fprintf(c, "%s %s %s\r\nHost: x\r\nContent-Length: 0\r\n\r\n", method, path, proto)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 512)
	for !bytes.Contains(got, []byte("data: one")) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("%s %s: the stream's first event never came: %v (%q)", proto, path, err, got)
		}
	}
}

// Streams still relayed when Shutdown's context ends (shutdown_timeout)
// are called off by ballast, not left to the process exit: fasthttp does
// not close still-active connections at the deadline, and a relay waiting
// on a silent upstream would never return. Each stream's upstream
// connection is closed, Shutdown returns within about a second of its
// deadline, and each stream's line is written once, as a WARN with
// "stopped":"shutting_down" (docs/config.md, shutdown_timeout). One stream
// goes to an HTTP/1.1 agent (chunked, fasthttp's connection), one to an
// HTTP/1.0 agent (close-delimited, a hijacked connection); the GET stream
// is a standing one, which no idle timeout ends.
func TestShutdownStreamsAudit_CalledOffAtDeadline(t *testing.T) {
	up, closed := ssaSilentUpstream(t)
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 60s, total: 120s}\n"))
	ssaOpenStream(t, b.addr, "POST", "/v11", "HTTP/1.1")
	ssaOpenStream(t, b.addr, "GET", "/v10", "HTTP/1.0")

	start := time.Now()
	select {
	case <-saShutdown(b, 200*time.Millisecond):
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return within 5s of a 200ms drain")
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Shutdown took %v after a 200ms drain; wanted at most about a second more", took)
	}

	gone := map[string]bool{}
	deadline := time.After(3 * time.Second)
	for len(gone) < 2 {
		select {
		case p := <-closed:
			gone[p] = true
		case <-deadline:
			t.Fatalf("upstream connections closed by ballast: %v; want /v11 and /v10", gone)
		}
	}

	logs := b.logs.String()
	for _, path := range []string{"/v11", "/v10"} {
		var lines []string
		for _, l := range strings.Split(logs, "\n") {
			if strings.Contains(l, `"msg":"request"`) && strings.Contains(l, `"path":"`+path+`"`) {
				lines = append(lines, l)
			}
		}
		if len(lines) != 1 {
			t.Errorf("%s: %d request lines, want exactly 1:\n%s", path, len(lines), strings.Join(lines, "\n"))
			continue
		}
		if l := lines[0]; !strings.Contains(l, `"stopped":"shutting_down"`) || !strings.Contains(l, `"level":"WARN"`) ||
			strings.Contains(l, `"truncated":true`) {
			t.Errorf("%s: the line of a stream called off at shutdown: %s", path, l)
		}
	}
	if strings.Contains(logs, "upstream body broke mid-stream") {
		t.Error("a stream called off at shutdown was logged as the upstream's break")
	}
}

// A stream that ends within the drain is not touched: its line has no
// shutdown marker, and Shutdown returns without an error.
func TestShutdownStreamsAudit_FinishedStreamUnmarked(t *testing.T) {
	up, closed := ssaSilentUpstream(t)
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 60s, total: 120s}\n"))
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /done HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	var got []byte
	for !bytes.Contains(got, []byte("data: one")) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("first event: %v", err)
		}
	}
	_ = c.Close() // the agent leaves: the watch calls the stream off
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent left, but the upstream stayed open")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown with no stream left: %v", err)
	}
	logs := b.logs.String()
	if n := strings.Count(logs, `"path":"/done"`); n != 1 {
		t.Fatalf("%d lines for /done, want 1:\n%s", n, logs)
	}
	if strings.Contains(logs, `"stopped":"shutting_down"`) || !strings.Contains(logs, `"stopped":"agent_gone"`) {
		t.Errorf("a stream the agent left before the shutdown: %s", logs)
	}
}
