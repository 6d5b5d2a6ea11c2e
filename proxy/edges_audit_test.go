package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// Audit of the deadline at the edges: hedging, the concurrency queue,
// fallbacks, X-Ballast-Timeout, non-SSE streams and repeated hint headers
// (docs/retries.md "The deadline law", docs/config.md#timeouts and
// hedge_after, docs/errors.md). Waits run on a fake clock where ballast
// decides them; upstreams are real loopback servers.

// edgesDrive returns the answer of ch, advancing clock by step whenever a
// wait is pending, so that a build that arms a timer it should not have
// is driven through it (and caught by what the caller asserts).
func edgesDrive(t *testing.T, clock *policy.FakeClock, ch <-chan raResult, step time.Duration) raResult {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("request: %v", r.err)
			}
			return r
		case <-time.After(2 * time.Millisecond):
		}
		if clock.Waiters() > 0 {
			clock.Advance(step)
		}
		if time.Now().After(deadline) {
			t.Fatal("no answer within 10s")
		}
	}
}

// --- hedging at the deadline ----------------------------------------------------

// A hedge goes out only while there is time left to send it in: when the
// deadline (an agent's X-Ballast-Timeout here) ends before hedge_after,
// the first copy runs alone to the deadline and the agent gets 504
// timeout for it — no second copy reaches the upstream, none is counted
// in ballast_hedges_total, and none is paid from the retry budget.
func TestEdgesAuditNoHedgePastTheDeadline(t *testing.T) {
	for _, tc := range []struct {
		name, timeout string
	}{
		{"deadline before hedge_after", "300ms"},
		{"deadline at hedge_after", "2s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				<-r.Context().Done() // never answers
			})
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 2s
    retry: {attempts: 1}
    timeouts: {per_try: 60s, total: 120s}
`, up))
			ch := raSend(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", tc.timeout)
			waitFor(t, func() bool { return hits.Load() == 1 })
			r := edgesDrive(t, clock, ch, 2*time.Second)
			p := decodeProblem(t, r.resp, r.body)
			if r.resp.StatusCode != 504 || p.Reason != "timeout" || p.Attempts != 1 {
				t.Errorf("%d %+v, want 504 timeout after 1 attempt", r.resp.StatusCode, p)
			}
			if hits.Load() != 1 {
				t.Errorf("a hedge reached the upstream after the deadline: %d copies", hits.Load())
			}
			if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got > 0 {
				t.Errorf("ballast_hedges_total = %v for a hedge the deadline left no time for", got)
			}
		})
	}
}

// With time left at hedge_after, the hedge still goes out (the guard above
// must not switch hedging off for requests with a short deadline).
func TestEdgesAuditHedgeWithTimeLeft(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			<-r.Context().Done()
			return
		}
		_, _ = io.WriteString(w, "fast")
	})
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    hedge_after: 2s
    timeouts: {per_try: 60s, total: 120s}
`, up))
	ch := raSend(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "5s")
	waitFor(t, func() bool { return hits.Load() == 1 && clock.Waiters() == 1 })
	clock.Advance(2 * time.Second)
	r := raAnswer(t, ch)
	if r.resp.StatusCode != 200 || r.body != "fast" || hits.Load() != 2 {
		t.Errorf("%d %q after %d copies", r.resp.StatusCode, r.body, hits.Load())
	}
	if got := b.metric("ballast_hedges_total", map[string]string{"route": "r"}); got != 1 {
		t.Errorf("ballast_hedges_total = %v", got)
	}
}

// --- the concurrency queue at the deadline -------------------------------------

// edgesQueue is a route with one concurrency slot: first holds it until
// release is closed, and queued waits behind it with a 10s deadline (an
// agent's X-Ballast-Timeout), its wait armed on clock.
type edgesQueue struct {
	clock         *policy.FakeClock
	b             *ballast
	hits          *atomic.Int64
	release       chan struct{}
	first, queued <-chan raResult
}

