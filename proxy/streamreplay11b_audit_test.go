package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/internal/redistest"
)

// Audit of keyed stream recording and replay (streamRecord, recordStream,
// settleStream, readRest): what the first tests of the feature left out.

// sr11bEvents is an event stream of n events of about size bytes each.
func sr11bEvents(n, size int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("data: %d %s\n\n", i, strings.Repeat("e", size))
	}
	return out
}

// sr11bRaw sends one raw request on a new connection and returns all the
// connection delivered until it closed (an HTTP/1.0 answer is delimited by
// the close), within streamReplay11Bound.
func sr11bRaw(t *testing.T, addr, req string) string {
	t.Helper()
	conn := dialBounded(t, addr, streamReplay11Bound)
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading the raw answer: %v (got %q)", err, got)
	}
	return string(got)
}

// sr11bPost10 is a keyed HTTP/1.0 POST.
func sr11bPost10(key string) string {
	return "POST /v1/run HTTP/1.0\r\nHost: x\r\nIdempotency-Key: " + key + "\r\nContent-Length: 15\r\n\r\n{\"stream\":true}"
}

// sr11bSplit splits a raw answer into its head and body.
func sr11bSplit(t *testing.T, raw string) (head, body string) {
	t.Helper()
	head, body, ok := strings.Cut(raw, "\r\n\r\n")
	if !ok {
		t.Fatalf("no header block in %q", raw)
	}
	return head, body
}

// sr11bNotStoredTwice: no settlement of a keyed stream failed (a second
// settlement of one claim fails, and is logged so).
func sr11bNotStoredTwice(t *testing.T, b *ballast) {
	t.Helper()
	if logs := b.logs.String(); strings.Contains(logs, "idempotency record not stored") {
		t.Errorf("a record was refused (settled twice?): %s", logs)
	}
}

// An HTTP/1.0 agent gets a keyed stream close-delimited, on a hijacked
// connection: the stream is recorded all the same, its claim settled once
// when the hijacked relay ends, and the retry (1.0 or 1.1) replays it.
func TestStreamReplay11b_HTTP10AgentRecordedAndReplayed(t *testing.T) {
	events := sr11bEvents(5, 3000)
	up := &streamReplay11Upstream{ct: "text/event-stream", events: events}
	b := streamReplay11Start(t, up, "")
	want := strings.Join(events, "")
	head, body := sr11bSplit(t, sr11bRaw(t, b.addr, sr11bPost10("h10")))
	if !strings.HasPrefix(head, "HTTP/1.0 200") && !strings.HasPrefix(head, "HTTP/1.1 200") || body != want {
		t.Fatalf("HTTP/1.0 stream: head %q, %d body bytes of %d", head, len(body), len(want))
	}
	if strings.Contains(strings.ToLower(head), "transfer-encoding") {
		t.Errorf("an HTTP/1.0 agent got a chunked answer: %q", head)
	}
	// The retry over HTTP/1.0 is a stored answer: it has a length.
	head2, body2 := sr11bSplit(t, sr11bRaw(t, b.addr, sr11bPost10("h10")))
	if body2 != want || !strings.Contains(head2, "Idempotent-Replayed: true") {
		t.Errorf("HTTP/1.0 retry: head %q, %d body bytes of %d", head2, len(body2), len(want))
	}
	again, body3 := streamReplay11Post(t, client(t), b.base+"/v1/run", "h10")
	if body3 != want || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("HTTP/1.1 retry: replayed %q, %d bytes of %d", again.Header.Get("Idempotent-Replayed"), len(body3), len(want))
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
	if got := b.streamReplay11Idem("claimed"); got != 1 {
		t.Errorf("claimed %v, want 1", got)
	}
	if got := b.streamReplay11Idem("replayed"); got != 2 {
		t.Errorf("replayed %v, want 2", got)
	}
	sr11bNotStoredTwice(t, b)
}

// An HTTP/1.0 agent that leaves mid-stream: the hijacked relay's write
// fails, ballast reads the rest into the record, and the retry replays
// the whole stream without a second call.
func TestStreamReplay11b_HTTP10AgentLeavesMidStream(t *testing.T) {
	events := streamReplay11Overflowing()
	up := streamReplay11Held(events...)
	b := streamReplay11Start(t, up, "")
	streamReplay11Leave(t, b.addr, sr11bPost10("gone10"))
	close(up.next)
	streamReplay11RetryReplaysWhole(t, b, up, "gone10")
	sr11bNotStoredTwice(t, b)
}

