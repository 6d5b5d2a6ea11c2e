package proxy_test

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/klauspost/compress/zstd"
	brotli "github.com/molecule-man/go-brrr"
)

// seenReq is what a recording upstream saw of one request.
type seenReq struct {
	sum           string
	n             int
	contentLength string
	te            []string
}

// recorder is an upstream that records each request's body and framing and
// answers with the next scripted status (then 200).
type recorder struct {
	mu    sync.Mutex
	seen  []seenReq
	codes []int
}

func (rc *recorder) handler(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h := sha256.Sum256(b)
	rc.mu.Lock()
	rc.seen = append(rc.seen, seenReq{sum: hex.EncodeToString(h[:]), n: len(b),
		contentLength: r.Header.Get("Content-Length"), te: r.TransferEncoding})
	code := 200
	if len(rc.codes) > 0 {
		code, rc.codes = rc.codes[0], rc.codes[1:]
	}
	rc.mu.Unlock()
	w.WriteHeader(code)
	fmt.Fprintf(w, `{"code":%d}`, code)
}

func (rc *recorder) all() []seenReq {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]seenReq(nil), rc.seen...)
}

// TestBodyReachesEveryAttemptAndFallback: a POST body — small,
// exactly at the route's max_body, sent chunked by the agent, or empty —
// reaches the 2nd attempt on the primary and both attempts on the fallback
// byte-identical, with a Content-Length that matches it.
func TestBodyReachesEveryAttemptAndFallback(t *testing.T) {
	const limit = 256 << 10
	big := bytes.Repeat([]byte("0123456789abcdef"), limit/16)
	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
	}{
		{"small", []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`), false},
		{"exactly max_body", big, false},
		{"chunked from the agent", big[:100<<10], true},
		{"empty", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prim := &recorder{codes: []int{503, 503}}
			fb := &recorder{codes: []int{503}}
			pu, _ := upstream(t, prim.handler)
			fu, _ := upstream(t, fb.handler)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    max_body: 256KiB
    retry: {attempts: 2, unsafe_methods: true, backoff: {base: 1ms, max: 2ms}}
    breaker: {enabled: false}
    timeouts: {per_try: 2s, total: 10s}
`, pu, fu))
			var rd io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				rd = io.MultiReader(bytes.NewReader(tc.body)) // no length: the client sends it chunked
			}
			req, _ := http.NewRequest("POST", b.base+"/v1/chat", rd)
			if tc.chunked {
				req.ContentLength = -1
			}
			resp, err := client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Attempts") != "4" {
				t.Fatalf("status %d attempts %q: %s", resp.StatusCode, resp.Header.Get("X-Ballast-Attempts"), out)
			}
			want := sha256.Sum256(tc.body)
			all := append(prim.all(), fb.all()...)
			if len(all) != 4 {
				t.Fatalf("upstreams saw %d requests, want 4", len(all))
			}
			for i, s := range all {
				if s.sum != hex.EncodeToString(want[:]) || s.n != len(tc.body) {
					t.Errorf("attempt %d: body of %d bytes differs from the agent's %d", i+1, s.n, len(tc.body))
				}
				if s.contentLength != strconv.Itoa(len(tc.body)) || len(s.te) != 0 {
					t.Errorf("attempt %d: Content-Length %q Transfer-Encoding %v, want %d", i+1, s.contentLength, s.te, len(tc.body))
				}
			}
		})
	}
}

// oneShotUpstream answers one request per connection with a keep-alive
// response (no Connection: close) and then closes the connection, as an
// upstream whose keep-alive timeout is shorter than ballast's does.
func oneShotUpstream(t *testing.T) (url string, hits, closed *atomic.Int64) {
	t.Helper()
	hits, closed = new(atomic.Int64), new(atomic.Int64)
	addr := serveConns(t, func(c net.Conn, br *bufio.Reader) {
		defer closed.Add(1)
		defer c.Close() // counted as closed only once it is
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		hits.Add(1)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}")
	})
	return "http://" + addr, hits, closed
}

