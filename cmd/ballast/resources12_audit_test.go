//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The local-resources audit: when ballast itself runs out of file
// descriptors, it says so, and neither blames the upstream nor stops
// serving. Each test runs the real binary under `prlimit --nofile`, so
// the shortage is the kernel's own EMFILE, on the binary's own accept and
// dial paths.

// res12Child is a ballast process with a low open-file limit.
type res12Child struct {
	cmd    *exec.Cmd
	logs   *lockedBuffer
	exited chan struct{} // closed once the process has exited
	listen string
	admin  *http.Client // one keep-alive connection, opened before any shortage
	adminA string
}

// res12Start runs the binary with at most nofile descriptors on yaml
// (which must use listen and admin from the returned child's ports, given
// to it as its two %s verbs), and opens the admin connection the test
// keeps for /status and /metrics: a new one could not be accepted once
// the descriptors are gone.
func res12Start(t *testing.T, nofile int, yaml string) *res12Child {
	t.Helper()
	return startLimited(t, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), yaml)
}

// startLimited is res12Start with any prlimit limit flag (--nofile=N:N,
// --fsize=N, ...).
func startLimited(t *testing.T, limit, yaml string) *res12Child {
	t.Helper()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) lowers the child's RLIMIT_NOFILE and is not on PATH; scripts/test-deps.sh installs it")
	}
	dir := t.TempDir()
	c := &res12Child{logs: &lockedBuffer{}, exited: make(chan struct{}), listen: freePort(t), adminA: freePort(t)}
	path := filepath.Join(dir, "ballast.yaml")
	if err := os.WriteFile(path, fmt.Appendf(nil, yaml, c.listen, c.adminA), 0o600); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(prlimit, limit, binary, "run", "-c", path)
	c.cmd.Dir = dir
	c.cmd.Stderr = c.logs
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	tr := &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}
	c.admin = &http.Client{Transport: tr, Timeout: 5 * time.Second}
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.exited
		tr.CloseIdleConnections()
	})
	saPoll(t, 10*time.Second, "ballast healthy", func() bool {
		code, _ := c.get("/readyz")
		return code == http.StatusOK
	})
	return c
}

