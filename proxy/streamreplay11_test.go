package proxy_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A keyed stream (an event stream, NDJSON) is relayed as it arrives and,
// once the upstream ended it whole within state.max_response_bytes,
// recorded under its key like a buffered answer: the agent's retry
// replays it instead of running the call (a second generation billed, a
// tool's side effect repeated) again.

// streamReplay11Bound bounds every wait of these tests on an event.
const streamReplay11Bound = 5 * time.Second

// streamReplay11Upstream is a loopback upstream that streams events of
// content type ct, flushing after each, and counts its calls. Before the
// event at index gate (when gate > 0) it waits for next to be closed.
type streamReplay11Upstream struct {
	ct     string
	events []string
	gate   int
	next   chan struct{}
	calls  atomic.Int64
}

func (u *streamReplay11Upstream) handler(w http.ResponseWriter, r *http.Request) {
	u.calls.Add(1)
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", u.ct)
	w.Header().Set("X-Model", "m1")
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for i, ev := range u.events {
		if i == u.gate && u.gate > 0 {
			select {
			case <-u.next:
			case <-r.Context().Done():
				return
			case <-time.After(streamReplay11Bound):
				return
			}
		}
		_, _ = io.WriteString(w, ev)
		w.(http.Flusher).Flush()
	}
}

// streamReplay11Post sends a keyed POST and returns the answer's status,
// headers and whole body.
func streamReplay11Post(t *testing.T, c *http.Client, url, key string) (*http.Response, string) {
	t.Helper()
	return sec11Post(t, c, url, `{"stream":true}`, "Content-Type", "application/json", "Idempotency-Key", key)
}

// streamReplay11Open sends a keyed POST and returns the response with its
// body unread, and a reader on it.
func streamReplay11Open(t *testing.T, c *http.Client, url, key string) (*http.Response, *bufio.Reader) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, bufio.NewReader(resp.Body)
}

// streamReplay11ReadEvent reads one event, up to and with its delimiter,
// within streamReplay11Bound: a relay that holds the stream back fails.
func streamReplay11ReadEvent(t *testing.T, br *bufio.Reader, delim string) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		var b strings.Builder
		for !strings.HasSuffix(b.String(), delim) {
			c, err := br.ReadByte()
			if err != nil {
				break
			}
			b.WriteByte(c)
		}
		got <- b.String()
	}()
	select {
	case ev := <-got:
		return ev
	case <-time.After(streamReplay11Bound):
		t.Fatalf("no event within %v: the relay holds the stream back", streamReplay11Bound)
		return ""
	}
}

func (b *ballast) streamReplay11Idem(result string) float64 {
	return b.metric("ballast_idempotency_total", map[string]string{"route": "pay", "result": result})
}

// A keyed stream that ends whole is replayed to the retry: the same
// status, content type, upstream headers and body, byte for byte, marked
// Idempotent-Replayed with no attempt; the upstream ran once.
func TestStreamReplay11_StreamReplaysWhole(t *testing.T) {
	for _, tc := range []struct {
		name, ct string
		events   []string
	}{
		{"event stream", "text/event-stream", []string{
			"event: delta\ndata: {\"t\":\"Hel\"}\n\n", "data: {\"t\":\"lo\"}\r\n\r\n", ": comment\nid: 3\ndata: [DONE]\n\n"}},
		{"ndjson", "application/x-ndjson", []string{
			`{"status":"running","step":1}` + "\n", `{"status":"running","step":2}` + "\n", `{"status":"done","result":42}` + "\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := &streamReplay11Upstream{ct: tc.ct, events: tc.events}
			b := streamReplay11Start(t, up, "")
			c := client(t)
			first, body := streamReplay11Post(t, c, b.base+"/v1/run", "k-"+tc.ct)
			want := strings.Join(tc.events, "")
			if first.StatusCode != 200 || body != want || first.Header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("first answer: %d replayed %q body %q", first.StatusCode, first.Header.Get("Idempotent-Replayed"), body)
			}
			again, body2 := streamReplay11Post(t, c, b.base+"/v1/run", "k-"+tc.ct)
			if again.StatusCode != 200 || body2 != want {
				t.Errorf("retry: %d body %q, want 200 and the stream's body %q", again.StatusCode, body2, want)
			}
			for k, v := range map[string]string{
				"Content-Type": tc.ct, "X-Model": "m1", "Idempotent-Replayed": "true", "X-Ballast-Attempts": "0",
			} {
				if got := again.Header.Get(k); got != v {
					t.Errorf("retry's %s = %q, want %q", k, got, v)
				}
			}
			if again.Header.Get("X-Request-Id") == first.Header.Get("X-Request-Id") {
				t.Errorf("the replay carries the first request's id %q", again.Header.Get("X-Request-Id"))
			}
			if n := up.calls.Load(); n != 1 {
				t.Errorf("the upstream ran %d times for a keyed stream and its retry, want 1", n)
			}
			if got := b.streamReplay11Idem("replayed"); got != 1 {
				t.Errorf("replayed counted %v, want 1", got)
			}
			if got := b.streamReplay11Idem("too_large"); got > 0 {
				t.Errorf("too_large counted %v for a stream that fits", got)
			}
			// Another key is another call.
			if _, body3 := streamReplay11Post(t, c, b.base+"/v1/run", "other"); body3 != want || up.calls.Load() != 2 {
				t.Errorf("another key: body %q, %d upstream calls; want the stream and 2", body3, up.calls.Load())
			}
		})
	}
}