// staleRoute is a route with no ballast-level retry, so that only the
// transport's own handling of a stale connection can save the request.
func staleRoute(up string) string {
	return fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {attempts: 1}
    timeouts: {per_try: 2s, total: 5s}
`, up)
}

// sendThrough sends three requests, each after the upstream closed the
// connection the previous one used.
func sendThrough(t *testing.T, b *ballast, method string, closed *atomic.Int64) {
	t.Helper()
	for i := range 3 {
		resp, body := do(t, method, b.base+"/v1/chat/completions", `{"model":"m"}`)
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i+1, resp.StatusCode, body)
		}
		want := int64(i + 1)
		waitFor(t, func() bool { return closed.Load() == want }) // its FIN is on the wire
	}
}

// TestStalePooledConnectionGET: an upstream closes each keep-alive
// connection right after its response; the next GET reuses the closed
// pooled connection and still succeeds.
func TestStalePooledConnectionGET(t *testing.T) {
	up, hits, closed := oneShotUpstream(t)
	b := startBallast(t, staleRoute(up))
	sendThrough(t, b, "GET", closed)
	if hits.Load() != 3 {
		t.Errorf("upstream hits %d, want 3", hits.Load())
	}
}

// TestStalePooledConnectionPOST: the same for a POST (every model call and
// MCP message). The pooled connection was closed by the upstream long
// before ballast would reuse it (its FIN had arrived), so ballast takes a
// fresh one instead and the request succeeds — as with Envoy and net/http,
// which never hand out a connection whose peer has closed it.
func TestStalePooledConnectionPOST(t *testing.T) {
	up, hits, closed := oneShotUpstream(t)
	b := startBallast(t, staleRoute(up))
	sendThrough(t, b, "POST", closed)
	if hits.Load() != 3 {
		t.Errorf("upstream hits %d, want 3", hits.Load())
	}
}

// TestPOSTTimeoutAfterWriteNotRepeated: a POST the upstream
// received but did not answer within per_try may have taken effect; it is
// answered 504 after one attempt, never sent again.
func TestPOSTTimeoutAfterWriteNotRepeated(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := &scripted{steps: []func(http.ResponseWriter, *http.Request){hang(release), hang(release), hang(release)}}
	up, _ := upstream(t, s.handler)
	b := startBallast(t, retryRoute(up, ""))
	resp, body := do(t, "POST", b.base+"/x", `{"charge":1}`)
	if resp.StatusCode != 504 || s.hits.Load() != 1 {
		t.Fatalf("status %d, upstream hits %d (want 504 after 1): %s", resp.StatusCode, s.hits.Load(), body)
	}
	if p := decodeProblem(t, resp, body); p.Reason != "timeout" || p.Attempts != 1 {
		t.Errorf("problem %+v", p)
	}
}

// TestHints: each hint format makes ballast wait exactly as long
// as it says before the retry (on the fake clock).
func TestHints(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers func(now time.Time) []string
		want    time.Duration
	}{
		{"HTTP-date", func(now time.Time) []string {
			return []string{"Retry-After", now.Add(7 * time.Second).UTC().Format(http.TimeFormat)}
		}, 7 * time.Second},
		{"OpenAI 1m30s within max_retry_after", func(time.Time) []string {
			return []string{"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "1m30s"}
		}, 90 * time.Second},
		{"OpenAI 20ms", func(time.Time) []string {
			return []string{"x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "20ms"}
		}, 20 * time.Millisecond},
		{"Anthropic RFC 3339", func(now time.Time) []string {
			return []string{"anthropic-ratelimit-tokens-remaining", "0", "anthropic-ratelimit-tokens-reset", now.Add(3 * time.Second).UTC().Format(time.RFC3339)}
		}, 3 * time.Second},
		{"Retry-After fraction", func(time.Time) []string { return []string{"Retry-After", "2.5"} }, 2500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now().Truncate(time.Second))
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){func(w http.ResponseWriter, r *http.Request) {
				status(429, tc.headers(clock.Now())...)(w, r)
			}}}
			up, _ := upstream(t, s.handler)
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 1ms}, max_retry_after: 120s}
    timeouts: {per_try: 2s, total: 300s}
`, up))
			done := raSend(t, "GET", b.base+"/x", "")
			waitFor(t, func() bool { return clock.Waiters() == 1 })
			clock.Advance(tc.want - time.Millisecond)
			if s.hits.Load() != 1 || clock.Waiters() != 1 {
				t.Fatalf("retried before the hint of %v", tc.want)
			}
			clock.Advance(2 * time.Millisecond)
			if got := raAnswer(t, done).resp.StatusCode; got != 200 || s.hits.Load() != 2 {
				t.Fatalf("after the hint: %d, hits %d", got, s.hits.Load())
			}
		})
	}
}

