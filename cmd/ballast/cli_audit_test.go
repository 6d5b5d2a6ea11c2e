package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A stray positional argument is a usage error (exit 2): `ballast validate
// my.yaml` (the -c forgotten) must not check the embedded default instead
// and report "ok", or a broken config would pass CI. The message names the
// word and suggests -c.
func TestValidateRefusesStrayArgument(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("routes: [{name: a, match: {path_prefix: nope}, upstream: 'ftp://x'}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := run([]string{"validate", bad}, &out, &errb)
	if code != 2 {
		t.Errorf("validate %s: exit %d, want 2 (usage error); stdout %q", bad, code, out.String())
	}
	if strings.Contains(out.String(), "ok") {
		t.Errorf("validate with the file as a positional argument reported %q for a config it never read", out.String())
	}
	for _, want := range []string{`ballast validate: unexpected argument "` + bad + `"`, "did you mean -c " + bad + "?", "Usage of validate"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
}

// `ballast run my.yaml --listen ADDR` refuses with exit 2 instead of
// starting on the embedded default: flag parsing stops at the stray word,
// so the flags after it would be dropped too.
func TestRunRefusesStrayArgument(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "mine.yaml")
	listen, admin := freePort(t), freePort(t)
	yaml := fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nroutes: [{name: a, match: {path_prefix: /}, upstream: 'http://127.0.0.1:1'}]\n", listen, admin)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "run", cfg, "--listen", freePort(t), "--admin", freePort(t))
	cmd.Dir = dir
	// The stray word hides the flags: keep the embedded default it falls
	// back to off 8080/9901, which other processes on this machine use.
	cmd.Env = append(os.Environ(), "BALLAST_LISTEN="+freePort(t), "BALLAST_ADMIN__LISTEN="+freePort(t))
	var errb lockedBuffer
	cmd.Stderr = &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("ballast run with a stray argument kept running (it ignored %s and the flags after it):\n%s", cfg, errb.String())
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Errorf("exit: %v, want exit status 2\n%s", err, errb.String())
	}
	if want := "did you mean -c " + cfg + "?"; !strings.Contains(errb.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, errb.String())
	}
}

// healthcheck --admin takes the value admin.listen takes: ":PORT" (every
// interface) is dialled on 127.0.0.1, so a container whose admin.listen is
// ":9901" is reported healthy while it is.
func TestHealthcheckAcceptsListenStyleAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := serveOK(t, ln)
	var out, errb bytes.Buffer
	if code := run([]string{"healthcheck", "--admin", ":" + port}, &out, &errb); code != 0 {
		t.Errorf("healthcheck --admin :%s against a live listener: exit %d, want 0: %s", port, code, errb.String())
	}
}

// healthcheck's exit codes: 0 against a live ballast (/healthz and
// --ready), 1 against a dead address, 2 for a bad flag, a stray argument
// or a malformed address.
func TestHealthcheckExitCodes(t *testing.T) {
	listen, admin := freePort(t), freePort(t)
	startProcess(t, t.TempDir(), "run", "--listen", listen, "--admin", admin)
	waitHealthy(t, admin)
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"live", []string{"--admin", admin}, 0},
		{"live ready", []string{"--admin", admin, "--ready"}, 0},
		{"dead", []string{"--admin", freePort(t)}, 1},
		{"bad flag", []string{"--bogus"}, 2},
		{"stray argument", []string{admin}, 2},
		{"address without a port", []string{"--admin", "127.0.0.1"}, 2},
		{"empty port", []string{"--admin", "127.0.0.1:"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(append([]string{"healthcheck"}, tt.args...), &out, &errb); code != tt.want {
				t.Errorf("exit %d, want %d: %s", code, tt.want, errb.String())
			}
		})
	}
}

// SIGTERM lets an in-flight request finish within shutdown_timeout, refuses
// new connections, turns /readyz 503 and exits 0.
func TestSIGTERMDrainsInFlightAndExitsZero(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		fmt.Fprint(w, "finished")
	})}
	go up.Serve(ln)
	t.Cleanup(func() { up.Close() })

	dir := t.TempDir()
	listen, admin := freePort(t), freePort(t)
	yaml := fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nshutdown_timeout: 20s\nroutes: [{name: r, match: {path_prefix: /}, upstream: 'http://%s'}]\n", listen, admin, ln.Addr())
	os.WriteFile(filepath.Join(dir, "b.yaml"), []byte(yaml), 0o600)
	cmd, logs := startProcess(t, dir, "run", "-c", "b.yaml")
	waitHealthy(t, admin)

	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get("http://" + listen + "/slow")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		done <- result{status: resp.StatusCode, body: b.String()}
	}()
	<-entered
	_ = cmd.Process.Signal(syscall.SIGTERM)
	// Readiness turns 503 while the request is still running.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out, errb bytes.Buffer
		if run([]string{"healthcheck", "--admin", admin, "--ready"}, &out, &errb) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz never turned unready after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	r := <-done
	if r.err != nil || r.status != 200 || r.body != "finished" {
		t.Errorf("in-flight request: %+v, want 200 finished", r)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after drain: %v\n%s", err, logs.String())
	}
}