// get asks the admin listener for path on the kept connection.
func (c *res12Child) get(path string) (int, []byte) {
	resp, err := c.admin.Get("http://" + c.adminA + path)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// alive fails the test when the child has exited.
func (c *res12Child) alive(t *testing.T) {
	t.Helper()
	select {
	case <-c.exited:
		t.Fatalf("ballast exited:\n%s", c.logs.String())
	default:
	}
}

// cpuTicks is the child's user and system CPU time, in clock ticks.
func (c *res12Child) cpuTicks(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state is
	// the first, utime the 12th, stime the 13th.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// logCount counts the child's log lines that contain msg.
func (c *res12Child) logCount(msg string) int {
	return strings.Count(c.logs.String(), msg)
}

// res12Conn is one agent connection, driven by hand.
type res12Conn struct {
	c  net.Conn
	br *bufio.Reader
}

func res12Dial(t *testing.T, addr string) *res12Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &res12Conn{c: c, br: bufio.NewReader(c)}
}

func (a *res12Conn) send(t *testing.T, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(a.c, "GET %s HTTP/1.1\r\nHost: agent\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
}

// res12Answer is an answer, and the problem document in it when ballast
// wrote one.
type res12Answer struct {
	status     int
	retryAfter string
	body       string
	problem    struct {
		Reason   string `json:"reason"`
		Detail   string `json:"detail"`
		Attempts int    `json:"attempts"`
	}
}

// read reads the answer to the request sent last, waiting at most d for
// its first byte; ok is false when none came.
func (a *res12Conn) read(t *testing.T, d time.Duration) (ans res12Answer, ok bool) {
	t.Helper()
	_ = a.c.SetReadDeadline(time.Now().Add(d))
	if _, err := a.br.Peek(1); err != nil {
		return ans, false
	}
	_ = a.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(a.br, nil)
	if err != nil {
		t.Fatalf("reading an answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading an answer's body: %v", err)
	}
	ans.status, ans.retryAfter, ans.body = resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
	if resp.Header.Get("Content-Type") == "application/problem+json" {
		_ = json.Unmarshal(b, &ans.problem)
	}
	return ans, true
}

// roundTrip sends path and returns its answer, failing when none comes.
func (a *res12Conn) roundTrip(t *testing.T, path string) res12Answer {
	t.Helper()
	a.send(t, path)
	ans, ok := a.read(t, 10*time.Second)
	if !ok {
		t.Fatalf("GET %s: no answer", path)
	}
	return ans
}

// res12Hold is an upstream that accepts connections and never answers:
// each request ballast sends it holds one of ballast's descriptors.
type res12Hold struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func res12HoldUpstream(t *testing.T) *res12Hold {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &res12Hold{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-h.done
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.conns {
			_ = c.Close()
		}
	})
	return h
}

func (h *res12Hold) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

// res12OK is an upstream that answers 200 "ok".
func res12OK(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// res12Metric sums the samples of the metric name whose labels contain
// every one of labels.
func res12Metric(text, name string, labels ...string) float64 {
	var sum float64
	for line := range strings.SplitSeq(text, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(line, l)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// res12Status is what the tests read of /status.
type res12Status struct {
	Routes []struct {
		Name      string `json:"name"`
		Upstreams []struct {
			Name     string `json:"name"`
			Failures uint64 `json:"failures"`
			Requests uint64 `json:"requests"`
			Breaker  string `json:"breaker"`
		} `json:"upstreams"`
	} `json:"routes"`
	Failures []struct {
		Route    string `json:"route"`
		Upstream string `json:"upstream"`
		Reason   string `json:"reason"`
	} `json:"failures"`
}

func (c *res12Child) status(t *testing.T) res12Status {
	t.Helper()
	code, b := c.get("/status")
	if code != http.StatusOK {
		t.Fatalf("/status: %d %s", code, b)
	}
	var st res12Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("/status: %v: %s", err, b)
	}
	return st
}

// res12LocalLog is the message of the line ballast logs when an upstream
// connection could not be opened for want of a local resource.
const res12LocalLog = "ballast is out of a local resource"

// TestDialOutOfDescriptorsIsBallastsNotUpstreams fills ballast's
// descriptors with upstream connections that hang, so that the next dial
// fails with EMFILE, and checks that the shortage is reported as
// ballast's own: 503 overloaded with Retry-After, a detail that names the
// shortage and a single log line, while the upstream's breaker, retry
// budget, attempts and /status window stay untouched. Once descriptors
// are free again, the same route answers.
func TestDialOutOfDescriptorsIsBallastsNotUpstreams(t *testing.T) {
	hold := res12HoldUpstream(t)
	okUp := res12OK(t)
	c := res12Start(t, 160, `listen: %s
admin: {listen: %s}
routes:
  - {name: hang, match: {path_prefix: /hang/}, upstream: "http://`+hold.ln.Addr().String()+`", timeouts: {per_try: 60s, total: 60s}}
  - {name: ok, match: {path_prefix: /ok/}, upstream: "http://`+okUp+`", breaker: {failures: 3}, retry: {attempts: 3}}
`)
	// Agent connections first, each seen through by a request ballast
	// answers itself (no_route), so that every one has its descriptor.
	var conns []*res12Conn
	for range 100 {
		a := res12Dial(t, c.listen)
		if ans := a.roundTrip(t, "/nowhere"); ans.status != http.StatusNotFound {
			t.Fatalf("probe: %d %s", ans.status, ans.body)
		}
		conns = append(conns, a)
	}
	// Then a hanging call on each until a dial fails: ballast is out of
	// descriptors.
	var refused res12Answer
	held := 0
	for ; held < len(conns)-10; held++ {
		a := conns[held]
		a.send(t, fmt.Sprintf("/hang/%d", held))
		var answered bool
		saPoll(t, 10*time.Second, "the hanging call reaches the upstream or is answered", func() bool {
			if hold.count() > held {
				return true
			}
			refused, answered = a.read(t, 5*time.Millisecond)
			return answered
		})
		if answered {
			break
		}
	}
	if held == len(conns)-10 {
		t.Fatalf("ballast held %d upstream connections under a limit of 160 descriptors", held)
	}
	checkLocal := func(what string, ans res12Answer) {
		t.Helper()
		if ans.status != http.StatusServiceUnavailable || ans.problem.Reason != "overloaded" || ans.retryAfter == "" ||
			ans.problem.Attempts != 0 || !strings.Contains(ans.problem.Detail, "file descriptors") ||
			!strings.Contains(ans.problem.Detail, "too many open files") {
			t.Errorf("%s: %d Retry-After %q %s, want 503 overloaded with Retry-After, 0 attempts, naming ballast's descriptors",
				what, ans.status, ans.retryAfter, ans.body)
		}
	}
	checkLocal("the call whose dial failed", refused)

	spare := conns[len(conns)-1]
	for i := range 6 {
		checkLocal(fmt.Sprintf("call %d to the idle upstream", i), spare.roundTrip(t, "/ok/v1"))
	}
	c.alive(t)
	if n := c.logCount(res12LocalLog); n != 1 {
		t.Errorf("%d log lines say %q over 7 refused calls, want 1:\n%s", n, res12LocalLog, c.logs.String())
	}
	code, metrics := c.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	m := string(metrics)
	for _, up := range []string{okUp, hold.ln.Addr().String()} {
		if v := res12Metric(m, "ballast_breaker_state", `upstream="`+up+`"`); v != 0 {
			t.Errorf("ballast_breaker_state{upstream=%q} = %v, want 0 (closed)", up, v)
		}
	}
	for _, name := range []string{"ballast_retries_total", "ballast_retry_budget_exhausted_total"} {
		if v := res12Metric(m, name, `route="ok"`); v != 0 {
			t.Errorf("%s{route=\"ok\"} = %v, want 0", name, v)
		}
	}
	if v := res12Metric(m, "ballast_upstream_attempts_total", `route="ok"`); v != 0 {
		t.Errorf("ballast_upstream_attempts_total{route=\"ok\"} = %v: a call that never left ballast counted as an attempt", v)
	}
	st := c.status(t)
	for _, r := range st.Routes {
		for _, u := range r.Upstreams {
			if u.Failures != 0 || u.Breaker != "closed" {
				t.Errorf("/status route %s upstream %s: %d failures, breaker %s; want none, closed", r.Name, u.Name, u.Failures, u.Breaker)
			}
		}
	}
	for _, f := range st.Failures {
		if f.Upstream != "" || f.Reason != "overloaded" {
			t.Errorf("/status failure %+v: want no upstream named, reason overloaded", f)
		}
	}

	// Descriptors come free (agents hang up): the same route answers.
	for _, a := range conns[len(conns)-6 : len(conns)-1] {
		_ = a.c.Close()
	}
	var last res12Answer
	saPoll(t, 10*time.Second, "the route answering once descriptors are free", func() bool {
		last = spare.roundTrip(t, "/ok/v1")
		return last.status == http.StatusOK
	})
	if last.body != "ok" {
		t.Errorf("after the shortage: %d %q", last.status, last.body)
	}
	c.alive(t)
}

// res12Exhaust opens agent connections, each seen through with a request
// ballast answers itself, until ballast is out of descriptors: it then
// logs that it cannot accept (Linux's accept fails as soon as no
// descriptor is left, before a connection waits), and the next connection
// waits in the backlog. It returns the accepted connections and the one
// left waiting, with its request sent.
func res12Exhaust(t *testing.T, c *res12Child, max int) (accepted []*res12Conn, waiting *res12Conn) {
	t.Helper()
	before := c.logCount(res12AcceptLog)
	for range max {
		a := res12Dial(t, c.listen)
		a.send(t, "/nowhere")
		var ans res12Answer
		var answered bool
		saPoll(t, 10*time.Second, "an answer, or the accept shortage logged", func() bool {
			select {
			case <-c.exited:
				return true
			default:
			}
			ans, answered = a.read(t, 5*time.Millisecond)
			return answered || c.logCount(res12AcceptLog) > before
		})
		if !answered {
			return accepted, a
		}
		if ans.status != http.StatusNotFound {
			t.Fatalf("probe: %d %s", ans.status, ans.body)
		}
		accepted = append(accepted, a)
	}
	t.Fatalf("ballast accepted %d connections under its descriptor limit", max)
	return nil, nil
}

// res12AcceptLog is the message of the line ballast logs when its
// listener cannot accept for want of a local resource.
const res12AcceptLog = "cannot accept connections"

// TestAcceptOutOfDescriptorsKeepsServing runs ballast out of descriptors
// with agent connections, so that accept fails with EMFILE, and checks
// that ballast neither exits (fasthttp's Serve returns on an accept error)
// nor spins on the failing accept: it logs the shortage once, serves the
// connections it has, and accepts the waiting one as soon as descriptors
// come free. A second shortage is logged again, and SIGTERM during one
// still drains and exits promptly.
func TestAcceptOutOfDescriptorsKeepsServing(t *testing.T) {
	okUp := res12OK(t)
	c := res12Start(t, 48, `listen: %s
admin: {listen: %s}
routes:
  - {name: ok, match: {path_prefix: /ok/}, upstream: "http://`+okUp+`"}
`)
	accepted, waiting := res12Exhaust(t, c, 48)
	c.alive(t)

	// While accept keeps failing, ballast serves what it has accepted,
	// agents and the admin listener, and otherwise stays idle: 100 ticks
	// a second would be one core spinning on the failing accept.
	if ans := accepted[0].roundTrip(t, "/nowhere"); ans.status != http.StatusNotFound {
		t.Fatalf("an accepted connection during the shortage: %d %s", ans.status, ans.body)
	}
	if code, _ := c.get("/healthz"); code != http.StatusOK {
		t.Fatalf("admin /healthz during the shortage: %d", code)
	}
	cpu0, start := c.cpuTicks(t), time.Now()
	select {
	case <-c.exited:
	case <-time.After(600 * time.Millisecond):
	}
	c.alive(t)
	if used := c.cpuTicks(t) - cpu0; used > 25 {
		t.Errorf("ballast used %d CPU ticks in %v while accept failed", used, time.Since(start).Round(time.Millisecond))
	}
	if n := c.logCount(res12AcceptLog); n != 1 {
		t.Errorf("%d log lines say %q during one shortage, want 1:\n%s", n, res12AcceptLog, c.logs.String())
	}

	// Agents hang up: the waiting connection is accepted and answered.
	for _, a := range accepted[1:5] {
		_ = a.c.Close()
	}
	if ans, ok := waiting.read(t, 10*time.Second); !ok || ans.status != http.StatusNotFound {
		t.Fatalf("the connection that waited for a descriptor: answered %v, %d %s", ok, ans.status, ans.body)
	}
	if ans := waiting.roundTrip(t, "/ok/v1"); ans.status != http.StatusOK || ans.body != "ok" {
		t.Errorf("a call after the shortage: %d %s", ans.status, ans.body)
	}

	// A second shortage is logged again; SIGTERM during it drains and
	// exits at once.
	res12Exhaust(t, c, 48)
	if n := c.logCount(res12AcceptLog); n != 2 {
		t.Errorf("%d log lines say %q after two shortages, want 2", n, res12AcceptLog)
	}
	if n := c.logCount("accepting connections again"); n != 1 {
		t.Errorf("%d log lines say the first shortage ended, want 1", n)
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
		if code := c.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit code %d after SIGTERM during a shortage:\n%s", code, c.logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit within 10s of SIGTERM during a shortage:\n%s", c.logs.String())
	}
}

// TestPoolFullIsBallastsNotUpstreams fills ballast's pool to one upstream
// (fasthttp's HostClient.MaxConns, 4096) with calls that hang, and checks
// that the next call, which finds no free connection within the pool's
// wait (1s, or the call's own shorter deadline), is answered as ballast's
// shortage, 503 overloaded, once and without retries, rather than as the
// upstream's failure (502 after three one-second waits, or a 504 that says
// the upstream did not answer in time), and that the upstream's breaker
// and /status window hear nothing of it.
func TestPoolFullIsBallastsNotUpstreams(t *testing.T) {
	const pool = 4096
	res12RaiseNofile(t, 2*pool+500) // the agents' and the upstream's ends of every call
	hold := res12HoldUpstream(t)
	c := res12Start(t, 2*pool+500, `listen: %s
admin: {listen: %s}
routes:
  - {name: hang, match: {path_prefix: /hang/}, upstream: "http://`+hold.ln.Addr().String()+`", timeouts: {per_try: 60s, total: 60s}, breaker: {failures: 2}}
`)
	start := time.Now()
	for i := range pool {
		res12Dial(t, c.listen).send(t, fmt.Sprintf("/hang/%d", i))
	}
	saPoll(t, 30*time.Second, "every pooled connection held", func() bool { return hold.count() == pool })
	t.Logf("%d calls held in %v", pool, time.Since(start).Round(time.Millisecond))

	a := res12Dial(t, c.listen)
	sent := time.Now()
	ans := a.roundTrip(t, "/hang/more")
	took := time.Since(sent)
	if ans.status != http.StatusServiceUnavailable || ans.problem.Reason != "overloaded" || ans.retryAfter == "" ||
		ans.problem.Attempts != 0 || !strings.Contains(ans.problem.Detail, "connections to the upstream") || took > 2500*time.Millisecond {
		t.Errorf("a call past the pool after %v: %d Retry-After %q %s; want 503 overloaded at once after the pool's wait", took.Round(time.Millisecond), ans.status, ans.retryAfter, ans.body)
	}
	// A deadline shorter than the pool's wait cuts it: still the pool's.
	_, _ = fmt.Fprintf(a.c, "GET /hang/short HTTP/1.1\r\nHost: agent\r\nX-Ballast-Timeout: 300ms\r\n\r\n")
	if ans, ok := a.read(t, 10*time.Second); !ok || ans.status != http.StatusServiceUnavailable || ans.problem.Reason != "overloaded" {
		t.Errorf("a call past the pool with a 300ms deadline: %d %s; want 503 overloaded", ans.status, ans.body)
	}
	if hold.count() != pool {
		t.Errorf("the upstream saw %d connections, want %d", hold.count(), pool)
	}
	_, metrics := c.get("/metrics")
	if v := res12Metric(string(metrics), "ballast_breaker_state", `upstream="`+hold.ln.Addr().String()+`"`); v != 0 {
		t.Errorf("ballast_breaker_state = %v, want 0 (closed)", v)
	}
	if v := res12Metric(string(metrics), "ballast_retries_total", `route="hang"`); v != 0 {
		t.Errorf("ballast_retries_total{route=\"hang\"} = %v, want 0", v)
	}
	for _, r := range c.status(t).Routes {
		for _, u := range r.Upstreams {
			if u.Failures != 0 || u.Breaker != "closed" {
				t.Errorf("/status upstream %s: %d failures, breaker %s; want none, closed", u.Name, u.Failures, u.Breaker)
			}
		}
	}
}

// res12RaiseNofile makes sure this process may open want descriptors,
// raising its own limit (the hard one too, which root may) for the test
// and restoring it after; it fails the test when the machine refuses.
func res12RaiseNofile(t *testing.T, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	raised := lim
	raised.Cur = want
	raised.Max = max(lim.Max, want)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		t.Fatalf("needs %d descriptors, the limit is %d and raising it failed: %v", want, lim.Cur, err)
	}
	t.Cleanup(func() {
		restore := lim
		restore.Max = raised.Max // a hard limit, once raised, may not come down and go back up
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &restore)
	})
}