// TestHintBeyondDeadlineOrCap: a hint that cannot fit the
// remaining deadline, or exceeds max_retry_after, is answered at once with
// 429 rate_limited and Retry-After = the hint (rounded up), never slept.
func TestHintBeyondDeadlineOrCap(t *testing.T) {
	for _, tc := range []struct {
		name    string
		headers []string
		route   string
		want    string
	}{
		{"hint beyond deadline", []string{"Retry-After", "20"}, "max_retry_after: 60s", "20"},
		{"hint beyond cap", []string{"Retry-After", "90"}, "max_retry_after: 60s", "90"},
		{"ms hint beyond deadline rounds up", []string{"retry-after-ms", "12500"}, "max_retry_after: 60s", "13"},
		{"OpenAI 6m0s", []string{"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "6m0s"}, "max_retry_after: 60s", "360"},
		{"503 hint beyond deadline", []string{"Retry-After", "20"}, "max_retry_after: 60s", "20"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			code, reason := 429, "rate_limited"
			if strings.HasPrefix(tc.name, "503") {
				code, reason = 503, "upstream_unavailable"
			}
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(code, tc.headers...)}}
			up, _ := upstream(t, s.handler)
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 1ms}, %s}
    timeouts: {per_try: 2s, total: 10s}
`, up, tc.route))
			resp, body := do(t, "GET", b.base+"/x", "")
			if resp.StatusCode != code || resp.Header.Get("Retry-After") != tc.want || s.hits.Load() != 1 {
				t.Fatalf("%d Retry-After %q hits %d: %s", resp.StatusCode, resp.Header.Get("Retry-After"), s.hits.Load(), body)
			}
			if p := decodeProblem(t, resp, body); p.Reason != reason || strconv.Itoa(p.RetryAfterS) != tc.want {
				t.Errorf("problem %+v", p)
			}
		})
	}
}

// TestHostileHints: malformed, negative and absurd hints are
// ignored: the retry comes after the backoff alone (at most 5ms here).
func TestHostileHints(t *testing.T) {
	for _, v := range [][]string{
		{"Retry-After", "-5"}, {"Retry-After", "soon"}, {"Retry-After", "1e3"}, {"Retry-After", "NaN"},
		{"Retry-After", "99999999999999999999999"}, {"retry-after-ms", "-1"}, {"retry-after-ms", "Infinity"},
		{"x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "-3s"},
		{"anthropic-ratelimit-requests-remaining", "0", "anthropic-ratelimit-requests-reset", "yesterday"},
	} {
		t.Run(strings.Join(v, "="), func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			s := &scripted{steps: []func(http.ResponseWriter, *http.Request){status(429, v...)}}
			up, _ := upstream(t, s.handler)
			b := startBallastClock(t, clock, retryRoute(up, ""))
			done := raSend(t, "GET", b.base+"/x", "")
			waitFor(t, func() bool { return clock.Waiters() == 1 })
			clock.Advance(5 * time.Millisecond)
			if got := raAnswer(t, done).resp.StatusCode; got != 200 || s.hits.Load() != 2 {
				t.Fatalf("%d, hits %d", got, s.hits.Load())
			}
		})
	}
}

// TestTimeoutHeader: hostile X-Ballast-Timeout values.
func TestTimeoutHeader(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Ballast-Timeout") != "" {
			w.WriteHeader(418)
		}
		io.WriteString(w, "ok")
	})
	b := startBallast(t, retryRoute(up, ""))
	for _, tc := range []struct {
		v    string
		want int
	}{
		{"5s", 200}, {"1500ms", 200}, {"-5s", 400}, {"0", 400}, {"5", 400}, {"abc", 400},
		{"9999999999h", 400}, {"1e3s", 400}, {"2562047h", 200}, {"\t5s", 200},
	} {
		resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", tc.v)
		if resp.StatusCode != tc.want {
			t.Errorf("X-Ballast-Timeout %q: %d %s, want %d", tc.v, resp.StatusCode, body, tc.want)
		}
	}
}

// TestHeadAndNoBodyStatuses: HEAD keeps the upstream's
// Content-Length; 204 and 304 carry no body.
func TestHeadAndNoBodyStatuses(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(304)
		case "/big":
			w.Header().Set("Content-Length", "200000")
			w.Header().Set("Content-Type", "application/octet-stream")
			if r.Method != "HEAD" {
				w.Write(bytes.Repeat([]byte("x"), 200000))
			}
		default:
			w.Header().Set("Content-Length", "1234")
			if r.Method != "HEAD" {
				w.Write(bytes.Repeat([]byte("y"), 1234))
			}
		}
	})
	b := startBallast(t, retryRoute(up, ""))
	c := client(t)
	for _, path := range []string{"/small", "/big"} {
		req, _ := http.NewRequest("HEAD", b.base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := map[string]string{"/small": "1234", "/big": "200000"}[path]
		if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != want {
			t.Errorf("HEAD %s: %d Content-Length %q, want %s", path, resp.StatusCode, resp.Header.Get("Content-Length"), want)
		}
	}
	for _, tc := range []struct {
		path, cl string
		status   int
		n        int
	}{{"/204", "", 204, 0}, {"/304", "", 304, 0}, {"/big", "200000", 200, 200000}, {"/small", "1234", 200, 1234}} {
		resp, body := get(t, c, b.base+tc.path)
		if resp.StatusCode != tc.status || len(body) != tc.n || resp.Header.Get("Content-Length") != tc.cl {
			t.Errorf("GET %s: %d, %d bytes, Content-Length %q", tc.path, resp.StatusCode, len(body), resp.Header.Get("Content-Length"))
		}
	}
}

// TestValidationPlainJSONForms: JSON with a charset parameter
// in its Content-Type, and an empty 200, pass validate: {json: true}.
func TestValidationPlainJSONForms(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "Application/JSON; charset=utf-8")
		if r.URL.Path != "/empty" {
			io.WriteString(w, `{"a":1}`)
		}
	})
	b := startBallast(t, retryRoute(up, "")+"    validate: {status: [2xx], content_type: [application/json], json: true}\n")
	for _, path := range []string{"/charset", "/empty"} {
		hits.Store(0)
		resp, body := do(t, "GET", b.base+path, "")
		if resp.StatusCode != 200 || hits.Load() != 1 {
			t.Errorf("%s: %d after %d hits: %s", path, resp.StatusCode, hits.Load(), body)
		}
	}
}

// TestGzipJSONPassesValidation: the agent sends Accept-Encoding: gzip
// (Python's requests and httpx, curl --compressed, Node's fetch all do) and
// the upstream answers gzip-compressed JSON. On a route with validate:
// {json: true} ballast validates the decoded JSON (the validator's contract,
// validate.CheckBody, asks for a decoded body), not the compressed bytes,
// and relays the answer once, compressed as sent.
func TestGzipJSONPassesValidation(t *testing.T) {
	const doc = `{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}]}`
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(doc))
	_ = zw.Close()
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(gz.Bytes())
			return
		}
		io.WriteString(w, doc)
	})
	b := startBallast(t, retryRoute(up, "")+"    validate: {status: [2xx], content_type: [application/json], json: true}\n")
	resp, body := do(t, "GET", b.base+"/v1/models", "", "Accept-Encoding", "gzip")
	if resp.StatusCode != 200 || hits.Load() != 1 {
		t.Fatalf("%d after %d upstream hits, want 200 after 1: %.300s", resp.StatusCode, hits.Load(), body)
	}
	if resp.Header.Get("Content-Encoding") != "gzip" || body != gz.String() {
		t.Errorf("the compressed answer was not relayed as sent: Content-Encoding %q", resp.Header.Get("Content-Encoding"))
	}
}

// TestSetCookie: repeated response headers are relayed as sent.
func TestSetCookie(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "a=1; Path=/")
		w.Header().Add("Set-Cookie", "a=2; Path=/admin")
		w.Header().Add("Set-Cookie", "b=3")
		w.Header().Add("Link", "<a>; rel=preload")
		w.Header().Add("Link", "<b>; rel=preload")
		w.Header().Add("Vary", "Accept")
		w.Header().Add("Vary", "Authorization")
		io.WriteString(w, "ok")
	})
	b := startBallast(t, retryRoute(up, ""))
	resp, _ := get(t, client(t), b.base+"/x")
	for name, want := range map[string][]string{
		"Set-Cookie": {"a=1; Path=/", "a=2; Path=/admin", "b=3"},
		"Link":       {"<a>; rel=preload", "<b>; rel=preload"},
		"Vary":       {"Accept", "Authorization"},
	} {
		if got := resp.Header.Values(name); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

// TestExpectContinue: an agent that sends Expect: 100-continue
// gets its 100 at once and its body reaches the upstream.
func TestExpectContinue(t *testing.T) {
	rec := &recorder{}
	up, _ := upstream(t, rec.handler)
	b := startBallast(t, retryRoute(up, ""))
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"x":1}`
	fmt.Fprintf(c, "POST /x HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", len(body))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("first line %q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, body)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(rec.all()) != 1 || rec.all()[0].n != len(body) {
		t.Errorf("%d %s seen %+v", resp.StatusCode, out, rec.all())
	}
}