// sr11bFixedUpstream is a raw loopback upstream that answers every
// request with an event stream of body, framed with Content-Length
// (chunked false) or in chunks of 4KiB, and counts its calls. Its header
// block is fixed, so the stored header's size is known.
func sr11bFixedUpstream(t *testing.T, body string, chunked bool) (url string, calls *atomic.Int64) {
	t.Helper()
	calls = new(atomic.Int64)
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		h := w.Header()
		h["Content-Type"] = []string{"text/event-stream"}
		h["Date"] = nil // not stored anyway; keeps the head fixed
		if !chunked {
			h["Content-Length"] = []string{strconv.Itoa(len(body))}
		}
		w.WriteHeader(200)
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 4096)
			_, _ = io.WriteString(w, rest[:n])
			w.(http.Flusher).Flush()
			rest = rest[n:]
		}
	})
	return u, calls
}

// A stream with a Content-Length or chunked, over 64KiB (the transport
// streams it), is recorded when headers and body fit
// state.max_response_bytes exactly, and is too large one byte below;
// a Content-Length over the limit is never buffered and frees the key.
func TestStreamReplay11b_SizeBoundary(t *testing.T) {
	body := strings.Repeat("data: "+strings.Repeat("s", 1000)+"\n\n", 100) // 100.8 KB
	// The stored header: what AppendHeader keeps of the upstream's
	// (Content-Type alone; Content-Length, Date and ballast's own are
	// not stored).
	stored := len("Content-Type: text/event-stream\r\n")
	for _, tc := range []struct {
		name    string
		chunked bool
		limit   int
		replays bool
	}{
		{"content-length, exactly at the limit", false, stored + len(body), true},
		{"content-length, a byte over", false, stored + len(body) - 1, false},
		{"chunked, exactly at the limit", true, stored + len(body), true},
		{"chunked, a byte over", true, stored + len(body) - 1, false},
		{"content-length, far over", false, 64 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, calls := sr11bFixedUpstream(t, body, tc.chunked)
			b := startBallast(t, fmt.Sprintf("state: {max_response_bytes: %d}\n", tc.limit)+idemRoute(u, ""))
			c := client(t)
			for i := range 2 {
				resp, got := streamReplay11Post(t, c, b.base+"/v1/run", "size")
				if resp.StatusCode != 200 || got != body {
					t.Fatalf("request %d: %d, %d bytes of %d", i, resp.StatusCode, len(got), len(body))
				}
				if replayed := resp.Header.Get("Idempotent-Replayed") == "true"; replayed != (tc.replays && i == 1) {
					t.Errorf("request %d: replayed %v", i, replayed)
				}
				// A relayed stream's claim is settled (too_large counted)
				// once its relay has ended, which may be after the agent
				// read its last byte; its line is written after that.
				if resp.Header.Get("Idempotent-Replayed") == "" {
					sr11bTrailLine(t, b, resp.Header.Get("X-Request-Id"))
				}
			}
			wantCalls, wantLarge := int64(2), 2.0
			if tc.replays {
				wantCalls, wantLarge = 1, -1 // the series is never touched
			}
			if n := calls.Load(); n != wantCalls {
				t.Errorf("the upstream ran %d times, want %d", n, wantCalls)
			}
			if got := b.streamReplay11Idem("too_large"); got != wantLarge && !(wantLarge < 0 && got <= 0) {
				t.Errorf("too_large %v, want %v", got, wantLarge)
			}
			sr11bNotStoredTwice(t, b)
		})
	}
}

// sr11bRedisPair is two ballasts sharing one Redis, with routes.
func sr11bRedisPair(t *testing.T, routes string) (a, b *ballast) {
	rs := redistest.Start(t)
	prefix := fmt.Sprintf("sr11b%d:", time.Now().UnixNano()%1e9)
	cfg := fmt.Sprintf("state: {backend: redis, redis: {address: %q, key_prefix: %q}}\n%s", rs.Addr(), prefix, routes)
	return startBallast(t, cfg), startBallast(t, cfg)
}

