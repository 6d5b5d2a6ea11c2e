// Package redistest runs a real redis-server for tests: on a free loopback
// port, with persistence off, in a temporary directory, killed when the test
// ends. Tests that use it never skip: when redis-server is not installed they
// fail and name the package to install (scripts/test-deps.sh does it for
// `make test`).
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/freeport"
)

// Binary is the server program looked up on PATH.
const Binary = "redis-server"

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is one redis-server process. Its methods are safe for concurrent
// use.
type Server struct {
	addr string
	dir  string

	mu   sync.Mutex
	proc *os.Process // nil while killed
	// exited receives the result of the process's Wait; a goroutine reaps
	// the process as soon as it exits.
	exited chan error
}

// Start starts a server for t and stops it (and removes its directory) when
// t ends. It fails t when the server cannot be started.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := New()
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a server; the caller must Close it.
func New() (*Server, error) {
	if _, err := exec.LookPath(Binary); err != nil {
		return nil, fmt.Errorf("%s not found on PATH (install the Debian package redis-server: apt-get install -y redis-server, or run make test-deps): %w", Binary, err)
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	// A free port found by listening on :0 may be taken by someone else
	// before redis-server binds it; try a few.
	for range 5 {
		port, err := freePort()
		if err != nil {
			lastErr = err
			continue
		}
		s := &Server{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir}
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

// Addr is the server's host:port. It stays the same across Kill and
// Restart.
func (s *Server) Addr() string { return s.addr }

// Kill stops the server abruptly (SIGKILL), as a crash or a network cut
// would look to clients. Killing a killed server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

// Restart starts a killed server again on the same port, with empty state.
// Restarting a running server kills it first.
func (s *Server) Restart() error {
	s.mu.Lock()
	s.killLocked()
	s.mu.Unlock()
	return s.start()
}

// Close kills the server and removes its directory. It is idempotent.
func (s *Server) Close() {
	s.Kill()
	_ = os.RemoveAll(s.dir)
}

func (s *Server) killLocked() {
	if s.proc == nil {
		return
	}
	_ = s.proc.Kill()
	<-s.exited
	s.proc = nil
}

func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.addr)
	cmd := exec.Command(Binary,
		"--port", port,
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--loglevel", "warning",
		"--logfile", "",
	)
	cmd.SysProcAttr = sysProcAttr()
	// Stdout and Stderr stay nil (/dev/null): nothing to drain, no copying
	// goroutine.
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", Binary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	if err := awaitPing(s.addr, exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return err
	}
	s.mu.Lock()
	s.proc, s.exited = cmd.Process, exited
	s.mu.Unlock()
	return nil
}

// awaitPing waits until the server at addr answers PING, the process exits,
// or startTimeout passes.
func awaitPing(addr string, exited <-chan error) error {
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	retry := time.NewTicker(5 * time.Millisecond)
	defer retry.Stop()
	for {
		if ping(addr) == nil {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("%s on %s exited during start-up (%v); is the port taken?", Binary, addr, err)
		case <-deadline.C:
			return fmt.Errorf("%s on %s did not answer PING within %v", Binary, addr, startTimeout)
		case <-retry.C:
		}
	}
}

// ping sends one PING over a fresh connection.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return errors.New("unexpected reply " + strconv.Quote(line))
	}
	return nil
}

func freePort() (int, error) {
	addr, err := freeport.Loopback()
	if err != nil {
		return 0, err
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(p)
}
