package proxy_test

import (
	"bufio"
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

// streamsAuditBound bounds how long a probe waits for an event that a
// correct build delivers at once; it never decides what a passing build
// asserts.
const streamsAuditBound = 5 * time.Second

// streamsAuditRaw starts a loopback upstream that reads each request (head
// and body) and hands the connection to answer, which writes whatever
// bytes it likes; the connection is closed when answer returns.
func streamsAuditRaw(t *testing.T, answer func(c net.Conn, req *http.Request)) string {
	t.Helper()
	return "http://" + serveConns(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		answer(c, req)
	})
}

// streamsAuditChunk writes one chunk of a chunked body.
func streamsAuditChunk(c net.Conn, s string) {
	fmt.Fprintf(c, "%x\r\n%s\r\n", len(s), s)
}

func streamsAuditRoute(up, extra string) string {
	return fmt.Sprintf(`
routes:
  - name: s
    match: {path_prefix: /}
    upstream: %q
%s`, up, extra)
}

// An event stream's response headers reach the agent as soon as the
// upstream sent them, not with the first event: a model that thinks for a
// minute before its first token, or an MCP server's standing GET stream
// that is silent until it has news, must not look to the agent like an
// upstream that never answered (HTTP clients bound the wait for response
// headers: Go's ResponseHeaderTimeout, undici's headersTimeout).
func TestStreamsAuditHeadersBeforeFirstEvent(t *testing.T) {
	for _, method := range []string{"POST", "GET"} {
		t.Run(method, func(t *testing.T) {
			seen := make(chan struct{})
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(seen) }) })
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				select { // the first event waits until the agent has the headers
				case <-seen:
				case <-r.Context().Done():
					return
				}
				_, _ = io.WriteString(w, "data: first\n\n")
			})
			b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 30s}\n    retry: {unsafe_methods: true}\n"))
			type result struct {
				resp *http.Response
				err  error
			}
			got := make(chan result, 1)
			c := client(t)
			go func() {
				req, _ := http.NewRequest(method, b.base+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
				resp, err := c.Do(req)
				got <- result{resp, err}
			}()
			var res result
			select {
			case res = <-got:
			case <-time.After(streamsAuditBound):
				once.Do(func() { close(seen) })
				res = <-got
				if res.err == nil {
					res.resp.Body.Close()
				}
				t.Fatal("the agent had no response headers while the upstream's stream was open and silent: ballast holds them back until the first event")
			}
			if res.err != nil {
				t.Fatal(res.err)
			}
			defer res.resp.Body.Close()
			once.Do(func() { close(seen) })
			body, err := io.ReadAll(res.resp.Body)
			if err != nil || string(body) != "data: first\n\n" || res.resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("stream: %q, %v (Content-Type %q)", body, err, res.resp.Header.Get("Content-Type"))
			}
		})
	}
}

// The relay passes the upstream's bytes through exactly, whatever the
// chunking: an event split mid-line over two chunks, several events in
// one chunk, CRLF and LF line ends, retry and id fields, comments, a field
// without a value. Each piece reaches the agent before the upstream sends
// the next (the upstream waits for the agent's acknowledgement).
func TestStreamsAuditBytesExactWhateverTheChunking(t *testing.T) {
	pieces := []string{
		"retry: 3000\r\nid: 7\r\n",                          // fields of an event still open
		": keep-alive comment\r\ndata: {\"t\":\"Hel",        // a comment, then a data line cut mid-JSON
		"lo\"}\r\n\r\n",                                     // the rest of it
		"event: delta\ndata: 1\n\ndata: 2\n\nid\ndata:\n\n", // three events coalesced, an empty id and data
		"data: [DONE]\n\n",
	}
	ack := make(chan struct{}, len(pieces))
	up := streamsAuditRaw(t, func(c net.Conn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		for i, p := range pieces {
			if i == 1 { // one piece in two chunks sent back to back
				streamsAuditChunk(c, p[:5])
				streamsAuditChunk(c, p[5:])
			} else {
				streamsAuditChunk(c, p)
			}
			select {
			case <-ack:
			case <-time.After(streamsAuditBound):
				return // the agent never got this piece: the probe fails below
			}
		}
		io.WriteString(c, "0\r\n\r\n")
	})
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 30s}\n"))
	resp, err := client(t).Post(b.base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []byte
	for i, p := range pieces {
		want := len(got) + len(p)
		buf := make([]byte, 4096)
		for len(got) < want {
			n, err := resp.Body.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				t.Fatalf("piece %d: %v after %q", i, err, got)
			}
		}
		ack <- struct{}{}
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil || len(rest) != 0 {
		t.Fatalf("end of stream: %q, %v", rest, err)
	}
	if string(got) != strings.Join(pieces, "") {
		t.Fatalf("the agent got\n%q\nwant\n%q", got, strings.Join(pieces, ""))
	}
	if v := b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}); v != 0 {
		t.Errorf("a whole stream counted as truncated: %v", v)
	}
}