func edgesQueueBehindOne(t *testing.T) *edgesQueue {
	t.Helper()
	q := &edgesQueue{clock: policy.NewFakeClock(time.Now()), hits: new(atomic.Int64), release: make(chan struct{})}
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		if q.hits.Add(1) == 1 {
			select {
			case <-q.release:
			case <-r.Context().Done():
			}
		}
		_, _ = io.WriteString(w, "ok")
	})
	q.b = startBallastClock(t, q.clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    concurrency: {max: 1, queue: 4, max_wait: 1m}
    timeouts: {per_try: 60s, total: 100s}
`, up))
	q.first = raSend(t, "GET", q.b.base+"/x", "")
	waitFor(t, func() bool { return q.hits.Load() == 1 })
	q.queued = raSend(t, "GET", q.b.base+"/x", "", "X-Ballast-Timeout", "10s")
	waitFor(t, func() bool {
		return q.b.metric("ballast_concurrency_queue_depth", map[string]string{"route": "r"}) == 1
	})
	waitFor(t, func() bool { return q.clock.Waiters() == 1 })
	return q
}

// The wait for a concurrency slot, like the rate-limit turn, ends before
// the request's deadline: a slot that frees up only at the deadline leaves
// no time to send in. The queued request is answered 503 overloaded
// (errors.md: it "waited in the queue longer than ... its deadline"),
// never forwarded, and at once when its deadline comes on the server's
// clock.
func TestEdgesAuditQueueEndsBeforeTheDeadline(t *testing.T) {
	q := edgesQueueBehindOne(t)
	q.clock.Advance(10*time.Second - time.Millisecond)
	select {
	case r := <-q.queued:
		t.Fatalf("the queued request ended before its deadline: %v %q", r.err, r.body)
	case <-time.After(20 * time.Millisecond):
	}
	q.clock.Advance(time.Millisecond) // the deadline
	var r raResult
	select {
	case r = <-q.queued:
	case <-time.After(3 * time.Second):
		close(q.release)
		r = raAnswer(t, q.queued)
		t.Fatalf("the queued request was still waiting at its deadline; once the slot freed it got %d %q", r.resp.StatusCode, r.body)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if p := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 503 || p.Reason != "overloaded" || p.Attempts != 0 || r.resp.Header.Get("Retry-After") == "" {
		t.Errorf("%d %+v (Retry-After %q), want 503 overloaded with Retry-After", r.resp.StatusCode, p, r.resp.Header.Get("Retry-After"))
	}
	close(q.release)
	if r := raAnswer(t, q.first); r.resp.StatusCode != 200 {
		t.Errorf("first: %d", r.resp.StatusCode)
	}
	if q.hits.Load() != 1 {
		t.Errorf("the queued request reached the upstream: hits %d", q.hits.Load())
	}
}

// A slot that frees up with time left is taken, and the request sent.
func TestEdgesAuditQueueGrantWithTimeLeft(t *testing.T) {
	q := edgesQueueBehindOne(t)
	q.clock.Advance(9 * time.Second)
	close(q.release)
	if r := raAnswer(t, q.first); r.resp.StatusCode != 200 {
		t.Errorf("first: %d", r.resp.StatusCode)
	}
	if r := raAnswer(t, q.queued); r.resp.StatusCode != 200 || r.body != "ok" || q.hits.Load() != 2 {
		t.Errorf("queued: %d %q, hits %d", r.resp.StatusCode, r.body, q.hits.Load())
	}
}

// --- streams of unknown length that are not SSE --------------------------------

// Every streaming media type has its headers relayed as they came, not
// with the first line: an NDJSON model stream (Ollama's
// application/x-ndjson), JSON Lines and JSON text sequences (RFC 7464)
// think before their first line as an SSE stream does, and an HTTP
// client's wait for response headers must not run out meanwhile.
func TestEdgesAuditStreamHeadersBeforeFirstLine(t *testing.T) {
	for _, ct := range []string{
		"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
		"application/json-seq", "Application/X-NDJSON; charset=utf-8",
	} {
		t.Run(ct, func(t *testing.T) {
			seen := make(chan struct{})
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", ct)
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				select { // the first line waits until the agent has the headers
				case <-seen:
				case <-r.Context().Done():
					return
				}
				_, _ = io.WriteString(w, "{\"n\":1}\n")
			})
			b := startBallast(t, streamsAuditRoute(up, "    retry: {unsafe_methods: true}\n"))
			got := make(chan raResult, 1)
			c := client(t)
			go func() {
				resp, err := c.Post(b.base+"/api/chat", "application/json", strings.NewReader(`{"stream":true}`))
				got <- raResult{resp: resp, err: err}
			}()
			var res raResult
			select {
			case res = <-got:
			case <-time.After(streamsAuditBound):
				close(seen)
				if res = <-got; res.err == nil {
					res.resp.Body.Close()
				}
				t.Fatalf("no response headers while the %s stream was open and silent", ct)
			}
			if res.err != nil {
				t.Fatal(res.err)
			}
			defer res.resp.Body.Close()
			close(seen)
			body, err := io.ReadAll(res.resp.Body)
			if err != nil || string(body) != "{\"n\":1}\n" || res.resp.Header.Get("Content-Type") != ct {
				t.Errorf("stream %q %v (Content-Type %q)", body, err, res.resp.Header.Get("Content-Type"))
			}
		})
	}
}

// A chunked JSON answer is not a stream: its headers go out with its body,
// in one write, as before (no flush of its own).
func TestEdgesAuditChunkedJSONIsNotFlushedEarly(t *testing.T) {
	seen := make(chan struct{})
	t.Cleanup(func() { close(seen) })
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-seen:
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	b := startBallast(t, streamsAuditRoute(up, ""))
	start := time.Now()
	resp, err := client(t).Get(b.base + "/x")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("the headers of a chunked JSON answer came after %v, before its body", took)
	}
	if body, _ := io.ReadAll(resp.Body); string(body) != `{"ok":true}` {
		t.Errorf("body %q", body)
	}
}

// edgesNDJSONUpstream answers with an NDJSON stream: one line at once,
// and the second only when release is closed.
func edgesNDJSONUpstream(t *testing.T) (url string, release chan struct{}) {
	t.Helper()
	release = make(chan struct{})
	url, _ = upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "{\"n\":1}\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "{\"n\":2}\n")
	})
	return url, release
}

// edgesFirstNDJSONLine fails with heldBack unless the first line of
// edgesNDJSONUpstream's stream reaches the agent within streamsAuditBound,
// while the second is still held by release.
func edgesFirstNDJSONLine(t *testing.T, body io.Reader, release chan struct{}, heldBack string) {
	t.Helper()
	line := make(chan string, 1)
	go func() {
		buf := make([]byte, 8)
		_, _ = io.ReadFull(body, buf)
		line <- string(buf)
	}()
	select {
	case l := <-line:
		if l != "{\"n\":1}\n" {
			t.Errorf("first line %q", l)
		}
	case <-time.After(streamsAuditBound):
		close(release)
		t.Fatal(heldBack)
	}
}

// A GET NDJSON stream is a standing stream like a GET event stream: quiet
// while the server has no news, it outlives timeouts.idle and
// timeouts.total while the agent is there.
func TestEdgesAuditStandingNDJSONStream(t *testing.T) {
	up, release := edgesNDJSONUpstream(t)
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {connect: 100ms, idle: 100ms, total: 300ms}\n"))
	resp, err := client(t).Get(b.base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 8)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "{\"n\":1}\n" {
		t.Fatalf("first line %q %v", buf, err)
	}
	time.AfterFunc(600*time.Millisecond, func() { close(release) }) // past idle and total
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "{\"n\":2}\n" {
		t.Errorf("a standing NDJSON stream was cut: rest %q, %v", rest, err)
	}
	if got := b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}); got > 0 {
		t.Errorf("ballast_stream_truncated_total = %v", got)
	}
}

// A POSTed NDJSON stream is bounded as a POSTed event stream is: silence
// beyond timeouts.idle cuts it, and the agent sees it cut.
func TestEdgesAuditNDJSONStreamIdle(t *testing.T) {
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "{\"n\":1}\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	b := startBallast(t, streamsAuditRoute(up, "    timeouts: {idle: 200ms, total: 30s}\n    retry: {unsafe_methods: true}\n"))
	resp, err := client(t).Post(b.base+"/api/chat", "application/json", strings.NewReader(`{}`))
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil {
			t.Fatalf("a silent NDJSON stream ended as a clean %d %q", resp.StatusCode, body)
		}
	}
	waitFor(t, func() bool { return b.metric("ballast_stream_truncated_total", map[string]string{"route": "s"}) == 1 })
}

// validate's body checks skip streams, as they skip event streams: an
// NDJSON stream is no JSON document, and reading it whole would hold the
// stream back from the agent until it ended.
func TestEdgesAuditNDJSONStreamSkipsBodyChecks(t *testing.T) {
	up, release := edgesNDJSONUpstream(t)
	b := startBallast(t, streamsAuditRoute(up, "    retry: {unsafe_methods: true}\n    validate: {status: [2xx], content_type: [application/x-ndjson], json: true}\n"))
	resp, err := client(t).Post(b.base+"/api/chat", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	edgesFirstNDJSONLine(t, resp.Body, release, "the first NDJSON line was held back for validation")
	close(release)
	if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "{\"n\":2}\n" || resp.StatusCode != 200 {
		t.Errorf("%d rest %q %v", resp.StatusCode, rest, err)
	}
}

// A keyed NDJSON stream is relayed as it comes, like a keyed event
// stream: it cannot be replayed, so there is nothing to read ahead for.
func TestEdgesAuditKeyedNDJSONStreamNotHeld(t *testing.T) {
	up, release := edgesNDJSONUpstream(t)
	b := startBallast(t, streamsAuditRoute(up, "    idempotency: {mode: header}\n"))
	req, _ := http.NewRequest("POST", b.base+"/api/chat", strings.NewReader(`{}`))
	req.Header.Set("Idempotency-Key", "nd-1")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	edgesFirstNDJSONLine(t, resp.Body, release, "a keyed NDJSON stream was held back until it ended")
	close(release)
	if rest, err := io.ReadAll(resp.Body); err != nil || string(rest) != "{\"n\":2}\n" {
		t.Errorf("rest %q %v", rest, err)
	}
}

// --- repeated hint lines ------------------------------------------------------

// Retry-After is not a list: a response with several lines is malformed
// (RFC 9110 §5.3), and a recipient must not let a garbage line hide a
// valid one. ballast reads every line, ignores the malformed ones, and
// of several valid ones waits the longest (never coming back before any
// of them allows), as it takes the latest of several rate-limit resets.
// The same holds for retry-after-ms and the rate-limit reset headers.
func TestEdgesAuditRepeatedHintLines(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines [][2]string
		want  time.Duration
	}{
		{"garbage then valid Retry-After", [][2]string{{"Retry-After", "soon"}, {"Retry-After", "3"}}, 3 * time.Second},
		{"valid then garbage Retry-After", [][2]string{{"Retry-After", "3"}, {"Retry-After", "later"}}, 3 * time.Second},
		{"two valid Retry-After", [][2]string{{"Retry-After", "3"}, {"Retry-After", "1"}}, 3 * time.Second},
		{"garbage then valid retry-after-ms", [][2]string{{"retry-after-ms", "x"}, {"retry-after-ms", "3000"}, {"Retry-After", "1"}}, 3 * time.Second},
		{"garbage then valid OpenAI reset", [][2]string{{"x-ratelimit-remaining-requests", "0"}, {"x-ratelimit-reset-requests", "soon"}, {"x-ratelimit-reset-requests", "3s"}}, 3 * time.Second},
		{"RateLimit list over two lines", [][2]string{{"RateLimit", `"a";r=5;t=1`}, {"RateLimit", `"b";r=0;t=3`}}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			var hits atomic.Int64
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					for _, kv := range tc.lines {
						w.Header().Add(kv[0], kv[1])
					}
					w.WriteHeader(429)
					return
				}
				_, _ = io.WriteString(w, "ok")
			})
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    retry: {backoff: {base: 1ms, max: 1ms}}
    timeouts: {per_try: 60s, total: 120s}
`, up))
			ch := raSend(t, "GET", b.base+"/x", "")
			waitFor(t, func() bool { return hits.Load() == 1 && clock.Waiters() == 1 })
			clock.Advance(tc.want - time.Millisecond)
			if hits.Load() != 1 || clock.Waiters() != 1 {
				t.Fatalf("the retry went out before the hint of %v (hits %d)", tc.want, hits.Load())
			}
			clock.Advance(time.Millisecond)
			r := edgesDrive(t, clock, ch, time.Second)
			if r.resp.StatusCode != 200 || hits.Load() != 2 {
				t.Errorf("%d %q hits %d", r.resp.StatusCode, r.body, hits.Load())
			}
		})
	}
}

