package proxy_test

// HTTP/1.1 protocol conformance, from an adversarial audit against RFC 9110
// and RFC 9112 and what nginx and Envoy do: raw TCP agents write exact
// bytes, and raw loopback upstreams answer with exact bytes. Every probe
// asserts the correct behaviour, except bare-LF line endings in an
// upstream's answer, which fasthttp's parser cannot take: there the probe
// asserts the bound ballast puts on the wait (a clear 504, never a hang).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// caWait bounds every raw read: a hang shows as a failure within it.
const caWait = time.Second

// caExchange writes raw and reads one response with Go's parser within
// caWait. A hang, an unparsable answer or a body cut short fails the test.
func caExchange(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	resp, body, err := rawExchange(t, addr, raw, caWait)
	if err != nil {
		t.Fatalf("reading the body of the answer to %.80q: %v (read %q)", raw, err, body)
	}
	return resp, body
}

// caProblem asserts that resp is ballast's own problem with status.
func caProblem(t *testing.T, resp *http.Response, body string, status int) {
	t.Helper()
	var p struct {
		Status int    `json:"status"`
		Reason string `json:"reason"`
	}
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/problem+json" ||
		json.Unmarshal([]byte(body), &p) != nil || p.Status != status {
		t.Errorf("got %d %q %.200q, want ballast's %d problem", resp.StatusCode, resp.Header.Get("Content-Type"), body, status)
	}
}

// caReply is what a raw upstream writes for one request.
type caReply struct {
	resp   string
	hangUp bool // close the connection after resp
	// ws: after resp, the connection speaks WebSocket: whatever arrives
	// is answered with a frame, never with HTTP.
	ws bool
}

// caUpstream is a raw loopback upstream that records each request head
// as received on the wire.
type caUpstream struct {
	url   string
	conns atomic.Int64 // connections accepted
	mu    sync.Mutex
	heads []string
}

func (u *caUpstream) all() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.heads...)
}

func (u *caUpstream) saw(substr string) bool {
	for _, h := range u.all() {
		if strings.Contains(h, substr) {
			return true
		}
	}
	return false
}

// startCAUpstream serves answer on a raw loopback listener. answer gets
// the request head (request line and headers, as sent).
func startCAUpstream(t *testing.T, answer func(head string) caReply) *caUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &caUpstream{url: "http://" + ln.Addr().String()}
	var (
		wg    sync.WaitGroup
		cmu   sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
		wg.Wait()
	})
	serve := func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			head, err := readRequestHead(br)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.heads = append(u.heads, head)
			u.mu.Unlock()
			r := answer(head)
			if _, err := io.WriteString(c, r.resp); err != nil || r.hangUp {
				return
			}
			if r.ws {
				buf := make([]byte, 4096)
				for {
					if _, err := br.Read(buf); err != nil {
						return
					}
					if _, err := c.Write([]byte("\x81\x05hello")); err != nil {
						return
					}
				}
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns.Add(1)
			cmu.Lock()
			conns = append(conns, c)
			cmu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); serve(c) }()
		}
	}()
	return u
}