// An upstream that breaks its body off in the middle of a line — a
// connection closed before the last chunk, a Content-Length not reached,
// a malformed chunk — gives the agent a broken response, never a clean
// end that would pass the partial event off as the whole stream. The
// truncation is counted and logged; no retry is made once bytes reached
// the agent.
func TestStreamsAuditCutMidLineIsABrokenStream(t *testing.T) {
	cases := []struct {
		name   string
		answer func(c net.Conn)
	}{
		{"chunked, closed before the last chunk", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			streamsAuditChunk(c, "data: {\"t\":\"one\"}\n\n")
			streamsAuditChunk(c, "data: {\"t\":\"tw")
		}},
		{"content-length not reached", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1000\r\n\r\n")
			io.WriteString(c, "data: {\"t\":\"one\"}\n\ndata: {\"t\":\"tw")
		}},
		{"malformed chunk", func(c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
			streamsAuditChunk(c, "data: {\"t\":\"one\"}\n\n")
			io.WriteString(c, "zz\r\ndata: {\"t\":\"tw\r\n")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			up := streamsAuditRaw(t, func(c net.Conn, _ *http.Request) {
				hits.Add(1)
				tc.answer(c)
			})
			b := startBallast(t, streamsAuditRoute(up, "    retry: {attempts: 3, unsafe_methods: true, backoff: {base: 1ms, max: 2ms}}\n"))
			resp, err := client(t).Post(b.base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
			if err != nil {
				t.Fatalf("the agent got no answer at all (%v): the upstream's headers were held back", err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				t.Fatalf("the agent read a clean, complete %d answer %q from a stream cut mid-line", resp.StatusCode, body)
			}
			if !strings.HasPrefix("data: {\"t\":\"one\"}\n\ndata: {\"t\":\"tw", string(body)) {
				t.Errorf("the agent got %q, not a prefix of what the upstream sent", body)
			}
			if hits.Load() != 1 {
				t.Errorf("the upstream was called %d times: a stream whose bytes reached the agent is never retried", hits.Load())
			}
			waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}) == 1 })
			if !strings.Contains(b.logs.String(), "broke mid-stream") {
				t.Error("the truncation was not logged")
			}
		})
	}
}

// A POSTed stream (a model's answer) is bounded by timeouts.total, the
// whole request until the last byte (docs/config.md; only a GET event
// stream is exempt). One that runs past it is cut: the agent sees a broken
// stream, and it is counted as truncated ("ran past the deadline",
// docs/metrics.md).
func TestStreamsAuditPostStreamPastTotalIsCut(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // more would come, after the deadline
	})
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {connect: 500ms, per_try: 1s, idle: 30s, total: 1s}\n"))
	resp, err := client(t).Post(b.base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	done := make(chan error, 1)
	var body []byte
	go func() {
		var err error
		body, err = io.ReadAll(resp.Body)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("a stream cut by timeouts.total ended cleanly: %q", body)
		}
		if string(body) != "data: one\n\n" {
			t.Errorf("before the cut the agent got %q", body)
		}
	case <-time.After(streamsAuditBound):
		t.Fatal("a POSTed stream ran on past timeouts.total (1s)")
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}) == 1 })
}

// An upstream that sends its headers and then nothing: timeouts.idle ends
// it, and the agent gets a broken answer, never a clean empty 200.
func TestStreamsAuditHeadersThenSilence(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 300ms, total: 30s}\n"))
	resp, err := client(t).Post(b.base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("a silent stream ended as a clean %d %q", resp.StatusCode, body)
		}
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}) == 1 })
}

