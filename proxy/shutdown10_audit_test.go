package proxy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/proxy"
)

// The shutdown audit, round 10: requests racing the drain on kept-alive
// connections, requests still arriving when it runs out of time, and
// reloads during it.

// s10Seen is an upstream that answers "ok <path>" and remembers the
// paths it was sent.
type s10Seen struct {
	mu    sync.Mutex
	paths map[string]bool
}

func (u *s10Seen) saw(p string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.paths[p]
}

func s10Upstream(t *testing.T) (string, *s10Seen) {
	u := &s10Seen{paths: map[string]bool{}}
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.paths[r.URL.Path] = true
		u.mu.Unlock()
		fmt.Fprint(w, "ok "+r.URL.Path)
	})
	return url, u
}

// s10Answer reads one answer from br within d: its status, body and
// whether it says Connection: close, or the error that ended the read.
func s10Answer(c net.Conn, br *bufio.Reader, d time.Duration) (status int, body string, closing bool, err error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", false, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp.Close, err
}

// s10Agent is a raw agent connection.
type s10Agent struct {
	c  net.Conn
	br *bufio.Reader
}

// s10WarmAgents opens n agent connections with dial and has one request
// (GET /warm<i>) answered on each, keeping it alive.
func s10WarmAgents(t *testing.T, n int, dial func() (net.Conn, *bufio.Reader)) []s10Agent {
	t.Helper()
	agents := make([]s10Agent, n)
	for i := range agents {
		c, br := dial()
		fmt.Fprintf(c, "GET /warm%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		if status, _, closing, err := s10Answer(c, br, 5*time.Second); err != nil || status != 200 || closing {
			t.Fatalf("warm-up %d: %d close=%v %v", i, status, closing, err)
		}
		agents[i] = s10Agent{c, br}
	}
	return agents
}

// s10AwaitNotReady polls b's /readyz until it answers 503, the sign that
// the drain has begun, for at most 2s.
func s10AwaitNotReady(t *testing.T, b *ballast) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Second)
	for {
		resp, err := http.Get(b.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 503 {
				return
			}
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("/readyz never failed")
		}
	}
}

// s10AwaitArrival waits up to 5s for the held request's arrival at the
// upstream.
func s10AwaitArrival(t *testing.T, arrived <-chan struct{}) {
	t.Helper()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("the held request never reached the upstream")
	}
}

// A request sent on a kept-alive connection while Shutdown begins — its
// previous answer went out before the drain, without Connection: close,
// so the agent may send the next one at any moment — is either answered
// (served, with Connection: close) or provably never read. In particular
// one whose bytes reached ballast while its listener still accepted (a
// dial right after the send succeeded) is answered: a request ballast
// read and then dropped with its connection is lost to an agent whose
// client does not retry POSTs. A raw client sends a POST on each of many
// kept-alive connections in turn, dialling after each send, and Shutdown
// begins after the first few; every round races the drain anew.
func TestShutdown10_KeptAliveRequestRacingTheDrain(t *testing.T) {
	const conns, rounds, startAt, burst = 48, 10, 4, 4
	for round := 0; round < rounds; round++ {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			up, seen := s10Upstream(t)
			b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
			agents := s10WarmAgents(t, conns, func() (net.Conn, *bufio.Reader) { return s9Dial(t, b.addr) })
			type sent struct {
				wrote    bool // the request's bytes were handed to the socket
				listened bool // a dial after the send reached the listener
			}
			sends := make([]sent, conns)
			var done <-chan error
			for i, a := range agents {
				if i == startAt {
					done = saShutdown(b, 10*time.Second)
				}
				_, err := fmt.Fprintf(a.c, "POST /k%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", i)
				sends[i].wrote = err == nil
				if i%burst != burst-1 {
					continue
				}
				// A dial that reaches the listener after a burst of sends
				// proves they all reached ballast before it stopped.
				if p, err := net.Dial("tcp", b.addr); err == nil {
					for j := i + 1 - burst; j <= i; j++ {
						sends[j].listened = true
					}
					_ = p.Close()
				}
			}
			for i, a := range agents {
				path := fmt.Sprintf("/k%d", i)
				status, body, closing, err := s10Answer(a.c, a.br, 5*time.Second)
				switch {
				case err == nil && status == 200 && body == "ok "+path:
				case err == nil && status == 503 && strings.Contains(body, "shutting_down") && closing:
					if seen.saw(path) {
						t.Errorf("%s: answered 503 shutting_down, but the upstream had it", path)
					}
				case err == nil:
					t.Errorf("%s: %d %q close=%v, want its answer or 503 shutting_down", path, status, body, closing)
				case seen.saw(path):
					t.Errorf("%s reached the upstream, yet its agent got no answer: %v", path, err)
				case sends[i].wrote && sends[i].listened:
					t.Errorf("%s reached ballast while its listener still accepted, yet was dropped unanswered: %v", path, err)
				}
				if err == nil {
					if end := s9Ends(a.c, a.br, 5*time.Second); end != nil && !errors.Is(end, io.ErrUnexpectedEOF) && !strings.Contains(end.Error(), "reset") {
						t.Errorf("%s: after its answer the connection %v, want it closed", path, end)
					}
				}
			}
			sdReturns(t, done, 10*time.Second)
		})
	}
}