// Two ballasts sharing Redis: a duplicate sent to B while A still relays
// the keyed stream attaches and gets the whole stream once A has ended
// it; a later retry on B replays it; the upstream ran once.
func TestStreamReplay11b_RedisReplayAcrossInstances(t *testing.T) {
	up := streamReplay11Held("data: a\n\n", "data: b\n\n")
	u, _ := upstream(t, up.handler)
	a, b := sr11bRedisPair(t, idemRoute(u, ""))
	c := client(t)
	_, br := streamReplay11Open(t, c, a.base+"/v1/run", "shared")
	streamReplay11ReadFirst(t, br, "data: a\n\n")
	dup := streamReplay11SendDup(c, b.base+"/v1/run", "shared")
	waitFor(t, func() bool { return b.streamReplay11Idem("attached") == 1 })
	close(up.next)
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "data: b\n\n" {
		t.Fatalf("the stream's rest on A: %q %v", rest, err)
	}
	got := streamReplay11Await(t, dup, "the duplicate on B got no answer once A's stream ended")
	if got.resp == nil || got.resp.StatusCode != 200 || got.body != "data: a\n\ndata: b\n\n" || got.resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("duplicate on B: %+v, want the whole stream replayed", got)
	}
	again, body := streamReplay11Post(t, c, b.base+"/v1/run", "shared")
	if body != "data: a\n\ndata: b\n\n" || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry on B: replayed %q body %q", again.Header.Get("Idempotent-Replayed"), body)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
	sr11bNotStoredTwice(t, a)
}

// With the file backend the recorded stream outlives the process: a
// ballast restarted on the same file replays it.
func TestStreamReplay11b_FileBackendSurvivesRestart(t *testing.T) {
	up := &streamReplay11Upstream{ct: "application/x-ndjson", events: []string{`{"n":1}` + "\n", `{"n":2}` + "\n"}}
	u, _ := upstream(t, up.handler)
	cfg := fmt.Sprintf("state: {path: %s}\n", t.TempDir()+"/state.db") + idemRoute(u, "")
	a := startBallast(t, cfg)
	c := client(t)
	_, body := streamReplay11Post(t, c, a.base+"/v1/run", "durable")
	ctx, cancel := context.WithTimeout(context.Background(), streamReplay11Bound)
	defer cancel()
	if err := a.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	b := startBallast(t, cfg)
	again, body2 := streamReplay11Post(t, c, b.base+"/v1/run", "durable")
	if body2 != body || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("after a restart: replayed %q body %q, want %q", again.Header.Get("Idempotent-Replayed"), body2, body)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// A keyed stream whose first attempt fails before any header (a reset, a
// 503, a refused primary, a hedged first copy that never answers) and
// whose next attempt streams: one record, the streaming attempt's body,
// replayed without another call.
func TestStreamReplay11b_RetriedAttemptRecordsTheStream(t *testing.T) {
	want := "data: won\n\ndata: [DONE]\n\n"
	stream := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		for _, ev := range []string{"data: won\n\n", "data: [DONE]\n\n"} {
			_, _ = io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		}
	}
	deadURL := "http://" + deadAddr(t) // refused
	for _, tc := range []struct {
		name  string
		first func(w http.ResponseWriter, r *http.Request)
		more  func(up string) (primary, more string)
	}{
		{name: "reset, then a retry", first: func(w http.ResponseWriter, r *http.Request) {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		}, more: func(up string) (string, string) {
			return up, "    retry: {attempts: 3, backoff: {base: 1ms, max: 2ms}}\n"
		}},
		{name: "503, then a retry", first: func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(503)
		}, more: func(up string) (string, string) {
			return up, "    retry: {attempts: 3, backoff: {base: 1ms, max: 2ms}}\n"
		}},
		{name: "refused primary, a fallback", more: func(up string) (string, string) {
			return deadURL, fmt.Sprintf("    fallbacks: [{upstream: %q}]\n", up)
		}},
		{name: "hedged", first: func(w http.ResponseWriter, r *http.Request) {
			select { // no headers until the hedge has won and called this copy off
			case <-r.Context().Done():
			case <-time.After(streamReplay11Bound):
			}
		}, more: func(up string) (string, string) {
			return up, "    hedge_after: 30ms\n    timeouts: {per_try: 10s, total: 20s}\n"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				if calls.Add(1) == 1 && tc.first != nil {
					tc.first(w, r)
					return
				}
				stream(w)
			})
			primary, more := tc.more(u)
			b := startBallast(t, idemRoute(primary, "")+more)
			c := client(t)
			first, body := streamReplay11Post(t, c, b.base+"/v1/run", "retried")
			if first.StatusCode != 200 || body != want {
				t.Fatalf("first answer: %d %q", first.StatusCode, body)
			}
			callsAfterFirst := calls.Load()
			again, body2 := streamReplay11Post(t, c, b.base+"/v1/run", "retried")
			if body2 != want || again.Header.Get("Idempotent-Replayed") != "true" {
				t.Errorf("retry: replayed %q body %q", again.Header.Get("Idempotent-Replayed"), body2)
			}
			if n := calls.Load(); n != callsAfterFirst {
				t.Errorf("the replay called the upstream: %d calls, %d before", n, callsAfterFirst)
			}
			if got := b.streamReplay11Idem("claimed"); got != 1 {
				t.Errorf("claimed %v, want 1", got)
			}
			sr11bNotStoredTwice(t, b)
		})
	}
}