// TestEarlyResponseIsRelayed: the upstream answers before it has read a
// large request body (a 413 for an oversized upload, as net/http, nginx and
// API gateways do) and closes the connection. Writing the rest of the body
// then fails (EPIPE/ECONNRESET), but the upstream's answer is already in
// ballast's receive buffer: the agent gets the 413 (as net/http's Transport
// and Envoy deliver it), not a 502 built from the write error — and a PUT
// is not sent three times to get it.
func TestEarlyResponseIsRelayed(t *testing.T) {
	for _, method := range []string{"PUT", "POST"} {
		t.Run(method, func(t *testing.T) {
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1) // answers without reading the body
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				io.WriteString(w, `{"error":{"message":"upload too large"}}`)
			})
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    max_body: 32MiB
    retry: {backoff: {base: 1ms, max: 2ms}}
    timeouts: {per_try: 2s, total: 10s}
`, up))
			resp, body := do(t, method, b.base+"/upload", strings.Repeat("z", 8<<20))
			if resp.StatusCode != 413 || !strings.Contains(body, "upload too large") || hits.Load() != 1 {
				t.Errorf("%d after %d upstream hits, want the upstream's 413 after 1: %s", resp.StatusCode, hits.Load(), body)
			}
		})
	}
}

// TestPerTryAndTotal: per_try bounds each attempt, total bounds
// them all.
func TestPerTryAndTotal(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		hang(release)(w, r)
	})
	for _, tc := range []struct {
		name, timeouts string
		hits           int64
		max            time.Duration
	}{
		{"three per-try windows", "{per_try: 200ms, total: 10s}", 3, 5 * time.Second},
		{"total shorter than per_try", "{connect: 100ms, per_try: 10s, total: 300ms}", 1, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits.Store(0)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 2ms}}
    timeouts: %s
`, up, tc.timeouts))
			start := time.Now()
			resp, body := do(t, "GET", b.base+"/x", "")
			took := time.Since(start)
			if resp.StatusCode != 504 || hits.Load() != tc.hits || took > tc.max {
				t.Errorf("%d hits %d after %v: %s", resp.StatusCode, hits.Load(), took, body)
			}
		})
	}
}

