package rawio

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestHeadWatchPipelined: a head that came in the same read as a complete
// one before it is watched too, across the start that the response to the
// one before calls, so that a pipelined head a bare LF ended is refused as
// a lone one is. The watch does not follow bytes that may be a body.
func TestHeadWatchPipelined(t *testing.T) {
	const good = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	const answer = "" // a response went out: the reader asks for the next head
	tests := []struct {
		name  string
		reads []string // the bytes of each read, or answer
		want  bool     // stalled after the last
	}{
		{name: "bare LF after a good head", reads: []string{good + "GET /b HTTP/1.1\nHost: x\n\n", answer}, want: true},
		{name: "CRLF lines, LF blank line", reads: []string{good + "GET /b HTTP/1.1\r\nHost: x\r\n\n", answer}, want: true},
		{name: "after two good heads", reads: []string{good + good + "\r\nGET /c HTTP/1.1\nHost: x\n\n", answer}, want: true},
		{name: "the bare end in a later read", reads: []string{good + "GET /b HTTP/1.1\nHo", answer, "st: x\n\n"}, want: true},
		{name: "a good pipelined head", reads: []string{good + good, answer}},
		{name: "a good pipelined head in two reads", reads: []string{good + "GET /b HTTP/1.1\r\nHo", answer, "st: x\r\n\r\n"}},
		{name: "a bare head after the pipelined one", reads: []string{good + good, answer, "GET /c HTTP/1.1\n\n"}, want: true},
		{name: "a bare head after a pipelined one in two reads", reads: []string{good + "GET /b HTTP/1.1\r\nHo", answer, "st: x\r\n\r\n", answer, "GET /c HTTP/1.1\n\n"}, want: true},
		{name: "a bare head's lines in a body", reads: []string{"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n", answer}},
		{name: "the same, Content-Length 0", reads: []string{"GET /a HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n", answer}},
		{name: "a chunked body", reads: []string{"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nGET /b HTTP/1.1\n\n", answer}},
		{name: "an upgrade", reads: []string{"GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nGET /b HTTP/1.1\n\n", answer}},
		{name: "a body after the pipelined head", reads: []string{good + "PUT /b HTTP/1.1\r\nContent-Length: 16\r\n\r\nGET / HTTP/1.1\n\n", answer}},
		{name: "not a request line after the head", reads: []string{good + "hello\n\n", answer}},
		{name: "a head begun in an earlier read", reads: []string{"GET /a HTTP/1.1\r\nHo", "st: x\r\n\r\nGET /b HTTP/1.1\n\n", answer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h headWatch
			h.start()
			for _, r := range tt.reads {
				switch {
				case r == answer:
					h.start()
				case h.on:
					h.saw([]byte(r))
				}
			}
			if h.stalled() != tt.want {
				t.Errorf("stalled = %v after %q, want %v", h.stalled(), tt.reads, tt.want)
			}
		})
	}
}

// TestListenerPipelinedBareLFHead: on a Listener's connection, a bare-LF
// head written in the same segment as a good request fails the first read
// after the good one's response with ErrBareLFHead, at once; a body that
// holds such bytes does not.
func TestListenerPipelinedBareLFHead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listener{Listener: ln}
	defer l.Close()
	connect := func(t *testing.T) (client, server net.Conn) {
		t.Helper()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		server, err = l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { server.Close() })
		_ = server.SetReadDeadline(time.Now().Add(5 * time.Second))
		return client, server
	}
	// exchange writes in (one segment) and reads all of it on the server,
	// then answers it as a server would.
	exchange := func(t *testing.T, client, server net.Conn, in string) {
		t.Helper()
		if _, err := io.WriteString(client, in); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(in))
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(server, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("pipelined bare LF head", func(t *testing.T) {
		client, server := connect(t)
		exchange(t, client, server, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n")
		start := time.Now()
		if _, err := server.Read(make([]byte, 64)); !errors.Is(err, ErrBareLFHead) {
			t.Fatalf("the read after the answer returned %v, want ErrBareLFHead", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("ErrBareLFHead after %v", d)
		}
	})
	t.Run("the same bytes as a body", func(t *testing.T) {
		client, server := connect(t)
		exchange(t, client, server, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n")
		const next = "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
		if _, err := io.WriteString(client, next); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(next))
		if n, err := io.ReadFull(server, buf); err != nil || string(buf[:n]) != next {
			t.Fatalf("the next request read as %q, %v", buf[:n], err)
		}
	})
}
