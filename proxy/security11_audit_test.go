package proxy_test

// Security audit of the eleventh session's new code, with an attacker's
// eye: keyed streams recorded and replayed (tenants, headers, what the
// state store holds), the agent's address an async job keeps in its
// stored request (X-Ballast-Agent-Addr), auto-mode idempotency keyed on
// Mcp-Session-Id, x-should-retry on problems and replays, and the
// forward-proxy mode with all of them. security_test.go and
// tenant_audit_test.go cover buffered answers, the cache and jobs one
// credential at a time; these probes cover what they could not see.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// sec11Bound bounds every wait of these probes on an event.
const sec11Bound = 5 * time.Second

// sec11Stream is an upstream that answers every POST with an event
// stream naming the call's number and the credentials it carried. While
// gate is set, the stream waits for it to be closed after its first
// event; arrived gets a value as each call arrives (when non-nil).
type sec11Stream struct {
	calls   atomic.Int64
	gate    chan struct{}
	arrived chan struct{}
	// header, when set, adds response header lines before the stream.
	header func(h http.Header)
}

func (u *sec11Stream) handler(w http.ResponseWriter, r *http.Request) {
	n := u.calls.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	if u.arrived != nil {
		u.arrived <- struct{}{}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	if u.header != nil {
		u.header(w.Header())
	}
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "data: {\"n\":%d,\"auth\":%q,\"xkey\":%q,\"cookie\":%q}\n\n", n,
		r.Header.Values("Authorization"), r.Header.Values("X-Api-Key"), r.Header.Values("Cookie"))
	w.(http.Flusher).Flush()
	if u.gate != nil {
		select {
		case <-u.gate:
		case <-r.Context().Done():
			return
		case <-time.After(sec11Bound):
			return
		}
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
}

// sec11Post sends a POST with headers as name, value pairs (a name given
// twice is sent twice) and returns the answer and its whole body.
func sec11Post(t *testing.T, c *http.Client, url, body string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header[headers[i]] = append(req.Header[headers[i]], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading the body: %v", url, err)
	}
	return resp, string(b)
}

// sec11Creds are the ways a caller names itself that a keyed stream must
// keep apart: A and B differ only in who they are.
var sec11Creds = []struct {
	name string
	a, b []string
}{
	{"Authorization", []string{"Authorization", "Bearer alice"}, []string{"Authorization", "Bearer bob"}},
	{"X-Api-Key", []string{"X-Api-Key", "alice"}, []string{"X-Api-Key", "bob"}},
	{"Cookie", []string{"Cookie", "s=alice"}, []string{"Cookie", "s=bob"}},
	{"Proxy-Authorization", []string{"Proxy-Authorization", "Basic YWxpY2U6cA=="}, []string{"Proxy-Authorization", "Basic Ym9iOnA="}},
	{"second Authorization line", []string{"Authorization", "Bearer org", "Authorization", "Bearer alice"},
		[]string{"Authorization", "Bearer org", "Authorization", "Bearer bob"}},
	{"credential only in B", nil, []string{"X-Api-Key", "bob"}},
}

// TestSecurity11_KeyedStreamNeverCrossesTenants: a recorded keyed stream
// replays to its own caller only. B, with A's Idempotency-Key and body but
// another credential, runs a call of its own, both after A's stream has
// ended (no replay) and while it still runs (no attach), on the memory and
// the Redis store.
func TestSecurity11_KeyedStreamNeverCrossesTenants(t *testing.T) {
	rs := redistest.Start(t)
	for _, backend := range []string{"memory", "redis"} {
		t.Run(backend, func(t *testing.T) {
			up := &sec11Stream{}
			u, _ := upstream(t, up.handler)
			state := "state: {backend: memory}"
			if backend == "redis" {
				state = fmt.Sprintf("state: {backend: redis, redis: {address: %q, key_prefix: \"s11t%d:\"}}", rs.Addr(), time.Now().UnixNano()%1e6)
			}
			b := startBallast(t, fmt.Sprintf("%s\n%s", state, sec11Route(u, "")))
			c := client(t)
			for i, cr := range sec11Creds {
				t.Run(cr.name, func(t *testing.T) {
					key := fmt.Sprintf("stream-%s-%d", backend, i)
					hA := append([]string{"Idempotency-Key", key}, cr.a...)
					hB := append([]string{"Idempotency-Key", key}, cr.b...)
					before := up.calls.Load()
					ra, bodyA := sec11Post(t, c, b.base+"/v1/chat", `{"stream":true}`, hA...)
					if ra.StatusCode != 200 || !strings.HasSuffix(bodyA, "data: [DONE]\n\n") {
						t.Fatalf("A: %d %q", ra.StatusCode, bodyA)
					}
					if r, body := sec11Post(t, c, b.base+"/v1/chat", `{"stream":true}`, hA...); r.Header.Get("Idempotent-Replayed") != "true" || body != bodyA {
						t.Fatalf("A's own retry: replayed %q %q; the probe proves nothing", r.Header.Get("Idempotent-Replayed"), body)
					}
					rb, bodyB := sec11Post(t, c, b.base+"/v1/chat", `{"stream":true}`, hB...)
					if rb.Header.Get("Idempotent-Replayed") != "" || bodyB == bodyA {
						t.Errorf("B was answered with A's recorded stream: %d %q", rb.StatusCode, bodyB)
					}
					if n := up.calls.Load() - before; n != 2 {
						t.Errorf("the upstream ran %d times, want 2 (A once, B once)", n)
					}
				})
			}
		})
	}
	t.Run("in flight", func(t *testing.T) {
		up := &sec11Stream{gate: make(chan struct{}), arrived: make(chan struct{}, 4)}
		u, _ := upstream(t, up.handler)
		b := startBallast(t, sec11Route(u, ""))
		c := client(t)
		done := make(chan string, 2)
		send := func(who string) {
			_, body := sec11Post(t, c, b.base+"/v1/chat", `{"stream":true}`, "Idempotency-Key", "held", "X-Api-Key", who)
			done <- body
		}
		go send("alice")
		<-up.arrived
		go send("bob")
		select {
		case <-up.arrived:
		case body := <-done:
			close(up.gate)
			t.Fatalf("B was answered while A's stream ran, without a call of its own: %q", body)
		case <-time.After(sec11Bound):
			close(up.gate)
			t.Fatal("B attached to A's stream in flight")
		}
		close(up.gate)
		got := []string{<-done, <-done}
		if !(strings.Contains(got[0], "alice") && strings.Contains(got[1], "bob") ||
			strings.Contains(got[0], "bob") && strings.Contains(got[1], "alice")) {
			t.Errorf("answers %q: each caller must get its own stream", got)
		}
	})
}

// sec11Route is a keyed route named chat on up; more is more route keys.
func sec11Route(up, more string) string {
	return fmt.Sprintf(`
routes:
  - name: chat
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: header}
%s`, up, more)
}

// TestSecurity11_KeyedStreamReplayHeaders: a recorded stream replays with
// the headers a buffered answer's replay has — no upstream Set-Cookie (a
// session for whoever sent the first call), no hop-by-hop line, nothing in
// ballast's X-Ballast-* namespace the upstream wrote, and ballast's own
// Idempotent-Replayed and X-Request-Id, once each.
func TestSecurity11_KeyedStreamReplayHeaders(t *testing.T) {
	hostile := func(h http.Header) {
		h.Add("Set-Cookie", "session=first-caller; Path=/")
		h.Add("Connection", "X-Hop")
		h.Set("X-Hop", "hop-value")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("X-Ballast-Upstream", "evil")
		h.Set("X-Ballast-Job-State", "succeeded")
		h["Idempotent-Replayed"] = []string{"false", "false"}
		h.Set("X-Request-Id", "upstream-id")
		h.Set("X-Model", "m1")
	}
	stream := &sec11Stream{header: hostile}
	su, _ := upstream(t, stream.handler)
	buffered, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		hostile(w.Header())
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: chat
    match: {path_prefix: /s/}
    upstream: %q
    idempotency: {mode: header}
  - name: json
    match: {path_prefix: /b/}
    upstream: %q
    idempotency: {mode: header}
`, su, buffered))
	c := client(t)
	names := func(h http.Header) map[string]bool {
		out := map[string]bool{}
		for k := range h {
			out[k] = true
		}
		delete(out, "Content-Type")
		delete(out, "Content-Length")
		delete(out, "Transfer-Encoding")
		delete(out, "Date")
		return out
	}
	var replays []http.Header
	for _, path := range []string{"/s/run", "/b/run"} {
		first, body := sec11Post(t, c, b.base+path, `{}`, "Idempotency-Key", "hdr"+path)
		if first.StatusCode != 200 {
			t.Fatalf("%s: %d %q", path, first.StatusCode, body)
		}
		again, body2 := sec11Post(t, c, b.base+path, `{}`, "Idempotency-Key", "hdr"+path)
		if again.Header.Get("Idempotent-Replayed") != "true" || body2 != body {
			t.Fatalf("%s: the retry was not replayed (%q): %q", path, again.Header.Get("Idempotent-Replayed"), body2)
		}
		h := again.Header
		for _, k := range []string{"Set-Cookie", "X-Hop", "Keep-Alive", "X-Ballast-Upstream", "X-Ballast-Job-State"} {
			if v := h.Values(k); len(v) > 0 {
				t.Errorf("%s replay carries the upstream's %s %q", path, k, v)
			}
		}
		if v := h.Values("Idempotent-Replayed"); len(v) != 1 || v[0] != "true" {
			t.Errorf("%s replay: Idempotent-Replayed %q, want ballast's one line true", path, v)
		}
		if v := h.Values("X-Request-Id"); len(v) != 1 || v[0] == "upstream-id" {
			t.Errorf("%s replay: X-Request-Id %q, want ballast's own, once", path, v)
		}
		if h.Get("X-Model") != "m1" {
			t.Errorf("%s replay lost the upstream's end-to-end header X-Model: %v", path, h)
		}
		replays = append(replays, h)
	}
	if s, j := names(replays[0]), names(replays[1]); fmt.Sprint(s) != fmt.Sprint(j) {
		t.Errorf("a stream's replay has headers %v, a buffered answer's %v: want the same handling", s, j)
	}
}

// TestSecurity11_RecordedStreamHoldsNoSecret: a keyed stream on a route
// that sets the upstream's credential from ${ENV} is recorded, in the
// file store and in Redis, with the answer only: neither the route's
// secret nor the agent's own credential is written to the state store,
// and neither appears in the replay, the logs, /status or /config.
func TestSecurity11_RecordedStreamHoldsNoSecret(t *testing.T) {
	const secret = "sk-injected-secret-7d1f"
	const agentKey = "agent-own-key-93ab"
	rs := redistest.Start(t)
	for _, backend := range []string{"file", "redis"} {
		t.Run(backend, func(t *testing.T) {
			up := &sec11Stream{}
			u, _ := upstream(t, up.handler)
			path := t.TempDir() + "/state.db"
			prefix := fmt.Sprintf("s11s%d:", time.Now().UnixNano()%1e6)
			state := fmt.Sprintf("state: {path: %s}", path)
			if backend == "redis" {
				state = fmt.Sprintf("state: {backend: redis, redis: {address: %q, key_prefix: %q}}", rs.Addr(), prefix)
			}
			b := startBallast(t, fmt.Sprintf(`%s
routes:
  - name: chat
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: header}
    headers: {set: {Authorization: "Bearer ${S11_SECRET}"}}
`, state, u), "S11_SECRET="+secret)
			c := client(t)
			first, body := sec11Post(t, c, b.base+"/v1/chat", `{"stream":true}`, "Idempotency-Key", "secret-k", "X-Api-Key", agentKey)
			if first.StatusCode != 200 || !strings.Contains(body, secret) {
				t.Fatalf("first: %d %q; want the upstream to have seen the route's credential", first.StatusCode, body)
			}
			// The upstream echoed the credential in its own body: that is
			// its answer, and the replay carries it; the header block and
			// everything ballast adds must not.
			again, body2 := sec11Post(t, c, b.base+"/v1/chat", `{"stream":true}`, "Idempotency-Key", "secret-k", "X-Api-Key", agentKey)
			if again.Header.Get("Idempotent-Replayed") != "true" || body2 != body {
				t.Fatalf("retry: replayed %q %q", again.Header.Get("Idempotent-Replayed"), body2)
			}
			for k, v := range again.Header {
				if strings.Contains(strings.Join(v, " "), secret) || strings.Contains(strings.Join(v, " "), agentKey) {
					t.Errorf("the replay's header %s carries a credential: %q", k, v)
				}
			}
			var stored []byte
			switch backend {
			case "file":
				ctx, cancel := context.WithTimeout(context.Background(), sec11Bound)
				defer cancel()
				if err := b.srv.Shutdown(ctx); err != nil {
					t.Fatalf("shutdown: %v", err)
				}
				var err error
				if stored, err = os.ReadFile(path); err != nil {
					t.Fatal(err)
				}
			case "redis":
				stored = sec11RedisDump(t, rs.Addr(), prefix)
			}
			if !strings.Contains(string(stored), "[DONE]") {
				t.Fatalf("the recorded stream is not in the %s store (%d bytes): the probe proves nothing", backend, len(stored))
			}
			// The body the upstream sent echoes the secret; take it out,
			// and look for the secret anywhere else.
			rest := strings.ReplaceAll(string(stored), body, "")
			if strings.Contains(rest, secret) {
				t.Errorf("the %s store holds the route's injected secret outside the upstream's answer", backend)
			}
			if strings.Contains(rest, agentKey) {
				t.Errorf("the %s store holds the agent's own credential outside the upstream's answer", backend)
			}
			if backend == "redis" {
				for _, page := range []string{"/status", "/config", "/"} {
					_, p := get(t, c, b.admin+page)
					if strings.Contains(p, secret) || strings.Contains(p, agentKey) {
						t.Errorf("admin %s shows a credential", page)
					}
				}
			}
			if logs := b.logs.String(); strings.Contains(logs, secret) || strings.Contains(logs, agentKey) {
				t.Errorf("the logs hold a credential:\n%s", logs)
			}
		})
	}
}

// sec11RedisDump returns every string, hash, list, set and sorted-set
// value under prefix in the Redis at addr, concatenated.
func sec11RedisDump(t *testing.T, addr, prefix string) []byte {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), sec11Bound)
	defer cancel()
	var out []byte
	keys, err := rc.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		out = append(out, k...)
		typ, err := rc.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		switch typ {
		case "string":
			v, _ := rc.Get(ctx, k).Bytes()
			out = append(out, v...)
		case "hash":
			for f, v := range rc.HGetAll(ctx, k).Val() {
				out = append(append(out, f...), v...)
			}
		case "list":
			for _, v := range rc.LRange(ctx, k, 0, -1).Val() {
				out = append(out, v...)
			}
		case "set":
			for _, v := range rc.SMembers(ctx, k).Val() {
				out = append(out, v...)
			}
		case "zset":
			for _, v := range rc.ZRange(ctx, k, 0, -1).Val() {
				out = append(out, v...)
			}
		}
	}
	return out
}

// sec11Recorder is an upstream that keeps, per path, the X-Forwarded-For
// it was sent and every X-Ballast-* line it saw.
type sec11Recorder struct {
	mu      sync.Mutex
	xff     map[string][]string
	ballast map[string][]string
}

func (u *sec11Recorder) handler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	if u.xff == nil {
		u.xff, u.ballast = map[string][]string{}, map[string][]string{}
	}
	u.xff[r.URL.Path] = r.Header.Values("X-Forwarded-For")
	for k, v := range r.Header {
		if strings.HasPrefix(strings.ToLower(k), "x-ballast-") {
			u.ballast[r.URL.Path] = append(u.ballast[r.URL.Path], k+": "+strings.Join(v, ","))
		}
	}
	u.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

func (u *sec11Recorder) seen(path string) (xff, ballast []string, ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	xff, ok = u.xff[path]
	return xff, u.ballast[path], ok
}

// TestSecurity11_AgentAddrCannotBeSpoofed: an agent's own
// X-Ballast-Agent-Addr line, in any spelling, case, number, with odd
// whitespace or in a chunked request's trailer, changes neither its job's
// X-Forwarded-For nor the bucket a limit keyed by ip charges it to; the
// line ballast keeps never goes upstream, and never shows in the job's
// poll, /status or the logs.
func TestSecurity11_AgentAddrCannotBeSpoofed(t *testing.T) {
	rec := &sec11Recorder{}
	u, _ := upstream(t, rec.handler)
	b := startBallast(t, "admin: {allow_debug: true}\n"+jobRoutesLimitedByIP(u))
	const spoof = "192.0.2.9:4242"
	// refused: fasthttp refuses the request head (400) before any of it
	// is stored; that is as good.
	spoofs := []struct {
		name, lines string
		refused     bool
	}{
		{"canonical", "X-Ballast-Agent-Addr: " + spoof + "\r\n", false},
		{"lower case", "x-ballast-agent-addr: " + spoof + "\r\n", false},
		{"upper case", "X-BALLAST-AGENT-ADDR: " + spoof + "\r\n", false},
		{"twice", "X-Ballast-Agent-Addr: " + spoof + "\r\nx-ballast-agent-addr: 198.51.100.1:1\r\n", false},
		{"space before the colon", "X-Ballast-Agent-Addr : " + spoof + "\r\n", true},
		{"tabs around the value", "X-Ballast-Agent-Addr:\t" + spoof + "\t\r\n", false},
		{"no space", "X-Ballast-Agent-Addr:" + spoof + "\r\n", false},
		{"folded onto another line", "X-Note: a\r\n X-Ballast-Agent-Addr: " + spoof + "\r\n", false},
		{"IPv6 and a mapped IPv4", "X-Ballast-Agent-Addr: [::ffff:192.0.2.9]:1\r\nX-Ballast-Agent-Addr: [2001:db8::1]:1\r\n", false},
		{"empty", "X-Ballast-Agent-Addr: \r\n", false},
	}
	raw := func(path, lines, body string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\nPrefer: respond-async, wait=10\r\nX-Ballast-Debug: 1\r\n" + lines +
			fmt.Sprintf("Content-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	for i, sp := range spoofs {
		t.Run(sp.name, func(t *testing.T) {
			path := fmt.Sprintf("/j/s%d", i)
			resp, body := secRawExchange(t, b.addr, raw(path, sp.lines, "{}"))
			if sp.refused {
				if _, _, ok := rec.seen(path); resp.StatusCode != 400 || ok {
					t.Errorf("%d %q (reached the upstream: %v); want 400 and nothing sent", resp.StatusCode, body, ok)
				}
				return
			}
			if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
				t.Fatalf("the job: %d %q", resp.StatusCode, body)
			}
			xff, lines, ok := rec.seen(path)
			if !ok {
				t.Fatal("the job's call never reached the upstream")
			}
			if len(xff) != 1 || xff[0] != "127.0.0.1" {
				t.Errorf("X-Forwarded-For %q, want the agent's own address 127.0.0.1", xff)
			}
			if len(lines) > 0 {
				t.Errorf("X-Ballast-* lines reached the upstream: %q", lines)
			}
			for k, v := range resp.Header {
				if strings.Contains(strings.ToLower(k+strings.Join(v, " ")), "agent-addr") || strings.Contains(strings.Join(v, " "), spoof) {
					t.Errorf("the job's answer shows the stored address line: %s %q", k, v)
				}
			}
		})
	}
	t.Run("in a chunked request's trailer", func(t *testing.T) {
		resp, body := secRawExchange(t, b.addr, "POST /j/trailer HTTP/1.1\r\nHost: x\r\nPrefer: respond-async, wait=10\r\n"+
			"Trailer: X-Ballast-Agent-Addr\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"+
			"2\r\n{}\r\n0\r\nX-Ballast-Agent-Addr: "+spoof+"\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("the job: %d %q", resp.StatusCode, body)
		}
		if xff, lines, _ := rec.seen("/j/trailer"); len(xff) != 1 || xff[0] != "127.0.0.1" || len(lines) > 0 {
			t.Errorf("X-Forwarded-For %q, X-Ballast-* lines %q; want 127.0.0.1 and none", xff, lines)
		}
	})
	t.Run("a limit keyed by ip", func(t *testing.T) {
		// The agent's first job takes its address's only token; spoofed
		// lines on the next ones find the same empty bucket.
		if resp, body := secRawExchange(t, b.addr, raw("/l/first", "", "")); resp.StatusCode != 200 {
			t.Fatalf("the first job: %d %q", resp.StatusCode, body)
		}
		for _, sp := range spoofs {
			resp, body := secRawExchange(t, b.addr, raw("/l/again", sp.lines, ""))
			if sp.refused {
				continue // 400, as above
			}
			if resp.StatusCode != 429 || resp.Header.Get("X-Ballast-Job-State") == "" {
				t.Errorf("%s: %d %q; want the job's 429, charged to the agent's own address", sp.name, resp.StatusCode, body)
			}
		}
	})
	// A job still pending is what /status lists: nothing there, nor in
	// the logs, names the stored line.
	_, status := get(t, client(t), b.admin+"/status")
	if strings.Contains(strings.ToLower(status), "agent-addr") || strings.Contains(status, spoof) {
		t.Errorf("/status shows the stored address line: %s", status)
	}
	if logs := b.logs.String(); strings.Contains(strings.ToLower(logs), "agent-addr") || strings.Contains(logs, spoof) {
		t.Errorf("the logs show the stored address line:\n%s", logs)
	}
}

// TestSecurity11_AutoModeSessionIsNoCapability: in auto mode the
// fingerprint covers the request's Mcp-Session-Id, but the key is still
// the caller's: another caller who sends the same session id and the same
// call never reads the first caller's replay, whatever the credential.
func TestSecurity11_AutoModeSessionIsNoCapability(t *testing.T) {
	up := &tenantEcho{}
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: mcp
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: auto, window: 1h}
`, u))
	call := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"pay"}}`
	for i, cr := range sec11Creds {
		t.Run(cr.name, func(t *testing.T) {
			session := fmt.Sprintf("victim-session-%d", i)
			hA := append([]string{"Mcp-Session-Id", session, "Content-Type", "application/json"}, cr.a...)
			hB := append([]string{"Mcp-Session-Id", session, "Content-Type", "application/json"}, cr.b...)
			path := fmt.Sprintf("/mcp%d", i)
			ra, bodyA := tenantDo(t, "POST", b.base+path, call, hA...)
			if ra.StatusCode != 200 {
				t.Fatalf("A: %d %s", ra.StatusCode, bodyA)
			}
			if r, _ := tenantDo(t, "POST", b.base+path, call, hA...); r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatal("A's own repeat is not replayed: the probe proves nothing")
			}
			rb, bodyB := tenantDo(t, "POST", b.base+path, call, hB...)
			if rb.Header.Get("Idempotent-Replayed") != "" || bodyB == bodyA {
				t.Errorf("B, with A's session id, got A's replay: %d %s", rb.StatusCode, bodyB)
			}
		})
	}
}

// TestSecurity11_ShouldRetryIsBallasts: where ballast says x-should-retry
// (a replayed 5xx, 409 or 408; a 5xx after its own retries), an upstream
// that sent the header several times cannot leave its own lines beside
// ballast's: the OpenAI and Anthropic SDKs in Python and Node read the
// joined value ("false, true"), which is neither, and retry by status.
// The same goes for the replay's Idempotent-Replayed.
func TestSecurity11_ShouldRetryIsBallasts(t *testing.T) {
	var hits atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header()["X-Should-Retry"] = []string{"true", "true"}
		w.Header()["Idempotent-Replayed"] = []string{"false", "false"}
		ct, status := "application/json", http.StatusInternalServerError
		switch {
		case strings.HasPrefix(r.URL.Path, "/stream"):
			ct = "text/event-stream"
		case strings.HasPrefix(r.URL.Path, "/conflict"):
			status = http.StatusConflict
		case strings.HasPrefix(r.URL.Path, "/timeout"):
			status = http.StatusRequestTimeout
		}
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "data: {\"error\":\"boom\"}\n\n")
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: stored
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    idempotency: {mode: header, store_server_errors: true}
  - name: retried
    match: {path_prefix: /retried/}
    upstream: %[1]q
    retry: {attempts: 3, on: [500], unsafe_methods: true, backoff: {base: 1ms, max: 1ms}}
`, u))
	c := client(t)
	one := func(t *testing.T, h http.Header, name, want string) {
		t.Helper()
		if v := h.Values(name); len(v) != 1 || v[0] != want {
			t.Errorf("%s %q, want one line %q", name, v, want)
		}
	}
	for _, path := range []string{"/buffered", "/stream", "/conflict", "/timeout"} {
		t.Run("replayed "+path, func(t *testing.T) {
			first, _ := sec11Post(t, c, b.base+path, `{}`, "Idempotency-Key", "sr"+path)
			again, _ := sec11Post(t, c, b.base+path, `{}`, "Idempotency-Key", "sr"+path)
			if first.StatusCode != again.StatusCode || again.Header.Get("Idempotent-Replayed") == "" {
				t.Fatalf("%d then %d (replayed %q): the probe proves nothing", first.StatusCode, again.StatusCode,
					again.Header.Values("Idempotent-Replayed"))
			}
			one(t, again.Header, "X-Should-Retry", "false")
			one(t, again.Header, "Idempotent-Replayed", "true")
		})
	}
	t.Run("after ballast's retries", func(t *testing.T) {
		before := hits.Load()
		resp, _ := sec11Post(t, c, b.base+"/retried/x", `{}`)
		if resp.StatusCode != 500 || hits.Load()-before != 3 {
			t.Fatalf("%d after %d calls; want the upstream's 500 after 3", resp.StatusCode, hits.Load()-before)
		}
		one(t, resp.Header, "X-Should-Retry", "false")
	})
}

