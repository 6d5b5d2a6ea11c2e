package proxy_test

// Security, tenancy and protocol hygiene, from an adversarial audit: every
// test drives a real ballast on loopback against real loopback upstreams
// (and, for the open-proxy checks, a stray server that must never be
// reached).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// secRawExchange writes raw to addr and reads one response within 10s,
// however its body ends.
func secRawExchange(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	resp, body, _ := rawExchange(t, addr, raw, 10*time.Second)
	return resp, body
}

// secRecorder is a raw loopback upstream: it records each request head as
// received on the wire and answers every request with resp.
type secRecorder struct {
	url   string
	mu    sync.Mutex
	heads []string
}

func (r *secRecorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.heads...)
}

func secRawUpstream(t *testing.T, resp string) *secRecorder {
	t.Helper()
	rec := &secRecorder{}
	rec.url = serveRawHeads(t, func(head string) string {
		rec.mu.Lock()
		rec.heads = append(rec.heads, head)
		rec.mu.Unlock()
		return resp
	})
	return rec
}

// serveRawHeads runs a raw loopback upstream until the test ends: for each
// request it reads the head (readRequestHead) and writes answer(head),
// exact bytes, keeping the connection for the next request. It returns the
// upstream's base URL.
func serveRawHeads(t *testing.T, answer func(head string) string) string {
	t.Helper()
	return "http://" + serveConns(t, func(c net.Conn, br *bufio.Reader) {
		for {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			head, err := readRequestHead(br)
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, answer(head)); err != nil {
				return
			}
		}
	})
}

// readRequestHead reads one request's line and headers from br, as a raw
// upstream sees them, and discards its Content-Length body.
func readRequestHead(br *bufio.Reader) (string, error) {
	var head strings.Builder
	cl := 0
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", err
		}
		head.WriteString(line)
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "Content-Length") {
			_, _ = fmt.Sscan(strings.TrimSpace(v), &cl)
		}
		if line == "\r\n" {
			break
		}
	}
	_, err := io.CopyN(io.Discard, br, int64(cl))
	return head.String(), err
}

// secToolRoute is the config most probes here run on: one route, tool, on
// /tool/ to up.
func secToolRoute(up string) string {
	return fmt.Sprintf("routes:\n  - name: tool\n    match: {path_prefix: /tool/}\n    upstream: %s\n", up)
}

// --- open proxy and routing -------------------------------------------------

