package proxy_test

// The edges of request parsing and path handling on the agent side, from
// an adversarial audit: raw TCP agents write exact bytes and raw loopback
// upstreams record exactly what reached them. It does not repeat the
// probes of conformance_audit_test.go, routing_audit_test.go and
// security_test.go (request lines, header syntax, dot segments, escaped
// slashes, absolute form, CONNECT, OPTIONS *, TE/CL smuggling): it adds
// what they left open.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// p9Problem asserts out (a whole raw answer) is ballast's own problem
// with status, and returns its body.
func p9Problem(t *testing.T, out string, status int) string {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(out)), nil)
	if err != nil {
		t.Fatalf("unparsable answer %.200q: %v", out, err)
	}
	b, _ := io.ReadAll(resp.Body)
	caProblem(t, resp, string(b), status)
	return string(b)
}

// TestParsing9Audit_BareLFHeadAnsweredAtOnce: RFC 9112 §2.2 lets a
// server take a bare LF as a line end or answer 400. fasthttp ends a head
// only at CRLF CRLF, so a head a bare LF ended used to wait for
// server.read_timeout (60s by default) before a 408. ballast now answers
// 400 at once and closes the connection; the upstream sees nothing.
func TestParsing9Audit_BareLFHeadAnsweredAtOnce(t *testing.T) {
	ca := startCA(t) // server.read_timeout is the default 60s
	for _, tt := range []struct{ name, raw string }{
		{"every line ends in LF", "GET /raw/lf1 HTTP/1.1\nHost: x\n\n"},
		{"CRLF lines, LF blank line", "GET /raw/lf2 HTTP/1.1\r\nHost: x\r\n\n"},
		{"LF line, CRLF blank line", "GET /raw/lf3 HTTP/1.1\r\nHost: x\n\r\n"},
		{"HTTP/1.0, no headers", "GET /raw/lf4 HTTP/1.0\n\n"},
		{"POST with a body", "POST /raw/lf5 HTTP/1.1\nHost: x\nContent-Length: 2\n\nhi"},
		{"two pipelined", "GET /raw/lf6 HTTP/1.1\nHost: x\n\nGET /raw/lf7 HTTP/1.1\nHost: x\n\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			out, timedOut := rawAll(t, ca.b.addr, tt.raw, 3*time.Second)
			if timedOut {
				t.Fatalf("no answer and no close within 3s (got %.120q): ballast waits for a CRLF CRLF that never comes", out)
			}
			body := p9Problem(t, out, 400)
			if !strings.Contains(body, "bare LF") {
				t.Errorf("the detail does not say what is wrong: %s", body)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answered after %v", d)
			}
			if ca.raw.saw("/raw/lf") {
				t.Errorf("the upstream saw %q", ca.raw.all())
			}
		})
	}
	t.Run("after a good request on the same connection", func(t *testing.T) {
		conn, err := net.Dial("tcp", ca.b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		br := bufio.NewReader(conn)
		_, _ = io.WriteString(conn, "GET /raw/ok HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_, _ = io.WriteString(conn, "GET /raw/lf8 HTTP/1.1\nHost: x\n\n")
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer to the bare-LF request: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		caProblem(t, resp, string(b), 400)
	})
}

// TestParsing9Audit_SplitHeadsAndLFBodies: what the bare-LF check must
// not refuse: a head whose CRLF CRLF is split over several writes, LF-only
// lines before a CRLF CRLF (taken as line ends), and bodies full of blank
// LF lines, sent slowly, also after a 100 Continue.
func TestParsing9Audit_SplitHeadsAndLFBodies(t *testing.T) {
	ca := startCA(t)
	send := func(t *testing.T, parts ...string) string {
		t.Helper()
		conn, err := net.Dial("tcp", ca.b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		br := bufio.NewReader(conn)
		for i, p := range parts {
			if _, err := io.WriteString(conn, p); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(p, "Expect: 100-continue") {
				line, err := br.ReadString('\n')
				if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
					t.Fatalf("want 100 Continue, got %q %v", line, err)
				}
				_, _ = br.ReadString('\n') // its blank line
			}
			if i < len(parts)-1 {
				// Let ballast read what arrived, so the next part comes
				// in a read of its own: a server waiting for it is what
				// the bare-LF check must not mistake for a stall.
				time.Sleep(20 * time.Millisecond) // pacing the input, not waiting for behaviour
			}
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	for _, tt := range []struct {
		name  string
		parts []string
	}{
		{"CRLF CRLF split after CR LF", []string{"GET /raw/s1 HTTP/1.1\r\nHost: x\r\n", "\r\n"}},
		{"CRLF CRLF split after CR", []string{"GET /raw/s2 HTTP/1.1\r\nHost: x\r\n\r", "\n"}},
		{"head split mid-line", []string{"GET /raw/s3 HTTP/1.1\r\nHo", "st: x\r\n\r\n"}},
		{"request line split", []string{"GE", "T /raw/s4 HTTP/1.1\r\nHost: x\r\n\r\n"}},
		{"LF header lines, then CRLF CRLF", []string{"GET /raw/s5 HTTP/1.1\nX-A: 1\n", "Host: x\r\n\r\n"}},
		{"body of blank LF lines, sent slowly", []string{"POST /raw/s6 HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nGET \n\n", "\n\n"}},
		{"body that looks like a bare-LF request", []string{"POST /raw/s7 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n", "GET /x HTTP/1.1\nHost: x\n\n", "0123456789abcde"}},
		{"same after 100 Continue", []string{"POST /raw/s8 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 40\r\n\r\n", "GET /x HTTP/1.1\nHost: x\n\n", "0123456789abcde"}},
		{"chunked body of blank lines", []string{"POST /raw/s9 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\n\n\n\n\r\n", "0\r\n\r\n"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := send(t, tt.parts...); got != "200 ok" {
				t.Errorf("got %q, want 200 ok", got)
			}
		})
	}
}

// p9LenientDepth resolves path the way lenient upstreams do (Tomcat drops
// ";" path parameters before it resolves dot segments; IIS and some
// Windows servers take "\" as a separator; both decode %2e first) and
// returns the lowest depth reached: below zero, the path climbed above
// its start.
func p9LenientDepth(path string) int {
	r := strings.NewReplacer("%2e", ".", "%2E", ".", "%5c", "/", "%5C", "/", "\\", "/", "%2f", "/", "%2F", "/", "%3b", ";", "%3B", ";")
	depth, low := 0, 0
	for _, seg := range strings.Split(r.Replace(path), "/") {
		seg, _, _ = strings.Cut(seg, ";")
		switch seg {
		case "", ".":
		case "..":
			depth--
			low = min(low, depth)
		default:
			depth++
		}
	}
	return low
}

// TestParsing9Audit_NoEscapeFromThePrefix: a route for /tools/search/
// must never forward a path that an upstream would resolve outside the
// route's base: "..;" (Tomcat path parameters), "..\" and "..%5C"
// (IIS), in any spelling. ballast resolves "/" dot segments itself
// (routing_audit_test.go); one it cannot resolve the upstream's way is
// refused with 400 bad_request, and a path that stays inside whichever way
// it is read is forwarded unchanged.
func TestParsing9Audit_NoEscapeFromThePrefix(t *testing.T) {
	up := raUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: search
    match: {path_prefix: /tools/search/}
    upstream: %[1]s/api/search/
    strip_prefix: true
  - name: keep
    match: {path_prefix: /keep}
    upstream: %[1]s/kb
  - name: root
    match: {path_prefix: /}
    upstream: %[1]s/root/
    strip_prefix: true
`, up))
	var escapes []string
	for _, dots := range []string{"..", "%2e%2e", "%2E.", ".%2e"} {
		for _, tail := range []string{";", ";jsessionid=1", "%3b", "%3Bx", "\\", "%5C", "%5c", ";%5C"} {
			escapes = append(escapes, dots+tail)
		}
	}
	var targets []string
	for _, e := range escapes {
		targets = append(targets,
			"/tools/search/"+e+"/admin",
			"/tools/search/a/"+e+"/"+e+"/admin",
			"/tools/search/.;/"+e+"/admin",
			"/tools/search//"+e+"/admin",
			"/tools/search/./"+e+"/admin",
			"/tools/search%2F"+e+"/admin",
			"/keep/"+e+"/admin",
			"/"+e+"/admin",
			"http://x/tools/search/"+e+"/admin",
		)
	}
	for _, target := range targets {
		s := raDo(t, b.addr, raGet(target, "x"))
		if !s.echoed {
			if s.status != 400 || !strings.Contains(s.body, `"reason":"bad_request"`) {
				t.Errorf("GET %q: %d %.200q, want forwarded inside the base or 400 bad_request", target, s.status, s.body)
			}
			continue
		}
		path, _, _ := strings.Cut(s.target, "?")
		for _, base := range []string{"/api/search/", "/kb/keep/", "/root/"} {
			if rest, ok := strings.CutPrefix(path, base); ok {
				if p9LenientDepth(rest) < 0 {
					t.Errorf("GET %q was forwarded as %q: a lenient upstream resolves it above %s", target, s.target, base)
				}
				path = ""
				break
			}
		}
		if path != "" {
			t.Errorf("GET %q was forwarded as %q, outside every base path", target, s.target)
		}
	}
	// What stays inside is forwarded as written.
	raRun(t, b.addr, []raCase{
		{name: "dot-dot-semicolon below a segment", target: "/tools/search/a/..;/b", want: "/api/search/a/..;/b"},
		{name: "backslash dot-dot below a segment", target: "/tools/search/a%5C..%5Cb", want: "/api/search/a%5C..%5Cb"},
		{name: "path parameter on a name", target: "/tools/search/q;v=1", want: "/api/search/q;v=1"},
		{name: "dots in a name", target: "/tools/search/..a;b", want: "/api/search/..a;b"},
		{name: "refused", target: "/tools/search/..;/admin", wantStatus: 400},
	})
}

// TestParsing9Audit_PipelinedAnswerNotHeldBack: RFC 9112 §9.3.2 lets an
// agent pipeline; each answer is due as soon as it is ready. fasthttp
// keeps an answer in its write buffer while another request is buffered
// (server.go, the "Only flush the writer if we don't have another request
// in the pipeline" branch, an optimisation for a benchmark), so the first
// answer waited for the second request's upstream. ballast now flushes
// every answer.
func TestParsing9Audit_PipelinedAnswerNotHeldBack(t *testing.T) {
	release := make(chan struct{})
	var slowStarted atomic.Bool
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowStarted.Store(true)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "answer "+r.URL.Path)
	})
	b := startBallast(t, fmt.Sprintf(`
routes: [{name: tool, match: {path_prefix: /}, upstream: %s, timeouts: {per_try: 10s, total: 10s}}]
`, up))
	conn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(conn, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /last HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		close(release)
		t.Fatalf("the first answer did not come while the second request's upstream was busy (started %v): %v", slowStarted.Load(), err)
	}
	body, _ := io.ReadAll(resp.Body)
	close(release)
	if string(body) != "answer /fast" {
		t.Errorf("first answer %q", body)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []string{"answer /slow", "answer /last"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("got %q, want %q", b, want)
		}
	}
}

// TestParsing9Audit_ChunkFraming: a chunked request body's sizes are
// checked before any of it is forwarded: an overflowing or signed size,
// a size with junk, a missing CRLF after the data, and a size beyond
// max_body are refused; extensions are allowed and dropped. A refused
// body never reaches the upstream and ends the connection, so bytes after
// it are never read as a request.
func TestParsing9Audit_ChunkFraming(t *testing.T) {
	ca := startCA(t)
	smuggled := "GET /raw/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tt := range []struct {
		name, body string
		status     int
	}{
		{"size overflows 64 bits", "10000000000000001\r\nhi\r\n0\r\n\r\n", 400},
		{"size of 16 f's", "ffffffffffffffff\r\nhi\r\n0\r\n\r\n", 400},
		{"negative size", "-2\r\nhi\r\n0\r\n\r\n", 400},
		{"0x prefix", "0x2\r\nhi\r\n0\r\n\r\n", 400},
		{"no CRLF after the data", "2\r\nhiXX0\r\n\r\n", 400},
		{"size over max_body", "1000\r\n" + strings.Repeat("a", 4096) + "\r\n0\r\n\r\n", 413},
		{"extension", "2;ext=\"v\"\r\nhi\r\n0\r\n\r\n", 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			after := smuggled
			if tt.status == 200 {
				after = "" // a request after a good body is a pipelined one
			}
			out, _ := rawAll(t, ca.b.addr, "POST /raw/chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+tt.body+after, caWait)
			if tt.status == 200 {
				if !strings.HasPrefix(out, "HTTP/1.1 200 ") {
					t.Errorf("%.200q", out)
				}
				return
			}
			p9Problem(t, out, tt.status)
			if strings.Count(out, "HTTP/1.1 ") != 1 {
				t.Errorf("the connection went on after a refused body: %q", out)
			}
		})
	}
	if ca.raw.saw("/raw/smuggled") {
		t.Errorf("bytes after a refused chunked body reached the upstream as a request: %q", ca.raw.all())
	}
	for _, h := range ca.raw.all() {
		lower := strings.ToLower(h)
		if strings.Contains(h, ";ext") || strings.Contains(lower, "transfer-encoding:") && strings.Contains(lower, "content-length:") {
			t.Errorf("the upstream saw a chunk extension or two framings: %q", h)
		}
	}
}

// TestParsing9Audit_HeaderNameBytes: a field name is a token (RFC 9110
// §5.1). Names with bytes no token has are refused with a 400 problem and
// never forwarded (security_test.go covers a space inside a name).
func TestParsing9Audit_HeaderNameBytes(t *testing.T) {
	ca := startCA(t)
	for _, tt := range []struct{ name, line string }{
		{"NUL in a name", "X-A\x00b: 1"},
		{"control byte", "X-A\x01: 1"},
		{"DEL", "X-A\x7f: 1"},
		{"non-ASCII", "X-\xc3\xa9: 1"},
		{"quote", "X-\"a\": 1"},
		{"slash", "X/A: 1"},
		{"empty name", ": 1"},
		{"tab before the colon", "X-A\t: 1"},
		{"obs-fold as the first line", " X-A: 1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := caExchange(t, ca.b.addr, "GET /raw/hn HTTP/1.1\r\n"+strings.Replace("Host: x\r\nLINE\r\n", "LINE", tt.line, 1)+"\r\n")
			caProblem(t, resp, body, 400)
		})
	}
	if ca.raw.saw("/raw/hn") {
		t.Errorf("the upstream saw %q", ca.raw.all())
	}
}

// TestParsing9Audit_AbsoluteFormNeverOpenProxy: an absolute-form target
// names a host no route has: it goes to a route's upstream (or 404),
// never to that host, whatever the Host header says; the scheme cannot
// pick TLS or another protocol; and a Host that disagrees with the target
// is ignored (RFC 9112 §3.2.2).
func TestParsing9Audit_AbsoluteFormNeverOpenProxy(t *testing.T) {
	var strayHits atomic.Int64
	_, stray := upstream(t, func(w http.ResponseWriter, r *http.Request) { strayHits.Add(1) })
	rec := startCAUpstream(t, func(string) caReply { return caRawResponses["/raw/ok"] })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: only
    match: {path_prefix: /only/}
    upstream: %s
`, rec.url))
	for _, tt := range []struct {
		name, target, host string
		status             int
	}{
		{"stray host, routed path", "http://" + stray + "/only/x", stray, 200},
		{"stray host, other path", "http://" + stray + "/admin", stray, 404},
		{"https scheme", "https://" + stray + "/admin", "x", 404},
		{"ftp scheme", "ftp://" + stray + "/only/x", "x", 0},
		{"Host names the stray, target a route", "http://x/only/y", stray, 200},
		{"authority-form on GET", stray, "x", 400},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := caExchange(t, b.addr, "GET "+tt.target+" HTTP/1.1\r\nHost: "+tt.host+"\r\n\r\n")
			if tt.status != 0 && resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d: %.200q", resp.StatusCode, tt.status, body)
			}
		})
	}
	if n := strayHits.Load(); n != 0 {
		t.Errorf("a host no route names got %d requests: an open proxy", n)
	}
	for _, h := range rec.all() {
		if !strings.HasPrefix(h, "GET /only/") || strings.Contains(h, stray) {
			t.Errorf("the route's upstream got %q", h)
		}
	}
}

// TestParsing9Audit_NULAndLongRequestLine: a raw NUL anywhere in the
// request line is refused with 400; a request line longer than
// server.max_header_bytes gets 431 at once, even before its line ends.
func TestParsing9Audit_NULAndLongRequestLine(t *testing.T) {
	ca := startCA(t)
	for _, raw := range []string{
		"GET /raw/n\x00ul HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /raw/nul?q=\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET\x00 /raw/nul HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /raw/nul HTTP/1.1\x00\r\nHost: x\r\n\r\n",
	} {
		resp, body := caExchange(t, ca.b.addr, raw)
		caProblem(t, resp, body, 400)
	}
	if ca.raw.saw("nul") {
		t.Errorf("the upstream saw %q", ca.raw.all())
	}
	out, timedOut := rawAll(t, ca.b.addr, "GET /raw/"+strings.Repeat("a", 40000), caWait)
	if timedOut && out == "" {
		t.Fatal("a request line longer than the buffer, never ended, got no answer")
	}
	p9Problem(t, out, 431)
}