// sec11Tool is a plain HTTP tool that answers every request with a
// redirect to elsewhere, as a compromised or hostile tool might: with a
// keyed stream's content type when asked for one.
func sec11Tool(t *testing.T, elsewhere string) (url string, calls *atomic.Int64) {
	calls = new(atomic.Int64)
	url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Location", elsewhere+"/stolen")
		if strings.Contains(r.URL.Path, "stream") {
			w.Header().Set("Content-Type", "text/event-stream")
		}
		w.WriteHeader(http.StatusTemporaryRedirect)
		_, _ = io.WriteString(w, "data: moved\n\n")
	})
	return url, calls
}

// TestSecurity11_ForwardProxyWithNewFeatures: through HTTP_PROXY, a keyed
// stream, a keyed async job and an auto-mode call still go only to the
// route's upstream: an unlisted host gets 404 no_route whatever the new
// headers say, a redirect is relayed and never followed (not by the job
// run later either), and records are the route's own — the same key sent
// to another listed host runs there, while the same host spelled another
// way replays.
func TestSecurity11_ForwardProxyWithNewFeatures(t *testing.T) {
	var strayHits atomic.Int64
	stray, strayAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) { strayHits.Add(1) })
	toolURL, toolCalls := sec11Tool(t, stray)
	other := &sec11Stream{}
	otherURL, _ := upstream(t, other.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {host: tool.internal, path_prefix: /}
    upstream: %q
    async: {enabled: true}
    idempotency: {mode: header}
  - name: other
    match: {host: other.internal, path_prefix: /}
    upstream: %q
    idempotency: {mode: header}
`, toolURL, otherURL))
	raw := func(method, target, host, extra, body string) (*http.Response, string) {
		t.Helper()
		return secRawExchange(t, b.addr, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s",
			method, target, host, extra, len(body), body))
	}
	t.Run("unlisted targets", func(t *testing.T) {
		for _, target := range []string{
			"http://" + strayAddr + "/stream",
			"http://[::1]:" + strings.Split(strayAddr, ":")[1] + "/stream",
			"http://2130706433:" + strings.Split(strayAddr, ":")[1] + "/stream",
			"http://tool.internal@" + strayAddr + "/stream",
		} {
			for _, extra := range []string{
				"Idempotency-Key: k1\r\nAccept: text/event-stream\r\n",
				"Prefer: respond-async, wait=5\r\nIdempotency-Key: k2\r\n",
				"Mcp-Session-Id: s1\r\nX-Ballast-Agent-Addr: 127.0.0.1:1\r\n",
			} {
				resp, body := raw("POST", target, "tool.internal", extra, "{}")
				if resp.StatusCode != 404 || !strings.Contains(body, `"no_route"`) {
					t.Errorf("POST %s with %q: %d %s; want 404 no_route", target, extra, resp.StatusCode, body)
				}
			}
		}
		resp, body := raw("CONNECT", strayAddr, strayAddr, "Idempotency-Key: k3\r\nPrefer: respond-async\r\n", "")
		if resp.StatusCode != 405 {
			t.Errorf("CONNECT with the new headers: %d %s; want 405", resp.StatusCode, body)
		}
	})
	t.Run("redirects are relayed, not followed", func(t *testing.T) {
		resp, body := raw("POST", "http://tool.internal/stream", "tool.internal", "Idempotency-Key: r1\r\n", "{}")
		if resp.StatusCode != 307 || resp.Header.Get("Location") != stray+"/stolen" {
			t.Errorf("keyed stream: %d Location %q %q; want the 307 relayed", resp.StatusCode, resp.Header.Get("Location"), body)
		}
		resp, body = raw("POST", "http://tool.internal/job", "tool.internal", "Prefer: respond-async, wait=10\r\nIdempotency-Key: r2\r\n", "{}")
		if resp.StatusCode != 307 || resp.Header.Get("X-Ballast-Job-State") == "" {
			t.Errorf("keyed job: %d (job %q) %q; want the job's 307", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
		}
		if toolCalls.Load() != 2 {
			t.Errorf("the tool was called %d times, want 2", toolCalls.Load())
		}
	})
	t.Run("records are per route", func(t *testing.T) {
		first, body := raw("POST", "http://other.internal/stream", "other.internal", "Idempotency-Key: per-target\r\n", "{}")
		if first.StatusCode != 200 {
			t.Fatalf("other: %d %q", first.StatusCode, body)
		}
		again, body2 := raw("POST", "http://other.internal/stream", "x", "Idempotency-Key: per-target\r\n", "{}")
		if again.Header.Get("Idempotent-Replayed") != "true" || body2 != body {
			t.Errorf("the same target: replayed %q %q; want the replay", again.Header.Get("Idempotent-Replayed"), body2)
		}
		// The fingerprint covers the request target as written, so the
		// same host spelled otherwise is a 422 rather than a replay: the
		// call is not run again either way.
		if r, b3 := raw("POST", "http://OTHER.internal:80/stream", "x", "Idempotency-Key: per-target\r\n", "{}"); r.StatusCode != 422 && b3 != body {
			t.Errorf("the same route spelled otherwise: %d %q; want the replay or 422", r.StatusCode, b3)
		}
		before := toolCalls.Load()
		resp, _ := raw("POST", "http://tool.internal/stream", "other.internal", "Idempotency-Key: per-target\r\n", "{}")
		if resp.Header.Get("Idempotent-Replayed") != "" || toolCalls.Load() != before+1 {
			t.Errorf("the same key sent to tool.internal: %d replayed %q (tool calls %d → %d); want a call of its own",
				resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), before, toolCalls.Load())
		}
		if n := other.calls.Load(); n != 1 {
			t.Errorf("other.internal ran %d times, want 1", n)
		}
	})
	if n := strayHits.Load(); n != 0 {
		t.Errorf("a host no route names got %d requests: ballast followed a redirect or acted as an open proxy", n)
	}
}