// TestNeverForwardsToUnconfiguredHost: absolute-form targets,
// Host spoofing, CONNECT and unmatched requests never reach a host that no
// route names, and a host-restricted route is chosen by the target host.
func TestNeverForwardsToUnconfiguredHost(t *testing.T) {
	up := echoUpstream(t)
	var strayHits atomic.Int64 // what an open proxy would reach
	_, strayAddr := upstream(t, func(w http.ResponseWriter, r *http.Request) { strayHits.Add(1) })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s/base/
    strip_prefix: true
  - name: hosted
    match: {host: tool.internal, path_prefix: /h/}
    upstream: %s/hosted/
    strip_prefix: true
`, up, up))
	tests := []struct {
		name, raw  string
		wantStatus int
		wantPath   string // on 200: the path the upstream saw
	}{
		{"absolute-form to a stranger goes to the route's upstream", "GET http://" + strayAddr + "/tool/x HTTP/1.1\r\nHost: " + strayAddr + "\r\n\r\n", 200, "/base/x"},
		{"absolute-form host wins over a spoofed Host", "GET http://tool.internal/h/x HTTP/1.1\r\nHost: " + strayAddr + "\r\n\r\n", 200, "/hosted/x"},
		{"a matching Host does not rescue a foreign absolute URL", "GET http://" + strayAddr + "/h/x HTTP/1.1\r\nHost: tool.internal\r\n\r\n", 404, ""},
		{"scheme-relative target is a path", "GET //" + strayAddr + "/h/x HTTP/1.1\r\nHost: x\r\n\r\n", 404, ""},
		{"host with a trailing dot is another host", "GET /h/x HTTP/1.1\r\nHost: tool.internal.\r\n\r\n", 404, ""},
		{"host case and port are ignored", "GET /h/x HTTP/1.1\r\nHost: TOOL.internal:99\r\n\r\n", 200, "/hosted/x"},
		{"two Host headers are refused", "GET /h/x HTTP/1.1\r\nHost: tool.internal\r\nHost: " + strayAddr + "\r\n\r\n", 400, ""},
		{"CONNECT is not tunnelled", "CONNECT " + strayAddr + " HTTP/1.1\r\nHost: " + strayAddr + "\r\n\r\n", 405, ""},
		{"no route", "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, ""},
		// OPTIONS * is ballast's own to answer: TestConformanceAudit_RequestTargets.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := secRawExchange(t, b.addr, tt.raw)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != 200 {
				if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
					t.Errorf("Content-Type %q on ballast's own answer", ct)
				}
				return
			}
			e := decodeEcho(t, body)
			if e.Path != tt.wantPath || !strings.HasPrefix(up, "http://"+e.Host) {
				t.Errorf("upstream saw path %q host %q, want %q on %s", e.Path, e.Host, tt.wantPath, up)
			}
		})
	}
	if n := strayHits.Load(); n != 0 {
		t.Errorf("a host no route names received %d requests: ballast acted as an open proxy", n)
	}
}

// TestPathNormalisation: the path matched and the path sent
// upstream are the normalised path that docs/config.md promises.
func TestPathNormalisation(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s/base/
    strip_prefix: true
`, up))
	tests := []struct {
		name, target string
		wantStatus   int
		wantPath     string
		wantQuery    string
	}{
		{"dot-dot escapes the route", "/tool/../admin", 404, "", ""},
		{"encoded dot-dot too", "/tool/%2e%2e/admin", 404, "", ""},
		{"encoded slashes and dots", "/tool/a%2F..%2F..%2Fadmin", 404, "", ""},
		{"doubled slashes collapse", "/tool//x", 200, "/base/x", ""},
		{"escaped slashes only are collapsed too", "/tool/%2F%2Fevil", 200, "/base/evil", ""},
		{"escaped prefix slash is matched decoded", "/tool%2Fx", 200, "/base/x", ""},
		{"an encoded ? stays in the path", "/tool/a%3Fb=1?q=2", 200, "/base/a%3Fb=1", "q=2"},
		{"an encoded # stays in the path", "/tool/a%23b", 200, "/base/a%23b", ""},
		{"NUL stays escaped", "/tool/a%00b", 200, "/base/a%00b", ""},
		{"backslashes are data", "/tool/a%5C..%5Cb", 200, "/base/a%5C..%5Cb", ""},
		{"raw invalid UTF-8 is escaped", "/tool/\xff\xfe", 200, "/base/%FF%FE", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := secRawExchange(t, b.addr, "GET "+tt.target+" HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus != 200 {
				if !json.Valid([]byte(body)) {
					t.Errorf("problem body is not JSON: %q", body)
				}
				return
			}
			if e := decodeEcho(t, body); e.Path != tt.wantPath || e.Query != tt.wantQuery {
				t.Errorf("upstream saw %q ? %q, want %q ? %q", e.Path, e.Query, tt.wantPath, tt.wantQuery)
			}
		})
	}
}

// --- framing and hop-by-hop ------------------------------------------------

// TestAmbiguousFramingRefused: the framings fasthttp itself
// catches, or that ballast's chunked + Content-Length check catches.
func TestAmbiguousFramingRefused(t *testing.T) {
	se := &sideEffects{}
	up, _ := upstream(t, se.handler)
	b := startBallast(t, secToolRoute(up))
	for _, tt := range []struct{ name, head, body string }{
		{"CL then TE chunked", "Content-Length: 5\r\nTransfer-Encoding: chunked", "0\r\n\r\n"},
		{"TE chunked then CL", "Transfer-Encoding: chunked\r\nContent-Length: 5", "0\r\n\r\n"},
		{"TE with a tab", "Content-Length: 5\r\nTransfer-Encoding:\tchunked", "0\r\n\r\n"},
		{"duplicate Content-Length", "Content-Length: 5\r\nContent-Length: 6", "hello!"},
		{"Content-Length list", "Content-Length: 5, 5", "hello"},
		{"signed Content-Length", "Content-Length: +5", "hello"},
		{"chunked, identity", "Transfer-Encoding: chunked, identity", "5\r\nhello\r\n0\r\n\r\n"},
		{"gzip, chunked", "Transfer-Encoding: gzip, chunked", "5\r\nhello\r\n0\r\n\r\n"},
		{"two TE headers", "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity", "5\r\nhello\r\n0\r\n\r\n"},
		{"space before colon", "Content-Length: 5\r\nTransfer-Encoding : chunked", "hello"},
		{"NUL in a value", "X-Nul: a\x00b", ""},
		{"bare CR in a value", "X-CR: a\rb", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := rawAll(t, b.addr, "POST /tool/x HTTP/1.1\r\nHost: x\r\n"+tt.head+"\r\n\r\n"+tt.body+
				"GET /tool/smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 3*time.Second)
			if !strings.HasPrefix(out, "HTTP/1.1 400 ") || !strings.Contains(out, "application/problem+json") {
				t.Fatalf("want a 400 problem, got %q", out)
			}
			if strings.Count(out, "HTTP/1.1 ") != 1 {
				t.Errorf("the connection served more after an ambiguous request: %q", out)
			}
		})
	}
	if n := se.calls.Load(); n != 0 {
		t.Errorf("the upstream received %d requests", n)
	}
}