// s10Accepted opens an agent connection and has one request answered on
// it, so that ballast has accepted it: a connection still in the
// listener's backlog when the drain closes the listener is reset unread.
func s10Accepted(t *testing.T, b *ballast) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := s9Dial(t, b.addr)
	fmt.Fprint(c, "GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
	if status, _, closing, err := s10Answer(c, br, 5*time.Second); err != nil || status != 200 || closing {
		t.Fatalf("warm-up: %d close=%v %v", status, closing, err)
	}
	return c, br
}

// s10Route is a one-route config whose deadlines are far beyond the
// drains below, with its server section.
func s10Route(up, server string) string {
	return fmt.Sprintf("server: {%s}\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q, timeouts: {total: 120s, per_try: 60s}}]\n", server, up)
}

// s10Line returns the decision-log line that mentions what, or "".
func s10Line(logs, what string) string {
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"msg":"request"`) && strings.Contains(l, what) {
			return l
		}
	}
	return ""
}

// A request still arriving when the drain runs out of time — its head or
// its body trickling in, bounded by server.read_timeout or the request's
// deadline, both longer than the drain — is answered 503 shutting_down
// with Connection: close (nothing went upstream, so the agent can send it
// elsewhere) and logged, not cut by the exit a second later without a
// word; and Shutdown does not wait the extra second for it.
func TestShutdown10_RequestStillArrivingAnsweredAtDeadline(t *testing.T) {
	for _, tc := range []struct {
		name, sent string
	}{
		{"head", "POST /head HTTP/1.1\r\nHost: x\r\nContent-Type: appl"},
		{"body", "POST /body HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"a\":"},
		// Past what ballast reads before routing: the route reads the rest.
		{"routed", "POST /routed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"a\":\"" + strings.Repeat("x", 32<<10)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, seen := s10Upstream(t)
			b := startBallast(t, s10Route(up, "read_timeout: 60s"))
			c, br := s10Accepted(t, b)
			fmt.Fprint(c, tc.sent)
			err, took := s9Shutdown(t, b, 300*time.Millisecond)
			if err == nil || took > 900*time.Millisecond {
				t.Errorf("Shutdown with a request still arriving: %v after %v, want the deadline's error at about 300ms", err, took)
			}
			status, body, closing, rerr := s10Answer(c, br, 3*time.Second)
			if rerr != nil || status != 503 || !strings.Contains(body, "shutting_down") || !closing {
				t.Errorf("the agent still sending at the deadline: %d %q close=%v %v, want 503 shutting_down with Connection: close", status, body, closing, rerr)
			}
			if seen.saw("/" + tc.name) {
				t.Error("the request still arriving reached the upstream")
			}
			line := s10Line(b.logs.String(), `"status":503`)
			if !strings.Contains(line, `"stopped":"shutting_down"`) {
				t.Errorf("no line for the request answered at the deadline, saying \"stopped\":\"shutting_down\":\n%s", b.logs.String())
			}
			if tc.name == "routed" && !strings.Contains(line, `"route":"r"`) {
				t.Errorf("the line of a request its route was reading names another route: %s", line)
			}
		})
	}
}

// A request whose own bound comes before the drain's end does not hold
// the drain to shutdown_timeout: a head still arriving when
// server.read_timeout passes, and a body when the request's deadline
// (X-Ballast-Timeout) passes, are answered 408 and logged, and Shutdown
// returns then.
func TestShutdown10_OwnBoundEndsTheDrain(t *testing.T) {
	for _, tc := range []struct {
		name, sent string
	}{
		{"head", "POST /head HTTP/1.1\r\nHost: x\r\nContent-Type: appl"},
		{"body", "POST /body HTTP/1.1\r\nHost: x\r\nX-Ballast-Timeout: 400ms\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"a\":"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up, seen := s10Upstream(t)
			b := startBallast(t, s10Route(up, "read_timeout: 400ms"))
			c, br := s10Accepted(t, b)
			fmt.Fprint(c, tc.sent)
			err, took := s9Shutdown(t, b, 20*time.Second)
			if err != nil || took > 3*time.Second {
				t.Errorf("Shutdown with a request bound to 400ms: %v after %v, want nil soon after 400ms", err, took)
			}
			status, body, closing, rerr := s10Answer(c, br, 3*time.Second)
			if rerr != nil || status != 408 || !closing {
				t.Errorf("the agent too slow: %d %q close=%v %v, want 408 with Connection: close", status, body, closing, rerr)
			}
			if seen.saw("/" + tc.name) {
				t.Error("the request that timed out reached the upstream")
			}
			if s10Line(b.logs.String(), `"status":408`) == "" {
				t.Errorf("no line for the request answered 408:\n%s", b.logs.String())
			}
		})
	}
}

// A reload during the drain (POST /reload on the admin listener, which
// still serves; or Reload, as SIGHUP and the file watch call it) neither
// panics, nor revives the listener or readiness, nor holds the drain up:
// it is refused, 503 shutting_down, the config in force stays, and the
// drain ends as soon as the request in flight is answered. A reload after
// Shutdown returned is refused likewise, and starts nothing (the leak
// check of TestMain).
func TestShutdown10_ReloadDuringAndAfterDrain(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			arrived <- struct{}{}
			<-release
		}
		fmt.Fprint(w, "ok")
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]\n", up))
	held := saSend(client(t), "GET", b.base+"/hold")
	s10AwaitArrival(t, arrived)
	// The new config would add a route and a second listener address.
	newCfg := fmt.Sprintf("listen: 127.0.0.1:1\nroutes: [{name: r, match: {path_prefix: /}, upstream: %q}, {name: n, match: {path_prefix: /n/}, upstream: %q}]\n", up, up)
	if err := os.WriteFile(b.file, []byte(newCfg), 0o600); err != nil {
		t.Fatal(err)
	}
	done := saShutdown(b, 20*time.Second)
	s10AwaitNotReady(t, b)
	resp, err := http.Post(b.admin+"/reload", "application/json", nil)
	if err != nil {
		t.Fatalf("POST /reload during the drain: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "shutting_down") {
		t.Errorf("POST /reload during the drain: %d %s, want 503 shutting_down", resp.StatusCode, body)
	}
	if err := b.srv.Reload(); !errors.Is(err, proxy.ErrShuttingDown) {
		t.Errorf("Reload during the drain: %v, want ErrShuttingDown", err)
	}
	if n := len(b.srv.Config().Routes); n != 1 {
		t.Errorf("the config in force has %d routes after a reload during the drain, want the old one's 1", n)
	}
	if c, err := net.Dial("tcp", b.addr); err == nil {
		c.Close()
		t.Error("the agent listener accepts again after a reload during the drain")
	}
	if resp, err := http.Get(b.admin + "/readyz"); err != nil || resp.StatusCode != 503 {
		t.Errorf("/readyz after a reload during the drain: %v %v, want 503", resp, err)
	} else {
		resp.Body.Close()
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	if r := saWithin(t, held, 5*time.Second, "the held request"); r.err != nil || r.status != 200 {
		t.Errorf("the request in flight during the reload: %d %v, want 200", r.status, r.err)
	}
	sdReturns(t, done, 5*time.Second)
	if err := b.srv.Reload(); !errors.Is(err, proxy.ErrShuttingDown) {
		t.Errorf("Reload after Shutdown: %v, want ErrShuttingDown", err)
	}
	if n := len(b.srv.Config().Routes); n != 1 {
		t.Errorf("the config in force has %d routes after a reload after Shutdown, want 1", n)
	}
}

// An agent that dials once the drain has begun (/readyz fails) is
// refused, and so knows its request was never sent: ballast does not
// accept the connection, take the agent's POST and then close it
// unanswered (the drain used to keep the listener open while it settled
// the connections, closing each new one as it came). Meanwhile a request pipelined behind one in flight is not
// read: the answer to the one in flight says Connection: close (RFC 9112
// §9.6: the agent knows the rest were not processed), and the drain ends
// with it.
func TestShutdown10_DialDuringDrainRefusedNotDropped(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up, seen := s10Upstream(t)
	hold, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		fmt.Fprint(w, "held")
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: hold, match: {path_prefix: /hold}, upstream: %q}, {name: r, match: {path_prefix: /}, upstream: %q}]\n", hold, up))
	x, xbr := s9Dial(t, b.addr)
	fmt.Fprint(x, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
	s10AwaitArrival(t, arrived)
	fmt.Fprint(x, "POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
	done := saShutdown(b, 20*time.Second)
	s10AwaitNotReady(t, b)
	// The listener stops before /readyz fails: the dial is refused.
	if c, err := net.Dial("tcp", b.addr); err == nil {
		defer c.Close()
		t.Error("a dial after /readyz failed reached the listener, want it refused")
		fmt.Fprint(c, "POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
		status, body, _, err := s10Answer(c, bufio.NewReader(c), 5*time.Second)
		if err != nil {
			t.Errorf("a connection dialled during the drain was accepted, and its request dropped: %v (upstream had it: %v)", err, seen.saw("/late"))
		} else if status != 200 && status != 503 {
			t.Errorf("a request on a connection dialled during the drain: %d %q", status, body)
		}
	}
	close(release)
	status, body, closing, err := s10Answer(x, xbr, 5*time.Second)
	if err != nil || status != 200 || body != "held" || !closing {
		t.Errorf("the request in flight at the drain: %d %q close=%v %v, want 200 with Connection: close", status, body, closing, err)
	}
	if end := s9Ends(x, xbr, 5*time.Second); end != nil && !strings.Contains(end.Error(), "reset") {
		t.Errorf("after the answer with Connection: close the connection %v, want it closed", end)
	}
	if seen.saw("/second") {
		t.Error("the request pipelined behind an answer with Connection: close was served")
	}
	sdReturns(t, done, 5*time.Second)
}
