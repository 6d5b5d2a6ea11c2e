//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/supervise"
)

// The file state store on a disk that fills up: the real binary under
// `prlimit --fsize`, so its writes past the limit fail with the kernel's
// own EFBIG, as they would with ENOSPC. (Go ignores the SIGXFSZ that comes
// with it.) The operator hears of it through a state_failing alert, and
// the agent gets a clear 503 and nothing runs unguarded.

// diskFullRig is a webhook that collects alerts and an upstream that
// answers every call with body bytes, counting calls.
type diskFullRig struct {
	events chan supervise.Event
	hook   string
	up     string
	calls  atomic.Int64
}

func newDiskFullRig(t *testing.T, body int) *diskFullRig {
	t.Helper()
	rig := &diskFullRig{events: make(chan supervise.Event, 64)}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e supervise.Event
		if err := json.NewDecoder(r.Body).Decode(&e); err == nil {
			rig.events <- e
		}
	}))
	t.Cleanup(hook.Close)
	answer := bytes.Repeat([]byte("x"), body)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rig.calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(answer)
	}))
	t.Cleanup(up.Close)
	rig.hook, rig.up = hook.URL+"/alerts", up.URL
	return rig
}

func (rig *diskFullRig) config() string {
	return `listen: %s
admin: {listen: %s}
state: {path: state.db}
notify: {webhook: "` + rig.hook + `"}
routes:
  - name: orders
    match: {path_prefix: /}
    upstream: ` + rig.up + `
    idempotency: {mode: header}
`
}

// post sends a keyed POST through c and returns the status and body.
func (rig *diskFullRig) post(t *testing.T, c *res12Child, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+c.listen+"/orders", strings.NewReader(`{"order":1}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", key, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// awaitAlert returns the first state_failing alert, failing after 10 s.
func (rig *diskFullRig) awaitAlert(t *testing.T, c *res12Child) supervise.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-rig.events:
			if e.Kind == supervise.KindStateFailing {
				return e
			}
		case <-timeout:
			t.Fatalf("no state_failing alert within 10s; ballast's log:\n%s", c.logs.String())
		}
	}
}

// The claim journal cannot grow (its first zero-fill runs past the
// limit): the claim fails, the agent gets 503 state_unavailable, the call
// is not sent, and the operator gets a state_failing alert naming the
// route.
func TestDiskFull16_JournalRefusedAlerts(t *testing.T) {
	rig := newDiskFullRig(t, 16)
	c := startLimited(t, "--fsize="+strconv.Itoa(1<<20), rig.config())
	code, body := rig.post(t, c, "order-1")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "state_unavailable") {
		t.Fatalf("keyed POST with a full disk = %d %s; want 503 state_unavailable", code, body)
	}
	if n := rig.calls.Load(); n != 0 {
		t.Fatalf("the upstream was called %d times though the claim failed", n)
	}
	e := rig.awaitAlert(t, c)
	if e.Route != "orders" || !strings.Contains(e.Text, "state store failing") {
		t.Fatalf("alert %+v; want state_failing on route orders", e)
	}
	c.alive(t)
}

// The journal has room, but the bbolt file cannot grow past the limit:
// requests are answered (their claims stand in the journal), and the
// first write the file refuses raises a state_failing alert. Each answer
// is 200 KiB, so the file needs to grow past 3 MiB within a few dozen.
func TestDiskFull16_StateFileRefusedAlerts(t *testing.T) {
	rig := newDiskFullRig(t, 200<<10)
	c := startLimited(t, "--fsize="+strconv.Itoa(3<<20), rig.config())
	var alert *supervise.Event
	sent := 0
	for i := 0; i < 60 && alert == nil; i++ {
		sent++
		code, body := rig.post(t, c, fmt.Sprintf("order-%d", i))
		if code != http.StatusOK {
			t.Fatalf("keyed POST %d = %d %.200s; want 200 (the journal has room)", i, code, body)
		}
		select {
		case e := <-rig.events:
			if e.Kind == supervise.KindStateFailing {
				alert = &e
			}
		default:
		}
	}
	if alert == nil {
		e := rig.awaitAlert(t, c)
		alert = &e
	}
	if !strings.Contains(alert.Detail, "state file refused") {
		t.Fatalf("alert %+v; want the state file's refusal", *alert)
	}
	code, body := c.get("/metrics")
	if code != http.StatusOK || !strings.Contains(string(body), "ballast_state_errors_total{") {
		t.Fatalf("/metrics = %d, without ballast_state_errors_total", code)
	}
	// Every call ran once; the agent's retries of them, with the file
	// refusing writes, must not run any again: each is replayed, or read
	// as outcome unknown where the answer could not be kept.
	calls := rig.calls.Load()
	for i := range sent {
		code, body := rig.post(t, c, fmt.Sprintf("order-%d", i))
		if code != http.StatusOK && !strings.Contains(body, "outcome_unknown") {
			t.Errorf("retry of order-%d = %d %.200s; want a replay or outcome_unknown", i, code, body)
		}
	}
	if n := rig.calls.Load(); n != calls {
		t.Fatalf("retries ran %d calls again while the state file refused writes", n-calls)
	}
	c.alive(t)
}
