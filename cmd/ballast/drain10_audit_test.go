package main

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// A SIGHUP during the drain changes nothing (docs/config.md, hot
// reload), and says so: the operator who sent it sees "config reload
// ignored: ballast is shutting down" naming the signal, rather than
// nothing at all; the drain goes on, the request in flight is answered,
// and the exit is clean.
func TestDrain10_SIGHUPDuringDrainIsLogged(t *testing.T) {
	gate, up := startGate(t, nil)
	cmd, logs, listen, _ := saStartRoute(t, up, "shutdown_timeout: 20s\n")
	held := saDial(t, listen).send("GET /hold/x HTTP/1.1\r\nHost: x\r\n\r\n")
	saPoll(t, 5*time.Second, "the held request reaching the upstream", func() bool { return gate.count("/hold/x") == 1 })
	_ = cmd.Process.Signal(syscall.SIGTERM)
	saPoll(t, 2*time.Second, "the drain starting", func() bool { return strings.Contains(logs.String(), `"msg":"draining"`) })
	_ = cmd.Process.Signal(syscall.SIGHUP)
	saPoll(t, 2*time.Second, "the SIGHUP during the drain being logged", func() bool {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "config reload ignored: ballast is shutting down") && strings.Contains(l, `"signal":"hangup"`) {
				return true
			}
		}
		return false
	})
	gate.open()
	if a := saWithin(t, held, 5*time.Second, "the held request"); a.err != nil || a.status != 200 || !a.close {
		t.Errorf("the request in flight across the SIGHUP: %d close=%v %v, want 200 with Connection: close", a.status, a.close, a.err)
	}
	if code, took := saExit(t, cmd, 5*time.Second); code != 0 {
		t.Errorf("exit %d after %v, want 0 soon after the request in flight was answered:\n%s", code, took, logs.String())
	}
}
