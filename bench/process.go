package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ballast-proxy/ballast/internal/freeport"
	"github.com/valyala/fasthttp"
)

// ErrProcess reports a child process that would not start or get ready.
var ErrProcess = errors.New("bench: process")

// Process is a child process under test: the upstream, a proxy, nginx.
type Process struct {
	// Name labels the process in errors.
	Name string
	// Addr is host:port of its main listener.
	Addr string
	// Admin is host:port of a ballast child's admin listener, and
	// AdminToken the admin.token its config sets ("" for none); both are
	// empty for the other children.
	Admin, AdminToken string

	cmd    *exec.Cmd
	output *lineTail
	exited chan struct{}
	err    error // of Wait, valid once exited is closed
}

// Pid is the process id, for ReadProcUsage.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Usage reads the process tree's CPU and peak RSS.
func (p *Process) Usage() (ProcUsage, error) { return ReadProcUsage(p.Pid()) }

// startProcess starts exe with args. Its stdout and stderr are kept (the
// last lines) for error messages. The process is killed if the harness
// dies (Pdeathsig).
func startProcess(name, exe string, args ...string) (*Process, error) {
	return startProcessQuiet(name, exe, false, nil, args...)
}

// goProcsEnv is the environment of a Go child limited to procs cores.
func goProcsEnv(procs int) []string {
	return append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs))
}

// startProcessQuiet is startProcess; with quiet, the child's stderr goes
// to /dev/null instead (its error messages are then lost). A nil env
// inherits the harness's.
func startProcessQuiet(name, exe string, quiet bool, env []string, args ...string) (*Process, error) {
	p := &Process{Name: name, output: &lineTail{addr: make(chan string, 1)}, exited: make(chan struct{})}
	p.cmd = exec.Command(exe, args...)
	p.cmd.Env = env
	p.cmd.Stdout = p.output
	if !quiet {
		p.cmd.Stderr = p.output
	}
	p.cmd.SysProcAttr = childAttrs()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrProcess, name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// awaitAddr waits until the process prints its "http://host:port" line.
func (p *Process) awaitAddr(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case p.Addr = <-p.output.addr:
		return nil
	case <-p.exited:
		return fmt.Errorf("%w: %s exited before listening (%v): %s", ErrProcess, p.Name, p.err, p.output.String())
	case <-t.C:
		return fmt.Errorf("%w: %s printed no address within %v: %s", ErrProcess, p.Name, timeout, p.output.String())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// awaitHTTP polls GET http://addr+path until it answers (with 200 when
// wantOK).
func (p *Process) awaitHTTP(ctx context.Context, addr, path string, wantOK bool, timeout time.Duration) error {
	c := newClient(addr, 1, time.Second, nil)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for {
		status, _, err := c.GetTimeout(nil, "http://"+addr+path, time.Second)
		if err == nil && (!wantOK || status == fasthttp.StatusOK) {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%w: %s exited (%v): %s", ErrProcess, p.Name, p.err, p.output.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s not ready at %s%s within %v (last: %d %v): %s", ErrProcess, p.Name, addr, path, timeout, status, err, p.output.String())
		}
	}
}

// Stop sends SIGTERM, waits up to 5s, then kills. It returns once the
// process is gone; calling it again is harmless.
func (p *Process) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// alive is nil while the process runs, else an ErrProcess error with how
// it ended and its last lines: a target that died under load must not
// pass for one that answered (wrk, for one, counts every refused connect
// as a transport error and goes on).
func (p *Process) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%w: %s exited during the run (%v): %s", ErrProcess, p.Name, p.err, p.output.String())
	default:
		return nil
	}
}

// Output returns the last lines the process wrote.
func (p *Process) Output() string { return p.output.String() }

var addrLine = regexp.MustCompile(`https?://([0-9.]+:[0-9]+)`)

// lineTail keeps the last tailBytes a process wrote and reports the first
// http://host:port it prints within its first addrScanBytes. After that it
// only keeps the tail: ballast's decision trail comes through here at up
// to tens of MB/s under saturation, and the harness, which shares the
// cores with the process it measures, must not spend them scanning it.
type lineTail struct {
	mu      sync.Mutex
	buf     []byte
	scanned int // bytes written so far, while looking for the address
	seen    bool
	addr    chan string
}

const (
	tailBytes     = 4096
	addrScanBytes = 64 << 10
)

func (l *lineTail) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.seen && l.scanned < addrScanBytes {
		l.scanned += len(b)
		l.buf = append(l.buf, b...)
		if i := bytes.IndexByte(l.buf, '\n'); i >= 0 {
			if m := addrLine.FindSubmatch(l.buf); m != nil {
				l.seen = true
				l.addr <- string(m[1])
			}
		}
	} else if len(b) >= tailBytes {
		l.buf = append(l.buf[:0], b[len(b)-tailBytes:]...)
	} else {
		l.buf = append(l.buf, b...)
	}
	if len(l.buf) > tailBytes {
		l.buf = append(l.buf[:0], l.buf[len(l.buf)-tailBytes:]...)
	}
	return len(b), nil
}

func (l *lineTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(bytes.TrimSpace(l.buf))
}

// freeAddr returns a loopback address that was free a moment ago, from
// below the ephemeral range, where the load generator's own connections
// cannot take it before the child binds it.
func freeAddr() (string, error) {
	addr, err := freeport.Loopback()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrProcess, err)
	}
	return addr, nil
}