// TestChunkedStreamFlushes: a chunked, non-SSE streamed answer
// (NDJSON, as Ollama and others stream) reaches the agent piece by piece.
func TestChunkedStreamFlushes(t *testing.T) {
	release := make(chan struct{})
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Add("X-Early", "1")
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(103)
		}
		w.WriteHeader(200)
		io.WriteString(w, "{\"n\":1}\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "{\"n\":2}\n")
	})
	b := startBallast(t, retryRoute(up, ""))
	resp, err := client(t).Get(b.base + "/hints")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	got := make(chan string, 1)
	go func() { l, _ := br.ReadString('\n'); got <- l }()
	select {
	case l := <-got:
		if l != "{\"n\":1}\n" {
			t.Errorf("first line %q", l)
		}
	case <-time.After(3 * time.Second):
		t.Error("the first NDJSON line did not arrive while the upstream held the rest")
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "{\"n\":2}\n" {
		t.Errorf("rest %q %v", rest, err)
	}
}

// TestTimeoutHeaderDoesNotOpenBreaker: a request whose X-Ballast-Timeout
// has run out before its first attempt (1ns here) sends nothing, so it is
// not an attempt: the agent gets 504 timeout with attempts 0, and the
// upstream's circuit breaker — shared by every agent and route using that
// upstream — counts nothing. Otherwise any agent could open it for everyone
// without a byte reaching the upstream.
func TestTimeoutHeaderDoesNotOpenBreaker(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "ok") })
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 2ms}}
    breaker: {failures: 3, open_for: 30s}
    timeouts: {per_try: 2s, total: 10s}