// --- X-Ballast-Timeout ----------------------------------------------------------

// X-Ballast-Timeout lowers the deadline and never raises it: below
// per_try it cuts the attempt (504 in about that time, not per_try's);
// above timeouts.total it is capped by total.
func TestEdgesAuditTimeoutHeaderBounds(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		<-r.Context().Done()
	})
	for _, tc := range []struct {
		name, header, timeouts string
		atLeast, atMost        time.Duration
	}{
		{"below per_try", "300ms", "{per_try: 20s, total: 60s}", 250 * time.Millisecond, 3 * time.Second},
		{"above total", "1h", "{connect: 100ms, per_try: 20s, total: 400ms}", 350 * time.Millisecond, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits.Store(0)
			b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    breaker: {failures: 1}
    timeouts: %s
`, up, tc.timeouts))
			start := time.Now()
			resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", tc.header)
			took := time.Since(start)
			p := decodeProblem(t, resp, body)
			if resp.StatusCode != 504 || p.Reason != "timeout" || p.Attempts != 1 || hits.Load() != 1 {
				t.Errorf("%d %+v hits %d", resp.StatusCode, p, hits.Load())
			}
			if took < tc.atLeast || took > tc.atMost {
				t.Errorf("answered after %v, want between %v and %v", took, tc.atLeast, tc.atMost)
			}
			if tc.name == "below per_try" {
				// Cut by the agent's own deadline: says nothing of the
				// upstream, so the breaker (failures: 1) stays closed.
				if got := b.metric("ballast_breaker_state", nil); got != 0 {
					t.Errorf("ballast_breaker_state = %v after an attempt the agent's deadline cut", got)
				}
			}
		})
	}
}

// A garbage X-Ballast-Timeout is a clear 400 bad_request problem naming
// the header, answered before anything is sent upstream, without
// Retry-After (sending it again will not help).
func TestEdgesAuditTimeoutHeaderGarbage(t *testing.T) {
	var hits atomic.Int64
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
	b := startBallast(t, retryRoute(up, ""))
	for _, v := range []string{"soon", "-1s", "0s", "10", "1e3s", "9999999999h", "5s,1s", "NaNs"} {
		resp, body := do(t, "POST", b.base+"/x", "{}", "X-Ballast-Timeout", v)
		p := decodeProblem(t, resp, body)
		if resp.StatusCode != 400 || p.Reason != "bad_request" || p.Route != "r" || p.Attempts != 0 ||
			!strings.Contains(p.Detail, "X-Ballast-Timeout") || resp.Header.Get("Retry-After") != "" {
			t.Errorf("X-Ballast-Timeout %q: %d %+v (Retry-After %q)", v, resp.StatusCode, p, resp.Header.Get("Retry-After"))
		}
	}
	if hits.Load() != 0 {
		t.Errorf("a request with a bad X-Ballast-Timeout reached the upstream %d times", hits.Load())
	}
}

// --- fallbacks at the deadline ----------------------------------------------------

// The primary asks for a pause the deadline cannot hold: ballast moves to
// the fallback at once (no wait), and the fallback's attempt is cut to
// the time left — not its own per_try — so the agent has its answer by
// its deadline. The fallback's breaker does not count that cut attempt.
func TestEdgesAuditFallbackCutToTheDeadline(t *testing.T) {
	var primary, fallback atomic.Int64
	p, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		primary.Add(1)
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(503)
	})
	f, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		fallback.Add(1)
		<-r.Context().Done()
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}]
    breaker: {failures: 1}
    timeouts: {per_try: 30s, total: 60s}
`, p, f))
	start := time.Now()
	resp, body := do(t, "GET", b.base+"/x", "", "X-Ballast-Timeout", "500ms")
	took := time.Since(start)
	if took > 3*time.Second {
		t.Errorf("answered after %v: the fallback ran to its per_try, past the agent's 500ms", took)
	}
	if primary.Load() != 1 || fallback.Load() != 1 {
		t.Errorf("primary %d fallback %d, want one attempt each", primary.Load(), fallback.Load())
	}
	if resp.StatusCode < 500 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("%d (Retry-After %q) %s: want a 5xx with the primary's hint", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// The primary asked for 30s after a 503: the agent is told so, as a
	// 503 upstream_unavailable (retries.md "The deadline law").
	if pb := decodeProblem(t, resp, body); resp.StatusCode != 503 || pb.Reason != "upstream_unavailable" || pb.RetryAfterS != 30 || pb.Attempts != 2 {
		t.Errorf("%d %+v, want 503 upstream_unavailable, retry_after_s 30, attempts 2", resp.StatusCode, pb)
	}
	if got := b.metric("ballast_breaker_state", map[string]string{"upstream": strings.TrimPrefix(f, "http://")}); got != 0 {
		t.Errorf("the fallback's breaker is %v after an attempt the deadline cut", got)
	}
}