// TestNonChunkedTransferEncodingRefused: RFC 9112 §6.3: a request
// whose Transfer-Encoding does not end in chunked has no reliable length
// and gets 400 and a closed connection, as does every request with both
// Content-Length and Transfer-Encoding (errors.md). fasthttp accepts
// "Transfer-Encoding: identity": alone it reads no body, which would then
// be parsed as the next request (a smuggled request).
func TestNonChunkedTransferEncodingRefused(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, secToolRoute(up))
	for _, tt := range []struct{ name, head string }{
		{"identity alone", "Transfer-Encoding: identity"},
		{"identity with Content-Length", "Content-Length: 5\r\nTransfer-Encoding: identity"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := "hello"
			if tt.name == "identity alone" {
				body = "GET /tool/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
			}
			out, _ := rawAll(t, b.addr, "POST /tool/x HTTP/1.1\r\nHost: x\r\n"+tt.head+"\r\n\r\n"+body, 3*time.Second)
			if strings.Contains(out, "/tool/smuggled") || strings.Contains(out, `"path":"/tool/smuggled"`) {
				t.Errorf("a request smuggled in the body reached the upstream: %q", out)
			}
			if !strings.HasPrefix(out, "HTTP/1.1 400 ") {
				first, _, _ := strings.Cut(out, "\r\n")
				t.Errorf("got %q, want 400 bad_request and a closed connection", first)
			}
		})
	}
}

// TestHopByHopRequestHeaders: hop-by-hop headers, headers the
// Connection header names, Proxy-Authorization and X-Ballast-* never reach
// the upstream, and the forwarding headers are ballast's own.
func TestHopByHopRequestHeaders(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s
    headers:
      set: {Authorization: "Bearer injected"}
`, up))
	resp, body := secRawExchange(t, b.addr, "GET /tool/x HTTP/1.1\r\nHost: x\r\n"+
		"Connection: close, X-Secret, Authorization, Host\r\nX-Secret: s\r\nAuthorization: Bearer agent\r\n"+
		"TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: Basic cHJveHk6cHc=\r\nKeep-Alive: 5\r\n"+
		"Proxy-Connection: keep-alive\r\nTrailer: X-T\r\nX-Ballast-Foo: 1\r\nx-ballast-bar: 2\r\nX-Forwarded-For: 6.6.6.6\r\n"+
		"X-Forwarded-Proto: https\r\nX-Folded: a\r\n b\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Error("Connection: close from the agent did not close the connection")
	}
	e := decodeEcho(t, body)
	e.wantNone(t, "X-Secret", "Te", "Upgrade", "Proxy-Authorization", "Keep-Alive", "Proxy-Connection", "Trailer", "X-Ballast-Foo", "X-Ballast-Bar", "Connection")
	e.wantOne(t, "Authorization", "Bearer injected", "only the route's")
	e.wantOne(t, "X-Forwarded-For", "6.6.6.6, 127.0.0.1", "the agent's list then its address")
	e.wantOne(t, "X-Forwarded-Proto", "http", "ballast's own")
	e.wantOne(t, "X-Folded", "a b", "obs-fold must be replaced by a space")
}

// TestEveryConnectionLineIsHopByHop: RFC 9110 §5.3 a field sent as
// several lines is one comma-joined list, so every header named in any
// Connection line is hop-by-hop, in both directions (fasthttp's Peek sees
// only the first line).
func TestEveryConnectionLineIsHopByHop(t *testing.T) {
	up := echoUpstream(t)
	hop := secRawUpstream(t, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: X-Hop\r\nX-Hop: leak\r\n"+
		"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s
  - name: hop
    match: {path_prefix: /hop/}
    upstream: %s
`, up, hop.url))
	t.Run("request", func(t *testing.T) {
		resp, body := secRawExchange(t, b.addr, "GET /tool/x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: X-Secret\r\nX-Secret: s\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if v, ok := decodeEcho(t, body).Headers["X-Secret"]; ok {
			t.Errorf("X-Secret, named in the second Connection line, reached the upstream: %q", v)
		}
	})
	t.Run("response", func(t *testing.T) {
		resp, body := secRawExchange(t, b.addr, "GET /hop/x HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if v := resp.Header.Get("X-Hop"); v != "" {
			t.Errorf("X-Hop, named in the upstream's second Connection line, reached the agent: %q", v)
		}
	})
}

