package freeport

import (
	"net"
	"strconv"
	"testing"
)

// The ports come from below the ephemeral range, are bindable when handed
// out, and are never handed out twice.
func TestLoopbackBelowEphemeralRangeAndDistinct(t *testing.T) {
	start := ephemeralStart()
	if start-lowest < 1000 {
		t.Fatalf("this machine's ephemeral range starts at %d: no room below it, the test checks nothing", start)
	}
	seen := map[string]bool{}
	for range 200 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		host, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if host != "127.0.0.1" || port < lowest || port >= start {
			t.Fatalf("%s: want 127.0.0.1 and a port in [%d, %d)", addr, lowest, start)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s was handed out but cannot be bound: %v", addr, err)
		}
		ln.Close()
	}
}

// A port someone holds is never handed out.
func TestLoopbackSkipsPortsInUse(t *testing.T) {
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	for range 50 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		held = append(held, ln)
	}
	// Forget what was given so that only the bind check protects the held ports.
	mu.Lock()
	given = map[int]bool{}
	mu.Unlock()
	inUse := map[string]bool{}
	for _, ln := range held {
		inUse[ln.Addr().String()] = true
	}
	for range 500 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if inUse[addr] {
			t.Fatalf("%s is held by a listener but was handed out", addr)
		}
	}
}
