// Package freeport finds loopback TCP ports for processes that a test or
// the benchmark harness starts and configures by address.
//
// The usual trick, listening on 127.0.0.1:0 and closing, hands out a port
// from the kernel's ephemeral range: the range every outgoing connection
// takes its local port from. Between the close and the child's bind, any
// of the thousands of client connections a parallel test suite makes can
// take that port, and the child then fails with "address already in use".
// Loopback returns ports from below the ephemeral range instead, which no
// outgoing connection and no listen on port 0 ever uses, so only another
// caller of this package can collide with it, and a random pick makes that
// rare.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the smallest port handed out: above the well-known and the
// commonly registered service ports.
const lowest = 10000

// rangeFile holds the kernel's ephemeral port range ("32768\t60999").
const rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

var (
	mu      sync.Mutex
	given   = map[int]bool{} // ports this process handed out already
	ceiling int              // first ephemeral port; 0 until read
)

// Loopback returns "127.0.0.1:port" for a port that was free a moment ago,
// taken from below the kernel's ephemeral range, never the same twice in
// one process. When that range cannot be read or leaves no room, it falls
// back to a port the kernel picks.
func Loopback() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if ceiling == 0 {
		ceiling = ephemeralStart()
	}
	if ceiling-lowest >= 1000 {
		for range 64 {
			port := lowest + rand.IntN(ceiling-lowest)
			if given[port] {
				continue
			}
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				continue // in use by someone: try another
			}
			given[port] = true
			return addr, ln.Close()
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("freeport: %w", err)
	}
	return ln.Addr().String(), ln.Close()
}

// ephemeralStart reads the first port of the kernel's ephemeral range, or
// returns lowest (no room: fall back to port 0) when it cannot.
func ephemeralStart() int {
	b, err := os.ReadFile(rangeFile)
	if err != nil {
		return lowest
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return lowest
	}
	n, err := strconv.Atoi(fields[0])
	if err != nil || n <= lowest {
		return lowest
	}
	return n
}
