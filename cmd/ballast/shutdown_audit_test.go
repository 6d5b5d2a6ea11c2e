package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The shutdown audit: what a Kubernetes or docker-compose user expects
// when the sidecar is stopped, restarted or killed, on the real binary.

// saPoll polls cond every 10ms until it holds, failing after d.
func saPoll(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// saExit waits at most d for cmd to exit and returns its exit code (-1
// when it did not exit; the process is then killed).
func saExit(t *testing.T, cmd *exec.Cmd, d time.Duration) (code int, took time.Duration) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		took = time.Since(start)
		if err == nil {
			return 0, took
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), took
		}
		t.Fatalf("wait: %v", err)
	case <-time.After(d):
		// A goroutine dump first (to the child's stderr, which the test
		// holds), so that a hang says where it hung.
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	return -1, d
}

// saStart runs the binary on the config in dir/ballast.yaml and waits
// until it is healthy. Unlike startProcess, its cleanup does not Wait:
// saExit may have done it.
func saStart(t *testing.T, dir, admin string, env ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(binary, "run", "-c", filepath.Join(dir, "ballast.yaml"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out, errb bytes.Buffer
		if run([]string{"healthcheck", "--admin", admin}, &out, &errb) == 0 {
			return cmd, logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("ballast never became healthy:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func saWrite(t *testing.T, dir, yaml string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "ballast.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
}

// saStartRoute runs the binary as saStart does, on fresh listen and admin
// ports, with one route (r, every path) to up after the settings lines
// (each ending in a newline).
func saStartRoute(t *testing.T, up, settings string) (cmd *exec.Cmd, logs *lockedBuffer, listen, admin string) {
	t.Helper()
	dir := t.TempDir()
	listen, admin = saWriteConfig(t, dir, settings+fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	cmd, logs = saStart(t, dir, admin)
	return cmd, logs, listen, admin
}

// saWriteConfig writes dir/ballast.yaml: fresh listen and admin ports, then
// settings (lines each ending in a newline). It returns the two addresses.
func saWriteConfig(t *testing.T, dir, settings string) (listen, admin string) {
	t.Helper()
	listen, admin = freePort(t), freePort(t)
	saWrite(t, dir, fmt.Sprintf("listen: %s\nadmin: {listen: %s}\n", listen, admin)+settings)
	return listen, admin
}

// saGate is an upstream whose requests under a path containing "/hold"
// block until release (or until the caller goes away), counting calls
// per path.
type saGate struct {
	callCounter
	release chan struct{}
	once    sync.Once
}

func (g *saGate) open() { g.once.Do(func() { close(g.release) }) }

func startGate(t *testing.T, extra func(w http.ResponseWriter, r *http.Request, n int) bool) (*saGate, string) {
	g := &saGate{release: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := g.add(r.URL.Path)
		if extra != nil && extra(w, r, n) {
			return
		}
		if strings.Contains(r.URL.Path, "/hold") {
			select {
			case <-g.release:
			case <-r.Context().Done():
				return
			}
		}
		if strings.Contains(r.URL.Path, "/stuck") && n == 1 {
			<-r.Context().Done() // only ballast's death ends it
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"call":%d}`, r.URL.Path, n)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { g.open(); srv.Close() })
	return g, "http://" + ln.Addr().String()
}

// saRaw is an agent's keep-alive connection, read by hand so that
// Connection: close and how the connection ends are visible.
type saRaw struct {
	conn net.Conn
	br   *bufio.Reader
}

func saDial(t *testing.T, addr string) *saRaw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &saRaw{conn: c, br: bufio.NewReader(c)}
}

type saAnswer struct {
	status int
	body   string
	close  bool
	header http.Header
	err    error
}

// send writes req and reads the answer from a goroutine.
func (r *saRaw) send(req string) <-chan saAnswer {
	out := make(chan saAnswer, 1)
	if _, err := io.WriteString(r.conn, req); err != nil {
		out <- saAnswer{err: err}
		return out
	}
	go func() {
		resp, err := http.ReadResponse(r.br, nil)
		if err != nil {
			out <- saAnswer{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- saAnswer{status: resp.StatusCode, body: string(b), close: resp.Close, header: resp.Header, err: err}
	}()
	return out
}

// endsCleanly reports how the connection ends: nil for EOF (the server
// closed it), else the error (a reset, or a timeout when it stays open).
func (r *saRaw) endsCleanly(d time.Duration) error {
	r.conn.SetReadDeadline(time.Now().Add(d))
	b, err := r.br.ReadByte()
	if err == io.EOF {
		return nil
	}
	if err == nil {
		return fmt.Errorf("unexpected byte %q", b)
	}
	return err
}

func saWithin(t *testing.T, ch <-chan saAnswer, d time.Duration, what string) saAnswer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(d):
		t.Fatalf("%s: no answer within %v", what, d)
		return saAnswer{}
	}
}

func saAdmin(admin, path string) (int, string) {
	resp, err := http.Get("http://" + admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// SIGTERM with a plain request in flight: /readyz turns 503 at once while
// /healthz (and `ballast healthcheck`) stay 200; the listener stops taking
// new connections; an idle keep-alive connection is closed cleanly; the
// in-flight answer is delivered with Connection: close and the connection
// then closed (EOF, not a reset); the drain ends as soon as nothing is in
// flight, not after shutdown_timeout; the exit code is 0; every log line,
// the request's own trail line included, reaches stderr as JSON; and a new
// ballast binds the same ports at once.
func TestShutdownAudit_SIGTERMDrainContract(t *testing.T) {
	g, up := startGate(t, nil)
	dir := t.TempDir()
	listen, admin := saWriteConfig(t, dir, fmt.Sprintf(`shutdown_timeout: 20s
log: {flush_interval: 30s}
routes: [{name: r, match: {path_prefix: /}, upstream: %q}]
`, up))
	cmd, logs := saStart(t, dir, admin)

	idle := saDial(t, listen)
	if a := saWithin(t, idle.send("GET /warm HTTP/1.1\r\nHost: x\r\n\r\n"), 5*time.Second, "warm-up"); a.status != 200 {
		t.Fatalf("warm-up: %+v", a)
	}
	busy := saDial(t, listen)
	inflight := busy.send("GET /hold/1 HTTP/1.1\r\nHost: x\r\n\r\n")
	saPoll(t, 5*time.Second, "the request reaching the upstream", func() bool { return g.count("/hold/1") == 1 })

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	saPoll(t, 2*time.Second, "/readyz turning 503", func() bool {
		code, body := saAdmin(admin, "/readyz")
		return code == 503 && body == "draining\n"
	})
	if code, body := saAdmin(admin, "/healthz"); code != 200 {
		t.Errorf("/healthz during the drain: %d %q, want 200 (alive: a liveness probe must not kill a draining sidecar)", code, body)
	}
	var out, errb bytes.Buffer
	if c := run([]string{"healthcheck", "--admin", admin}, &out, &errb); c != 0 {
		t.Errorf("ballast healthcheck during the drain: exit %d (%s), want 0", c, errb.String())
	}
	errb.Reset()
	if c := run([]string{"healthcheck", "--admin", admin, "--ready"}, &out, &errb); c != 1 || !strings.Contains(errb.String(), "503") || !strings.Contains(errb.String(), "draining") {
		t.Errorf("ballast healthcheck --ready during the drain: exit %d (%s), want 1 naming 503 draining", c, errb.String())
	}
	saPoll(t, 2*time.Second, "new connections refused", func() bool {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if err := idle.endsCleanly(3 * time.Second); err != nil {
		t.Errorf("a keep-alive connection idle at SIGTERM: %v, want a clean close (EOF)", err)
	}
	if cmd.ProcessState != nil {
		t.Fatal("ballast exited with a request in flight")
	}

	released := time.Now()
	g.open()
	a := saWithin(t, inflight, 5*time.Second, "the in-flight request")
	if a.err != nil || a.status != 200 || !strings.Contains(a.body, `"call":1`) || !a.close {
		t.Errorf("in-flight answer during the drain: %d %q close=%v %v, want 200 with Connection: close", a.status, a.body, a.close, a.err)
	}
	if err := busy.endsCleanly(3 * time.Second); err != nil {
		t.Errorf("after its answer, the agent's connection: %v, want a clean close (EOF)", err)
	}
	code, _ := saExit(t, cmd, 5*time.Second)
	if code != 0 {
		t.Fatalf("exit code %d, want 0\n%s", code, logs.String())
	}
	if took := time.Since(released); took > 3*time.Second {
		t.Errorf("the drain took %v after the last request ended; it must not wait out shutdown_timeout (20s)", took)
	}
	stderr := logs.String()
	for _, want := range []string{`"msg":"draining"`, `"signal":"terminated"`, `"shutdown_timeout":"20s"`, `"msg":"stopped"`, a.header.Get("X-Request-Id")} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q (a line logged before exit was lost):\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "did not finish in time") {
		t.Errorf("a drain that finished reported a timeout:\n%s", stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		if !json.Valid(sc.Bytes()) {
			t.Errorf("a log line is not JSON: %q", sc.Text())
		}
	}
	errb.Reset()
	if c := run([]string{"healthcheck", "--admin", admin}, &out, &errb); c != 1 {
		t.Errorf("healthcheck after exit: %d, want 1", c)
	}
	// The server closed the agent connections first, so their sockets sit
	// in TIME_WAIT on the listen port: a restart binds it anyway.
	cmd2, logs2 := saStart(t, dir, admin)
	if got := fetch(t, "http://"+listen+"/after"); !strings.Contains(got, `"call":1`) {
		t.Errorf("restarted ballast: %q", got)
	}
	_ = cmd2.Process.Signal(syscall.SIGTERM)
	if code, _ := saExit(t, cmd2, 5*time.Second); code != 0 {
		t.Errorf("restart: exit %d\n%s", code, logs2.String())
	}
}

// SIGTERM with nothing in flight exits at once (the drain does not wait
// out shutdown_timeout), with SIGINT as with SIGTERM.
func TestShutdownAudit_IdleDrainIsImmediate(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, logs, _, _ := saStartRoute(t, "http://127.0.0.1:1", "shutdown_timeout: 30s\n")
			_ = cmd.Process.Signal(sig)
			code, took := saExit(t, cmd, 5*time.Second)
			if code != 0 || took > 2*time.Second {
				t.Errorf("idle %v: exit %d after %v, want 0 at once\n%s", sig, code, took, logs.String())
			}
		})
	}
}

// An SSE stream being relayed when SIGTERM arrives is relayed to its end:
// the events sent after the signal reach the agent and the stream ends
// with its terminating chunk, not a cut connection.
func TestShutdownAudit_SSEStreamFinishesDuringDrain(t *testing.T) {
	more := make(chan struct{})
	var once sync.Once
	_, up := startGate(t, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != "/sse" {
			return false
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		fl := w.(http.Flusher)
		fmt.Fprint(w, "data: one\n\n")
		fl.Flush()
		select {
		case <-more:
		case <-r.Context().Done():
			return true
		}
		fmt.Fprint(w, "data: two\n\n")
		fl.Flush()
		fmt.Fprint(w, "data: [DONE]\n\n")
		return true
	})
	t.Cleanup(func() { once.Do(func() { close(more) }) })
	cmd, logs, listen, admin := saStartRoute(t, up, "shutdown_timeout: 20s\n")

	resp, err := http.Get("http://" + listen + "/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event: %q %v", line, err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "/readyz turning 503", func() bool { c, _ := saAdmin(admin, "/readyz"); return c == 503 })
	once.Do(func() { close(more) })
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: two\n\ndata: [DONE]\n\n" {
		t.Errorf("the stream after SIGTERM: %q %v, want the remaining events and a clean end", rest, err)
	}
	if code, _ := saExit(t, cmd, 5*time.Second); code != 0 {
		t.Errorf("exit %d\n%s", code, logs.String())
	}
}

// shutdown_timeout expiry with calls that never finish: ballast exits
// about shutdown_timeout after SIGTERM, saying so in the log; the agents
// still waiting are not left hanging; with the file store, a keyed call
// that was still running reads after the restart (on the same ports, at
// once) as outcome_unknown — never run a second time — while a keyed call
// that finished during the drain replays.
func TestShutdownAudit_TimeoutExpiryWithFileStore(t *testing.T) {
	g, up := startGate(t, nil)
	dir := t.TempDir()
	listen, admin := saWriteConfig(t, dir, fmt.Sprintf(`shutdown_timeout: 1s
state: {backend: file, path: %s}
routes: [{name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}]
`, filepath.Join(dir, "state.db"), up))
	cmd, logs := saStart(t, dir, admin)

	keyed := func(path, key string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nIdempotency-Key: %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", path, key)
	}
	done := saDial(t, listen).send(keyed("/hold/done", "k-done"))
	stuck := saDial(t, listen).send(keyed("/stuck/charge", "k-stuck"))
	plain := saDial(t, listen).send("GET /stuck/plain HTTP/1.1\r\nHost: x\r\n\r\n")
	saPoll(t, 5*time.Second, "the calls reaching the upstream", func() bool {
		return g.count("/hold/done") == 1 && g.count("/stuck/charge") == 1 && g.count("/stuck/plain") == 1
	})
	sent := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "/readyz turning 503", func() bool { c, _ := saAdmin(admin, "/readyz"); return c == 503 })
	g.open() // /hold/done finishes during the drain
	if a := saWithin(t, done, 5*time.Second, "the keyed call that finishes in the drain"); a.status != 200 || !a.close {
		t.Errorf("keyed call finished in the drain: %+v", a)
	}
	code, _ := saExit(t, cmd, 6*time.Second)
	took := time.Since(sent)
	if code == -1 {
		t.Fatalf("ballast did not exit within 6s of SIGTERM with shutdown_timeout 1s\n%s", logs.String())
	}
	if code != 0 {
		t.Errorf("exit code after an expired drain: %d (documented: exits anyway)", code)
	}
	if took < time.Second || took > 4*time.Second {
		t.Errorf("exit %v after SIGTERM, want about shutdown_timeout (1s)", took)
	}
	for _, want := range []string{`"msg":"draining"`, `"msg":"drain did not finish in time; exiting"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, logs.String())
		}
	}
	for name, ch := range map[string]<-chan saAnswer{"keyed": stuck, "plain": plain} {
		if a := saWithin(t, ch, 3*time.Second, name+" call cut by the exit"); a.err == nil && a.status == 200 {
			t.Errorf("%s call that never finished upstream answered 200: %+v", name, a)
		}
	}

	// Restart at once on the same ports and state file.
	cmd2, logs2 := saStart(t, dir, admin)
	resp, body := post(t, "http://"+listen+"/stuck/charge", "{}", "Idempotency-Key", "k-stuck", "Content-Type", "application/json")
	if resp.StatusCode != 409 || !strings.Contains(body, "outcome_unknown") {
		t.Errorf("retry of a keyed call cut by shutdown_timeout: %d %s, want 409 outcome_unknown", resp.StatusCode, body)
	}
	resp, body = post(t, "http://"+listen+"/hold/done", "{}", "Idempotency-Key", "k-done", "Content-Type", "application/json")
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" || !strings.Contains(body, `"call":1`) {
		t.Errorf("retry of a keyed call finished during the drain: %d replayed=%q %s, want its replay", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	if n := g.count("/stuck/charge"); n != 1 {
		t.Errorf("the keyed call cut by the exit ran %d times upstream, want 1", n)
	}
	if n := g.count("/hold/done"); n != 1 {
		t.Errorf("the keyed call finished in the drain ran %d times upstream, want 1", n)
	}
	if !strings.Contains(logs2.String(), `"unknown_outcome":1`) {
		t.Errorf("the restart did not report the lost claim:\n%s", logs2.String())
	}
	_ = cmd2.Process.Signal(syscall.SIGTERM)
	saExit(t, cmd2, 5*time.Second)
}

// Async jobs at SIGTERM: a running job that finishes within
// shutdown_timeout has its outcome stored; jobs still running when it
// expires are, after the restart, run again where that is safe (a route
// declared idempotent) and reported outcome_unknown where it is not —
// never run twice there.
func TestShutdownAudit_AsyncJobsAcrossSIGTERM(t *testing.T) {
	g, up := startGate(t, nil)
	dir := t.TempDir()
	listen, admin := saWriteConfig(t, dir, fmt.Sprintf(`shutdown_timeout: 1500ms
state: {backend: file, path: %s}
routes:
  - name: rep
    match: {path_prefix: /rep/}
    upstream: %q
    idempotency: {mode: header, idempotent: true}
    async: {enabled: true}
  - name: pay
    match: {path_prefix: /pay/}
    upstream: %q
    async: {enabled: true}
`, filepath.Join(dir, "state.db"), up, up))
	cmd, logs := saStart(t, dir, admin)
	base := "http://" + listen
	submit := func(path string) string {
		resp, body := post(t, base+path, "{}", "Prefer", "respond-async", "Content-Type", "application/json")
		if resp.StatusCode != 202 || resp.Header.Get("Location") == "" {
			t.Fatalf("submit %s: %d %s", path, resp.StatusCode, body)
		}
		return resp.Header.Get("Location")
	}
	finish := submit("/rep/hold/finish")
	safe := submit("/rep/stuck/safe")
	unsafe := submit("/pay/stuck/unsafe")
	saPoll(t, 5*time.Second, "the jobs reaching the upstream", func() bool {
		return g.count("/rep/hold/finish") == 1 && g.count("/rep/stuck/safe") == 1 && g.count("/pay/stuck/unsafe") == 1
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "/readyz turning 503", func() bool { c, _ := saAdmin(admin, "/readyz"); return c == 503 })
	g.open()
	if code, _ := saExit(t, cmd, 6*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, logs.String())
	}

	cmd2, logs2 := saStart(t, dir, admin)
	job := func(loc string) (int, string) {
		req, _ := http.NewRequest("GET", base+loc, nil)
		req.Header.Set("Prefer", "wait=5")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := job(finish); code != 200 || !strings.Contains(body, `"call":1`) {
		t.Errorf("job finished during the drain, after restart: %d %s, want its stored answer", code, body)
	}
	if code, body := job(safe); code != 200 || !strings.Contains(body, `"call":2`) {
		t.Errorf("job cut on an idempotent route, after restart: %d %s, want it run again", code, body)
	}
	if code, body := job(unsafe); code != 409 || !strings.Contains(body, "outcome_unknown") {
		t.Errorf("job cut on a non-idempotent POST route, after restart: %d %s, want 409 outcome_unknown", code, body)
	}
	if n := g.count("/pay/stuck/unsafe"); n != 1 {
		t.Errorf("the unsafe job ran %d times upstream, want 1", n)
	}
	if n := g.count("/rep/hold/finish"); n != 1 {
		t.Errorf("the job finished in the drain ran %d times upstream, want 1", n)
	}
	_ = cmd2.Process.Signal(syscall.SIGTERM)
	if code, _ := saExit(t, cmd2, 5*time.Second); code != 0 {
		t.Errorf("restart exit %d\n%s", code, logs2.String())
	}
}

// A second SIGTERM or SIGINT during the drain (Ctrl-C pressed again, an
// operator who does not want to wait for a stuck call) makes ballast exit
// at once, non-zero, saying so — as Caddy and most servers do — rather
// than being ignored until shutdown_timeout (30s by default) runs out.
func TestShutdownAudit_SecondSignalForcesExit(t *testing.T) {
	g, up := startGate(t, nil)
	cmd, logs, listen, _ := saStartRoute(t, up, "shutdown_timeout: 20s\n")
	stuck := saDial(t, listen).send("GET /stuck/x HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = stuck
	// In flight before the signal: a request not yet accepted would be
	// refused with the listener, and the drain, with nothing to wait for,
	// end in exit 0 before the second signal.
	saPoll(t, 5*time.Second, "the request reaching the upstream", func() bool { return g.count("/stuck/x") == 1 })
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "the drain starting", func() bool { return strings.Contains(logs.String(), `"msg":"draining"`) })
	_ = cmd.Process.Signal(syscall.SIGINT)
	code, took := saExit(t, cmd, 3*time.Second)
	if code == -1 {
		t.Fatalf("a second signal during the drain was ignored: still running after %v (shutdown_timeout 20s)\n%s", took, logs.String())
	}
	if code == 0 {
		t.Errorf("forced exit with calls cut: exit 0, want non-zero")
	}
	if !strings.Contains(logs.String(), "second signal") {
		t.Errorf("the forced exit is not logged:\n%s", logs.String())
	}
}

// Every line logged before exit reaches a healthy stderr: the trail lines
// of a burst of requests finished just before SIGTERM (buffered for
// log.flush_interval, 30s here) and the shutdown lines.
func TestShutdownAudit_AllLogLinesReachStderr(t *testing.T) {
	_, up := startGate(t, nil)
	cmd, logs, listen, _ := saStartRoute(t, up, "log: {flush_interval: 30s}\n")
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer c.CloseIdleConnections()
	var ids []string
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				resp, err := c.Get(fmt.Sprintf("http://%s/n/%d/%d", listen, w, i))
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				ids = append(ids, resp.Header.Get("X-Request-Id"))
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if code, _ := saExit(t, cmd, 5*time.Second); code != 0 {
		out := logs.String()
		t.Fatalf("exit %d; the end of stderr:\n%s", code, out[max(0, len(out)-16<<10):])
	}
	stderr := logs.String()
	missing := 0
	for _, id := range ids {
		if id == "" || !strings.Contains(stderr, id) {
			missing++
		}
	}
	if missing > 0 || len(ids) != 400 {
		t.Errorf("%d of %d requests' trail lines never reached stderr", missing, len(ids))
	}
	if !strings.Contains(stderr, `"msg":"stopped"`) || strings.Contains(stderr, "dropped") {
		t.Errorf("shutdown lines missing or lines dropped:\n%.2000s", stderr)
	}
}

// A stuck stderr (a log pipe nobody reads) neither holds requests up nor
// keeps ballast from exiting on SIGTERM: the log sink's close is bounded.
func TestShutdownAudit_StuckStderrDoesNotBlockExit(t *testing.T) {
	_, up := startGate(t, nil)
	dir := t.TempDir()
	listen, admin := saWriteConfig(t, dir, fmt.Sprintf("log: {flush_interval: 1ms}\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd := exec.Command(binary, "run", "-c", filepath.Join(dir, "ballast.yaml"), "--log-level", "debug")
	cmd.Dir = dir
	cmd.Stderr = pw // an *os.File: the child writes the pipe itself, and nobody reads it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	// Until ballast is healthy its stderr is read, so that a start that
	// fails says why; from then on nobody reads it.
	startup := &lockedBuffer{}
	reading := make(chan struct{})
	go func() {
		defer close(reading)
		_, _ = io.Copy(startup, pr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out, errb bytes.Buffer
		if run([]string{"healthcheck", "--admin", admin}, &out, &errb) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ballast never became healthy:\n%s", startup.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = pr.SetReadDeadline(time.Now()) // stop reading, keep the pipe open
	<-reading
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	// Far more than a pipe holds (64KiB): the sink's writer is stuck.
	long := strings.Repeat("p", 1500)
	for i := 0; i < 300; i++ {
		resp, err := c.Get(fmt.Sprintf("http://%s/%s/%d", listen, long, i))
		if err != nil {
			t.Fatalf("request %d with stderr stuck: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	code, took := saExit(t, cmd, 8*time.Second)
	if code == -1 {
		t.Fatal("ballast did not exit on SIGTERM within 8s while stderr was stuck")
	}
	if code != 0 || took > 5*time.Second {
		t.Errorf("exit %d after %v with stderr stuck, want 0 within the sink's close bound", code, took)
	}
}

// kill -9 in the middle of keyed traffic on the file store: a restarted
// ballast (same ports, at once) answers every retried key as a replay of
// the answer the agent got, or as outcome_unknown when the call's outcome
// was lost — and never runs a call that reached the upstream a second
// time.
func TestShutdownAudit_KillNineMidTrafficNeverRunsTwice(t *testing.T) {
	g, up := startGate(t, nil)
	dir := t.TempDir()
	listen, admin := saWriteConfig(t, dir, fmt.Sprintf(`state: {backend: file, path: %s}
routes: [{name: pay, match: {path_prefix: /}, upstream: %q, idempotency: {mode: header}}]
`, filepath.Join(dir, "state.db"), up))
	cmd, _ := saStart(t, dir, admin)

	type sent struct {
		path, key string
		answered  bool
		body      string
	}
	var (
		mu     sync.Mutex
		all    []*sent
		stop   = make(chan struct{})
		wg     sync.WaitGroup
		okSeen int
	)
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for w := 0; w < 12; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				kind := "pay"
				if w%4 == 0 && i == 0 {
					kind = "stuck" // in flight when ballast dies
				}
				s := &sent{path: fmt.Sprintf("/%s/%d/%d", kind, w, i), key: fmt.Sprintf("k-%d-%d", w, i)}
				mu.Lock()
				all = append(all, s)
				mu.Unlock()
				req, _ := http.NewRequest("POST", "http://"+listen+s.path, strings.NewReader(`{"amount":1}`))
				req.Header.Set("Idempotency-Key", s.key)
				req.Header.Set("Content-Type", "application/json")
				resp, err := c.Do(req)
				if err != nil {
					return // ballast died
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode == 200 {
					s.answered, s.body = true, string(b)
					okSeen++
				}
				mu.Unlock()
			}
		}(w)
	}
	saPoll(t, 10*time.Second, "traffic under way", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return okSeen >= 150 && g.count("/stuck/0/0") == 1 && g.count("/stuck/4/0") == 1 && g.count("/stuck/8/0") == 1
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	close(stop)
	_, _ = saExit(t, cmd, 5*time.Second)
	wg.Wait()
	tr.CloseIdleConnections()

	cmd2, logs2 := saStart(t, dir, admin)
	mu.Lock()
	keys := append([]*sent(nil), all...)
	mu.Unlock()
	before := map[string]int{}
	for _, s := range keys {
		before[s.path] = g.count(s.path)
	}
	var replayed, unknown, fresh, lostCompletions int
	for _, s := range keys {
		resp, body := post(t, "http://"+listen+s.path, `{"amount":1}`, "Idempotency-Key", s.key, "Content-Type", "application/json")
		switch {
		case resp.StatusCode == 200 && resp.Header.Get("Idempotent-Replayed") == "true":
			replayed++
			if s.answered && body != s.body {
				t.Errorf("%s: replayed %q, but the agent got %q", s.key, body, s.body)
			}
		case resp.StatusCode == 409 && strings.Contains(body, "outcome_unknown"):
			unknown++
			if s.answered {
				lostCompletions++
			}
		case resp.StatusCode == 200:
			fresh++
			if before[s.path] != 0 {
				t.Errorf("%s: ran again after the restart although its first call reached the upstream (%d call(s) before)", s.key, before[s.path])
			}
		default:
			t.Errorf("%s: retry after kill -9 answered %d %s", s.key, resp.StatusCode, body)
		}
		if n := g.count(s.path); n > 1 {
			t.Errorf("%s: the upstream ran this call %d times", s.key, n)
		}
	}
	for _, p := range []string{"/stuck/0/0", "/stuck/4/0", "/stuck/8/0"} {
		if n := g.count(p); n != 1 {
			t.Errorf("%s (in flight at kill -9) ran %d times", p, n)
		}
	}
	t.Logf("after kill -9: %d replayed, %d unknown (%d of them answered 200 before the kill), %d fresh of %d", replayed, unknown, lostCompletions, fresh, len(keys))
	if replayed < 100 || unknown < 3 {
		t.Errorf("after kill -9: %d replayed, %d outcome_unknown, %d fresh of %d keys; want most completed calls replayed and the three in flight unknown\n%s",
			replayed, unknown, fresh, len(keys), logs2.String())
	}
	_ = cmd2.Process.Signal(syscall.SIGTERM)
	saExit(t, cmd2, 5*time.Second)
}

// A keyed call waiting out an upstream's Retry-After when SIGTERM arrives
// is answered 503 shutting_down at once, and its key is freed, not stored:
// after the restart the agent's retry runs the call (the 429 said it was
// not done), rather than replaying the 503 or reading outcome_unknown.
func TestShutdownAudit_KeyedWaitAtSIGTERMFreesTheKey(t *testing.T) {
	g, up := startGate(t, func(w http.ResponseWriter, r *http.Request, n int) bool {
		if n == 1 {
			w.Header().Set("Retry-After", "100")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return false
	})
	dir := t.TempDir()
	listen, admin := saWriteConfig(t, dir, fmt.Sprintf(`shutdown_timeout: 20s
state: {backend: file, path: %s}
routes:
  - name: pay
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: header}
    retry: {attempts: 3, on: [429], max_retry_after: 200s}
    timeouts: {total: 300s}
`, filepath.Join(dir, "state.db"), up))
	cmd, logs := saStart(t, dir, admin)
	waiting := saDial(t, listen).send("POST /charge HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-wait\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	saPoll(t, 5*time.Second, "the first attempt", func() bool { return g.count("/charge") == 1 })
	// The 429 has been answered; let ballast reach its wait (observed
	// when the retry is decided; ballast_retries_total counts it only
	// once it is sent).
	saPoll(t, 5*time.Second, "ballast waiting", func() bool {
		code, body := saAdmin(admin, "/metrics")
		if code != 200 {
			return false
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "ballast_retry_wait_seconds_count{") && strings.HasSuffix(line, " 1") {
				return true
			}
		}
		return false
	})
	sent := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	a := saWithin(t, waiting, 3*time.Second, "the keyed call waiting at SIGTERM")
	if a.status != 503 || !strings.Contains(a.body, "shutting_down") || !a.close {
		t.Errorf("keyed call waiting at SIGTERM: %d %q close=%v %v, want 503 shutting_down with Connection: close", a.status, a.body, a.close, a.err)
	}
	if code, took := saExit(t, cmd, 5*time.Second); code != 0 || took > 3*time.Second {
		t.Errorf("exit %d %v after SIGTERM (nothing else in flight)\n%s", code, time.Since(sent), logs.String())
	}
	cmd2, _ := saStart(t, dir, admin)
	resp, body := post(t, "http://"+listen+"/charge", "{}", "Idempotency-Key", "k-wait", "Content-Type", "application/json")
	if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "" || !strings.Contains(body, `"call":2`) {
		t.Errorf("retry after the restart: %d replayed=%q %s, want the call run (200, call 2)", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
	}
	_ = cmd2.Process.Signal(syscall.SIGTERM)
	saExit(t, cmd2, 5*time.Second)
}

// An HTTP client's spare connection, dialled while another came free and
// parked unused in its pool, does not hold the exit up: fasthttp's drain
// counts a connection that never carried a request as idle only 5s after
// it opened, which made TestShutdownAudit_AllLogLinesReachStderr miss its
// 5s bound when its client happened to dial one. A request half sent at
// SIGTERM on a keep-alive connection is answered, and its trail line
// logged, before the exit.
func TestShutdownAudit_SpareConnectionDoesNotHoldTheExit(t *testing.T) {
	_, up := startGate(t, nil)
	cmd, logs, listen, _ := saStartRoute(t, up, "log: {flush_interval: 30s}\n")
	kept := saDial(t, listen)
	if a := saWithin(t, kept.send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n"), 5*time.Second, "first"); a.status != 200 {
		t.Fatalf("first: %+v", a)
	}
	spare := saDial(t, listen)
	// Accepted: a request on a later connection has been served.
	if got := fetch(t, "http://"+listen+"/later"); !strings.Contains(got, `"call":1`) {
		t.Fatalf("later: %q", got)
	}
	half := kept.send("GET /half HTTP/1.1\r\nHo")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "the drain starting", func() bool { return strings.Contains(logs.String(), `"msg":"draining"`) })
	if _, err := io.WriteString(kept.conn, "st: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	a := saWithin(t, half, 5*time.Second, "the request half sent at SIGTERM")
	if a.err != nil || a.status != 200 || !a.close {
		t.Errorf("the request half sent at SIGTERM: %d close=%v %v, want 200 with Connection: close", a.status, a.close, a.err)
	}
	code, took := saExit(t, cmd, 5*time.Second)
	if code != 0 || took > 2*time.Second {
		t.Errorf("exit %d after %v with a spare connection open, want 0 at once\n%s", code, took, logs.String())
	}
	if err := spare.endsCleanly(time.Second); err != nil {
		t.Errorf("the spare connection: %v, want a clean close", err)
	}
	if id := a.header.Get("X-Request-Id"); id == "" || !strings.Contains(logs.String(), id) {
		t.Errorf("the half-sent request's trail line (id %q) never reached stderr", id)
	}
}
