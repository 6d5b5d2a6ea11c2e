package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"time"
)

// RedisPath is redis-server's path when it is on PATH, else "".
func RedisPath() string {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// startRedis runs redis-server on a free loopback port without
// persistence, and waits until it answers PING.
func startRedis(ctx context.Context, exe string) (*Process, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	p, err := startProcess("redis", exe, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err != nil {
		return nil, err
	}
	p.Addr = addr
	deadline := time.Now().Add(readyTimeout)
	for !redisPing(addr) {
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%w: redis did not answer PING on %s within %v: %s", ErrProcess, addr, readyTimeout, p.Output())
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%w: redis exited (%v): %s", ErrProcess, p.err, p.Output())
		case <-ctx.Done():
			p.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return p, nil
}

// redisPing reports whether addr answers PING with +PONG.
func redisPing(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "+PONG\r\n"
}