// Fallbacks are tried in their order, skipping those whose breaker is
// open, and the order holds again once a breaker lets a probe through.
// With every breaker open the agent gets 503 breaker_open with
// Retry-After until the first one lets a probe through.
func TestEdgesAuditFallbackOrderWithOpenBreakers(t *testing.T) {
	clock := policy.NewFakeClock(time.Now())
	type up struct {
		url, addr string
		fail      atomic.Bool
		hits      atomic.Int64
	}
	ups := make([]*up, 3)
	for i := range ups {
		u := &up{}
		u.url, u.addr = upstream(t, func(w http.ResponseWriter, r *http.Request) {
			u.hits.Add(1)
			if u.fail.Load() {
				w.WriteHeader(503)
				return
			}
			_, _ = fmt.Fprintf(w, "up%d", i)
		})
		ups[i] = u
	}
	b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: r
    match: {path_prefix: /}
    upstream: %q
    fallbacks: [{upstream: %q}, {upstream: %q}]
    retry: {attempts: 1}
    breaker: {failures: 1, open_for: 30s}
`, ups[0].url, ups[1].url, ups[2].url))
	send := func() raResult { return edgesDrive(t, clock, raSend(t, "GET", b.base+"/x", ""), time.Millisecond) }

	ups[0].fail.Store(true)
	if r := send(); r.body != "up1" || r.resp.Header.Get("X-Ballast-Attempts") != "2" {
		t.Fatalf("%d %q attempts %q", r.resp.StatusCode, r.body, r.resp.Header.Get("X-Ballast-Attempts"))
	}
	// The first fallback's breaker opens 10s after the primary's.
	clock.Advance(10 * time.Second)
	ups[1].fail.Store(true)
	if r := send(); r.body != "up2" || r.resp.Header.Get("X-Ballast-Attempts") != "2" || ups[0].hits.Load() != 1 || ups[1].hits.Load() != 2 {
		t.Fatalf("%q attempts %q hits %d %d", r.body, r.resp.Header.Get("X-Ballast-Attempts"), ups[0].hits.Load(), ups[1].hits.Load())
	}
	// Both breakers open: straight to the second fallback.
	if r := send(); r.body != "up2" || r.resp.Header.Get("X-Ballast-Attempts") != "1" || ups[0].hits.Load() != 1 || ups[1].hits.Load() != 2 {
		t.Fatalf("%q attempts %q hits %d %d", r.body, r.resp.Header.Get("X-Ballast-Attempts"), ups[0].hits.Load(), ups[1].hits.Load())
	}
	ups[2].fail.Store(true)
	if r := send(); r.resp.StatusCode != 503 {
		t.Fatalf("the last fallback failing: %d %q", r.resp.StatusCode, r.body)
	}
	clock.Advance(time.Second)
	r := send()
	if pb := decodeProblem(t, r.resp, r.body); r.resp.StatusCode != 503 || pb.Reason != "breaker_open" || pb.Attempts != 0 || pb.RetryAfterS != 19 {
		t.Errorf("every breaker open: %d %+v, want 503 breaker_open with retry_after_s 19 (the primary's probe)", r.resp.StatusCode, pb)
	}
	// At 30s the primary lets a probe through: it is first again.
	clock.Advance(19 * time.Second)
	ups[0].fail.Store(false)
	if r := send(); r.body != "up0" || r.resp.Header.Get("X-Ballast-Upstream") != ups[0].addr {
		t.Errorf("after the primary's open_for: %q from %q", r.body, r.resp.Header.Get("X-Ballast-Upstream"))
	}
}
