package proxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// errTryCanceled is the error of an attempt called off: another copy of
// it (a hedge) answered first, or its agent hung up (agentWatch).
var errTryCanceled = errors.New("proxy: attempt called off")

// tryCancel lets an attempt be called off while it waits on the
// upstream: a hedge's loser, or the call of an agent that hung up. The transport attaches the connection the attempt uses, and
// detaches it before the connection goes back to the pool or is closed;
// cancel moves that connection's deadline to the past, so the blocked
// write or read returns at once and the connection is closed rather than
// reused. The upstream sees its client go away, as it would if the agent
// had hung up, instead of working on an answer nobody reads until the
// attempt's per_try deadline. The zero value is ready to use.
type tryCancel struct {
	mu       sync.Mutex
	conn     net.Conn
	canceled bool
}

// attach records conn as the attempt's connection. It reports false when
// the attempt was already called off: the caller must not use conn.
func (c *tryCancel) attach(conn net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.canceled {
		return false
	}
	c.conn = conn
	return true
}

// detach forgets the connection, after which cancel no longer touches
// it. It reports whether the attempt was called off meanwhile: the
// connection's deadline may then be in the past, and it must be closed,
// not pooled.
func (c *tryCancel) detach() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn = nil
	return c.canceled
}

// cancel calls the attempt off.
func (c *tryCancel) cancel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.canceled = true
	if c.conn != nil {
		_ = c.conn.SetDeadline(time.Unix(1, 0)) // any past instant
	}
}

// isCanceled reports whether cancel was called.
func (c *tryCancel) isCanceled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.canceled
}
