package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// shutdown_delay on the real binary: after SIGTERM, /readyz fails while
// ballast still accepts and serves the agent beside it; then the drain.

// During the delay a request on a new connection is served 200 and
// /readyz is 503 (/healthz 200); a second SIGTERM ends the delay at once,
// as it ends the drain: ballast exits 1 within moments, not after the
// 15s of delay left.
func TestShutdownDelay_SecondSignalEndsTheDelay(t *testing.T) {
	_, up := startGate(t, nil)
	cmd, logs, listen, admin := saStartRoute(t, up, "shutdown_timeout: 20s\nshutdown_delay: 15s\n")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "the delay starting", func() bool {
		return strings.Contains(logs.String(), `"msg":"shutdown delay: still serving, /readyz failing"`)
	})
	if code, body := saAdmin(admin, "/readyz"); code != 503 {
		t.Errorf("/readyz during the delay: %d %q, want 503", code, body)
	}
	if code, body := saAdmin(admin, "/healthz"); code != 200 {
		t.Errorf("/healthz during the delay: %d %q, want 200", code, body)
	}
	a := saWithin(t, saDial(t, listen).send("POST /during HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"), 5*time.Second, "the request during the delay")
	if a.err != nil || a.status != 200 || !strings.Contains(a.body, `"/during"`) || !a.close {
		t.Errorf("a request during the delay: %d %q close=%v %v, want 200 with Connection: close", a.status, a.body, a.close, a.err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	code, took := saExit(t, cmd, 3*time.Second)
	if code != 1 {
		t.Errorf("a second SIGTERM during the delay: exit %d after %v, want 1 at once (15s of delay left)\n%s", code, took, logs.String())
	}
	if !strings.Contains(logs.String(), "second signal") || !strings.Contains(logs.String(), `"shutdown_delay":"15s"`) {
		t.Errorf("the delay and the second signal are not logged:\n%s", logs.String())
	}
}

// With nothing in flight and no second signal, ballast waits the delay
// out, serving, and then drains and exits 0: not before the delay, and
// not after shutdown_timeout.
func TestShutdownDelay_ExitAfterTheDelay(t *testing.T) {
	_, up := startGate(t, nil)
	cmd, logs, _, _ := saStartRoute(t, up, "shutdown_timeout: 20s\nshutdown_delay: 1500ms\n")
	sent := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	code, _ := saExit(t, cmd, 10*time.Second)
	took := time.Since(sent)
	if code != 0 || took < 1500*time.Millisecond || took > 8*time.Second {
		t.Errorf("SIGTERM with shutdown_delay 1.5s and nothing in flight: exit %d after %v, want 0 after about 1.5s\n%s", code, took, logs.String())
	}
	for _, want := range []string{`"msg":"shutdown delay: still serving, /readyz failing"`, `"msg":"shutdown delay over: draining"`, `"msg":"stopped"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log lacks %s:\n%s", want, logs.String())
		}
	}
}
