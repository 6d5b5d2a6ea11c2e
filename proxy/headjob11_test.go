package proxy_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// A HEAD run as an async job, and the HEAD and GET polls of jobs: a HEAD
// answer has the GET's header fields (RFC 9110 §9.3.2), Content-Length
// included, and no body, however the job's answer is read back.

const hj11Body = "hello, world"

// hj11Big is an answer the transport streams (over 64KiB), which a job
// reads whole off the stream.
var hj11Big = strings.Repeat("0123456789abcdef", 5<<10)

// hj11Start starts a raw upstream that answers every request 200 with
// hj11Body, or hj11Big under a path with /big (no body for a HEAD), and
// a ballast with the async route "async" (under /a/) and the keyed async
// route "keyed" (under /k/), its state in backend. Each upstream answer
// waits for a value on gate when gate is not nil.
func hj11Start(t *testing.T, backend string, gate chan struct{}) *ballast {
	t.Helper()
	up := ps11Start(t, func(n int, r ps11Req) string {
		if gate != nil {
			<-gate
		}
		body := hj11Body
		if strings.Contains(r.uri, "/big") {
			body = hj11Big
		}
		h := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n"
		if r.method == "HEAD" {
			return h
		}
		return h + body
	})
	state := "state: {backend: memory}"
	if backend == "file" {
		state = fmt.Sprintf("state: {backend: file, path: %q}", t.TempDir()+"/state.db")
	}
	return startBallast(t, fmt.Sprintf(`
%[2]s
routes:
  - {name: async, match: {path_prefix: /a/}, upstream: "http://%[1]s", async: {enabled: true}}
  - {name: keyed, match: {path_prefix: /k/}, upstream: "http://%[1]s", async: {enabled: true}, idempotency: {mode: header}}
`, up.addr, state))
}

// hj11Do sends one raw request with method to path and reads its answer
// as one to method; nothing may follow it.
func hj11Do(t *testing.T, b *ballast, method, path, extra string) (*http.Response, string, string) {
	t.Helper()
	out := ps11Send(t, b.addr, method+" "+path+" HTTP/1.1\r\nHost: x\r\n"+extra+"Connection: close\r\n\r\n")
	resp, body, rest := ps11Parse(t, out, method)
	if rest != "" {
		t.Errorf("%s %s: bytes after the answer: %q", method, path, rest)
	}
	return resp, body, ps11Head(out)
}

// hj11Job starts a job of method on path and returns its Location.
func hj11Job(t *testing.T, b *ballast, method, path, extra string) string {
	t.Helper()
	resp, _, raw := hj11Do(t, b, method, path, "Prefer: respond-async\r\n"+extra)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != 202 || loc == "" {
		t.Fatalf("%s %s with respond-async: %d: %q", method, path, resp.StatusCode, raw)
	}
	return loc
}

// hj11Check asserts a job's answer: 200 from a succeeded job, with the
// Content-Length of hj11Body and wantBody.
func hj11Check(t *testing.T, what string, resp *http.Response, body, raw, wantBody string) {
	t.Helper()
	hj11CheckLen(t, what, resp, body, raw, wantBody, len(hj11Body))
}

// hj11CheckLen is hj11Check for an answer of n bytes.
func hj11CheckLen(t *testing.T, what string, resp *http.Response, body, raw, wantBody string, n int) {
	t.Helper()
	if resp.StatusCode != 200 || resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("%s: %d, job state %q: %q", what, resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), raw)
	}
	if want := strconv.Itoa(n); !ps11HasLine(raw, "Content-Length") || resp.Header.Get("Content-Length") != want {
		t.Errorf("%s: Content-Length %q, want %s: %q", what, resp.Header.Get("Content-Length"), want, raw)
	}
	if body != wantBody {
		t.Errorf("%s: body %q, want %q", what, body, wantBody)
	}
}

