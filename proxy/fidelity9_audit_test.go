package proxy_test

// Fidelity: ballast passes requests and answers through unchanged except
// where its docs say it changes them (README "Headers", docs/config.md
// "Headers"). Raw loopback upstreams record the exact bytes they receive,
// and raw agent sockets read the exact bytes they get back.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fiWait bounds every raw exchange.
const fiWait = 2 * time.Second

// fiRequest is one request as the upstream received it.
type fiRequest struct {
	head string // request line and header lines, CRLFs included
	body []byte // the decoded body
	raw  []byte // the body's bytes as framed on the wire
}

// line is the request line.
func (r fiRequest) line() string {
	l, _, _ := strings.Cut(r.head, "\r\n")
	return l
}

// fields are the header lines as received, without their CRLF.
func (r fiRequest) fields() []string {
	lines := strings.Split(strings.TrimSuffix(r.head, "\r\n\r\n"), "\r\n")
	return lines[1:]
}

// values are the values of every line named name (any case), in order,
// byte-exact after the colon and the one space ballast writes.
func (r fiRequest) values(name string) []string {
	var vs []string
	for _, f := range r.fields() {
		if k, v, ok := strings.Cut(f, ":"); ok && strings.EqualFold(k, name) {
			vs = append(vs, strings.TrimPrefix(v, " "))
		}
	}
	return vs
}

// names are the header names received, lower-cased, sorted, repeated
// names once.
func (r fiRequest) names() []string {
	var ns []string
	for _, f := range r.fields() {
		k, _, _ := strings.Cut(f, ":")
		if k = strings.ToLower(k); !slices.Contains(ns, k) {
			ns = append(ns, k)
		}
	}
	slices.Sort(ns)
	return ns
}

// fiUpstream is a raw loopback upstream that records every request's
// exact bytes and answers with reply's exact bytes.
type fiUpstream struct {
	url   string
	mu    sync.Mutex
	reqs  []fiRequest
	reply func(fiRequest) (resp string, hangUp bool)
}

func (u *fiUpstream) last(t *testing.T) fiRequest {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("the upstream received no request")
	}
	return u.reqs[len(u.reqs)-1]
}

func startFIUpstream(t *testing.T, reply func(fiRequest) (string, bool)) *fiUpstream {
	t.Helper()
	u := &fiUpstream{reply: reply}
	u.url = "http://" + serveConns(t, func(c net.Conn, br *bufio.Reader) {
		for {
			r, err := fiReadRequest(br)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.reqs = append(u.reqs, r)
			u.mu.Unlock()
			resp, hangUp := u.reply(r)
			if _, err := io.WriteString(c, resp); err != nil || hangUp {
				return
			}
		}
	})
	return u
}

// fiReadRequest reads one request: its head as sent, and its body framed
// by Content-Length or chunked coding (trailers included in raw).
func fiReadRequest(br *bufio.Reader) (fiRequest, error) {
	var r fiRequest
	var head strings.Builder
	cl, chunked := 0, false
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return r, err
		}
		head.WriteString(line)
		if k, v, ok := strings.Cut(line, ":"); ok {
			v = strings.TrimSpace(v)
			switch {
			case strings.EqualFold(k, "Content-Length"):
				cl, _ = strconv.Atoi(v)
			case strings.EqualFold(k, "Transfer-Encoding"):
				chunked = strings.EqualFold(v, "chunked")
			}
		}
		if line == "\r\n" {
			break
		}
	}
	r.head = head.String()
	if !chunked {
		r.body = make([]byte, cl)
		if _, err := io.ReadFull(br, r.body); err != nil {
			return r, err
		}
		r.raw = r.body
		return r, nil
	}
	var raw bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return r, err
		}
		raw.WriteString(line)
		size, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(line, ";", 2)[0]), 16, 64)
		if err != nil {
			return r, err
		}
		if size == 0 {
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return r, err
				}
				raw.WriteString(l)
				if l == "\r\n" {
					r.raw = raw.Bytes()
					return r, nil
				}
			}
		}
		chunk := make([]byte, size+2)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return r, err
		}
		raw.Write(chunk)
		r.body = append(r.body, chunk[:size]...)
	}
}

// fiOK is the plainest answer an upstream can give.
const fiOK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// fiSetup is one ballast with a raw upstream behind route fi on /fi/.
type fiSetup struct {
	b  *ballast
	up *fiUpstream
}