// An agent that hangs up in the middle of a POSTed stream while the
// upstream is quiet (a model between two tokens, a tool thinking) frees
// the upstream call and the route's concurrency slot within a few agent
// checks, not only when the upstream's next event or timeouts.idle comes.
func TestStreamsAuditAgentGoneMidStreamFreesUpstream(t *testing.T) {
	gone := make(chan struct{}, 4)
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) > 1 {
			_, _ = io.WriteString(w, "data: second caller\n\n")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // quiet until ballast lets go
		gone <- struct{}{}
	})
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 60s, total: 120s}\n    concurrency: {max: 1, queue: 0}\n"))
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(streamsAuditBound))
	fmt.Fprint(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}")
	br := bufio.NewReader(c)
	for { // up to the first event
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if strings.HasPrefix(line, "data: one") {
			break
		}
	}
	c.Close()
	select {
	case <-gone:
	case <-time.After(streamsAuditBound):
		t.Fatal("the agent left mid-stream, but the upstream call stayed open (until timeouts.idle, 60s)")
	}
	// The upstream sees its connection close a moment before the relay
	// returns the slot: wait for the slot, then use it.
	waitFor(t, func() bool {
		return b.metric("ballast_concurrency_inflight", map[string]string{"route": "s"}) == 0
	})
	resp, body := do(t, "POST", b.base+"/v1/chat/completions", "{}")
	if resp.StatusCode != 200 || body != "data: second caller\n\n" {
		t.Errorf("the next call: %d %q (the stream's concurrency slot was not freed)", resp.StatusCode, body)
	}
}

func streamsAuditAsync(up, extra string) string {
	return streamsAuditRoute(up, "    async: {enabled: true}\n"+extra)
}

// A job whose answer is an event stream keeps all of it and serves it
// byte for byte; one whose stream breaks off is failed with a 502 and its
// partial body is never served as the result. Nobody saw a truncated
// stream: ballast_stream_truncated_total does not count the job.
func TestStreamsAuditJobStreamedAnswer(t *testing.T) {
	const whole = "retry: 10\nid: 1\ndata: {\"t\":\"a\"}\n\n: ping\n\ndata: [DONE]\n\n"
	up := streamsAuditRaw(t, func(c net.Conn, req *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		streamsAuditChunk(c, whole[:20])
		if req.URL.Path == "/cut" {
			return // closed before the rest
		}
		streamsAuditChunk(c, whole[20:])
		io.WriteString(c, "0\r\n\r\n")
	})
	b := startBallast(t, streamsAuditAsync(up, ""))
	resp, body := do(t, "POST", b.base+"/whole", `{"stream":true}`, "Prefer", "respond-async, wait=5")
	if resp.StatusCode != 200 || body != whole || resp.Header.Get("Content-Type") != "text/event-stream" ||
		resp.Header.Get("X-Ballast-Job-State") != "succeeded" {
		t.Fatalf("whole stream as a job: %d %q %q state %q", resp.StatusCode, resp.Header.Get("Content-Type"), body, resp.Header.Get("X-Ballast-Job-State"))
	}
	resp, body = do(t, "POST", b.base+"/cut", `{"stream":true}`, "Prefer", "respond-async, wait=5")
	if resp.StatusCode != 502 || resp.Header.Get("X-Ballast-Job-State") != "failed" || strings.Contains(body, "data:") {
		t.Fatalf("broken stream as a job: %d state %q %q", resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body)
	}
	if v := b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}); v != 0 {
		t.Errorf("ballast_stream_truncated_total = %v for a job: no agent saw a truncated stream", v)
	}
	if strings.Contains(b.logs.String(), "aborting the agent's connection") {
		t.Error("a job's broken answer was logged as aborting an agent's connection it does not have")
	}
}