// A stream over state.max_response_bytes is relayed whole, not stored,
// counted too_large, and frees its key: the retry runs again.
func TestStreamReplay11_OverLimitFreesTheKey(t *testing.T) {
	ev, up, b := streamReplay11StartTooLarge(t)
	c := client(t)
	for i := range 2 {
		resp, body := streamReplay11Post(t, c, b.base+"/v1/run", "big")
		if resp.StatusCode != 200 || body != ev+ev+ev || resp.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("request %d: %d replayed %q, %d bytes of %d", i, resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), len(body), 3*len(ev))
		}
		// too_large is counted as the relay ends, which may be after the
		// agent read the last byte; the request's line comes after it.
		sr11bTrailLine(t, b, resp.Header.Get("X-Request-Id"))
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times, want 2: a stream too large to store frees its key", n)
	}
	if got := b.streamReplay11Idem("too_large"); got != 2 {
		t.Errorf("too_large counted %v, want 2", got)
	}
}

// A stream the upstream breaks off mid-way, or lets go silent past
// timeouts.idle, ran without a whole answer: the retry gets 409
// outcome_unknown, not a second call; on a route declared idempotent the
// key is freed and the retry runs.
func TestStreamReplay11_BrokenStreamOutcomeUnknown(t *testing.T) {
	for _, tc := range []struct {
		name, extra, route string
		silent             bool
		wantStatus         int
		wantCalls          int64
	}{
		{name: "broken off", wantStatus: 409, wantCalls: 1},
		{name: "broken off, idempotent", extra: ", idempotent: true", wantStatus: 200, wantCalls: 2},
		{name: "idle timeout", route: "    timeouts: {idle: 300ms}\n", silent: true, wantStatus: 409, wantCalls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			quit := make(chan struct{})
			u, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				n := calls.Add(1)
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, "data: 1\n\n")
				w.(http.Flusher).Flush()
				if n > 1 {
					_, _ = io.WriteString(w, "data: 2\n\n")
					return
				}
				if tc.silent {
					select {
					case <-quit:
					case <-time.After(streamReplay11Bound):
					}
					return
				}
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					_ = conn.Close() // mid-body: no last chunk
				}
			})
			t.Cleanup(func() { close(quit) }) // before the upstream's shutdown
			b := startBallast(t, idemRoute(u, tc.extra)+tc.route)
			c := client(t)
			req, _ := http.NewRequest(http.MethodPost, b.base+"/v1/run", strings.NewReader(`{"stream":true}`))
			req.Header.Set("Idempotency-Key", "cut")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil {
				t.Fatalf("the cut stream reached the agent as whole: %q", body)
			}
			again, body2 := streamReplay11Post(t, c, b.base+"/v1/run", "cut")
			if again.StatusCode != tc.wantStatus || (tc.wantStatus == 409) != strings.Contains(body2, "outcome_unknown") {
				t.Errorf("retry: %d %q, want %d", again.StatusCode, body2, tc.wantStatus)
			}
			if again.Header.Get("Idempotent-Replayed") != "" {
				t.Errorf("a cut stream was replayed: %q", body2)
			}
			if n := calls.Load(); n != tc.wantCalls {
				t.Errorf("the upstream ran %d times, want %d", n, tc.wantCalls)
			}
		})
	}
}

// The record is made as the stream passes, not by holding it back: the
// agent reads the first event before the upstream sends the second (it
// waits for the test, which has read that event from ballast), and the
// retry then replays both.
func TestStreamReplay11_RelayedAsItArrives(t *testing.T) {
	up := streamReplay11Held("data: first\n\n", "data: second\n\n")
	b := streamReplay11Start(t, up, "")
	c := client(t)
	resp, br := streamReplay11Open(t, c, b.base+"/v1/run", "live")
	streamReplay11ReadFirst(t, br, "data: first\n\n")
	close(up.next)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "data: second\n\n" || resp.StatusCode != 200 {
		t.Fatalf("the rest of the stream: %d %q %v", resp.StatusCode, rest, err)
	}
	again, body := streamReplay11Post(t, c, b.base+"/v1/run", "live")
	if body != "data: first\n\ndata: second\n\n" || again.Header.Get("Idempotent-Replayed") != "true" || up.calls.Load() != 1 {
		t.Errorf("retry: replayed %q body %q, %d upstream calls", again.Header.Get("Idempotent-Replayed"), body, up.calls.Load())
	}
}

