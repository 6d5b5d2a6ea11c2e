package proxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// serveConns is a raw loopback server: it serves each connection it
// accepts with serve, closes the connection when serve returns, and at the
// end of the test closes its listener and every connection and waits for
// serve to return. It returns the listener's host:port.
func serveConns(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// rawSend dials addr, writes raw and returns the connection, its deadline
// wait from now.
func rawSend(t *testing.T, addr, raw string, wait time.Duration) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(conn, raw); err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return conn
}

// rawAll writes raw to addr on a fresh connection and returns what came
// back until ballast closed the connection or wait passed; timedOut says
// the deadline ended it.
func rawAll(t *testing.T, addr, raw string, wait time.Duration) (out string, timedOut bool) {
	t.Helper()
	conn := rawSend(t, addr, raw, wait)
	defer conn.Close()
	b, err := io.ReadAll(conn)
	var ne net.Error
	return string(b), errors.As(err, &ne) && ne.Timeout()
}

// rawExchange writes raw to addr on a fresh connection and reads one
// response with Go's parser within wait: a hang or an unparsable answer
// fails the test. The error is what cut the body short, if anything did.
func rawExchange(t *testing.T, addr, raw string, wait time.Duration) (*http.Response, string, error) {
	t.Helper()
	conn := rawSend(t, addr, raw, wait)
	defer conn.Close()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response to %.80q within %v: %v", raw, wait, err)
	}
	defer resp.Body.Close()
	b, bodyErr := io.ReadAll(resp.Body)
	return resp, string(b), bodyErr
}