// TestInvalidHeaderNameRefused: a header name is a token (RFC 9110
// §5.1); "X Space" is not one. fasthttp accepts it; ballast answers its
// own 400 problem and never forwards it (a lenient upstream would take a
// name no spec-following hop can see).
func TestInvalidHeaderNameRefused(t *testing.T) {
	rec := secRawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	b := startBallast(t, secToolRoute(rec.url))
	resp, body := secRawExchange(t, b.addr, "GET /tool/x HTTP/1.1\r\nHost: x\r\nX Space: a\r\n\r\n")
	for _, h := range rec.all() {
		if strings.Contains(h, "X Space") {
			t.Errorf("the upstream received an invalid header name:\n%s", h)
		}
	}
	if resp.StatusCode != 400 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("got %d %q %q, want ballast's 400 bad_request problem", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// TestNoContentTypeIsInvented: ballast relays the upstream's headers
// (docs/config.md "Response headers"); an answer without Content-Type is
// not labelled with fasthttp's client-side default, text/plain.
func TestNoContentTypeIsInvented(t *testing.T) {
	rec := secRawUpstream(t, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x00\x01\x02\x03")
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: blob
    match: {path_prefix: /blob/}
    upstream: %s
`, rec.url))
	resp, body := secRawExchange(t, b.addr, "GET /blob/x HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != 200 || body != "\x00\x01\x02\x03" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if ct, ok := resp.Header["Content-Type"]; ok {
		t.Errorf("Content-Type %q added to an answer the upstream sent without one", ct)
	}
}

// --- tenancy -----------------------------------------------------------------

// stripRoute is one item of a routes list: the route name on /name/ to up,
// its prefix stripped, with the route keys given (each "key: value").
func stripRoute(name, up string, keys ...string) string {
	y := fmt.Sprintf("  - name: %s\n    match: {path_prefix: /%s/}\n    upstream: %s\n    strip_prefix: true\n", name, name, up)
	for _, kv := range keys {
		y += "    " + kv + "\n"
	}
	return y
}

// secWhoAmI answers with a call counter and the credentials it saw; extra
// may add response headers.
func secWhoAmI(t *testing.T, extra func(w http.ResponseWriter, r *http.Request)) string {
	var n atomic.Int64
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if extra != nil {
			extra(w, r)
		}
		fmt.Fprintf(w, `{"n":%d,"auth":%q,"xkey":%q,"akey":%q,"gkey":%q,"cookie":%q,"lang":%q,"body":%q}`, n.Add(1),
			r.Header.Get("Authorization"), r.Header.Get("X-Api-Key"), r.Header.Get("Api-Key"), r.Header.Get("X-Goog-Api-Key"),
			r.Header.Get("Cookie"), r.Header.Get("Accept-Language"), body)
	})
	return url
}

// TestCacheAndIdempotencyNeverCrossTenants: two callers with
// different credentials and the same request never share a cached answer,
// an idempotent replay or an async job.
func TestCacheAndIdempotencyNeverCrossTenants(t *testing.T) {
	up := secWhoAmI(t, nil)
	b := startBallast(t, "routes:\n"+
		stripRoute("fresh", up, "cache: {mode: fresh, ttl: 1h}")+
		stripRoute("idem", up, "idempotency: {mode: header}")+
		stripRoute("auto", up, "idempotency: {mode: auto}")+
		stripRoute("jobs", up, "async: {enabled: true}"))
	creds := []struct{ name, header, a, b string }{
		{"Authorization", "Authorization", "Bearer alice", "Bearer bob"},
		{"x-api-key", "x-api-key", "alice", "bob"},
		{"Api-Key", "Api-Key", "alice", "bob"},
		{"X-Goog-Api-Key", "X-Goog-Api-Key", "alice", "bob"},
		{"Cookie", "Cookie", "s=alice", "s=bob"},
		{"Proxy-Authorization", "Proxy-Authorization", "Basic YWxpY2U6eA==", "Basic Ym9iOng="},
		{"scheme case", "Authorization", "Bearer alice", "bearer alice"},
	}
	for i, c := range creds {
		t.Run(c.name, func(t *testing.T) {
			for _, tt := range []struct{ method, path, body, key string }{
				{"GET", fmt.Sprintf("/fresh/g%d", i), "", ""},
				{"POST", fmt.Sprintf("/fresh/p%d", i), "same", ""},
				{"POST", fmt.Sprintf("/idem/k%d", i), "same", fmt.Sprintf("key-%d", i)},
				{"POST", fmt.Sprintf("/auto/k%d", i), "same", ""},
			} {
				h := func(v string) []string {
					out := []string{c.header, v}
					if tt.key != "" {
						out = append(out, "Idempotency-Key", tt.key)
					}
					return out
				}
				ra, ba := do(t, tt.method, b.base+tt.path, tt.body, h(c.a)...)
				rb, bb := do(t, tt.method, b.base+tt.path, tt.body, h(c.b)...)
				if ra.StatusCode != 200 || rb.StatusCode != 200 {
					t.Fatalf("%s %s: statuses %d %d", tt.method, tt.path, ra.StatusCode, rb.StatusCode)
				}
				if ba == bb || rb.Header.Get("Idempotent-Replayed") != "" || strings.Contains(rb.Header.Get("Cache-Status"), "hit") {
					t.Errorf("%s %s: the second caller got the first's answer: %s (Cache-Status %q, replayed %q)",
						tt.method, tt.path, bb, rb.Header.Get("Cache-Status"), rb.Header.Get("Idempotent-Replayed"))
				}
			}
			// An async job is visible to its own caller only.
			resp, body := do(t, "POST", b.base+fmt.Sprintf("/jobs/j%d", i), "x", c.header, c.a, "Prefer", "respond-async")
			if resp.StatusCode != 202 || resp.Header.Get("Location") == "" {
				t.Fatalf("async: %d %s", resp.StatusCode, body)
			}
			loc := resp.Header.Get("Location")
			if r2, body := do(t, "GET", b.base+loc, "", c.header, c.b); r2.StatusCode != 404 {
				t.Errorf("another caller read job %s: %d %s", loc, r2.StatusCode, body)
			}
			if r3, body := do(t, "GET", b.base+loc, "", "Prefer", "wait=5"); r3.StatusCode != 404 {
				t.Errorf("a caller without credentials read job %s: %d %s", loc, r3.StatusCode, body)
			}
		})
	}
}

// TestCacheHonoursUpstreamVary: RFC 9111 §4.1 a stored response may only
// answer a request whose headers named in its Vary match the request that
// fetched it. An upstream's "Vary: Authorization" on a public route must
// not hand one tenant's answer to another, and "Vary: Accept-Language"
// must not answer French callers in English.
func TestCacheHonoursUpstreamVary(t *testing.T) {
	up := secWhoAmI(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", r.URL.Query().Get("vary"))
	})
	b := startBallast(t, "routes:\n"+
		stripRoute("pub", up, "cache: {mode: fresh, ttl: 1h, public: true}")+
		stripRoute("fresh", up, "cache: {mode: fresh, ttl: 1h}"))
	for _, tt := range []struct{ name, path, header, a, b, want string }{
		{"public route, Vary: Authorization", "/pub/me?vary=Authorization", "Authorization", "Bearer alice", "Bearer bob", `"auth":"Bearer bob"`},
		{"private route, Vary: Accept-Language", "/fresh/doc?vary=Accept-Language", "Accept-Language", "en", "fr", `"lang":"fr"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if r, body := do(t, "GET", b.base+tt.path, "", tt.header, tt.a); r.StatusCode != 200 {
				t.Fatalf("first: %d %s", r.StatusCode, body)
			}
			r, body := do(t, "GET", b.base+tt.path, "", tt.header, tt.b)
			if !strings.Contains(body, tt.want) {
				t.Errorf("%s: %s got %s (Cache-Status %q): the stored answer's Vary was ignored", tt.header, tt.b, body, r.Header.Get("Cache-Status"))
			}
		})
	}
}