func startFI(t *testing.T, reply func(fiRequest) (string, bool)) fiSetup {
	t.Helper()
	if reply == nil {
		reply = func(fiRequest) (string, bool) { return fiOK, false }
	}
	up := startFIUpstream(t, reply)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: fi
    match: {path_prefix: /fi/}
    upstream: %s
    retry: {attempts: 1}
    timeouts: {per_try: 5s, total: 10s}
    max_body: 1MiB
`, up.url))
	return fiSetup{b: b, up: up}
}

// fiAgent writes raw on a fresh connection and returns every byte that
// came back until ballast closed it (raw should ask for Connection:
// close) or fiWait passed.
func fiAgent(t *testing.T, addr, raw string) string {
	t.Helper()
	out, timedOut := rawAll(t, addr, raw, fiWait)
	if timedOut {
		t.Fatalf("no close within %v after %.80q; got %q", fiWait, raw, out)
	}
	return out
}

// fiResponse splits an agent's raw answer into its status line, its
// header lines and its body bytes as framed.
func fiResponse(t *testing.T, out string) (status string, fields []string, body string) {
	t.Helper()
	head, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok {
		t.Fatalf("no end of header block in %q", out)
	}
	lines := strings.Split(head, "\r\n")
	return lines[0], lines[1:], body
}

// fiValues are the values of every header line named name, in order.
func fiValues(fields []string, name string) []string {
	var vs []string
	for _, f := range fields {
		if k, v, ok := strings.Cut(f, ":"); ok && strings.EqualFold(k, name) {
			vs = append(vs, strings.TrimPrefix(v, " "))
		}
	}
	return vs
}

// fiNames are the header names, lower-cased and sorted, once each.
func fiNames(fields []string) []string {
	var ns []string
	for _, f := range fields {
		k, _, _ := strings.Cut(f, ":")
		if k = strings.ToLower(k); !slices.Contains(ns, k) {
			ns = append(ns, k)
		}
	}
	slices.Sort(ns)
	return ns
}

// fiForwarding are the headers ballast sets on every forwarded request.
var fiForwarding = []string{"host", "x-forwarded-for", "x-forwarded-proto", "x-request-id"}

// TestFidelity9_RequestHeadersAdded: the upstream gets the agent's
// headers and the documented forwarding headers, nothing more: no
// User-Agent, Accept-Encoding or Content-Type the agent never sent, and a
// Content-Length only where the agent's request had a body (or said it
// had an empty one).
func TestFidelity9_RequestHeadersAdded(t *testing.T) {
	fi := startFI(t, nil)
	for _, tt := range []struct {
		name, raw string
		extra     []string // beyond fiForwarding and x-a
		cl, ct    string   // want Content-Length / Content-Type values ("" none)
		body      string
	}{
		{name: "GET without a body",
			raw: "GET /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n"},
		{name: "GET with a Content-Type and no body",
			raw:   "GET /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nContent-Type: application/json\r\n\r\n",
			extra: []string{"content-type"}, ct: "application/json"},
		{name: "HEAD without a body",
			raw: "HEAD /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n"},
		// Documented: every method but GET and HEAD goes up framed, with
		// Content-Length: 0 when it has no body (fasthttp's client).
		{name: "DELETE without a body",
			raw:   "DELETE /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n",
			extra: []string{"content-length"}, cl: "0"},
		{name: "OPTIONS without a body",
			raw:   "OPTIONS /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n",
			extra: []string{"content-length"}, cl: "0"},
		{name: "custom method without a body",
			raw:   "PURGE /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n",
			extra: []string{"content-length"}, cl: "0"},
		{name: "a lower-case method is its own method (RFC 9110 §9.1)",
			raw:   "get /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n",
			extra: []string{"content-length"}, cl: "0"},
		{name: "POST without a body or a Content-Length",
			raw:   "POST /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n\r\n",
			extra: []string{"content-length"}, cl: "0"},
		{name: "POST with Content-Length: 0",
			raw:   "POST /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
			extra: []string{"content-length"}, cl: "0"},
		{name: "DELETE with a body",
			raw:   "DELETE /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc",
			extra: []string{"content-length"}, cl: "3", body: "abc"},
		{name: "chunked POST without Content-Type",
			raw:   "POST /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
			extra: []string{"content-length"}, cl: "5", body: "abcde"},
		{name: "POST with a body and no Content-Type",
			raw:   "POST /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nContent-Length: 5\r\n\r\nabcde",
			extra: []string{"content-length"}, cl: "5", body: "abcde"},
		{name: "PATCH with its Content-Type",
			raw:   "PATCH /fi/x HTTP/1.1\r\nHost: b\r\nX-A: 1\r\nContent-Type: application/merge-patch+json; charset=UTF-8\r\nContent-Length: 2\r\n\r\n{}",
			extra: []string{"content-length", "content-type"}, cl: "2", ct: "application/merge-patch+json; charset=UTF-8", body: "{}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, _, _ := fiResponse(t, fiAgent(t, fi.b.addr, strings.Replace(tt.raw, "\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)))
			if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
				t.Fatalf("status %q", status)
			}
			r := fi.up.last(t)
			want := slices.Sorted(slices.Values(append(append([]string{"x-a"}, fiForwarding...), tt.extra...)))
			if got := r.names(); !slices.Equal(got, want) {
				t.Errorf("the upstream got headers %q, want %q:\n%s", got, want, r.head)
			}
			if got := strings.Join(r.values("Content-Length"), ","); got != tt.cl {
				t.Errorf("Content-Length %q, want %q", got, tt.cl)
			}
			if got := strings.Join(r.values("Content-Type"), ","); got != tt.ct {
				t.Errorf("Content-Type %q, want %q", got, tt.ct)
			}
			if string(r.body) != tt.body {
				t.Errorf("body %q, want %q", r.body, tt.body)
			}
			if m := strings.Fields(tt.raw)[0]; !strings.HasPrefix(r.line(), m+" /fi/x ") {
				t.Errorf("request line %q, want method %s", r.line(), m)
			}
		})
	}
}

// TestFidelity9_RequestHeaderValues: values reach the upstream
// byte-exact (inner whitespace, obs-text, long values), and repeated
// lines keep their order.
func TestFidelity9_RequestHeaderValues(t *testing.T) {
	fi := startFI(t, nil)
	long := strings.Repeat("v", 12<<10)
	raw := "GET /fi/x HTTP/1.1\r\nHost: b\r\n" +
		"X-Spaced:   a  b\tc   \r\n" +
		"X-Multi: 1\r\n" +
		"x-other: o\r\n" +
		"X-Multi: 2, two\r\n" +
		"X-MULTI: 3\r\n" +
		"X-Obs: caf\xe9 \x80\xff\r\n" +
		"X-Empty:\r\n" +
		"Accept-Encoding: br;q=1.0, gzip;q=0.5\r\n" +
		"User-Agent: agent/1.0 (linux)\r\n" +
		"X-Long: " + long + "\r\n" +
		"Connection: close\r\n\r\n"
	status, _, _ := fiResponse(t, fiAgent(t, fi.b.addr, raw))
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		t.Fatalf("status %q", status)
	}
	r := fi.up.last(t)
	for name, want := range map[string][]string{
		"X-Spaced":        {"a  b\tc"}, // outer OWS is not part of the value (RFC 9110 §5.5)
		"X-Multi":         {"1", "2, two", "3"},
		"X-Other":         {"o"},
		"X-Obs":           {"caf\xe9 \x80\xff"},
		"X-Empty":         {""},
		"Accept-Encoding": {"br;q=1.0, gzip;q=0.5"},
		"User-Agent":      {"agent/1.0 (linux)"},
		"X-Long":          {long},
	} {
		if got := r.values(name); !slices.Equal(got, want) {
			t.Errorf("%s: the upstream got %.80q, want %.80q", name, got, want)
		}
	}
}

// TestFidelity9_Cookies: an agent's Cookie lines reach the upstream as
// one line (RFC 6265 §5.4) with every cookie as sent, in order; only the
// status page's session cookie is taken out (documented).
func TestFidelity9_Cookies(t *testing.T) {
	fi := startFI(t, nil)
	for _, tt := range []struct{ name, lines, want string }{
		{"one line", "Cookie: a=1; b=2\r\n", "a=1; b=2"},
		{"two lines join in order", "Cookie: a=1; b=2\r\nCookie: c=3\r\n", "a=1; b=2; c=3"},
		{"a quoted value", "Cookie: q=\"x y\"; a=1\r\n", "q=\"x y\"; a=1"},
		{"a name without a value", "Cookie: a=; b=2\r\n", "a=; b=2"},
		{"a repeated name", "Cookie: a=1; a=2\r\n", "a=1; a=2"},
		{"a quoted value with an escape (Python's SimpleCookie)", "Cookie: s=\"a\\054b\"; t=1\r\n", "s=\"a\\054b\"; t=1"},
		{"a backslash", "Cookie: u=a\\b; t=1\r\n", "u=a\\b; t=1"},
		{"a value without a name", "Cookie: flag; t=1\r\n", "flag; t=1"},
		{"no space after ';'", "Cookie: a=1;b=2\r\n", "a=1;b=2"},
		{"only the session", "Cookie: ballast_admin=secret\r\nCookie: a=1\r\n", "a=1"},
		{"the status page's session is taken out", "Cookie: a=1; ballast_admin=secret; b=2\r\nCookie: ballast_admin=x\r\n", "a=1; b=2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\n"+tt.lines+"Connection: close\r\n\r\n")
			r := fi.up.last(t)
			if got := r.values("Cookie"); !slices.Equal(got, []string{tt.want}) {
				t.Errorf("the upstream got Cookie %q, want one line %q", got, tt.want)
			}
		})
	}
}

// TestFidelity9_QueryString: the query string reaches the upstream as
// the agent wrote it: escapes, '+', repeated keys, odd separators, and an
// empty query ("/p?" is not "/p", RFC 3986 §6.2.3).
func TestFidelity9_QueryString(t *testing.T) {
	fi := startFI(t, nil)
	for _, target := range []string{
		"/fi/q?a=%2F&b=+&c=%20&a=2",
		"/fi/q?x=%E2%9C%93&y=a+b&z",
		"/fi/q?a=1&&b=2;c=3",
		"/fi/q?a=%zz&b=%2",
		"/fi/q?q=a%2Bb%26c%3Dd",
		"/fi/q?redirect=/a/b?c=d",
		"/fi/q?",
		"/fi/a%2Fb?",
		"/fi/q??",
	} {
		t.Run(target, func(t *testing.T) {
			fiAgent(t, fi.b.addr, "GET "+target+" HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
			if got, want := fi.up.last(t).line(), "GET "+target+" HTTP/1.1"; got != want {
				t.Errorf("the upstream got %q, want %q", got, want)
			}
		})
	}
}

// TestFidelity9_RequestBody: bodies reach the upstream byte-exact, framed
// by Content-Length (documented: ballast reads the whole body first), and
// a chunked request's trailer fields are not made into header fields
// (RFC 9110 §6.5.2).
func TestFidelity9_RequestBody(t *testing.T) {
	fi := startFI(t, nil)
	binary := make([]byte, 70<<10)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	copy(binary, "\r\n0\r\n\r\n\x00")
	chunked := func(parts ...[]byte) string {
		var b strings.Builder
		for _, p := range parts {
			fmt.Fprintf(&b, "%x\r\n%s\r\n", len(p), p)
		}
		return b.String()
	}
	for _, tt := range []struct {
		name, raw string
		body      []byte
	}{
		{"Content-Length, binary", "POST /fi/b HTTP/1.1\r\nHost: b\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
			strconv.Itoa(len(binary)) + "\r\nConnection: close\r\n\r\n" + string(binary), binary},
		{"chunked, binary, uneven chunks", "POST /fi/b HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
			chunked(binary[:1], binary[1:4097], binary[4097:]) + "0\r\n\r\n", binary},
		{"Content-Encoding: gzip, passed compressed", "POST /fi/b HTTP/1.1\r\nHost: b\r\nContent-Encoding: gzip\r\nContent-Length: " +
			strconv.Itoa(len(fiGzipped)) + "\r\nConnection: close\r\n\r\n" + string(fiGzipped), fiGzipped},
		{"chunked with chunk extensions", "POST /fi/b HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
			"3;ext=1\r\nabc\r\n2;q=\"x;y\"\r\nde\r\n0;last\r\n\r\n", []byte("abcde")},
		{"chunked with trailers", "POST /fi/b HTTP/1.1\r\nHost: b\r\nTrailer: X-Trail\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
			chunked([]byte("hello")) + "0\r\nX-Trail: t\r\n\r\n", []byte("hello")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, _, _ := fiResponse(t, fiAgent(t, fi.b.addr, tt.raw))
			if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
				t.Fatalf("status %q", status)
			}
			r := fi.up.last(t)
			if !bytes.Equal(r.body, tt.body) {
				t.Errorf("the upstream got %d body bytes, want %d (equal prefix %d)", len(r.body), len(tt.body), commonPrefix(r.body, tt.body))
			}
			if got, want := r.values("Content-Length"), []string{strconv.Itoa(len(tt.body))}; !slices.Equal(got, want) {
				t.Errorf("Content-Length %q, want %q", got, want)
			}
			for _, h := range []string{"Transfer-Encoding", "Trailer", "X-Trail"} {
				if v := r.values(h); len(v) > 0 {
					t.Errorf("%s: %q reached the upstream:\n%s", h, v, r.head)
				}
			}
		})
	}
}

// fiGzipped is a small gzip stream.
var fiGzipped = []byte("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff\xcaH\xcd\xc9\xc9\x07\x04\x00\x00\xff\xff\x86\xa6\x106\x05\x00\x00\x00")

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// TestFidelity9_ResponseHeadersAdded: the agent gets the upstream's
// headers and ballast's documented ones, nothing more: no Server, no
// Content-Type on an answer without one, no Content-Length on a HEAD
// answer without one; the upstream's own Server is kept, and its Date
// gives way to ballast's (documented: fasthttp writes its own, as nginx
// does by default), never beside it.
func TestFidelity9_ResponseHeadersAdded(t *testing.T) {
	ballasts := []string{"date", "x-ballast-attempts", "x-ballast-upstream", "x-request-id"}
	for _, tt := range []struct {
		name, resp string
		method     string
		extra      []string // beyond ballast's own
		status     string
		body       string
	}{
		{name: "200 with a Content-Length", resp: fiOK,
			extra: []string{"content-length"}, status: "HTTP/1.1 200 OK", body: "ok"},
		{name: "200 with the upstream's Date and Server",
			resp:  "HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2019 00:00:00 GMT\r\nServer: up/1.0\r\nContent-Length: 2\r\n\r\nok",
			extra: []string{"content-length", "server"}, status: "HTTP/1.1 200 OK", body: "ok"},
		{name: "204 without Content-Type", resp: "HTTP/1.1 204 No Content\r\n\r\n",
			status: "HTTP/1.1 204 No Content"},
		{name: "304 without Content-Type", resp: "HTTP/1.1 304 Not Modified\r\nETag: \"v\"\r\n\r\n",
			extra: []string{"etag"}, status: "HTTP/1.1 304 Not Modified"},
		{name: "200 chunked without Content-Type",
			resp:  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
			extra: []string{"transfer-encoding"}, status: "HTTP/1.1 200 OK", body: "2\r\nok\r\n0\r\n\r\n"},
		{name: "HEAD answered without a length", method: "HEAD",
			resp:  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
			extra: []string{"transfer-encoding"}, status: "HTTP/1.1 200 OK"},
		{name: "HEAD answered with a length", method: "HEAD",
			resp:  "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/csv\r\n\r\n",
			extra: []string{"content-length", "content-type"}, status: "HTTP/1.1 200 OK"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fi := startFI(t, func(fiRequest) (string, bool) { return tt.resp, false })
			method := tt.method
			if method == "" {
				method = "GET"
			}
			status, fields, body := fiResponse(t, fiAgent(t, fi.b.addr, method+" /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
			if status != tt.status || body != tt.body {
				t.Errorf("got %q body %q, want %q body %q", status, body, tt.status, tt.body)
			}
			want := slices.Sorted(slices.Values(append(append([]string{"connection"}, ballasts...), tt.extra...)))
			if got := fiNames(fields); !slices.Equal(got, want) {
				t.Errorf("the agent got headers %q, want %q:\n%s", got, want, strings.Join(fields, "\n"))
			}
			if d := fiValues(fields, "Date"); len(d) != 1 {
				t.Errorf("Date lines %q, want one", d)
			} else if _, err := http.ParseTime(d[0]); err != nil {
				t.Errorf("Date %q: %v", d[0], err)
			}
			if strings.Contains(tt.resp, "Server:") {
				if got := fiValues(fields, "Server"); !slices.Equal(got, []string{"up/1.0"}) {
					t.Errorf("Server %q, want the upstream's", got)
				}
			}
			if tt.method == "HEAD" && strings.Contains(tt.resp, "1234") {
				if got := fiValues(fields, "Content-Length"); !slices.Equal(got, []string{"1234"}) {
					t.Errorf("Content-Length %q, want the upstream's 1234", got)
				}
			}
		})
	}
}

// TestFidelity9_ResponseHeaderValues: values reach the agent byte-exact
// (obs-text, inner whitespace, long values), repeated lines keep their
// order, and every Set-Cookie line stays its own line, as written.
func TestFidelity9_ResponseHeaderValues(t *testing.T) {
	long := strings.Repeat("w", 12<<10)
	cookies := []string{
		"a=1; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT; HttpOnly",
		"a=2; Path=/admin; Secure; SameSite=Strict",
		"b=\"quoted value\"; Max-Age=60; Partitioned; Priority=High",
		"c=; domain=EXAMPLE.com; path=/x; httponly; samesite=lax",
		"weird",
	}
	var resp strings.Builder
	resp.WriteString("HTTP/1.1 200 OK\r\n")
	for _, c := range cookies {
		resp.WriteString("Set-Cookie: " + c + "\r\n")
	}
	resp.WriteString("X-Multi: 1\r\nx-other: o\r\nX-Multi: 2, two\r\nX-Spaced:   a  b\tc  \r\nX-Obs: caf\xe9 \x80\xff\r\nX-Empty:\r\n" +
		"X-Long: " + long + "\r\nContent-Type: Application/JSON;Charset=UTF-8\r\nContent-Length: 2\r\n\r\n{}")
	fi := startFI(t, func(fiRequest) (string, bool) { return resp.String(), false })
	status, fields, body := fiResponse(t, fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
	if status != "HTTP/1.1 200 OK" || body != "{}" {
		t.Fatalf("%q %q", status, body)
	}
	for name, want := range map[string][]string{
		"Set-Cookie":   cookies,
		"X-Multi":      {"1", "2, two"},
		"X-Other":      {"o"},
		"X-Spaced":     {"a  b\tc"},
		"X-Obs":        {"caf\xe9 \x80\xff"},
		"X-Empty":      {""},
		"X-Long":       {long},
		"Content-Type": {"Application/JSON;Charset=UTF-8"},
	} {
		if got := fiValues(fields, name); !slices.Equal(got, want) {
			t.Errorf("%s: the agent got %.200q, want %.200q", name, got, want)
		}
	}
}

// TestFidelity9_StatusLines: the upstream's status code and reason phrase
// reach the agent as sent, known or not.
func TestFidelity9_StatusLines(t *testing.T) {
	for _, line := range []string{
		"HTTP/1.1 299 Custom Thing",
		"HTTP/1.1 599 Network Connect Timeout",
		"HTTP/1.1 200 Everything Fine",
		"HTTP/1.1 404 Not Here",
		"HTTP/1.1 429 Slow Down, Please",
		"HTTP/1.1 201 Created",
	} {
		t.Run(line, func(t *testing.T) {
			fi := startFI(t, func(fiRequest) (string, bool) { return line + "\r\nContent-Length: 2\r\n\r\nok", false })
			status, _, body := fiResponse(t, fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
			if status != line || body != "ok" {
				t.Errorf("the agent got %q %q, want %q", status, body, line)
			}
		})
	}
}

// TestFidelity9_EarlyHintsDoNotLeak: an upstream's interim 103 is not
// relayed (documented), and its fields do not end up in the final answer.
func TestFidelity9_EarlyHintsDoNotLeak(t *testing.T) {
	fi := startFI(t, func(fiRequest) (string, bool) {
		return "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nX-Hint: h\r\n\r\n" + fiOK, false
	})
	out := fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
	status, fields, body := fiResponse(t, out)
	if status != "HTTP/1.1 200 OK" || body != "ok" {
		t.Fatalf("%q", out)
	}
	if v := append(fiValues(fields, "Link"), fiValues(fields, "X-Hint")...); len(v) > 0 {
		t.Errorf("the 103's fields reached the final answer: %q", v)
	}
}

// TestFidelity9_CompressedBodiesUntouched: a gzip body passes
// compressed and byte-exact, small (read whole) and large (streamed), and
// the agent's Accept-Encoding, or its absence, reaches the upstream as is.
func TestFidelity9_CompressedBodiesUntouched(t *testing.T) {
	gz := func(n int) []byte {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.NoCompression) // large stays large
		plain := make([]byte, n)
		for i := range plain {
			plain[i] = byte('a' + i%26)
		}
		_, _ = w.Write(plain)
		_ = w.Close()
		return b.Bytes()
	}
	for _, tt := range []struct {
		name string
		body []byte
		ae   string
	}{
		{"small, agent accepts gzip", gz(100), "gzip"},
		{"large, agent accepts gzip", gz(200 << 10), "gzip, br"},
		{"small, agent sent no Accept-Encoding", gz(100), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fi := startFI(t, func(fiRequest) (string, bool) {
				return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nVary: Accept-Encoding\r\nContent-Length: " +
					strconv.Itoa(len(tt.body)) + "\r\n\r\n" + string(tt.body), false
			})
			req := "GET /fi/x HTTP/1.1\r\nHost: b\r\n"
			if tt.ae != "" {
				req += "Accept-Encoding: " + tt.ae + "\r\n"
			}
			status, fields, body := fiResponse(t, fiAgent(t, fi.b.addr, req+"Connection: close\r\n\r\n"))
			if status != "HTTP/1.1 200 OK" {
				t.Fatal(status)
			}
			if got := fiValues(fields, "Content-Encoding"); !slices.Equal(got, []string{"gzip"}) {
				t.Errorf("Content-Encoding %q", got)
			}
			if cl := fiValues(fields, "Content-Length"); !slices.Equal(cl, []string{strconv.Itoa(len(tt.body))}) {
				// A streamed body may go chunked; its bytes must still be the same.
				body = fiDechunk(t, body)
			}
			if !bytes.Equal([]byte(body), tt.body) {
				t.Errorf("the agent got %d body bytes, want the upstream's %d", len(body), len(tt.body))
			}
			var want []string
			if tt.ae != "" {
				want = []string{tt.ae}
			}
			if got := fi.up.last(t).values("Accept-Encoding"); !slices.Equal(got, want) {
				t.Errorf("the upstream got Accept-Encoding %q, want %q", got, want)
			}
		})
	}
}

// fiDechunk decodes a chunked body.
func fiDechunk(t *testing.T, s string) string {
	t.Helper()
	r, err := fiReadRequest(bufio.NewReader(strings.NewReader("X / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + s)))
	if err != nil {
		t.Fatalf("not a chunked body: %v", err)
	}
	return string(r.body)
}

// TestFidelity9_UntilCloseBody: an HTTP/1.0-style answer, framed by the
// upstream closing its connection, reaches the agent byte-exact.
func TestFidelity9_UntilCloseBody(t *testing.T) {
	body := make([]byte, 150<<10)
	for i := range body {
		body[i] = byte(i * 13)
	}
	fi := startFI(t, func(fiRequest) (string, bool) {
		return "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + string(body), true
	})
	status, fields, got := fiResponse(t, fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
	if status != "HTTP/1.1 200 OK" {
		t.Fatal(status)
	}
	if slices.Equal(fiValues(fields, "Transfer-Encoding"), []string{"chunked"}) {
		got = fiDechunk(t, got)
	}
	if !bytes.Equal([]byte(got), body) {
		t.Errorf("the agent got %d body bytes, want %d (equal prefix %d)", len(got), len(body), commonPrefix([]byte(got), body))
	}
}

// TestFidelity9_LongHeaders: a request header value as long as
// server.max_header_bytes allows reaches the upstream byte-exact, and an
// answer's header block up to the documented 16KiB reaches the agent
// byte-exact.
func TestFidelity9_LongHeaders(t *testing.T) {
	reqValue := strings.Repeat("r", 60<<10)
	respValue := strings.Repeat("s", 15<<10)
	up := startFIUpstream(t, func(fiRequest) (string, bool) {
		return "HTTP/1.1 200 OK\r\nX-Long: " + respValue + "\r\nContent-Length: 2\r\n\r\nok", false
	})
	b := startBallast(t, fmt.Sprintf(`
server: {max_header_bytes: 64KiB}
routes:
  - name: fi
    match: {path_prefix: /fi/}
    upstream: %s
    retry: {attempts: 1}
`, up.url))
	status, fields, body := fiResponse(t, fiAgent(t, b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nX-Long: "+reqValue+"\r\nConnection: close\r\n\r\n"))
	if status != "HTTP/1.1 200 OK" || body != "ok" {
		t.Fatalf("%q %q", status, body)
	}
	if got := up.last(t).values("X-Long"); !slices.Equal(got, []string{reqValue}) {
		t.Errorf("the upstream got X-Long of %d bytes, want %d", len(strings.Join(got, "")), len(reqValue))
	}
	if got := fiValues(fields, "X-Long"); !slices.Equal(got, []string{respValue}) {
		t.Errorf("the agent got X-Long of %d bytes, want %d", len(strings.Join(got, "")), len(respValue))
	}
}

// TestFidelity9_ExpectContinue: an agent's Expect: 100-continue gets
// ballast's own 100, and the upstream gets the body byte-exact without
// Expect (documented: ballast consumes it) and without headers the agent
// did not send.
func TestFidelity9_ExpectContinue(t *testing.T) {
	fi := startFI(t, nil)
	conn, err := net.Dial("tcp", fi.b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(fiWait))
	br := bufio.NewReader(conn)
	_, _ = io.WriteString(conn, "PUT /fi/e HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
	if line, err := br.ReadString('\n'); line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("first line %q (%v), want 100 Continue", line, err)
	}
	_, _ = io.WriteString(conn, "a\x00b\r\n")
	out, _ := io.ReadAll(br)
	if !strings.Contains(string(out), "HTTP/1.1 200 OK\r\n") {
		t.Fatalf("%q", out)
	}
	r := fi.up.last(t)
	if string(r.body) != "a\x00b\r\n" {
		t.Errorf("body %q", r.body)
	}
	want := slices.Sorted(slices.Values(append([]string{"content-length"}, fiForwarding...)))
	if got := r.names(); !slices.Equal(got, want) {
		t.Errorf("the upstream got headers %q, want %q", got, want)
	}
}

// TestFidelity9_UpstreamBallastHeaders: an upstream's own X-Ballast-*
// answer headers (another ballast in front of it) cannot pass for this
// ballast's: the agent gets one X-Ballast-Attempts, X-Ballast-Upstream
// and X-Ballast-Request-Id, ballast's, however many lines the upstream
// sent.
func TestFidelity9_UpstreamBallastHeaders(t *testing.T) {
	fi := startFI(t, func(fiRequest) (string, bool) {
		return "HTTP/1.1 200 OK\r\nX-Request-Id: up-1\r\nX-Ballast-Attempts: 99\r\nX-Ballast-Upstream: evil.example\r\n" +
			"X-Ballast-Attempts: 98\r\nX-Ballast-Upstream: evil2.example\r\nX-Ballast-Request-Id: fake-1\r\nX-Ballast-Request-Id: fake-2\r\n" +
			"Content-Length: 2\r\n\r\nok", false
	})
	_, fields, _ := fiResponse(t, fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
	if got := fiValues(fields, "X-Ballast-Attempts"); !slices.Equal(got, []string{"1"}) {
		t.Errorf("X-Ballast-Attempts %q, want [1]", got)
	}
	if got := fiValues(fields, "X-Ballast-Upstream"); len(got) != 1 || strings.HasPrefix(got[0], "evil") {
		t.Errorf("X-Ballast-Upstream %q, want ballast's one", got)
	}
	if got := fiValues(fields, "X-Ballast-Request-Id"); len(got) != 1 || strings.HasPrefix(got[0], "fake") {
		t.Errorf("X-Ballast-Request-Id %q, want ballast's one", got)
	}
	if got := fiValues(fields, "X-Request-Id"); !slices.Equal(got, []string{"up-1"}) {
		t.Errorf("X-Request-Id %q, want the upstream's (documented)", got)
	}
}

// TestFidelity9_CookieRules: the route's header rules apply to the
// agent's Cookie lines copied as written: remove drops every line, set
// replaces them all.
func TestFidelity9_CookieRules(t *testing.T) {
	up := startFIUpstream(t, func(fiRequest) (string, bool) { return fiOK, false })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: removed
    match: {path_prefix: /rm/}
    upstream: %[1]s
    headers: {remove: [cookie]}
  - name: set
    match: {path_prefix: /set/}
    upstream: %[1]s
    headers: {set: {Cookie: "route=1"}}
`, up.url))
	for path, want := range map[string][]string{"/rm/x": nil, "/set/x": {"route=1"}} {
		fiAgent(t, b.addr, "GET "+path+" HTTP/1.1\r\nHost: b\r\nCookie: s=\"a\\054b\"\r\nCookie: t=1\r\nConnection: close\r\n\r\n")
		if got := up.last(t).values("Cookie"); !slices.Equal(got, want) {
			t.Errorf("%s: the upstream got Cookie %q, want %q", path, got, want)
		}
	}
}