`, up))
	for range 3 {
		resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "1ns")
		if resp.StatusCode != 504 {
			t.Fatalf("X-Ballast-Timeout 1ns: %d %s", resp.StatusCode, body)
		}
		if p := decodeProblem(t, resp, body); p.Reason != "timeout" || p.Attempts != 0 || hits.Load() != 0 {
			t.Fatalf("X-Ballast-Timeout 1ns: problem %+v after %d upstream hits, want timeout after 0 attempts", p, hits.Load())
		}
	}
	resp, body := do(t, "GET", b.base+"/x", "")
	if resp.StatusCode != 200 {
		t.Errorf("a normal request after three 1ns ones: %d %s (upstream hits %d)", resp.StatusCode, body, hits.Load())
	}
}

// TestDeadPooledConnectionsAreSkipped: the upstream closed every idle
// keep-alive connection ballast holds (a restart, a keep-alive timeout
// shorter than ballast's). The next POST, on a route without retries,
// still reaches it: each dead connection is left for the next, and then
// for a fresh one, however many there are.
func TestDeadPooledConnectionsAreSkipped(t *testing.T) {
	const conns = 4
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		hits    atomic.Int64
		mu      sync.Mutex
		states  = map[net.Conn]http.ConnState{}
		arrived = make(chan struct{}, conns)
		release = make(chan struct{})
	)
	count := func(want http.ConnState) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range states {
			if s == want {
				n++
			}
		}
		return n
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			if hits.Add(1) <= conns {
				arrived <- struct{}{}
				<-release // hold the first ones so that each takes its own connection
			}
			io.WriteString(w, `{"ok":true}`)
		}),
		ConnState: func(c net.Conn, s http.ConnState) { mu.Lock(); states[c] = s; mu.Unlock() },
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	b := startBallast(t, staleRoute("http://"+ln.Addr().String()))

	filling := make([]<-chan raResult, conns)
	for i := range filling {
		filling[i] = raSend(t, "POST", b.base+"/v1/chat/completions", `{"model":"m"}`)
	}
	for range conns {
		<-arrived
	}
	close(release)
	for _, ch := range filling {
		if r := raAnswer(t, ch); r.resp.StatusCode != 200 {
			t.Errorf("filling the pool: %d %s", r.resp.StatusCode, r.body)
		}
	}
	waitFor(t, func() bool { return count(http.StateIdle) == conns })
	srv.SetKeepAlivesEnabled(false) // closes the idle connections
	srv.SetKeepAlivesEnabled(true)
	waitFor(t, func() bool { return count(http.StateClosed) == conns })

	resp, body := do(t, "POST", b.base+"/v1/chat/completions", `{"model":"m"}`)
	if resp.StatusCode != 200 || hits.Load() != conns+1 {
		t.Fatalf("after the upstream closed %d pooled connections: %d after %d hits, want 200: %s", conns, resp.StatusCode, hits.Load(), body)
	}
}

// TestCompressedAnswersAreValidatedDecoded: the body checks judge the
// decoded body of every encoding ballast reads, and the agent gets the
// bytes as the upstream sent them. A body that does not decode is invalid;
// one that decodes past the limit (a decompression bomb) is judged by
// max_body after reading no more than the limit; one in an encoding ballast
// cannot read skips the body checks.
func TestCompressedAnswersAreValidatedDecoded(t *testing.T) {
	const doc = `{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}]}`
	compress := func(w io.WriteCloser, buf *bytes.Buffer, data []byte) []byte {
		_, _ = w.Write(data)
		_ = w.Close()
		return buf.Bytes()
	}
	gz := func(data []byte) []byte { var b bytes.Buffer; return compress(gzip.NewWriter(&b), &b, data) }
	zl := func(data []byte) []byte { var b bytes.Buffer; return compress(zlib.NewWriter(&b), &b, data) }
	raw := func(data []byte) []byte {
		var b bytes.Buffer
		fw, _ := flate.NewWriter(&b, flate.DefaultCompression)
		return compress(fw, &b, data)
	}
	br := func(data []byte) []byte {
		var b bytes.Buffer
		bw, _ := brotli.NewWriter(&b, 5)
		return compress(bw, &b, data)
	}
	zst := func(data []byte) []byte {
		var b bytes.Buffer
		zw, _ := zstd.NewWriter(&b, zstd.WithEncoderConcurrency(1))
		return compress(zw, &b, data)
	}
	bomb := append(append([]byte("["), bytes.Repeat([]byte(" "), 16<<20)...), ']') // 16MiB of valid JSON
	truncated := gz([]byte(doc))
	truncated = truncated[:len(truncated)-6]
	for _, tc := range []struct {
		name, encoding string
		body           []byte
		status, hits   int
		detail         string // in the problem's detail when the answer is 502
	}{
		{"gzip", "gzip", gz([]byte(doc)), 200, 1, ""},
		{"x-gzip", "x-gzip", gz([]byte(doc)), 200, 1, ""},
		{"deflate (zlib)", "deflate", zl([]byte(doc)), 200, 1, ""},
		{"deflate (raw)", "deflate", raw([]byte(doc)), 200, 1, ""},
		{"br", "br", br([]byte(doc)), 200, 1, ""},
		{"zstd", "ZSTD", zst([]byte(doc)), 200, 1, ""},
		{"identity", "identity", []byte(doc), 200, 1, ""},
		{"unknown encoding: body checks skipped", "compress", []byte("\x1f\x9d not JSON"), 200, 1, ""},
		{"stacked encodings: body checks skipped", "gzip, br", []byte("not JSON"), 200, 1, ""},
		{"gzip of broken JSON", "gzip", gz([]byte(`{"id":`)), 502, 3, "json: "},
		{"truncated gzip", "gzip", truncated, 502, 3, "content_encoding: "},
		{"not gzip at all", "gzip", []byte(doc), 502, 3, "content_encoding: "},
		{"decompression bomb", "gzip", gz(bomb), 502, 3, "max_body: got 1048577 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Content-Encoding", tc.encoding)
				_, _ = w.Write(tc.body)
			})
			b := startBallast(t, retryRoute(up, "")+"    validate: {status: [2xx], content_type: [application/json], json: true, max_body: 1MiB}\n")
			resp, body := do(t, "GET", b.base+"/v1/models", "", "Accept-Encoding", "gzip, deflate, br, zstd")
			if resp.StatusCode != tc.status || hits.Load() != int64(tc.hits) {
				t.Fatalf("%d after %d upstream hits, want %d after %d: %.300q", resp.StatusCode, hits.Load(), tc.status, tc.hits, body)
			}
			if tc.status == 200 {
				if resp.Header.Get("Content-Encoding") != tc.encoding || body != string(tc.body) {
					t.Errorf("the answer was not relayed as sent: Content-Encoding %q", resp.Header.Get("Content-Encoding"))
				}
				return
			}
			if p := decodeProblem(t, resp, body); p.Reason != "invalid_response" || !strings.Contains(p.Detail, tc.detail) {
				t.Errorf("problem %+v, want invalid_response with %q", p, tc.detail)
			}
		})
	}
}