// --- secrets -------------------------------------------------------------------

// TestSecretsNeverLeak: secrets from ${ENV} and literal
// credential headers, and query strings, never appear in the log, the
// admin endpoints, problem bodies or the debug trail.
func TestSecretsNeverLeak(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
admin: {allow_debug: true}
notify: {webhook: "http://127.0.0.1:1/hooks/LITERALHOOKSECRET"}
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s
    headers:
      set: {Authorization: "Bearer ${TOOL_KEY}", X-Api-Key: "LITERALAPIKEY", X-Custom: "${OTHER}"}
  - name: dead
    match: {path_prefix: /dead/}
    upstream: http://127.0.0.1:1
    retry: {attempts: 1}
    headers:
      set: {Authorization: "Bearer ${TOOL_KEY}"}
`, up), "TOOL_KEY=ENVSECRETTOOL", "OTHER=ENVSECRETOTHER")
	c := client(t)
	var seen strings.Builder
	resp, body := get(t, c, b.base+"/tool/x?api_key=QUERYSECRET1", "X-Ballast-Debug", "1")
	if resp.StatusCode != 200 || !strings.Contains(body, "ENVSECRETTOOL") {
		t.Fatalf("the secret header must reach the upstream: %d %s", resp.StatusCode, body)
	}
	seen.WriteString(resp.Header.Get("X-Ballast-Trail"))
	resp, body = get(t, c, b.base+"/dead/x?api_key=QUERYSECRET2", "X-Ballast-Debug", "1")
	if resp.StatusCode != 502 {
		t.Fatalf("dead upstream: %d %s", resp.StatusCode, body)
	}
	seen.WriteString(body + resp.Header.Get("X-Ballast-Trail"))
	resp, body = get(t, c, b.base+"/nothing?api_key=QUERYSECRET3")
	seen.WriteString(body)
	for _, p := range []string{"/config", "/status", "/", "/metrics"} {
		_, body := get(t, c, b.admin+p)
		seen.WriteString(body)
	}
	seen.WriteString(b.logs.String())
	all := seen.String()
	for _, s := range []string{"ENVSECRET", "LITERAL", "QUERYSECRET"} {
		if i := strings.Index(all, s); i >= 0 {
			t.Errorf("%s leaked: ...%s...", s, all[max(0, i-120):min(len(all), i+40)])
		}
	}
}

// TestConfigRedactsFallbackSecrets: /config replaces literal credential
// header values with [redacted] in routes[].fallbacks[].headers too, so a
// backup provider key written literally is never served.
func TestConfigRedactsFallbackSecrets(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: openai
    match: {path_prefix: /openai/}
    upstream: %s
    headers: {set: {Authorization: "Bearer LITERALPRIMARYKEY"}}
    fallbacks:
      - upstream: %s/fb/
        headers: {set: {Authorization: "Bearer LITERALFALLBACKKEY", X-Api-Key: "LITERALFALLBACKAPIKEY"}}
`, up, up))
	_, body := get(t, client(t), b.admin+"/config")
	for _, s := range []string{"LITERALPRIMARYKEY", "LITERALFALLBACKKEY", "LITERALFALLBACKAPIKEY"} {
		if strings.Contains(body, s) {
			t.Errorf("/config shows %s", s)
		}
	}
}