// TestFidelity9_ChunkedAnswerBody: a large chunked answer, in chunks of
// every size, reaches the agent byte-exact.
func TestFidelity9_ChunkedAnswerBody(t *testing.T) {
	body := make([]byte, 300<<10)
	for i := range body {
		body[i] = byte(i*31 + i>>8)
	}
	var wire strings.Builder
	wire.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
	for rest, n := body, 1; len(rest) > 0; n = n*3 + 1 {
		k := min(n%70000+1, len(rest))
		fmt.Fprintf(&wire, "%x\r\n%s\r\n", k, rest[:k])
		rest = rest[k:]
	}
	wire.WriteString("0\r\n\r\n")
	fi := startFI(t, func(fiRequest) (string, bool) { return wire.String(), false })
	status, fields, got := fiResponse(t, fiAgent(t, fi.b.addr, "GET /fi/x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"))
	if status != "HTTP/1.1 200 OK" || !slices.Equal(fiValues(fields, "Transfer-Encoding"), []string{"chunked"}) {
		t.Fatalf("%q %q", status, fields)
	}
	if got = fiDechunk(t, got); !bytes.Equal([]byte(got), body) {
		t.Errorf("the agent got %d body bytes, want %d (equal prefix %d)", len(got), len(body), commonPrefix([]byte(got), body))
	}
}
