package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// HTTP protocol details where they meet ballast's features (Expect,
// chunked request bodies, HEAD, interim answers, early upstream answers,
// framing, HTTP/1.0), probed with raw loopback agents and upstreams so
// that nothing is normalised away.

const ps11Wait = 5 * time.Second

// ps11Req is one request a raw upstream read.
type ps11Req struct {
	method, uri string
	header      http.Header
	trailer     http.Header
	body        string
	proto       string
}

// ps11Upstream is a raw keep-alive upstream: it parses each request with
// Go's reader and writes the bytes answer returns for it (n counts from
// 0). An answer of "" closes the connection unanswered, and one saying
// Connection: close closes it after.
type ps11Upstream struct {
	addr   string
	mu     sync.Mutex
	reqs   []ps11Req
	answer func(n int, r ps11Req) string
}

func (u *ps11Upstream) seen() []ps11Req {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]ps11Req(nil), u.reqs...)
}

func ps11Start(t *testing.T, answer func(n int, r ps11Req) string) *ps11Upstream {
	t.Helper()
	u := &ps11Upstream{answer: answer}
	u.addr = serveConns(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, err := io.ReadAll(req.Body)
			if err != nil {
				return
			}
			r := ps11Req{method: req.Method, uri: req.RequestURI, header: req.Header, trailer: req.Trailer, body: string(b), proto: req.Proto}
			u.mu.Lock()
			n := len(u.reqs)
			u.reqs = append(u.reqs, r)
			u.mu.Unlock()
			out := u.answer(n, r)
			if out == "" {
				return
			}
			if _, err := io.WriteString(c, out); err != nil {
				return
			}
			if strings.Contains(ps11Head(out), "\r\nConnection: close") {
				return // as it said
			}
		}
	})
	return u
}

// ps11Send writes raw to ballast on a new connection and reads every byte
// until ballast closes it (send Connection: close) or ps11Wait passes.
func ps11Send(t *testing.T, addr, raw string) string {
	t.Helper()
	out, _ := rawAll(t, addr, raw, ps11Wait)
	return out
}

// ps11Parse reads one answer from out for a request of method, and
// returns it with its body and the bytes after it.
func ps11Parse(t *testing.T, out, method string) (*http.Response, string, string) {
	t.Helper()
	br := bufio.NewReader(strings.NewReader(out))
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("unparsable answer: %v: %q", err, out)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v: %q", err, out)
	}
	rest, _ := io.ReadAll(br)
	return resp, string(b), string(rest)
}

// ps11Head is the raw header block of the first answer in out.
func ps11Head(out string) string {
	head, _, _ := strings.Cut(out, "\r\n\r\n")
	return head
}

func ps11HasLine(head, name string) bool {
	for _, l := range strings.Split(head, "\r\n") {
		if k, _, ok := strings.Cut(l, ":"); ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return true
		}
	}
	return false
}