// A duplicate that arrives while the stream is still relayed makes no
// second call: it attaches and gets the whole stream once it has ended
// (on_conflict: attach), or 409 in_progress at once (reject).
func TestStreamReplay11_DuplicateInFlight(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		reject      bool
	}{
		{name: "attach"},
		{name: "reject", extra: ", on_conflict: reject", reject: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := streamReplay11Held("data: a\n\n", "data: b\n\n")
			b := streamReplay11Start(t, up, tc.extra)
			c := client(t)
			_, br := streamReplay11Open(t, c, b.base+"/v1/run", "dup")
			streamReplay11ReadFirst(t, br, "data: a\n\n")
			dup := streamReplay11SendDup(c, b.base+"/v1/run", "dup")
			if tc.reject {
				got := streamReplay11Await(t, dup, "the duplicate was not refused at once")
				if got.resp == nil || got.resp.StatusCode != 409 || !strings.Contains(got.body, "in_progress") {
					t.Errorf("duplicate: %+v, want 409 in_progress", got)
				}
				close(up.next)
				if rest, err := io.ReadAll(br); err != nil || string(rest) != "data: b\n\n" {
					t.Errorf("the stream's rest: %q %v", rest, err)
				}
			} else {
				waitFor(t, func() bool { return b.streamReplay11Idem("attached") == 1 })
				close(up.next)
				if rest, err := io.ReadAll(br); err != nil || string(rest) != "data: b\n\n" {
					t.Errorf("the stream's rest: %q %v", rest, err)
				}
				got := streamReplay11Await(t, dup, "the attached duplicate got no answer once the stream ended")
				if got.resp == nil || got.resp.StatusCode != 200 || got.body != "data: a\n\ndata: b\n\n" ||
					got.resp.Header.Get("Idempotent-Replayed") != "true" || got.resp.Header.Get("Content-Type") != "text/event-stream" {
					t.Errorf("attached duplicate: %+v, want the whole stream replayed", got)
				}
			}
			if n := up.calls.Load(); n != 1 {
				t.Errorf("the upstream ran %d times, want 1: a duplicate of a stream in flight ran it again", n)
			}
		})
	}
}

// An agent that hangs up mid-stream retries: the keyed call runs on (it
// is detached from the agent), ballast reads the rest of the stream into
// the record, and the retry replays the whole of it, without a second call.
func TestStreamReplay11_AgentLeftMidStream(t *testing.T) {
	events := streamReplay11Overflowing() // ballast's writes to the gone agent fail
	up := streamReplay11Held(events...)
	b := streamReplay11Start(t, up, "")
	sr11bLeave(t, b, "gone") // the agent leaves
	close(up.next)
	streamReplay11RetryReplaysWhole(t, b, up, "gone")
	// The path under test: the relay to the agent failed, and ballast
	// read the rest of the stream itself.
	waitFor(t, func() bool { return strings.Contains(b.logs.String(), `"stopped":"agent_gone"`) })
}

// A GET's stream is not recorded: it may be a standing stream (MCP's)
// that the total deadline does not end, whose claim would hold every
// duplicate until its lease ran out. Its key is freed at once, as before.
func TestStreamReplay11_GetStreamNotRecorded(t *testing.T) {
	up := &streamReplay11Upstream{ct: "text/event-stream", events: []string{"data: a\n\n", "data: b\n\n"}}
	b := streamReplay11Start(t, up, "")
	c := client(t)
	for i := range 2 {
		resp, body := get(t, c, b.base+"/mcp", "Idempotency-Key", "standing")
		if resp.StatusCode != 200 || body != "data: a\n\ndata: b\n\n" || resp.Header.Get("Idempotent-Replayed") != "" {
			t.Errorf("GET %d: %d replayed %q body %q", i, resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), body)
		}
	}
	if n := up.calls.Load(); n != 2 {
		t.Errorf("the upstream ran %d times, want 2: a GET stream frees its key", n)
	}
}

// streamReplay11Answer is what an agent got from one call; resp is nil
// when the call failed.
type streamReplay11Answer struct {
	resp *http.Response
	body string
}

// streamReplay11Async sends req on c from a goroutine of its own (a
// duplicate sent while the first call's stream still runs); its answer,
// the body read whole, arrives on the channel.
func streamReplay11Async(c *http.Client, req *http.Request) <-chan streamReplay11Answer {
	out := make(chan streamReplay11Answer, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			out <- streamReplay11Answer{}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- streamReplay11Answer{resp, string(body)}
	}()
	return out
}