// caRawResponses are the upstream answers the probes need, by path.
var caRawResponses = map[string]caReply{
	"/raw/ok":         {resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/100":        {resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/103":        {resp: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/204body":    {resp: "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"},
	"/raw/304cl":      {resp: "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 5\r\n\r\n"},
	"/raw/dupcl-eq":   {resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/dupcl-ne":   {resp: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokabc", hangUp: true},
	"/raw/cl-list":    {resp: "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", hangUp: true},
	"/raw/cl-neg":     {resp: "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello", hangUp: true},
	"/raw/cl-huge":    {resp: "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello", hangUp: true},
	"/raw/chunkext":   {resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2;ext=1;q=\"a b\"\r\nok\r\n0\r\nX-T: v\r\n\r\n"},
	"/raw/cl-te":      {resp: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
	"/raw/te-id":      {resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nuntil-close", hangUp: true},
	"/raw/te-gzip":    {resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil-close", hangUp: true},
	"/raw/noreason":   {resp: "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/s099":       {resp: "HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/s600":       {resp: "HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/s999":       {resp: "HTTP/1.1 999 Weird\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/fold":       {resp: "HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/hdr-cr":     {resp: "HTTP/1.1 200 OK\r\nX-Bad: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/hdr-nul":    {resp: "HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/hdr-big":    {resp: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 20000) + "\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/hdr-name":   {resp: "HTTP/1.1 200 OK\r\nX Bad: a\r\nContent-Length: 2\r\n\r\nok"},
	"/raw/hdr-colon":  {resp: "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"},
	"/raw/barelf":     {resp: "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"},
	"/raw/chunked":    {resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"},
	"/raw/untilclose": {resp: "HTTP/1.1 200 OK\r\n\r\nuntil-close", hangUp: true},
	"/raw/http10":     {resp: "HTTP/1.0 200 OK\r\n\r\nten", hangUp: true},
	"/raw/http10cl":   {resp: "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nten"},
	"/raw/101":        {resp: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi", ws: true},
}

// caTraceEcho answers like an origin that implements TRACE (RFC 9110
// §9.3.8): the request it received, as message/http.
func caTraceEcho(head string) caReply {
	return caReply{resp: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %d\r\n\r\n%s", len(head), head)}
}

// caSetup is one ballast with a raw upstream on /raw/ (no retries, so an
// upstream answer is seen once) and a net/http echo upstream on / that
// injects a credential.
type caSetup struct {
	b   *ballast
	raw *caUpstream
}

const caSecret = "sk-route-secret-4711"

func startCA(t *testing.T) caSetup {
	t.Helper()
	raw := startCAUpstream(t, func(head string) caReply {
		method, rest, _ := strings.Cut(head, " ")
		path, _, _ := strings.Cut(rest, " ")
		if method == "TRACE" || method == "OPTIONS" {
			return caTraceEcho(head)
		}
		if r, ok := caRawResponses[path]; ok {
			return r
		}
		return caRawResponses["/raw/ok"]
	})
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: raw
    match: {path_prefix: /raw/}
    upstream: %s
    retry: {attempts: 1}
    timeouts: {per_try: 5s, total: 10s}
    max_body: 1KiB
    headers:
      set: {Authorization: "Bearer %s"}
  - name: tool
    match: {path_prefix: /}
    upstream: %s
    max_body: 1KiB
`, raw.url, caSecret, up))
	return caSetup{b: b, raw: raw}
}

// TestConformanceAudit_BareLFRequest: RFC 9112 §2.2 a recipient MAY take
// a bare LF as a line terminator, or reject the message with 400.
// fasthttp ends a header block only at a CRLFCRLF, so a block ending in a
// bare LF waited for more until server.read_timeout; ballast now answers
// 400 at once, closing the connection (parsing9_audit_test.go). A bare LF
// before a CRLFCRLF is taken as a line end.
func TestConformanceAudit_BareLFRequest(t *testing.T) {
	ca := startCA(t)
	up := echoUpstream(t)
	short := startBallast(t, fmt.Sprintf(`
server: {read_timeout: 300ms}
routes: [{name: tool, match: {path_prefix: /}, upstream: %s}]
`, up))
	for _, tt := range []struct {
		name, raw string
		waits     bool // the block ends in a bare LF: 400 before read_timeout
	}{
		{"every line ends in LF", "GET /x HTTP/1.1\nHost: x\n\n", true},
		{"CRLF lines, LF blank line", "GET /x HTTP/1.1\r\nHost: x\r\n\n", true},
		{"LF request line, CRLF headers", "GET /x HTTP/1.1\nHost: x\r\n\r\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.waits {
				start := time.Now()
				out, timedOut := rawAll(t, short.addr, tt.raw, 3*time.Second)
				if timedOut || !strings.HasPrefix(out, "HTTP/1.1 400 ") || time.Since(start) >= 300*time.Millisecond {
					t.Fatalf("after %v: %.120q (timed out %v), want 400 before server.read_timeout (300ms) and a close",
						time.Since(start).Round(time.Millisecond), out, timedOut)
				}
				return
			}
			out, timedOut := rawAll(t, ca.b.addr, tt.raw, caWait)
			if timedOut && out == "" {
				t.Fatalf("no answer within %v: ballast waits for a CRLFCRLF that never comes", caWait)
			}
			if !strings.HasPrefix(out, "HTTP/1.1 200 ") && !strings.HasPrefix(out, "HTTP/1.1 400 ") {
				t.Errorf("got %.120q, want 200 (LF accepted) or 400 (LF refused)", out)
			}
		})
	}
}

// TestConformanceAudit_RequestLineVersions: HTTP-version is
// case-sensitive "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3). A major version
// other than 1 cannot be HTTP/1.1 syntax: nginx answers 505 to HTTP/2+
// and 400 to HTTP/0.x; a higher minor version is served as HTTP/1.1
// (RFC 9110 §2.5).
func TestConformanceAudit_RequestLineVersions(t *testing.T) {
	ca := startCA(t)
	tests := []struct {
		name, raw string
		status    []int  // any of these
		was       string // what ballast did before its fix, if it was wrong
	}{
		{"HTTP/1.1", "GET /raw/v11 HTTP/1.1\r\nHost: x\r\n\r\n", []int{200}, ""},
		{"HTTP/1.0", "GET /raw/v10 HTTP/1.0\r\n\r\n", []int{200}, ""},
		{"HTTP/1.2 is served as 1.x", "GET /raw/v12 HTTP/1.2\r\nHost: x\r\n\r\n", []int{200}, ""},
		{"lowercase http", "GET /raw/lc http/1.1\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"no version (HTTP/0.9 simple request)", "GET /raw/nov\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"junk after the version", "GET /raw/junk HTTP/1.1 x\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"two spaces after the method", "GET  /raw/sp HTTP/1.1\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"tab as separator", "GET\t/raw/tab HTTP/1.1\r\nHost: x\r\n\r\n", []int{400}, ""},
		{"h2c prior-knowledge preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", []int{400, 505}, ""},
		{"HTTP/2.0 in an HTTP/1 request line", "GET /raw/v20 HTTP/2.0\r\nHost: x\r\n\r\n", []int{505},
			"a request line claiming HTTP/2.0 or HTTP/3.0 is forwarded as HTTP/1.0 instead of 505"},
		{"HTTP/3.0", "GET /raw/v30 HTTP/3.0\r\nHost: x\r\n\r\n", []int{505},
			"a request line claiming HTTP/2.0 or HTTP/3.0 is forwarded as HTTP/1.0 instead of 505"},
		{"HTTP/0.9 spelled out", "GET /raw/v09 HTTP/0.9\r\nHost: x\r\n\r\n", []int{400, 505},
			"a request line claiming HTTP/0.9 is forwarded as HTTP/1.0 instead of 400 (nginx) or 505"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := caExchange(t, ca.b.addr, tt.raw)
			ok := false
			for _, s := range tt.status {
				ok = ok || resp.StatusCode == s
			}
			if !ok {
				t.Fatalf("status %d, want one of %v: %.200s", resp.StatusCode, tt.status, body)
			}
			if resp.StatusCode != 200 {
				caProblem(t, resp, body, resp.StatusCode)
				if path := strings.Fields(tt.raw)[1]; strings.HasPrefix(path, "/raw/") && ca.raw.saw(path+" ") {
					t.Errorf("the refused request %s reached the upstream", path)
				}
			}
		})
	}
}

// TestConformanceAudit_HTTP10Clients: an HTTP/1.0 request closes the
// connection after its answer unless it asks for keep-alive (RFC 9112
// §9.3); Host is optional; Transfer-Encoding is faulty framing in 1.0
// (§6.1); Expect: 100-continue is ignored in 1.0 (RFC 9110 §10.1.1).
func TestConformanceAudit_HTTP10Clients(t *testing.T) {
	ca := startCA(t)
	t.Run("no keep-alive: answered then closed", func(t *testing.T) {
		out, timedOut := rawAll(t, ca.b.addr, "GET /raw/a HTTP/1.0\r\n\r\n", caWait)
		if timedOut || !strings.HasPrefix(out, "HTTP/1.1 200 ") || !strings.HasSuffix(out, "\r\n\r\nok") {
			t.Errorf("timedOut=%v %q", timedOut, out)
		}
	})
	t.Run("keep-alive: two answers, in order, then closed", func(t *testing.T) {
		out, timedOut := rawAll(t, ca.b.addr, "GET /raw/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /raw/b HTTP/1.0\r\n\r\n", caWait)
		if timedOut || strings.Count(out, "HTTP/1.1 200 ") != 2 || !strings.Contains(out, "Connection: keep-alive") {
			t.Errorf("timedOut=%v %q", timedOut, out)
		}
		heads := ca.raw.all()
		if len(heads) < 2 || !strings.HasPrefix(heads[len(heads)-2], "GET /raw/a ") || !strings.HasPrefix(heads[len(heads)-1], "GET /raw/b ") {
			t.Errorf("upstream order %q", heads)
		}
	})
	t.Run("Transfer-Encoding in 1.0 is refused", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "POST /raw/te HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		caProblem(t, resp, body, 400)
	})
	t.Run("Expect in 1.0 gets no 100", func(t *testing.T) {
		out, _ := rawAll(t, ca.b.addr, "POST /raw/e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", caWait)
		if strings.Contains(out, " 100 ") || !strings.HasPrefix(out, "HTTP/1.1 200 ") {
			t.Errorf("%q", out)
		}
	})
	for _, path := range []string{"/raw/chunked", "/raw/untilclose"} {
		t.Run("no chunked coding to a 1.0 client "+path, func(t *testing.T) {
			// RFC 9112 §6.1: a server MUST NOT send Transfer-Encoding
			// unless the request indicates HTTP/1.1; nginx sends the body
			// as is and closes the connection.
			out, timedOut := rawAll(t, ca.b.addr, "GET "+path+" HTTP/1.0\r\n\r\n", caWait)
			head, body, _ := strings.Cut(out, "\r\n\r\n")
			if timedOut || strings.Contains(strings.ToLower(head), "transfer-encoding") || (body != "ok" && body != "until-close") {
				t.Errorf("timedOut=%v, got %q", timedOut, out)
			}
		})
	}
}

// TestConformanceAudit_UpstreamHTTP10Answer: ballast speaks HTTP/1.1 to
// the agent whatever version the upstream spoke (RFC 9110 §2.5: an
// intermediary sends its own version). Python's http.server answers
// HTTP/1.0 by default, often without Content-Length.
func TestConformanceAudit_UpstreamHTTP10Answer(t *testing.T) {
	ca := startCA(t)
	for _, tt := range []struct{ path, body string }{{"/raw/http10", "ten"}, {"/raw/http10cl", "ten"}} {
		t.Run(tt.path, func(t *testing.T) {
			out, _ := rawAll(t, ca.b.addr, "GET "+tt.path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", caWait)
			if !strings.HasPrefix(out, "HTTP/1.1 200 ") {
				t.Fatalf("status line %.40q, want ballast's own HTTP/1.1", out)
			}
			resp, body := caExchange(t, ca.b.addr, "GET "+tt.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 || body != tt.body {
				t.Errorf("Go's client read %d %q, want 200 %q", resp.StatusCode, body, tt.body)
			}
		})
	}
}

// TestConformanceAudit_ExpectContinue: RFC 9110 §10.1.1.
func TestConformanceAudit_ExpectContinue(t *testing.T) {
	ca := startCA(t)
	t.Run("unknown expectation is dropped, not forwarded", func(t *testing.T) {
		// A server MAY answer 417; nginx and Envoy ignore it. ballast
		// consumes Expect and forwards the request without it.
		resp, body := caExchange(t, ca.b.addr, "POST /raw/exp HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\nContent-Length: 2\r\n\r\nhi")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		if ca.raw.saw("bogus") {
			t.Error("Expect reached the upstream")
		}
	})
	t.Run("oversized body: 413 after the body, connection closed", func(t *testing.T) {
		out, timedOut := rawAll(t, ca.b.addr, "POST /raw/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"+strings.Repeat("a", 5000), caWait)
		if timedOut || !strings.Contains(out, "HTTP/1.1 413 ") || !strings.Contains(out, "application/problem+json") {
			t.Errorf("timedOut=%v %.300q", timedOut, out)
		}
	})
	t.Run("oversized Content-Length is refused before 100", func(t *testing.T) {
		conn, err := net.Dial("tcp", ca.b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(caWait))
		_, _ = io.WriteString(conn, "POST /raw/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		if !strings.HasPrefix(line, "HTTP/1.1 413 ") {
			t.Errorf("first line %q (%v), want 413 before any body byte is sent (nginx)", line, err)
		}
	})
}

// TestConformanceAudit_RequestHeaderSyntax: RFC 9112 §5 and RFC 9110 §5.
func TestConformanceAudit_RequestHeaderSyntax(t *testing.T) {
	ca := startCA(t)
	for _, tt := range []struct {
		name, raw string
		status    int
	}{
		{"whitespace before the first header (§2.2)", "GET /raw/h HTTP/1.1\r\n Host: evil\r\nHost: x\r\n\r\n", 400},
		{"NUL in a value", "GET /raw/h HTTP/1.1\r\nHost: x\r\nX-N: a\x00b\r\n\r\n", 400},
		{"two Host headers", "GET /raw/h HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400},
		{"no Host in 1.1", "GET /raw/h HTTP/1.1\r\n\r\n", 400},
		{"empty Host in 1.1", "GET /raw/h HTTP/1.1\r\nHost:\r\n\r\n", 400},
		{"space in Host", "GET /raw/h HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"header line over max_header_bytes", "GET /raw/h HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", 431},
		{"many headers over max_header_bytes", "GET /raw/h HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 3000) + "\r\n", 431},
		{"leading empty line is skipped (§2.2)", "\r\nGET /raw/h HTTP/1.1\r\nHost: x\r\n\r\n", 200},
		{"obs-text in a value", "GET /raw/h HTTP/1.1\r\nHost: x\r\nX-O: caf\xe9\r\n\r\n", 200},
		{"many small headers within max_header_bytes", "GET /raw/h HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 500) + "\r\n", 200},
		{"no Host in 1.0", "GET /raw/h HTTP/1.0\r\n\r\n", 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := caExchange(t, ca.b.addr, tt.raw)
			if tt.status == 200 {
				if resp.StatusCode != 200 || body != "ok" {
					t.Errorf("%d %.200q", resp.StatusCode, body)
				}
				return
			}
			caProblem(t, resp, body, tt.status)
		})
	}
	t.Run("obs-fold is replaced by a space", func(t *testing.T) {
		_, _ = caExchange(t, ca.b.addr, "GET /raw/fold-req HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n")
		if !ca.raw.saw("X-Folded: a b\r\n") {
			t.Errorf("upstream saw %q", ca.raw.all())
		}
	})
}

// TestConformanceAudit_ParseErrorQuotesNoCredentials: a malformed
// request's problem must not quote its headers (the problem detail ends up
// in SDK exceptions, agent transcripts and logs).
func TestConformanceAudit_ParseErrorQuotesNoCredentials(t *testing.T) {
	ca := startCA(t)
	resp, body := caExchange(t, ca.b.addr, "GET /raw/x\r\nHost: x\r\nAuthorization: Bearer sk-agent-secret-99\r\n\r\n")
	caProblem(t, resp, body, 400)
	if strings.Contains(body, "sk-agent-secret-99") {
		t.Errorf("the problem quotes the agent's credential: %s", body)
	}
	if strings.Contains(ca.b.logs.String(), "sk-agent-secret-99") {
		t.Errorf("the log quotes the agent's credential: %s", ca.b.logs.String())
	}
}

// TestConformanceAudit_RequestTargets: origin-form, absolute-form (a
// server MUST accept it, RFC 9112 §3.2.2), asterisk-form (only for a
// server-wide OPTIONS, §3.2.4) and CONNECT's authority-form.
func TestConformanceAudit_RequestTargets(t *testing.T) {
	ca := startCA(t)
	t.Run("absolute-form is routed by its path", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "GET http://elsewhere.example/raw/abs HTTP/1.1\r\nHost: y\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" || !ca.raw.saw("GET /raw/abs HTTP/1.1\r\n") {
			t.Errorf("%d %q; upstream saw %q", resp.StatusCode, body, ca.raw.all())
		}
	})
	t.Run("asterisk-form on another method", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "GET * HTTP/1.1\r\nHost: x\r\n\r\n")
		caProblem(t, resp, body, 400)
	})
	t.Run("CONNECT is not tunnelled", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
		caProblem(t, resp, body, 405)
		if resp.Header.Get("Allow") == "" {
			t.Error("405 without Allow")
		}
	})
	t.Run("OPTIONS * is answered, never forwarded as a path", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
		// Go's net/http answers 200 with Content-Length: 0 itself; nginx
		// and a route-less answer would be 400/404. Never the upstream's.
		if resp.Header.Get("X-Ballast-Upstream") != "" || strings.Contains(body, "OPTIONS /") {
			t.Errorf("forwarded: %d %q", resp.StatusCode, body)
		}
	})
}

// TestConformanceAudit_TraceAndMaxForwards: TRACE echoes the request the
// origin received, so forwarding it hands the agent every header ballast
// injected (route credentials). nginx refuses TRACE with 405.
func TestConformanceAudit_TraceAndMaxForwards(t *testing.T) {
	ca := startCA(t)
	t.Run("TRACE does not reveal injected credentials", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "TRACE /raw/t HTTP/1.1\r\nHost: x\r\n\r\n")
		if strings.Contains(body, caSecret) {
			t.Errorf("the route's credential reached the agent: %d %q", resp.StatusCode, body)
		}
		caProblem(t, resp, body, 405)
	})
	t.Run("Max-Forwards: 0 on OPTIONS is answered by ballast", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "OPTIONS /raw/o HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n")
		if resp.Header.Get("X-Ballast-Upstream") != "" || strings.Contains(body, caSecret) {
			t.Errorf("forwarded: %d %q", resp.StatusCode, body)
		}
	})
	t.Run("Via and Max-Forwards on other methods pass through", func(t *testing.T) {
		// ballast adds no Via (nor do nginx and Envoy by default); it must
		// not drop the agent's.
		resp, _ := caExchange(t, ca.b.addr, "GET /raw/via HTTP/1.1\r\nHost: x\r\nVia: 1.1 agent-proxy\r\nMax-Forwards: 3\r\n\r\n")
		if resp.StatusCode != 200 || !ca.raw.saw("Via: 1.1 agent-proxy\r\n") || !ca.raw.saw("Max-Forwards: 3\r\n") {
			t.Errorf("%d; upstream saw %q", resp.StatusCode, ca.raw.all())
		}
	})
}

// TestConformanceAudit_UpstreamInterimAndNoBody: 1xx interim answers are
// consumed (nginx does the same; ballast asked for none); 204, 304 and
// HEAD answers end at their header block (RFC 9112 §6.3), and bytes an
// upstream wrongly sends after one never reach the next answer.
func TestConformanceAudit_UpstreamInterimAndNoBody(t *testing.T) {
	ca := startCA(t)
	for _, tt := range []struct {
		name, raw string
		status    int
		body, cl  string
	}{
		{"100 then 200", "GET /raw/100 HTTP/1.1\r\nHost: x\r\n\r\n", 200, "ok", "2"},
		{"103 Early Hints then 200", "GET /raw/103 HTTP/1.1\r\nHost: x\r\n\r\n", 200, "ok", "2"},
		{"204 with a body", "GET /raw/204body HTTP/1.1\r\nHost: x\r\n\r\n", 204, "", ""},
		{"304 keeps Content-Length, sends no body", "GET /raw/304cl HTTP/1.1\r\nHost: x\r\n\r\n", 304, "", "5"},
		{"HEAD keeps Content-Length, sends no body", "HEAD /raw/ok HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", "2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Followed on the same connection by a GET: the agent's
			// stream stays in step.
			out, _ := rawAll(t, ca.b.addr, tt.raw+"GET /raw/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", caWait)
			br := bufio.NewReader(strings.NewReader(out))
			req := &http.Request{Method: strings.Fields(tt.raw)[0]}
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || string(b) != tt.body || resp.Header.Get("Content-Length") != tt.cl {
				t.Errorf("%d %q Content-Length %q", resp.StatusCode, b, resp.Header.Get("Content-Length"))
			}
			if tt.status == 204 && strings.Contains(out, "hello") {
				t.Errorf("the 204's stray body reached the agent: %q", out)
			}
			next, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("the next answer: %v: %q", err, out)
			}
			nb, _ := io.ReadAll(next.Body)
			if next.StatusCode != 200 || string(nb) != "ok" {
				t.Errorf("next answer %d %q", next.StatusCode, nb)
			}
		})
	}
	t.Run("the pooled connection stays in step after a 204 with a body", func(t *testing.T) {
		for range 3 {
			resp, body := caExchange(t, ca.b.addr, "GET /raw/204body HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 204 || body != "" {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
			resp, body = caExchange(t, ca.b.addr, "GET /raw/ok HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
		}
	})
}

// TestConformanceAudit_UpstreamFraming: RFC 9112 §6.3. An invalid
// Content-Length is an unrecoverable framing error: a proxy closes the
// upstream connection and answers 502 (nginx and Envoy do). A
// Transfer-Encoding overrides Content-Length, which is removed before
// forwarding. A Transfer-Encoding not ending in chunked is refused with
// 502, as nginx does.
func TestConformanceAudit_UpstreamFraming(t *testing.T) {
	ca := startCA(t)
	for _, tt := range []struct {
		path   string
		status int
		body   string
	}{
		{"/raw/dupcl-eq", 502, ""},
		{"/raw/dupcl-ne", 502, ""},
		{"/raw/cl-list", 502, ""},
		{"/raw/cl-neg", 502, ""},
		{"/raw/cl-huge", 502, ""},
		{"/raw/te-id", 502, ""},
		{"/raw/te-gzip", 502, ""},
		{"/raw/chunkext", 200, "ok"},
		{"/raw/cl-te", 200, "ok"},
		{"/raw/untilclose", 200, "until-close"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp, body := caExchange(t, ca.b.addr, "GET "+tt.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if tt.status != 200 {
				caProblem(t, resp, body, tt.status)
			} else {
				if resp.StatusCode != 200 || body != tt.body {
					t.Errorf("%d %q", resp.StatusCode, body)
				}
				if resp.ContentLength >= 0 && tt.path == "/raw/cl-te" {
					t.Errorf("Content-Length %d relayed beside the chunked coding", resp.ContentLength)
				}
				for _, h := range []string{"Trailer", "X-T"} {
					if v := resp.Header.Get(h); v != "" {
						t.Errorf("%s: %q relayed", h, v)
					}
				}
			}
			// The upstream connection is not left out of step.
			resp, body = caExchange(t, ca.b.addr, "GET /raw/ok HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != 200 || body != "ok" {
				t.Errorf("the next request: %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestConformanceAudit_UpstreamStatusLine: status-code is 3DIGIT and
// valid codes are 100..599 (RFC 9110 §15); a reason phrase may be empty.
func TestConformanceAudit_UpstreamStatusLine(t *testing.T) {
	ca := startCA(t)
	t.Run("no reason phrase", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "GET /raw/noreason HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
	})
	for _, tt := range []struct{ path, was string }{ // was: before the fix
		{"/raw/s099", "an upstream status 099 is relayed as a two-digit \"99\" status with its body unframed (no Content-Length, keep-alive): the agent's stream desyncs"},
		{"/raw/s600", "an upstream status outside 100..599 (600, 999) is relayed instead of 502 (Envoy refuses it)"},
		{"/raw/s999", "an upstream status outside 100..599 (600, 999) is relayed instead of 502 (Envoy refuses it)"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			out, _ := rawAll(t, ca.b.addr, "GET "+tt.path+" HTTP/1.1\r\nHost: x\r\n\r\nGET /raw/ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", caWait)
			br := bufio.NewReader(strings.NewReader(out))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("unparsable answer: %v: %q", err, out)
			}
			b, _ := io.ReadAll(resp.Body)
			caProblem(t, resp, string(b), 502)
			if next, err := http.ReadResponse(br, nil); err != nil || next.StatusCode != 200 {
				t.Errorf("the next answer on the connection: %v %q", err, out)
			}
		})
	}
}

// TestConformanceAudit_UpstreamHeaderSyntax: RFC 9112 §5.2 a proxy
// replaces obs-fold in a response with spaces (or answers 502); §5.1
// whitespace before the colon is removed; a field value with CR or NUL,
// and a header block over the buffer, are 502.
func TestConformanceAudit_UpstreamHeaderSyntax(t *testing.T) {
	ca := startCA(t)
	t.Run("obs-fold becomes a space", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "GET /raw/fold HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("X-Fold") != "a b" {
			t.Errorf("%d %q X-Fold %q", resp.StatusCode, body, resp.Header.Get("X-Fold"))
		}
	})
	t.Run("space before the colon is removed", func(t *testing.T) {
		out, _ := rawAll(t, ca.b.addr, "GET /raw/hdr-colon HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", caWait)
		if !strings.Contains(out, "\r\nContent-Length: 2\r\n") || strings.Contains(out, "Content-Length :") || !strings.HasSuffix(out, "ok") {
			t.Errorf("%q", out)
		}
	})
	for _, path := range []string{"/raw/hdr-cr", "/raw/hdr-nul", "/raw/hdr-big"} {
		t.Run(path, func(t *testing.T) {
			resp, body := caExchange(t, ca.b.addr, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
			caProblem(t, resp, body, 502)
			if resp.Header.Get("Set-Cookie") != "" {
				t.Error("a header split at a bare CR reached the agent")
			}
		})
	}
	t.Run("a field name that is not a token", func(t *testing.T) {
		out, _ := rawAll(t, ca.b.addr, "GET /raw/hdr-name HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", caWait)
		if strings.Contains(out, "\r\nX Bad:") {
			t.Errorf("relayed: %q", out)
		}
	})
	t.Run("bare LF line endings", func(t *testing.T) {
		// fasthttp waits for a CRLFCRLF that never comes: the attempt is
		// bounded by per_try and the agent gets a 504 problem, not a hang.
		b := startBallast(t, fmt.Sprintf(`
routes: [{name: raw, match: {path_prefix: /raw/}, upstream: %s, retry: {attempts: 1}, timeouts: {connect: 200ms, per_try: 300ms, total: 1s}}]
`, ca.raw.url))
		resp, body := caExchange(t, b.addr, "GET /raw/barelf HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 504 || !strings.Contains(body, `"reason":"timeout"`) {
			t.Errorf("%d %q, want 504 timeout at per_try", resp.StatusCode, body)
		}
	})
}

// TestConformanceAudit_Upgrade: ballast does not do WebSocket. An Upgrade
// request is forwarded as a plain request without Upgrade (nginx's default
// without proxy_set_header Upgrade), and a 101 the upstream sends anyway
// cannot be relayed: RFC 9110 §15.2.2 a server may only switch to a
// protocol the request asked for, and ballast asked for none.
func TestConformanceAudit_Upgrade(t *testing.T) {
	ca := startCA(t)
	t.Run("Upgrade is not forwarded", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "GET /raw/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
		if ca.raw.saw("Upgrade: websocket") || ca.raw.saw("Connection: Upgrade") {
			t.Errorf("upstream saw %q", ca.raw.all())
		}
	})
	t.Run("an unsolicited 101 is a 502, and its connection is not reused", func(t *testing.T) {
		resp, body := caExchange(t, ca.b.addr, "GET /raw/101 HTTP/1.1\r\nHost: x\r\n\r\n")
		caProblem(t, resp, body, 502)
		resp, body = caExchange(t, ca.b.addr, "GET /raw/ok HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Errorf("the next request got %d %q: it ran on the WebSocket connection", resp.StatusCode, body)
		}
	})
}

// TestConformanceAudit_Pipelining: requests written in one go are all
// answered, in order (RFC 9112 §9.3.2), a body included.
func TestConformanceAudit_Pipelining(t *testing.T) {
	ca := startCA(t)
	raw := "GET /raw/p1 HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /raw/p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /raw/204body HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /raw/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	out, timedOut := rawAll(t, ca.b.addr, raw, caWait)
	if timedOut {
		t.Fatalf("not all answered: %q", out)
	}
	br := bufio.NewReader(strings.NewReader(out))
	for i, want := range []struct {
		status int
		body   string
	}{{200, "ok"}, {200, "ok"}, {204, ""}, {200, "ok"}} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v: %q", i, err, out)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want.status || string(b) != want.body {
			t.Errorf("answer %d: %d %q", i, resp.StatusCode, b)
		}
	}
	var order []string
	for _, h := range ca.raw.all() {
		order = append(order, strings.Fields(h)[1])
	}
	if strings.Join(order, " ") != "/raw/p1 /raw/p2 /raw/204body /raw/chunked" {
		t.Errorf("upstream order %q", order)
	}
}