// TestProtoSeams11_HeadKeepsContentLength: a HEAD answer served from the
// cache (fresh, and stale-if-error in fallback mode) or replayed under an
// idempotency key carries the upstream's Content-Length, as the relayed
// HEAD answer does (RFC 9110 §9.3.2: the same header fields as a GET),
// and no body; a HEAD's empty body is never what a GET then gets.
func TestProtoSeams11_HeadKeepsContentLength(t *testing.T) {
	const body = "hello, world"
	var fail sync.Mutex
	failing := false
	up := ps11Start(t, func(n int, r ps11Req) string {
		fail.Lock()
		f := failing
		fail.Unlock()
		if f {
			return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
		}
		h := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		if r.method == "HEAD" {
			return h
		}
		return h + body
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: fresh, match: {path_prefix: /fresh/}, upstream: "http://%[1]s", cache: {mode: fresh, ttl: 60s}}
  - {name: fallback, match: {path_prefix: /fallback/}, upstream: "http://%[1]s", cache: {mode: fallback, stale: 1h}, retry: {attempts: 1}}
  - {name: auto, match: {path_prefix: /auto/}, upstream: "http://%[1]s", idempotency: {mode: auto}}
  - {name: keyed, match: {path_prefix: /keyed/}, upstream: "http://%[1]s", idempotency: {mode: header}}
`, up.addr))
	head := func(path string, extra string) (*http.Response, string) {
		t.Helper()
		out := ps11Send(t, b.addr, "HEAD "+path+" HTTP/1.1\r\nHost: x\r\n"+extra+"Connection: close\r\n\r\n")
		resp, _, rest := ps11Parse(t, out, "HEAD")
		if rest != "" {
			t.Errorf("HEAD %s: bytes after the header block: %q", path, rest)
		}
		return resp, ps11Head(out)
	}
	check := func(what string, resp *http.Response, raw string) {
		t.Helper()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
			t.Errorf("%s: %d, Content-Length %q, want 200 and %d: %q", what, resp.StatusCode, resp.Header.Get("Content-Length"), len(body), raw)
		}
	}

	t.Run("fresh cache", func(t *testing.T) {
		resp, raw := head("/fresh/a", "")
		check("the relayed HEAD", resp, raw)
		resp, raw = head("/fresh/a", "")
		if !strings.Contains(resp.Header.Get("Cache-Status"), "hit") {
			t.Fatalf("the second HEAD was not a cache hit: %q", raw)
		}
		check("the cached HEAD", resp, raw)
		r, got := get(t, client(t), b.base+"/fresh/a")
		if r.StatusCode != 200 || got != body {
			t.Errorf("the GET after a cached HEAD: %d %q", r.StatusCode, got)
		}
	})
	t.Run("fallback cache", func(t *testing.T) {
		resp, raw := head("/fallback/a", "")
		check("the relayed HEAD", resp, raw)
		r, got := get(t, client(t), b.base+"/fallback/a")
		if r.StatusCode != 200 || got != body {
			t.Fatalf("GET: %d %q", r.StatusCode, got)
		}
		fail.Lock()
		failing = true
		fail.Unlock()
		defer func() { fail.Lock(); failing = false; fail.Unlock() }()
		resp, raw = head("/fallback/a", "")
		if !strings.Contains(resp.Header.Get("Cache-Status"), "fwd-status=503") {
			t.Fatalf("the HEAD was not served stale: %q", raw)
		}
		check("the stale HEAD", resp, raw)
		r, got = get(t, client(t), b.base+"/fallback/a")
		if r.StatusCode != 200 || got != body {
			t.Errorf("the stale GET after a HEAD: %d %q", r.StatusCode, got)
		}
	})
	for _, tc := range []struct{ name, path, extra string }{
		{"auto replay", "/auto/a", ""},
		{"keyed replay", "/keyed/a", "Idempotency-Key: k-head\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, raw := head(tc.path, tc.extra)
			check("the relayed HEAD", resp, raw)
			resp, raw = head(tc.path, tc.extra)
			if resp.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("the second HEAD was not replayed: %q", raw)
			}
			check("the replayed HEAD", resp, raw)
		})
	}
}

// TestProtoSeams11_ReplayNeverCarriesBothFramings: an upstream answer with
// Transfer-Encoding: chunked and Content-Length both (the smuggling shape;
// RFC 9112 §6.3: chunked wins, Content-Length goes) is relayed chunked,
// and its recorded replay carries one framing, a Content-Length matching
// the body.
func TestProtoSeams11_ReplayNeverCarriesBothFramings(t *testing.T) {
	up := ps11Start(t, func(n int, r ps11Req) string {
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"b\r\n{\"ok\":true}\r\n0\r\n\r\n"
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: keyed, match: {path_prefix: /}, upstream: "http://%s", idempotency: {mode: header}}
`, up.addr))
	req := "POST /charge HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-te\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
	for i, want := range []string{"", "true"} {
		out := ps11Send(t, b.addr, req)
		head := ps11Head(out)
		resp, body, rest := ps11Parse(t, out, "POST")
		if resp.StatusCode != 200 || body != `{"ok":true}` || rest != "" {
			t.Errorf("call %d: %d %q, then %q", i, resp.StatusCode, body, rest)
		}
		if ps11HasLine(head, "Content-Length") && ps11HasLine(head, "Transfer-Encoding") {
			t.Errorf("call %d carries both framings: %q", i, head)
		}
		if cl := resp.Header.Get("Content-Length"); cl != "" && cl != "11" {
			t.Errorf("call %d: Content-Length %q for an 11-byte body", i, cl)
		}
		if got := resp.Header.Get("Idempotent-Replayed"); got != want {
			t.Errorf("call %d: Idempotent-Replayed %q, want %q", i, got, want)
		}
	}
	if n := len(up.seen()); n != 1 {
		t.Errorf("the upstream was called %d times, want 1", n)
	}
}