// sr11bTrailIdem returns the idempotency field of the request line of
// the request whose answer carried id, once it is written.
func sr11bTrailLine(t *testing.T, b *ballast, id string) string {
	t.Helper()
	var line string
	waitFor(t, func() bool {
		for l := range strings.SplitSeq(b.logs.String(), "\n") {
			if strings.Contains(l, `"request_id":"`+id+`"`) && strings.Contains(l, `"body_bytes"`) {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// On a route that validates its answers (status and content type; json
// is for bodies read whole, never streams), a keyed stream is recorded
// and replayed; each outcome is counted in ballast_idempotency_total and
// said on the request's line: a stored stream "claimed", one too large
// to store "too_large" (as a buffered answer's line says), a cut one
// "claimed" and truncated.
func TestStreamReplay11b_ValidatedRouteOutcomesLoggedAndCounted(t *testing.T) {
	small := "data: ok\n\n"
	big := "data: " + strings.Repeat("b", 3000) + "\n\n"
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		switch r.URL.Path {
		case "/small":
			_, _ = io.WriteString(w, small)
		case "/big":
			_, _ = io.WriteString(w, big)
		case "/cut":
			_, _ = io.WriteString(w, small)
			w.(http.Flusher).Flush()
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		}
	})
	b := startBallast(t, "state: {max_response_bytes: 2KiB}\n"+idemRoute(u, "")+
		("    validate: {status: [2xx], content_type: [text/event-stream], json: true}\n"))
	c := client(t)
	for _, tc := range []struct {
		path, wantIdem string
		replays        bool
	}{
		{"/small", "claimed", true},
		{"/big", "too_large", false},
		{"/cut", "claimed", false},
	} {
		req, _ := http.NewRequest(http.MethodPost, b.base+tc.path, strings.NewReader(`{}`))
		req.Header.Set("Idempotency-Key", "v"+tc.path)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || (rerr != nil) != (tc.path == "/cut") {
			t.Errorf("%s: %d, read error %v", tc.path, resp.StatusCode, rerr)
		}
		line := sr11bTrailLine(t, b, resp.Header.Get("X-Request-Id"))
		if !strings.Contains(line, `"idempotency":"`+tc.wantIdem+`"`) || strings.Count(line, `"idempotency":`) != 1 {
			t.Errorf("%s: the line says %s, want idempotency %q once", tc.path, line, tc.wantIdem)
		}
		req, _ = http.NewRequest(http.MethodPost, b.base+tc.path, strings.NewReader(`{}`))
		req.Header.Set("Idempotency-Key", "v"+tc.path)
		again, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadAll(again.Body)
		again.Body.Close()
		if replayed := again.Header.Get("Idempotent-Replayed") == "true"; replayed != tc.replays {
			t.Errorf("%s: retry %d replayed %v, want %v", tc.path, again.StatusCode, replayed, tc.replays)
		}
	}
	for result, want := range map[string]float64{"claimed": 4, "replayed": 1, "too_large": 2, "unknown_outcome": 1} {
		if got := b.streamReplay11Idem(result); got != want {
			t.Errorf("%s counted %v, want %v", result, got, want)
		}
	}
	if got := b.metric("ballast_validation_failures_total", nil); got > 0 {
		t.Errorf("a stream failed validation %v times", got)
	}
}

// sr11bTwoGates is an upstream that streams one event, waits for gate1,
// streams about 320KB (more than the sockets hold, so that writes to an
// agent gone fail), waits for gate2, and ends with a last event. Other
// paths than /v1/run get a plain 200.
type sr11bTwoGates struct {
	gate1, gate2 chan struct{}
	calls        atomic.Int64
	once1, once2 sync.Once
}

func newSr11bTwoGates(t *testing.T) *sr11bTwoGates {
	g := &sr11bTwoGates{gate1: make(chan struct{}), gate2: make(chan struct{})}
	t.Cleanup(g.open2) // before the upstream's shutdown
	return g
}

func (g *sr11bTwoGates) open1() { g.once1.Do(func() { close(g.gate1) }) }
func (g *sr11bTwoGates) open2() { g.open1(); g.once2.Do(func() { close(g.gate2) }) }

func (g *sr11bTwoGates) events() []string {
	return append(streamReplay11Overflowing(), "data: last\n\n")
}

func (g *sr11bTwoGates) handler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	if r.URL.Path != "/v1/run" {
		_, _ = io.WriteString(w, "plain")
		return
	}
	g.calls.Add(1)
	w.Header().Set("Content-Type", "text/event-stream")
	ev := g.events()
	wait := func(gate chan struct{}) bool {
		select {
		case <-gate:
			return true
		case <-r.Context().Done():
			return false
		}
	}
	_, _ = io.WriteString(w, ev[0])
	w.(http.Flusher).Flush()
	if !wait(g.gate1) {
		return
	}
	for _, e := range ev[1 : len(ev)-1] {
		_, _ = io.WriteString(w, e)
		w.(http.Flusher).Flush()
	}
	if !wait(g.gate2) {
		return
	}
	_, _ = io.WriteString(w, ev[len(ev)-1])
}

// sr11bLeave sends a keyed POST on a raw connection, reads the first
// event and hangs up.
func sr11bLeave(t *testing.T, b *ballast, key string) {
	t.Helper()
	streamReplay11Leave(t, b.addr, "POST /v1/run HTTP/1.1\r\nHost: x\r\nIdempotency-Key: "+key+"\r\nContent-Length: 15\r\n\r\n{\"stream\":true}")
}

// sr11bReadingRest waits until ballast reads a keyed stream on for an
// agent that left (relayBody.readRest), as its goroutines show.
func sr11bReadingRest(t *testing.T) {
	t.Helper()
	buf := make([]byte, 1<<20)
	waitFor(t, func() bool {
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*relayBody).readRest")
	})
}

// sr11bShutdown shuts b down with a context of d and reports how long it
// took.
func sr11bShutdown(t *testing.T, b *ballast, d time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	_ = b.srv.Shutdown(ctx)
	return time.Since(start)
}

// sr11bRetryUnknown: a ballast restarted on file gets the keyed retry
// 409 outcome_unknown: the claim stayed.
func sr11bRetryUnknown(t *testing.T, cfg, key string) {
	t.Helper()
	b := startBallast(t, cfg)
	resp, body := streamReplay11Post(t, client(t), b.base+"/v1/run", key)
	if resp.StatusCode != 409 || !strings.Contains(body, "outcome_unknown") {
		t.Errorf("retry after the restart: %d %s, want 409 outcome_unknown (the call ran; its claim stays)", resp.StatusCode, body)
	}
}

// Shutdown whose drain runs out while a keyed stream is relayed calls it
// off (its line says shutting_down), and leaves its claim: the call ran,
// and a retry after the restart reads outcome_unknown, not a second call
// nor a truncated replay.
func TestStreamReplay11b_ShutdownWhileRecording(t *testing.T) {
	g := newSr11bTwoGates(t)
	u, _ := upstream(t, g.handler)
	cfg := fmt.Sprintf("state: {path: %s}\n", t.TempDir()+"/state.db") + idemRoute(u, "")
	a := startBallast(t, cfg)
	_, br := streamReplay11Open(t, client(t), a.base+"/v1/run", "stop")
	streamReplay11ReadFirst(t, br, "data: first\n\n")
	if took := sr11bShutdown(t, a, 200*time.Millisecond); took > 3*time.Second {
		t.Errorf("Shutdown took %v with a keyed stream called off", took)
	}
	if logs := a.logs.String(); !strings.Contains(logs, `"stopped":"shutting_down"`) {
		t.Errorf("the stream's line does not say it was called off: %s", logs)
	}
	sr11bRetryUnknown(t, cfg, "stop")
	if n := g.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// Shutdown whose drain runs out while ballast reads on a keyed stream for
// an agent that left (readRest) calls that read off too, at once rather
// than at timeouts.idle, and the claim stays.
func TestStreamReplay11b_ShutdownWhileReadingRest(t *testing.T) {
	g := newSr11bTwoGates(t)
	u, _ := upstream(t, g.handler)
	cfg := fmt.Sprintf("state: {path: %s}\n", t.TempDir()+"/state.db") + idemRoute(u, "") +
		"    timeouts: {idle: 60s, total: 120s}\n"
	a := startBallast(t, cfg)
	sr11bLeave(t, a, "rest")
	g.open1()
	sr11bReadingRest(t)
	if took := sr11bShutdown(t, a, 200*time.Millisecond); took > 3*time.Second {
		t.Errorf("Shutdown took %v with a keyed stream read on", took)
	}
	sr11bRetryUnknown(t, cfg, "rest")
	if n := g.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// A keyed stream holds its concurrency slot while ballast reads it on for
// an agent that left (the upstream still streams to ballast), and frees it
// once, when that read ends: then the route takes another request, and
// the slot gauge is back at 0, not below.
func TestStreamReplay11b_ConcurrencySlotHeldUntilRestRead(t *testing.T) {
	g := newSr11bTwoGates(t)
	u, _ := upstream(t, g.handler)
	b := startBallast(t, idemRoute(u, "")+"    concurrency: {max: 1, queue: 0}\n")
	c := client(t)
	inflight := func() float64 {
		return b.metric("ballast_concurrency_inflight", map[string]string{"route": "pay"})
	}
	sr11bLeave(t, b, "slot")
	g.open1()
	sr11bReadingRest(t)
	if got := inflight(); got != 1 {
		t.Errorf("while the rest is read: %v slots held, want 1", got)
	}
	if resp, body := get(t, c, b.base+"/other"); resp.StatusCode != 503 || !strings.Contains(body, "overloaded") {
		t.Errorf("another request while the slot is held: %d %s, want 503 overloaded", resp.StatusCode, body)
	}
	g.open2()
	waitFor(t, func() bool { return inflight() == 0 })
	again, body := streamReplay11Post(t, c, b.base+"/v1/run", "slot")
	if want := strings.Join(g.events(), ""); body != want || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry: replayed %q, %d bytes of %d", again.Header.Get("Idempotent-Replayed"), len(body), len(want))
	}
	for i := range 2 {
		if resp, _ := get(t, c, b.base+"/other"); resp.StatusCode != 200 {
			t.Errorf("request %d after the stream: %d", i, resp.StatusCode)
		}
	}
	if got := inflight(); got != 0 {
		t.Errorf("slots held at the end: %v, want 0", got)
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
}

// In auto mode identical streamed POSTs inside the window run once: the
// second, sent while the first streams, attaches; a third after it
// replays; a different body is another call.
func TestStreamReplay11b_AutoModeStreams(t *testing.T) {
	up := streamReplay11Held("data: a\n\n", "data: b\n\n")
	u, _ := upstream(t, up.handler)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: pay
    match: {path_prefix: /}
    upstream: %q
    idempotency: {mode: auto, window: 1m}
`, u))
	c := client(t)
	post := func(body string) (*http.Response, string) {
		resp, err := c.Post(b.base+"/v1/run", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(got)
	}
	resp, err := c.Post(b.base+"/v1/run", "application/json", strings.NewReader(`{"q":1}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	streamReplay11ReadFirst(t, br, "data: a\n\n")
	req, _ := http.NewRequest(http.MethodPost, b.base+"/v1/run", strings.NewReader(`{"q":1}`))
	req.Header.Set("Content-Type", "application/json")
	dup := streamReplay11Async(c, req)
	waitFor(t, func() bool { return b.streamReplay11Idem("attached") == 1 })
	close(up.next)
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "data: b\n\n" {
		t.Fatalf("the stream's rest: %q %v", rest, err)
	}
	got := streamReplay11Await(t, dup, "the identical request got no answer once the stream ended")
	if got.resp == nil || got.body != "data: a\n\ndata: b\n\n" || got.resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("identical request in flight: %+v", got)
	}
	if r, body := post(`{"q":1}`); body != "data: a\n\ndata: b\n\n" || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("identical request after: replayed %q body %q", r.Header.Get("Idempotent-Replayed"), body)
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times for identical requests, want 1", n)
	}
	if _, body := post(`{"q":2}`); body != "data: a\n\ndata: b\n\n" || up.calls.Load() != 2 {
		t.Errorf("another body: %q, %d calls; want a second call", body, up.calls.Load())
	}
}

// Many keyed streams at once each record their own answer: pooled record
// buffers never mix two streams, and one over the limit does not spoil
// the others.
func TestStreamReplay11b_ConcurrentStreamsKeepTheirOwn(t *testing.T) {
	const n = 16
	release := make(chan struct{})
	var calls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		calls.Add(1)
		key := r.Header.Get("Idempotency-Key")
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = fmt.Fprintf(w, "data: %s begins\n\n", key)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		size := 100
		if key == "k7" {
			size = 5000 // over the limit
		}
		for i := range 4 {
			_, _ = fmt.Fprintf(w, "data: %s %d %s\n\n", key, i, strings.Repeat(key, size))
			w.(http.Flusher).Flush()
		}
	})
	b := startBallast(t, "state: {max_response_bytes: 8KiB}\n"+idemRoute(u, ""))
	c := client(t)
	first := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, b.base+"/v1/run", strings.NewReader(`{"stream":true}`))
			req.Header.Set("Idempotency-Key", fmt.Sprintf("k%d", i))
			resp, err := c.Do(req)
			if err != nil {
				return
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			first[i] = string(got)
		}()
	}
	waitFor(t, func() bool { return calls.Load() == n })
	close(release)
	wg.Wait()
	for i := range n {
		key := fmt.Sprintf("k%d", i)
		resp, body := streamReplay11Post(t, c, b.base+"/v1/run", key)
		if body != first[i] || !strings.HasPrefix(body, "data: "+key+" begins") || strings.Count(body, "data: ") != 5 {
			t.Errorf("%s: retry body of %d bytes differs from the stream's %d", key, len(body), len(first[i]))
		}
		if replayed := resp.Header.Get("Idempotent-Replayed") == "true"; replayed != (key != "k7") {
			t.Errorf("%s: replayed %v", key, replayed)
		}
	}
	if got := calls.Load(); got != n+1 {
		t.Errorf("the upstream ran %d times, want %d (k7 alone again)", got, n+1)
	}
	sr11bNotStoredTwice(t, b)
}