// --- admin -----------------------------------------------------------------------

// TestAdminNotOnMainListener: the admin endpoints are not
// served on the agent listener, and with a token every admin endpoint but
// the probes requires it.
func TestAdminNotOnMainListener(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, "admin: {token: \"${ADMIN_TOKEN}\"}\n"+secToolRoute(up), "ADMIN_TOKEN=adm-t0ken")
	c := client(t)
	for _, p := range []string{"/metrics", "/config", "/status", "/healthz", "/readyz", "/reload", "/"} {
		resp, body := do(t, "GET", b.base+p, "")
		if resp.StatusCode != 404 || !strings.Contains(body, `"reason":"no_route"`) {
			t.Errorf("main listener %s: %d %s", p, resp.StatusCode, body)
		}
	}
	for _, p := range []string{"/metrics", "/config", "/status", "//config", "/config/", "/%63onfig"} {
		resp, body := get(t, c, b.admin+p)
		if resp.StatusCode != 401 && resp.StatusCode != 404 {
			t.Errorf("admin %s without token: %d %.80s", p, resp.StatusCode, body)
		}
		resp, _ = get(t, c, b.admin+p, "Authorization", "Bearer wrong")
		if resp.StatusCode == 200 {
			t.Errorf("admin %s with a wrong token: 200", p)
		}
	}
	if resp, _ := get(t, c, b.admin+"/config", "Authorization", "Bearer adm-t0ken"); resp.StatusCode != 200 {
		t.Errorf("admin /config with the token: %d", resp.StatusCode)
	}
	if resp, body := get(t, c, b.admin+"/"); resp.StatusCode != 401 || strings.Contains(body, "tool") {
		t.Errorf("status page without token: %d", resp.StatusCode)
	}
}