// ps11Chunked frames body as a chunked request body in two chunks, with
// a trailer field.
func ps11Chunked(body string) string {
	h := len(body) / 2
	return fmt.Sprintf("%x\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Checksum: abc\r\n\r\n", h, body[:h], len(body)-h, body[h:])
}

// TestProtoSeams11_ChunkedBodyFingerprint: a keyed or auto-fingerprinted
// request is the same call whether its body came chunked (with trailer
// fields) or with a Content-Length: a retry that switches framing
// replays, never 422s or runs again. The trailer fields are dropped, as
// docs/config.md says, and the upstream gets a Content-Length.
func TestProtoSeams11_ChunkedBodyFingerprint(t *testing.T) {
	up := ps11Start(t, func(n int, r ps11Req) string {
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: auto, match: {path_prefix: /auto/}, upstream: "http://%[1]s", idempotency: {mode: auto}}
  - {name: keyed, match: {path_prefix: /keyed/}, upstream: "http://%[1]s", idempotency: {mode: header}}
`, up.addr))
	const body = `{"model":"m","input":"hello"}`
	for _, tc := range []struct{ name, path, key string }{
		{"auto", "/auto/c", ""},
		{"header", "/keyed/c", "Idempotency-Key: k-chunk\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.seen())
			chunked := "POST " + tc.path + " HTTP/1.1\r\nHost: x\r\n" + tc.key + "Content-Type: application/json\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + ps11Chunked(body)
			fixed := "POST " + tc.path + " HTTP/1.1\r\nHost: x\r\n" + tc.key + "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body
			resp, got, _ := ps11Parse(t, ps11Send(t, b.addr, chunked), "POST")
			if resp.StatusCode != 200 || got != `{"ok":true}` {
				t.Fatalf("chunked: %d %q", resp.StatusCode, got)
			}
			resp, got, _ = ps11Parse(t, ps11Send(t, b.addr, fixed), "POST")
			if resp.StatusCode != 200 || resp.Header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("the same call with a Content-Length: %d replayed %q %q", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), got)
			}
			seen := up.seen()[before:]
			if len(seen) != 1 {
				t.Fatalf("the upstream was called %d times, want 1", len(seen))
			}
			r := seen[0]
			if r.body != body || r.header.Get("Content-Length") != strconv.Itoa(len(body)) || len(r.header.Values("Transfer-Encoding")) > 0 {
				t.Errorf("upstream got %q with Content-Length %q", r.body, r.header.Get("Content-Length"))
			}
			if r.header.Get("X-Checksum") != "" || r.trailer.Get("X-Checksum") != "" || r.header.Get("Trailer") != "" {
				t.Errorf("the trailer field went upstream: header %v trailer %v", r.header, r.trailer)
			}
		})
	}
}

// TestProtoSeams11_HTTP10ReplayAndAsync: an HTTP/1.0 agent with
// keep-alive gets a replay and an async job's 202 framed by
// Content-Length (1.0 has no chunked coding), kept alive, and a second
// request on the same connection is answered.
func TestProtoSeams11_HTTP10ReplayAndAsync(t *testing.T) {
	up := ps11Start(t, func(n int, r ps11Req) string {
		// Chunked: the recorded answer was framed otherwise upstream.
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{\"ok\":true}\r\n0\r\n\r\n"
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: keyed, match: {path_prefix: /}, upstream: "http://%s", idempotency: {mode: header}, async: {enabled: true}}
`, up.addr))
	c := dialBounded(t, b.addr, ps11Wait)
	defer c.Close()
	br := bufio.NewReader(c)
	send := func(raw string) *http.Response {
		t.Helper()
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer on the kept-alive 1.0 connection: %v", err)
		}
		return resp
	}
	read := func(resp *http.Response) string {
		t.Helper()
		if resp.ContentLength < 0 || len(resp.TransferEncoding) > 0 {
			t.Errorf("%d without a Content-Length (Transfer-Encoding %v) to a 1.0 agent", resp.StatusCode, resp.TransferEncoding)
		}
		if resp.Close || !strings.EqualFold(resp.Header.Get("Connection"), "keep-alive") {
			t.Errorf("%d: the 1.0 keep-alive connection is not kept (Connection %q)", resp.StatusCode, resp.Header.Get("Connection"))
		}
		bb, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(bb)
	}
	const req = "POST /charge HTTP/1.0\r\nConnection: keep-alive\r\nIdempotency-Key: k-10\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
	for i, want := range []string{"", "true"} {
		resp := send(req)
		if got := read(resp); resp.StatusCode != 200 || got != `{"ok":true}` || resp.Header.Get("Idempotent-Replayed") != want {
			t.Errorf("call %d: %d %q replayed %q", i, resp.StatusCode, got, resp.Header.Get("Idempotent-Replayed"))
		}
	}
	resp := send("POST /job HTTP/1.0\r\nConnection: keep-alive\r\nPrefer: respond-async\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	_ = read(resp)
	if resp.StatusCode != 202 || resp.Header.Get("Location") == "" {
		t.Fatalf("async: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// The job's answer, polled on the same connection.
	resp = send("GET " + resp.Header.Get("Location") + " HTTP/1.0\r\nConnection: keep-alive\r\nPrefer: wait=5\r\n\r\n")
	if got := read(resp); resp.StatusCode != 200 || got != `{"ok":true}` {
		t.Errorf("the job's answer: %d %q", resp.StatusCode, got)
	}
}

// ps11ExpectSend writes head with Expect: 100-continue and waits for
// ballast's first answer line; on 100 it sends body and returns the final
// answer. sentBody says whether the body went.
func ps11ExpectSend(t *testing.T, addr, head, body string) (resp *http.Response, respBody string, sentBody bool) {
	t.Helper()
	c := dialBounded(t, addr, ps11Wait)
	defer c.Close()
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("no first answer line: %v", err)
	}
	if strings.HasPrefix(line, "HTTP/1.1 100 ") {
		if blank, _ := br.ReadString('\n'); blank != "\r\n" {
			t.Fatalf("the 100 has header lines: %q", blank)
		}
		if _, err := io.WriteString(c, body); err != nil {
			t.Fatal(err)
		}
		sentBody = true
		line = ""
	}
	resp, err = http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(line), br)), nil)
	if err != nil {
		t.Fatalf("no final answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), sentBody
}

// TestProtoSeams11_ExpectContinueWithFeatures: Expect: 100-continue on a
// keyed POST, an auto-fingerprinted one, an async job, a request that
// waits for a rate-limit token and one retried: ballast answers 100, the
// upstream gets the body whole on every attempt (never an Expect of
// ballast's agent), and the duplicate replays. A body over max_body is
// refused before the upload (413, no 100) and nothing goes upstream.
func TestProtoSeams11_ExpectContinueWithFeatures(t *testing.T) {
	var retried sync.Once
	up := ps11Start(t, func(n int, r ps11Req) string {
		first := false
		if strings.HasPrefix(r.uri, "/retry/") {
			retried.Do(func() { first = true })
		}
		if first {
			return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
		}
		return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
	})
	b := startBallast(t, fmt.Sprintf(`
defaults:
  retry: {backoff: {base: 1ms, max: 1ms}}
routes:
  - {name: keyed, match: {path_prefix: /keyed/}, upstream: "http://%[1]s", idempotency: {mode: header}, max_body: 1KiB}
  - {name: auto, match: {path_prefix: /auto/}, upstream: "http://%[1]s", idempotency: {mode: auto}}
  - {name: async, match: {path_prefix: /async/}, upstream: "http://%[1]s", async: {enabled: true}}
  - {name: limited, match: {path_prefix: /limited/}, upstream: "http://%[1]s", rate_limit: {rps: 20, burst: 1, max_wait: 2s}}
  - {name: retry, match: {path_prefix: /retry/}, upstream: "http://%[1]s", retry: {attempts: 2, unsafe_methods: true}}
  - {name: refused, match: {path_prefix: /refused/}, upstream: "http://%[1]s", rate_limit: {rps: 0.001, burst: 1, max_wait: 0s}}
`, up.addr))
	const body = `{"input":"expect"}`
	head := func(path, extra string) string {
		return "POST " + path + " HTTP/1.1\r\nHost: x\r\n" + extra + "Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
	}
	checkUp := func(t *testing.T, from int, want int) {
		t.Helper()
		seen := up.seen()[from:]
		if len(seen) != want {
			t.Errorf("the upstream got %d requests, want %d", len(seen), want)
		}
		for i, r := range seen {
			if r.body != body || r.header.Get("Expect") != "" {
				t.Errorf("attempt %d: body %q, Expect %q", i, r.body, r.header.Get("Expect"))
			}
		}
	}
	for _, tc := range []struct{ name, path, extra string }{
		{"keyed", "/keyed/a", "Idempotency-Key: k-exp\r\n"},
		{"auto", "/auto/a", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from := len(up.seen())
			for i, want := range []string{"", "true"} {
				resp, got, sent := ps11ExpectSend(t, b.addr, head(tc.path, tc.extra), body)
				if !sent || resp.StatusCode != 200 || got != `{"ok":true}` || resp.Header.Get("Idempotent-Replayed") != want {
					t.Errorf("call %d: sent %v, %d %q replayed %q", i, sent, resp.StatusCode, got, resp.Header.Get("Idempotent-Replayed"))
				}
			}
			checkUp(t, from, 1)
		})
	}
	t.Run("async", func(t *testing.T) {
		from := len(up.seen())
		resp, _, sent := ps11ExpectSend(t, b.addr, head("/async/a", "Prefer: respond-async\r\n"), body)
		if !sent || resp.StatusCode != 202 {
			t.Fatalf("sent %v, %d", sent, resp.StatusCode)
		}
		r, got := get(t, client(t), b.base+resp.Header.Get("Location"), "Prefer", "wait=5")
		if r.StatusCode != 200 || got != `{"ok":true}` {
			t.Errorf("the job: %d %q", r.StatusCode, got)
		}
		checkUp(t, from, 1)
	})
	t.Run("rate limit wait", func(t *testing.T) {
		from := len(up.seen())
		for i := range 2 {
			resp, _, sent := ps11ExpectSend(t, b.addr, head("/limited/a", ""), body)
			if !sent || resp.StatusCode != 200 {
				t.Errorf("call %d: sent %v, %d", i, sent, resp.StatusCode)
			}
		}
		checkUp(t, from, 2)
	})
	t.Run("retried", func(t *testing.T) {
		from := len(up.seen())
		resp, got, sent := ps11ExpectSend(t, b.addr, head("/retry/a", ""), body)
		if !sent || resp.StatusCode != 200 || got != `{"ok":true}` || resp.Header.Get("X-Ballast-Attempts") != "2" {
			t.Errorf("sent %v, %d %q attempts %q", sent, resp.StatusCode, got, resp.Header.Get("X-Ballast-Attempts"))
		}
		checkUp(t, from, 2)
	})
	t.Run("rate limit refuses", func(t *testing.T) {
		from := len(up.seen())
		if resp, _, _ := ps11ExpectSend(t, b.addr, head("/refused/a", ""), body); resp.StatusCode != 200 {
			t.Fatalf("the first call: %d", resp.StatusCode)
		}
		resp, _, _ := ps11ExpectSend(t, b.addr, head("/refused/a", ""), body)
		if resp.StatusCode != 429 {
			t.Errorf("the second call: %d, want 429", resp.StatusCode)
		}
		checkUp(t, from, 1)
	})
	t.Run("over max_body", func(t *testing.T) {
		from := len(up.seen())
		c := dialBounded(t, b.addr, ps11Wait)
		defer c.Close()
		_, _ = io.WriteString(c, "POST /keyed/big HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-big\r\nExpect: 100-continue\r\nContent-Length: 4096\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 413 {
			t.Fatalf("no 413 before the upload: %v %v", resp, err)
		}
		checkUp(t, from, 0)
	})
}