// TestHeadJob11_PollKeepsContentLength: a HEAD started as a job and
// polled with HEAD answers with the upstream's Content-Length and no
// body, as the relayed HEAD did, whatever the state backend; a GET job
// polled with GET has its body and its length, and polled with HEAD the
// same length and no body.
func TestHeadJob11_PollKeepsContentLength(t *testing.T) {
	for _, backend := range []string{"memory", "file"} {
		t.Run(backend, func(t *testing.T) {
			b := hj11Start(t, backend, nil)
			resp, body, raw := hj11Do(t, b, "HEAD", "/a/direct", "")
			if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != strconv.Itoa(len(hj11Body)) || body != "" {
				t.Fatalf("the relayed HEAD: %d, Content-Length %q, body %q: %q", resp.StatusCode, resp.Header.Get("Content-Length"), body, raw)
			}

			t.Run("HEAD job, HEAD poll", func(t *testing.T) {
				loc := hj11Job(t, b, "HEAD", "/a/h", "")
				resp, body, raw := hj11Do(t, b, "HEAD", loc, "Prefer: wait=5\r\n")
				hj11Check(t, "the HEAD poll of a HEAD job", resp, body, raw, "")
				// Again, the job surely over: the stored record's own.
				resp, body, raw = hj11Do(t, b, "HEAD", loc, "")
				hj11Check(t, "the second HEAD poll of a HEAD job", resp, body, raw, "")
			})
			t.Run("HEAD job answered within its wait", func(t *testing.T) {
				resp, body, raw := hj11Do(t, b, "HEAD", "/a/hw", "Prefer: respond-async, wait=5\r\n")
				hj11Check(t, "the HEAD with respond-async, wait=5", resp, body, raw, "")
			})
			t.Run("keyed HEAD job, replayed", func(t *testing.T) {
				loc := hj11Job(t, b, "HEAD", "/k/h", "Idempotency-Key: hj11-"+backend+"\r\n")
				if resp, _, raw := hj11Do(t, b, "HEAD", loc, "Prefer: wait=5\r\n"); resp.StatusCode != 200 {
					t.Fatalf("the job did not finish: %q", raw)
				}
				resp, body, raw := hj11Do(t, b, "HEAD", "/k/h", "Prefer: respond-async\r\nIdempotency-Key: hj11-"+backend+"\r\n")
				if resp.Header.Get("Idempotent-Replayed") != "true" {
					t.Fatalf("the repeat was not a replay: %q", raw)
				}
				hj11Check(t, "the keyed repeat of a HEAD job", resp, body, raw, "")
			})
			t.Run("HEAD job, GET poll", func(t *testing.T) {
				loc := hj11Job(t, b, "HEAD", "/a/hg", "")
				resp, body, raw := hj11Do(t, b, "GET", loc, "Prefer: wait=5\r\n")
				// The job's answer has no body to give; a GET poll cannot
				// claim the length the HEAD told without the bytes.
				if resp.StatusCode != 200 || body != "" || resp.Header.Get("Content-Length") != "0" {
					t.Errorf("the GET poll of a HEAD job: %d, Content-Length %q, body %q: %q",
						resp.StatusCode, resp.Header.Get("Content-Length"), body, raw)
				}
			})
			t.Run("GET job, GET poll", func(t *testing.T) {
				loc := hj11Job(t, b, "GET", "/a/g", "")
				resp, body, raw := hj11Do(t, b, "GET", loc, "Prefer: wait=5\r\n")
				hj11Check(t, "the GET poll of a GET job", resp, body, raw, hj11Body)
			})
			t.Run("GET job, HEAD poll", func(t *testing.T) {
				loc := hj11Job(t, b, "GET", "/a/gh", "")
				resp, body, raw := hj11Do(t, b, "HEAD", loc, "Prefer: wait=5\r\n")
				hj11Check(t, "the HEAD poll of a GET job", resp, body, raw, "")
			})
			t.Run("streamed GET job, GET and HEAD polls", func(t *testing.T) {
				loc := hj11Job(t, b, "GET", "/a/big", "")
				resp, body, raw := hj11Do(t, b, "GET", loc, "Prefer: wait=5\r\n")
				hj11CheckLen(t, "the GET poll of a streamed GET job", resp, body, raw, hj11Big, len(hj11Big))
				resp, body, raw = hj11Do(t, b, "HEAD", loc, "")
				hj11CheckLen(t, "the HEAD poll of a streamed GET job", resp, body, raw, "", len(hj11Big))
				if n := strings.Count(strings.ToLower(raw), "\r\ncontent-length:"); n != 1 {
					t.Errorf("the HEAD poll of a streamed GET job: %d Content-Length lines: %q", n, raw)
				}
			})
			t.Run("HEAD job of a streamed size", func(t *testing.T) {
				loc := hj11Job(t, b, "HEAD", "/a/big", "")
				resp, body, raw := hj11Do(t, b, "HEAD", loc, "Prefer: wait=5\r\n")
				hj11CheckLen(t, "the HEAD poll of a large HEAD job", resp, body, raw, "", len(hj11Big))
			})
		})
	}
}

// TestHeadJob11_PollWhileRunning: a HEAD poll that arrives while the
// HEAD job's call is still waiting for the upstream, and waits for it,
// answers with the upstream's Content-Length once the job is done.
func TestHeadJob11_PollWhileRunning(t *testing.T) {
	gate := make(chan struct{})
	b := hj11Start(t, "memory", gate)
	loc := hj11Job(t, b, "HEAD", "/a/slow", "")
	// The job's call is at the upstream, or about to be: let it answer
	// while the poll waits.
	go func() { gate <- struct{}{} }()
	resp, body, raw := hj11Do(t, b, "HEAD", loc, "Prefer: wait=5\r\n")
	hj11Check(t, "the HEAD poll waiting for a HEAD job", resp, body, raw, "")
}
