package rawio_test

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/rawio"
)

// eventually waits until PeerGone reports true: what the peer does reaches
// this side asynchronously, even on loopback.
func eventually(t *testing.T, c *rawio.Conn) {
	t.Helper()
	limit := time.Now().Add(5 * time.Second)
	for !c.PeerGone() {
		if time.Now().After(limit) {
			t.Fatal("PeerGone still false after 5s")
		}
		runtime.Gosched()
	}
}

func TestPeerGone(t *testing.T) {
	for _, tc := range []struct {
		name string
		// peer acts on the server side of the connection (nil: nothing)
		peer func(s net.Conn)
		// local acts on the wrapped side
		local func(c *rawio.Conn)
		gone  bool
		// data is what a Read must still return afterwards (the peek
		// consumes nothing); empty when not checked.
		data string
	}{
		{name: "alive and silent"},
		{name: "peer closed", peer: func(s net.Conn) { s.Close() }, gone: true},
		{name: "peer sent data", peer: func(s net.Conn) { _, _ = s.Write([]byte("x")) }, gone: true, data: "x"},
		{name: "peer reset", peer: func(s net.Conn) {
			_ = s.(*net.TCPConn).SetLinger(0) // close sends RST
			s.Close()
		}, gone: true},
		{name: "closed here", local: func(c *rawio.Conn) { c.Close() }, gone: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, s := pair(t)
			c := w.(*rawio.Conn)
			if tc.peer != nil {
				tc.peer(s)
			}
			if tc.local != nil {
				tc.local(c)
			}
			if tc.gone {
				eventually(t, c)
			} else if c.PeerGone() {
				t.Fatal("PeerGone = true on a live, silent connection")
			}
			if tc.data != "" {
				got := make([]byte, len(tc.data))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != tc.data {
					t.Fatalf("Read after PeerGone = %q, %v; want %q", got, err, tc.data)
				}
			}
		})
	}
}

// After PeerGone, the connection carries an exchange as before.
func TestPeerGoneLeavesALiveConnectionUsable(t *testing.T) {
	w, s := pair(t)
	c := w.(*rawio.Conn)
	if c.PeerGone() {
		t.Fatal("PeerGone = true on a live connection")
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(s, got); err != nil || string(got) != "ping" {
		t.Fatalf("peer read %q, %v", got, err)
	}
}

func TestPeerGoneDoesNotAllocate(t *testing.T) {
	w, _ := pair(t)
	c := w.(*rawio.Conn)
	if allocs := testing.AllocsPerRun(200, func() { _ = c.PeerGone() }); allocs != 0 {
		t.Fatalf("%v allocations per PeerGone, want 0", allocs)
	}
}

// BenchmarkPeerGone is the cost the transport adds to each request on a
// reused upstream connection.
func BenchmarkPeerGone(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if s, err := ln.Accept(); err == nil {
			_, _ = io.Copy(io.Discard, s) // holds the connection open until the client closes
			s.Close()
		}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c := rawio.Wrap(nc).(*rawio.Conn)
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if c.PeerGone() {
			b.Fatal("PeerGone on a live connection")
		}
	}
}

// PeerHungUp tells a peer that left from one that is still there, even
// when the one still there has sent more (an agent's pipelined request).
func TestPeerHungUp(t *testing.T) {
	for _, tc := range []struct {
		name   string
		peer   func(s net.Conn)
		hungUp bool
	}{
		{name: "alive and silent"},
		{name: "peer sent data", peer: func(s net.Conn) { _, _ = s.Write([]byte("GET / HTTP/1.1\r\n")) }},
		{name: "peer closed", peer: func(s net.Conn) { s.Close() }, hungUp: true},
		{name: "peer sent data, then closed", peer: func(s net.Conn) { _, _ = s.Write([]byte("x")); s.Close() }},
		{name: "peer reset", peer: func(s net.Conn) {
			_ = s.(*net.TCPConn).SetLinger(0)
			s.Close()
		}, hungUp: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, s := pair(t)
			c := w.(*rawio.Conn)
			if tc.peer != nil {
				tc.peer(s)
				eventually(t, c) // what the peer did has arrived
			}
			if got := c.PeerHungUp(); got != tc.hungUp {
				t.Fatalf("PeerHungUp = %v, want %v", got, tc.hungUp)
			}
			if got := c.HungUpNow(); got != tc.hungUp {
				t.Fatalf("HungUpNow = %v, want %v", got, tc.hungUp)
			}
		})
	}
}

// HungUpNow may run on a watcher's goroutine while the connection's own
// goroutine checks it too (the race detector checks this test).
func TestHungUpNowBesideTheServingGoroutine(t *testing.T) {
	w, _ := pair(t)
	c := w.(*rawio.Conn)
	done := make(chan bool)
	go func() {
		gone := false
		for range 200 {
			gone = gone || c.HungUpNow()
		}
		done <- gone
	}()
	for range 200 {
		if c.PeerHungUp() || c.PeerGone() {
			t.Error("a live connection read as gone")
		}
	}
	if <-done {
		t.Error("HungUpNow: a live connection read as gone")
	}
}