// TestProtoSeams11_InterimBeforeFeatures: 1xx answers (103 Early Hints
// with a Link, a stray 100) ahead of the real answer on a recorded keyed
// answer, a keyed event stream and a hedged request: the agent gets the
// final answer only, no header of the interim answer leaks into it or
// into the replay.
func TestProtoSeams11_InterimBeforeFeatures(t *testing.T) {
	const interim = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nX-Interim: yes\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	up := ps11Start(t, func(n int, r ps11Req) string {
		switch {
		case strings.HasPrefix(r.uri, "/stream/"):
			return interim + "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"e\r\ndata: one\n\n\r\n\r\n0\r\n\r\n"
		case strings.HasPrefix(r.uri, "/hedge/") && n == 0:
			<-release // the first copy stalls: the hedge answers
		}
		return interim + "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: keyed, match: {path_prefix: /keyed/}, upstream: "http://%[1]s", idempotency: {mode: header}}
  - {name: stream, match: {path_prefix: /stream/}, upstream: "http://%[1]s", idempotency: {mode: header}}
  - {name: hedge, match: {path_prefix: /hedge/}, upstream: "http://%[1]s", hedge_after: 50ms, timeouts: {per_try: 3s, total: 4s}}
`, up.addr))
	clean := func(t *testing.T, what, out string) *http.Response {
		t.Helper()
		if !strings.HasPrefix(out, "HTTP/1.1 200 ") {
			t.Errorf("%s: the agent's first line is not the final answer: %.60q", what, out)
		}
		resp, _, _ := ps11Parse(t, out, "POST")
		if h := ps11Head(out); strings.Contains(h, "Link") || strings.Contains(h, "X-Interim") {
			t.Errorf("%s: the interim answer's headers leaked: %q", what, h)
		}
		return resp
	}
	t.Run("keyed, recorded and replayed", func(t *testing.T) {
		for i := range 2 {
			out := ps11Send(t, b.addr, "POST /keyed/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-103\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
			resp := clean(t, "call "+strconv.Itoa(i), out)
			if i == 1 && resp.Header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("not replayed: %q", ps11Head(out))
			}
		}
	})
	t.Run("keyed event stream", func(t *testing.T) {
		for i := range 2 {
			out := ps11Send(t, b.addr, "POST /stream/a HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k-103s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
			clean(t, "stream call "+strconv.Itoa(i), out)
			if !strings.Contains(out, "data: one") {
				t.Errorf("stream call %d: the event is missing: %q", i, out)
			}
		}
	})
	t.Run("hedged", func(t *testing.T) {
		out := ps11Send(t, b.addr, "GET /hedge/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		free()
		clean(t, "hedged", out)
	})
}

// ps11EarlyAnswer is a raw upstream that answers status after the request
// head, without reading the body, and closes: the kernel resets the
// connection over the unread bytes. It counts the requests.
func ps11EarlyAnswer(t *testing.T, status string, heads *sync.Map) string {
	n := 0
	var mu sync.Mutex
	return serveConns(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		mu.Lock()
		n++
		heads.Store(n, req.Header.Get("Content-Length"))
		mu.Unlock()
		_, _ = io.WriteString(c, "HTTP/1.1 "+status+"\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"error\":\"no\"}\n")
	})
}

// TestProtoSeams11_UpstreamAnswersBeforeTheBody: an upstream that answers
// 413 or 401 while ballast is still writing a large body gets no second
// copy of it (the answer is final, and the body was never read in full),
// and the agent gets that answer, even with retries armed for unsafe
// methods and resets.
func TestProtoSeams11_UpstreamAnswersBeforeTheBody(t *testing.T) {
	for _, status := range []string{"413 Payload Too Large", "401 Unauthorized"} {
		t.Run(status, func(t *testing.T) {
			var heads sync.Map
			addr := ps11EarlyAnswer(t, status, &heads)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: "http://%s"
    max_body: 64MiB
    retry: {attempts: 3, unsafe_methods: true, on: [connect-failure, reset, timeout, 429, 502, 503, 504], backoff: {base: 1ms, max: 1ms}}
`, addr))
			big := strings.Repeat("x", 16<<20)
			c, err := net.Dial("tcp", b.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			go func() {
				_, _ = io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: "+strconv.Itoa(len(big))+"\r\n\r\n"+big)
			}()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			want, _ := strconv.Atoi(status[:3])
			if resp.StatusCode != want {
				t.Errorf("the agent got %d %q, want the upstream's %d", resp.StatusCode, got, want)
			}
			count := 0
			heads.Range(func(any, any) bool { count++; return true })
			if count != 1 {
				t.Errorf("the upstream got %d copies of the request, want 1", count)
			}
		})
	}
}