// TestReloadKeepsAdminTokenWhileBoundBeyondLocalhost: an admin listener
// beyond localhost requires admin.token. admin.listen changes only on
// restart but admin.token on reload, so a reload of a file that moves
// admin.listen back to localhost and drops the token must be refused:
// the listener is still bound to 0.0.0.0.
func TestReloadKeepsAdminTokenWhileBoundBeyondLocalhost(t *testing.T) {
	up := echoUpstream(t)
	route := fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s
`, up)
	b := startBallast(t, "admin: {listen: \"0.0.0.0:9901\", token: \"${ADMIN_TOKEN}\"}\n"+route, "ADMIN_TOKEN=adm-t0ken")
	c := client(t)
	if resp, _ := get(t, c, b.admin+"/config"); resp.StatusCode != 401 {
		t.Fatalf("before reload: /config without token %d", resp.StatusCode)
	}
	if err := os.WriteFile(b.file, []byte("admin: {listen: \"127.0.0.1:9901\"}\n"+route), 0o600); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, b.admin+"/reload", nil)
	req.Header.Set("Authorization", "Bearer adm-t0ken")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("reload: %d %s", resp.StatusCode, rb)
	if resp, body := get(t, c, b.admin+"/config"); resp.StatusCode != 401 {
		t.Errorf("after reload the admin listener, still bound to %s, serves /config without a token: %d %.60s",
			"0.0.0.0:9901", resp.StatusCode, body)
	}
}

// --- hostile input ----------------------------------------------------------

// TestHostileInputProblems: oversized, non-UTF-8 and NUL
// input get a well-formed problem, never a panic or a raw fasthttp page.
func TestHostileInputProblems(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s
    max_body: 1KiB
`, up))
	for _, tt := range []struct {
		name, raw string
		status    int
		reason    string
	}{
		{"huge header", "GET /tool/x HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", 431, "headers_too_large"},
		{"huge path", "GET /tool/" + strings.Repeat("a", 20000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 431, "headers_too_large"},
		{"invalid UTF-8 and NUL in an unmatched path", "GET /nope/\xff%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no_route"},
		{"invalid UTF-8 timeout", "GET /tool/x HTTP/1.1\r\nHost: x\r\nX-Ballast-Timeout: \xff\r\n\r\n", 400, "bad_request"},
		{"body over max_body", "POST /tool/x HTTP/1.1\r\nHost: x\r\nContent-Length: 9000\r\n\r\n" + strings.Repeat("b", 9000), 413, "body_too_large"},
		{"chunked body over max_body", "POST /tool/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + strings.Repeat("b", 2048) + "\r\n0\r\n\r\n", 413, "body_too_large"},
		{"bad chunk", "POST /tool/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_request"},
		{"no Host", "GET /tool/x HTTP/1.1\r\n\r\n", 400, "bad_request"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := secRawExchange(t, b.addr, tt.raw)
			var p struct {
				Status int    `json:"status"`
				Reason string `json:"reason"`
			}
			if err := json.Unmarshal([]byte(body), &p); err != nil {
				t.Fatalf("%d: body is not JSON: %v: %q", resp.StatusCode, err, body)
			}
			if resp.StatusCode != tt.status || p.Status != tt.status || p.Reason != tt.reason ||
				resp.Header.Get("Content-Type") != "application/problem+json" || resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("got %d %q %+v, want %d %s", resp.StatusCode, resp.Header.Get("Content-Type"), p, tt.status, tt.reason)
			}
		})
	}
}