// A duplicate attached to a keyed stream in flight learns how it ended:
// outcome_unknown when the upstream broke it off, a call of its own when
// it was too large to store (the key was freed), and 409 in_progress when
// its own deadline (X-Ballast-Timeout) ends before the stream does.
func TestStreamReplay11b_AttachedDuplicateLearnsTheEnd(t *testing.T) {
	for _, tc := range []struct {
		name, path, timeout string
		wantStatus          int
		wantReason          string
		wantCalls           int64
	}{
		{name: "cut", path: "/cut", wantStatus: 409, wantReason: "outcome_unknown", wantCalls: 1},
		{name: "too large", path: "/big", wantStatus: 200, wantCalls: 2},
		{name: "own deadline", path: "/ok", timeout: "300ms", wantStatus: 409, wantReason: "in_progress", wantCalls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			gate := make(chan struct{})
			var once sync.Once
			open := func() { once.Do(func() { close(gate) }) }
			t.Cleanup(open)
			u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				n := calls.Add(1)
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				if n == 1 {
					select {
					case <-gate:
					case <-r.Context().Done():
						return
					}
				}
				switch r.URL.Path {
				case "/cut":
					if conn, _, err := w.(http.Hijacker).Hijack(); err == nil && n == 1 {
						_ = conn.Close()
						return
					}
				case "/big":
					_, _ = io.WriteString(w, "data: "+strings.Repeat("x", 4000)+"\n\n")
				}
				_, _ = io.WriteString(w, "data: last\n\n")
			})
			b := startBallast(t, "state: {max_response_bytes: 2KiB}\n"+idemRoute(u, ""))
			c := client(t)
			_, br := streamReplay11Open(t, c, b.base+tc.path, "attach")
			streamReplay11ReadFirst(t, br, "data: first\n\n")
			type answer struct {
				status int
				body   string
			}
			dup := make(chan answer, 1)
			go func() {
				req, _ := http.NewRequest(http.MethodPost, b.base+tc.path, strings.NewReader(`{"stream":true}`))
				req.Header.Set("Idempotency-Key", "attach")
				if tc.timeout != "" {
					req.Header.Set("X-Ballast-Timeout", tc.timeout)
				}
				resp, err := c.Do(req)
				if err != nil {
					dup <- answer{}
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				dup <- answer{resp.StatusCode, string(body)}
			}()
			waitFor(t, func() bool { return b.streamReplay11Idem("attached") == 1 })
			if tc.timeout == "" {
				open()
			}
			var got answer
			select {
			case got = <-dup:
			case <-time.After(streamReplay11Bound):
				t.Fatal("the attached duplicate got no answer")
			}
			if got.status != tc.wantStatus || !strings.Contains(got.body, tc.wantReason) {
				t.Errorf("attached duplicate: %d %q, want %d %s", got.status, got.body, tc.wantStatus, tc.wantReason)
			}
			open()
			_, _ = io.ReadAll(br)
			if n := calls.Load(); n != tc.wantCalls {
				t.Errorf("the upstream ran %d times, want %d", n, tc.wantCalls)
			}
		})
	}
}