// TestProtoSeams11_UpstreamCloseOnKeyedStream: an upstream that answers
// each keyed event stream with Connection: close (ending keep-alive
// mid-connection) ends only its own connection: the agent's stays open
// for its next request, the next call dials afresh, and the replay
// carries neither the upstream's Connection line nor a framing of its own
// beside the body's.
func TestProtoSeams11_UpstreamCloseOnKeyedStream(t *testing.T) {
	up := ps11Start(t, func(n int, r ps11Req) string {
		ev := "data: " + strconv.Itoa(n) + "\n\n"
		return "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(ev), ev)
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: keyed, match: {path_prefix: /}, upstream: "http://%s", idempotency: {mode: header}}
`, up.addr))
	c := dialBounded(t, b.addr, ps11Wait)
	defer c.Close()
	br := bufio.NewReader(c)
	for i, tc := range []struct{ key, want, replayed string }{
		{"k-a", "data: 0", ""}, {"k-b", "data: 1", ""}, {"k-a", "data: 0", "true"},
	} {
		_, _ = io.WriteString(c, "POST /s HTTP/1.1\r\nHost: x\r\nIdempotency-Key: "+tc.key+"\r\nContent-Length: 2\r\n\r\n{}")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("call %d: no answer on the agent's kept connection: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || !strings.Contains(string(got), tc.want) || resp.Header.Get("Idempotent-Replayed") != tc.replayed {
			t.Errorf("call %d: %d %q %v replayed %q", i, resp.StatusCode, got, err, resp.Header.Get("Idempotent-Replayed"))
		}
		if resp.Close {
			t.Fatalf("call %d: the upstream's Connection: close reached the agent", i)
		}
	}
	if n := len(up.seen()); n != 2 {
		t.Errorf("the upstream was called %d times, want 2", n)
	}
}