// A job runs within its route's timeouts.total like any request: an
// upstream that never answers makes it fail with 504 timeout, and one
// whose stream runs past the deadline fails with 502, never a cut-off
// result.
func TestStreamsAuditJobPastItsDeadline(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // net/http notices a closed connection only after the body
		if r.URL.Path == "/stream" {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: one\n\n")
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	})
	b := startBallast(t, streamsAuditAsync(up, "    timeouts: {connect: 200ms, per_try: 500ms, idle: 30s, total: 500ms}\n    retry: {attempts: 1}\n"))
	for _, tc := range []struct {
		path   string
		status int
	}{{"/silent", 504}, {"/stream", 502}} {
		resp, body := do(t, "POST", b.base+tc.path, `{}`, "Prefer", "respond-async, wait=5")
		if resp.StatusCode != tc.status || resp.Header.Get("X-Ballast-Job-State") != "failed" || strings.Contains(body, "data: one") {
			t.Errorf("%s: %d state %q %q, want a failed job answering %d", tc.path, resp.StatusCode, resp.Header.Get("X-Ballast-Job-State"), body, tc.status)
		}
	}
}

// A keyed POST answered with an event stream: the stream is recorded as
// it is relayed (docs/config.md, idempotency), and its key stays claimed
// until it ends, so a repeat — while the first stream still runs, or
// after it ended — gets that stream, whole, replayed: never a second call,
// a replay of nothing or a 409.
func TestStreamsAuditKeyedStreamRepeatReplaysIt(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: call %d\n\n", n)
		w.(http.Flusher).Flush()
		if n == 1 {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	})
	b := startBallast(t, streamsAuditRoute(up, "    idempotency: {mode: header}\n    timeouts: {idle: 30s}\n"))
	req, _ := http.NewRequest("POST", b.base+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	req.Header.Set("Idempotency-Key", "k-stream")
	first, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Body.Close()
	line, err := bufio.NewReader(first.Body).ReadString('\n')
	if err != nil || line != "data: call 1\n" {
		t.Fatalf("first stream: %q %v", line, err)
	}
	type answer struct {
		status         int
		body, replayed string
	}
	during := make(chan answer, 1)
	c := client(t)
	go func() { // not do: it may not fail the test from here
		req, _ := http.NewRequest("POST", b.base+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
		req.Header.Set("Idempotency-Key", "k-stream")
		resp, err := c.Do(req)
		if err != nil {
			during <- answer{body: err.Error()}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		during <- answer{resp.StatusCode, string(body), resp.Header.Get("Idempotent-Replayed")}
	}()
	waitFor(t, func() bool {
		return b.metric("ballast_idempotency_total", map[string]string{"route": "s", "result": "attached"}) == 1
	})
	close(release)
	if _, err := io.ReadAll(first.Body); err != nil {
		t.Fatalf("the first stream: %v", err)
	}
	want := answer{200, "data: call 1\n\ndata: [DONE]\n\n", "true"}
	if got := <-during; got != want {
		t.Errorf("a repeat while the first streams: %+v, want %+v", got, want)
	}
	resp, body := do(t, "POST", b.base+"/v1/chat/completions", `{"stream":true}`, "Idempotency-Key", "k-stream")
	if got := (answer{resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed")}); got != want {
		t.Errorf("a repeat after the stream: %+v, want %+v", got, want)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// An agent that sends Prefer: respond-async with an Idempotency-Key and
// re-sends it (its client timed out before the 202, or it restarted) joins
// the job the first one started: the upstream runs once, and both ids lead
// to the same result ("a keyed request runs once however often the agent
// sends it", README). The same key with another body is a mismatch.
func TestStreamsAuditKeyedAsyncRetryJoinsTheJob(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"run":%d}`, n)
	})
	b := startBallast(t, streamsAuditAsync(up, "    idempotency: {mode: header}\n"))
	impatient := &http.Client{Timeout: time.Second, Transport: &http.Transport{}}
	t.Cleanup(impatient.CloseIdleConnections)
	req, _ := http.NewRequest("POST", b.base+"/report", strings.NewReader(`{"q":1}`))
	req.Header.Set("Idempotency-Key", "report-1")
	req.Header.Set("Prefer", "respond-async, wait=30")
	if resp, err := impatient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("the agent's client was meant to time out after 1s, got %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return hits.Load() == 1 })
	resp, body := do(t, "POST", b.base+"/report", `{"q":1}`, "Idempotency-Key", "report-1", "Prefer", "respond-async")
	if resp.StatusCode != 202 || !strings.HasPrefix(resp.Header.Get("Location"), "/_ballast/jobs/") {
		t.Fatalf("the re-sent call: %d %q %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	loc := resp.Header.Get("Location")
	resp, body = do(t, "POST", b.base+"/report", `{"q":2}`, "Idempotency-Key", "report-1", "Prefer", "respond-async")
	if resp.StatusCode != 422 {
		t.Errorf("the same key with another body: %d %s, want 422 idempotency_mismatch", resp.StatusCode, body)
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("the upstream ran %d times for one keyed async call", n)
	}
	release <- struct{}{}
	resp, body = do(t, "GET", b.base+loc, "", "Prefer", "wait=5")
	if resp.StatusCode != 200 || body != `{"run":1}` {
		t.Errorf("the job of the re-sent call: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, "POST", b.base+"/report", `{"q":1}`, "Idempotency-Key", "report-1", "Prefer", "respond-async")
	if body != `{"run":1}` || resp.Header.Get("X-Ballast-Job-State") != "succeeded" || hits.Load() != 1 {
		t.Errorf("a third send after the job finished: %d %q state %q, %d upstream runs", resp.StatusCode, body, resp.Header.Get("X-Ballast-Job-State"), hits.Load())
	}
}

// Many copies of one keyed async request at once start one job: every
// copy is answered with the same Location, the upstream runs once, and a
// wait=N copy gets the job's result. Another caller's same key is its own
// job: a job never crosses tenants.
func TestStreamsAuditKeyedAsyncManyAtOnce(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		_, _ = io.ReadAll(r.Body)
		if r.Header.Get("Authorization") == "Bearer alice" {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintf(w, `{"run":%d,"who":%q}`, n, r.Header.Get("Authorization"))
	})
	b := startBallast(t, streamsAuditAsync(up, "    idempotency: {mode: header}\n"))
	const copies = 20
	sent := make([]<-chan raResult, copies)
	for i := range sent {
		sent[i] = raSend(t, "POST", b.base+"/report", `{"q":1}`, "Idempotency-Key", "many-1",
			"Authorization", "Bearer alice", "Prefer", "respond-async")
	}
	var locs []string
	for _, ch := range sent {
		r := raAnswer(t, ch)
		if r.resp.StatusCode != 202 {
			t.Errorf("a copy got %d %s", r.resp.StatusCode, r.body)
		}
		locs = append(locs, r.resp.Header.Get("Location"))
	}
	first := ""
	for _, loc := range locs {
		if first == "" {
			first = loc
		}
		if loc != first || !strings.HasPrefix(loc, "/_ballast/jobs/") {
			t.Fatalf("copies were sent to different jobs: %q and %q", first, loc)
		}
	}
	if got := b.metric("ballast_idempotency_total", map[string]string{"route": "s", "result": "claimed"}); got != 1 {
		t.Errorf("claims counted %v, want 1", got)
	}
	// Bob's same key is bob's own job.
	resp, body := do(t, "POST", b.base+"/report", `{"q":1}`, "Idempotency-Key", "many-1",
		"Authorization", "Bearer bob", "Prefer", "respond-async, wait=5")
	if resp.StatusCode != 200 || !strings.Contains(body, `"who":"Bearer bob"`) || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("another caller's same key: %d %q replayed %q", resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
	}
	close(release)
	resp, body = do(t, "POST", b.base+"/report", `{"q":1}`, "Idempotency-Key", "many-1",
		"Authorization", "Bearer alice", "Prefer", "respond-async, wait=5")
	if resp.StatusCode != 200 || !strings.Contains(body, `"who":"Bearer alice"`) || resp.Header.Get("Idempotent-Replayed") != "true" ||
		resp.Header.Get("X-Ballast-Job-State") != "succeeded" || resp.Header.Get("Preference-Applied") != "respond-async, wait=5" {
		t.Errorf("a copy waiting for the result: %d %q replayed %q state %q applied %q", resp.StatusCode, body,
			resp.Header.Get("Idempotent-Replayed"), resp.Header.Get("X-Ballast-Job-State"), resp.Header.Get("Preference-Applied"))
	}
	if n := hits.Load(); n != 2 {
		t.Errorf("the upstream ran %d times, want once per caller (2)", n)
	}
}
