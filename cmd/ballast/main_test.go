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

	"github.com/ballast-proxy/ballast/internal/freeport"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ballast-cli")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "ballast")
	// The same build command as the Makefile and the Dockerfile, less the
	// version stamp.
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", binary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ballast: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersionAndUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ballast ") {
		t.Errorf("version: %d %q", code, out.String())
	}
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "Usage") {
		t.Errorf("no args: %d", code)
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 {
		t.Errorf("unknown command: %d", code)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("routes: [{name: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1'}]\n"), 0o600)
	os.WriteFile(bad, []byte("routes: [{name: a, match: {path_prefix: x}, upstream: 'ftp://x', retyr: 1}]\n"), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", good}, &out, &errb); code != 0 || !strings.Contains(out.String(), "ok (1 routes)") {
		t.Errorf("good config: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := run([]string{"validate", "-c", bad}, &out, &errb)
	if code != 1 {
		t.Errorf("bad config exit %d, want 1", code)
	}
	for _, want := range []string{"3 problem(s)", "routes[0].retyr: unknown key", "routes[0].match.path_prefix: must start with /", `routes[0].upstream: "ftp://x" must use http or https`} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("validate output lacks %q:\n%s", want, errb.String())
		}
	}
}

// freePort returns a loopback address for a child ballast to listen on,
// from below the ephemeral range so that no client connection of a
// parallel test takes it before the child binds it.
func freePort(t *testing.T) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// startProcess runs the real binary and waits until its admin listener
// is healthy.
func startProcess(t *testing.T, dir string, args ...string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, logs
}

// lockedBuffer collects a child's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Bytes() []byte { return []byte(l.String()) }

func waitHealthy(t *testing.T, admin string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out, errb bytes.Buffer
		if run([]string{"healthcheck", "--admin", admin}, &out, &errb) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ballast never became healthy: %s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunEmbeddedDefaultAndHealthcheck(t *testing.T) {
	listen, admin := freePort(t), freePort(t)
	cmd, logs := startProcess(t, t.TempDir(), "run", "--listen", listen, "--admin", admin)
	waitHealthy(t, admin)
	resp, err := http.Get("http://" + listen + "/not-a-route")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("unmatched path: %d", resp.StatusCode)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	wantProcs := `"procs":1,"from":"ballast"` // the default: one core
	if os.Getenv("GOMAXPROCS") != "" {
		wantProcs = `"from":"GOMAXPROCS"`
	}
	for _, want := range []string{`"config":"embedded default"`, "OPENAI_BASE_URL", "/openai/v1", "ANTHROPIC_BASE_URL", `"msg":"draining"`, wantProcs} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs.String())
		}
	}
	var out, errb bytes.Buffer
	if run([]string{"healthcheck", "--admin", admin}, &out, &errb) != 1 {
		t.Error("healthcheck passed against a stopped ballast")
	}
}

func TestSIGHUPReloadsAndSIGTERMDrains(t *testing.T) {
	upA := fixedUpstream(t, "A")
	upB := fixedUpstream(t, "B")
	dir := t.TempDir()
	listen, admin := freePort(t), freePort(t)
	cfg := func(up string) []byte {
		return []byte(fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", listen, admin, up))
	}
	os.WriteFile(filepath.Join(dir, "ballast.yaml"), cfg(upA), 0o600)
	cmd, logs := startProcess(t, dir, "run") // finds ./ballast.yaml
	waitHealthy(t, admin)
	if body := fetch(t, "http://"+listen+"/"); body != "A" {
		t.Fatalf("before reload: %q", body)
	}
	os.WriteFile(filepath.Join(dir, "ballast.yaml"), cfg(upB), 0o600)
	_ = cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for fetch(t, "http://"+listen+"/") != "B" {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(logs.Bytes()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Errorf("a log line is not JSON: %q", sc.Text())
		}
	}
}

func fixedUpstream(t *testing.T, body string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })}
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return "http://" + ln.Addr().String()
}

func fetch(t *testing.T, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestValidateCompilesWhatOnlyARunningBallastWould(t *testing.T) {
	f := filepath.Join(t.TempDir(), "b.yaml")
	os.WriteFile(f, []byte(`
routes:
  - name: a
    match: {path_prefix: /}
    upstream: http://127.0.0.1:1
    retry: {on: [sometimes]}
    validate: {schema: '{"type": 12}'}
`), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"validate", "-c", f}, &out, &errb); code != 1 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"routes[0].retry.on", `"sometimes"`, "routes[0].validate.schema"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("validate output lacks %q:\n%s", want, errb.String())
		}
	}
}