// With Redis, a keyed stream whose agent left on A is read on by A and
// recorded (in the background, as Redis records are): the retry sent to
// B replays all of it; a stream the upstream cut on A reads as
// outcome_unknown on B.
func TestStreamReplay11b_RedisAgentLeftAndCut(t *testing.T) {
	g := newSr11bTwoGates(t)
	var cutCalls atomic.Int64
	u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cut" {
			g.handler(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		cutCalls.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			_ = conn.Close()
		}
	})
	a, b := sr11bRedisPair(t, idemRoute(u, ""))
	c := client(t)
	sr11bLeave(t, a, "left")
	g.open2()
	want := strings.Join(g.events(), "")
	var body string
	var again *http.Response
	waitFor(t, func() bool { // B attaches while A reads on, or replays once A recorded it
		again, body = streamReplay11Post(t, c, b.base+"/v1/run", "left")
		return again.StatusCode == 200
	})
	if body != want || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry on B: replayed %q, %d bytes of %d", again.Header.Get("Idempotent-Replayed"), len(body), len(want))
	}
	if n := g.calls.Load(); n != 1 {
		t.Errorf("the upstream ran %d times, want 1", n)
	}
	req, _ := http.NewRequest(http.MethodPost, a.base+"/cut", strings.NewReader(`{"stream":true}`))
	req.Header.Set("Idempotency-Key", "cut")
	if resp, err := c.Do(req); err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	var status int
	var text string
	waitFor(t, func() bool {
		req, _ := http.NewRequest(http.MethodPost, b.base+"/cut", strings.NewReader(`{"stream":true}`))
		req.Header.Set("Idempotency-Key", "cut")
		req.Header.Set("X-Ballast-Timeout", "1s")
		resp, err := c.Do(req)
		if err != nil {
			return false
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		status, text = resp.StatusCode, string(raw)
		return !strings.Contains(text, "in_progress")
	})
	if status != 409 || !strings.Contains(text, "outcome_unknown") || cutCalls.Load() != 1 {
		t.Errorf("retry on B of a cut stream: %d %s, %d calls; want 409 outcome_unknown, 1", status, text, cutCalls.Load())
	}
	sr11bNotStoredTwice(t, a)
}