// TestProblemsCarryAllowAndWWWAuthenticate: RFC 9110 §15.5.6 a 405
// carries Allow and §15.5.2 a 401 WWW-Authenticate; errors.md promises
// Allow for CONNECT, /reload, /status and /, and WWW-Authenticate on the
// admin 401 (writeProblem resets the response, so they are problem
// fields).
func TestProblemsCarryAllowAndWWWAuthenticate(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
admin: {token: "${ADMIN_TOKEN}"}
routes:
  - name: tool
    match: {path_prefix: /}
    upstream: %s
`, up), "ADMIN_TOKEN=adm-t0ken")
	resp, body := secRawExchange(t, b.addr, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") == "" {
		t.Errorf("CONNECT: %d, Allow %q: %.80s", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
	for _, tt := range []struct{ method, path string }{{"GET", "/reload"}, {"POST", "/status"}, {"PUT", "/"}} {
		resp, body := do(t, tt.method, b.admin+tt.path, "", "Authorization", "Bearer adm-t0ken")
		if resp.StatusCode != 405 || resp.Header.Get("Allow") == "" {
			t.Errorf("admin %s %s: %d, Allow %q: %.80s", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}
	resp, body = do(t, "GET", b.admin+"/config", "")
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("admin /config without token: %d, WWW-Authenticate %q: %.80s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
}

// TestMalformedRequestProblemQuotesNoHeaders: fasthttp's parse
// errors quote the request buffer unless told not to; the problem's detail
// and the log must not carry the request's credentials.
func TestMalformedRequestProblemQuotesNoHeaders(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, secToolRoute(up))
	resp, body := secRawExchange(t, b.addr, "GET /tool/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-parse-secret\r\nno colon here\r\n\r\n")
	if resp.StatusCode != 400 || !strings.Contains(body, "bad_request") {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	b.srv.FlushAccessLog()
	if strings.Contains(body, "sk-parse-secret") || strings.Contains(b.logs.String(), "sk-parse-secret") {
		t.Errorf("a malformed request's credentials were quoted: body %s", body)
	}
}

// TestAdminRefusesForeignPages: an admin listener without a
// token answers only requests addressed to localhost, from no origin or a
// loopback one, so that a web page cannot reach it by DNS rebinding or a
// cross-site form. Probes stay open; a token replaces the guard.
func TestAdminRefusesForeignPages(t *testing.T) {
	up := echoUpstream(t)
	route := fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s
`, up)
	admin := func(b *ballast) string { return strings.TrimPrefix(b.admin, "http://") }
	open := startBallast(t, route)
	for _, tt := range []struct {
		name, raw string
		status    int
	}{
		{"localhost", "GET /config HTTP/1.1\r\nHost: localhost:9901\r\n\r\n", 200},
		{"loopback IP", "GET /config HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n\r\n", 200},
		{"IPv6 loopback", "GET /config HTTP/1.1\r\nHost: [::1]:9901\r\n\r\n", 200},
		{"rebound name", "GET /config HTTP/1.1\r\nHost: attacker.example:9901\r\n\r\n", 421},
		{"no host", "GET /config HTTP/1.0\r\n\r\n", 421},
		{"cross-site form", "POST /reload HTTP/1.1\r\nHost: 127.0.0.1:9901\r\nOrigin: https://attacker.example\r\nContent-Length: 0\r\n\r\n", 403},
		{"opaque origin", "POST /reload HTTP/1.1\r\nHost: 127.0.0.1:9901\r\nOrigin: null\r\nContent-Length: 0\r\n\r\n", 403},
		{"same-origin page", "GET /status HTTP/1.1\r\nHost: 127.0.0.1:9901\r\nOrigin: http://127.0.0.1:9901\r\n\r\n", 200},
		{"probe with any host", "GET /healthz HTTP/1.1\r\nHost: attacker.example\r\n\r\n", 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := secRawExchange(t, admin(open), tt.raw)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tt.status, body)
			}
		})
	}
	guarded := startBallast(t, "admin: {token: \"${ADMIN_TOKEN}\"}\n"+route, "ADMIN_TOKEN=adm-t0ken")
	resp, body := secRawExchange(t, admin(guarded), "GET /config HTTP/1.1\r\nHost: ballast.internal:9901\r\nAuthorization: Bearer adm-t0ken\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("with a token, any Host may reach the admin listener: %d %.200s", resp.StatusCode, body)
	}
}
