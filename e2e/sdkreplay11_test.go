package e2e

// What an agent using openai-go or anthropic-sdk-go with their default
// retries ON (2 retries; connection errors, 408, 409, 429 and 5xx retried,
// Retry-After / retry-after-ms / x-should-retry obeyed) gets through
// ballast on a model route with idempotency.mode: header, when the
// provider fails in precise ways. Neither Go SDK sends an Idempotency-Key
// of its own (they send one only on the few endpoints whose params carry
// it), so the agent sets one with option.WithHeader: every SDK retry of
// that call then carries the same key, and so does the agent's own retry
// of the call. Each test counts the requests the SDK sent (a middleware)
// and the calls the provider saw.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// sdkReplay11Sent is one HTTP request an SDK sent to ballast.
type sdkReplay11Sent struct {
	key    string // its Idempotency-Key
	status int    // 0: no response (a connection error, the SDK's timeout)
	header http.Header
	err    error
}

// sdkReplay11Log records every request an SDK sends, retries included.
// onAnswer, when set, sees each one as it returns (before the SDK does).
type sdkReplay11Log struct {
	mu       sync.Mutex
	sent     []sdkReplay11Sent
	onAnswer func(n int, s sdkReplay11Sent, resp *http.Response)
}

func (l *sdkReplay11Log) middleware(req *http.Request, next func(*http.Request) (*http.Response, error)) (*http.Response, error) {
	resp, err := next(req)
	s := sdkReplay11Sent{key: req.Header.Get("Idempotency-Key"), err: err}
	if resp != nil {
		s.status, s.header = resp.StatusCode, resp.Header.Clone()
	}
	l.mu.Lock()
	l.sent = append(l.sent, s)
	n, hook := len(l.sent), l.onAnswer
	l.mu.Unlock()
	if hook != nil {
		hook(n, s, resp)
	}
	return resp, err
}

// since returns the requests sent after the first from of them.
func (l *sdkReplay11Log) since(from int) []sdkReplay11Sent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]sdkReplay11Sent(nil), l.sent[from:]...)
}

func (l *sdkReplay11Log) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sent)
}

// sdkReplay11Route is the model route with idempotency.mode: header.
func sdkReplay11Route(name, upstream, extraRetry string) string {
	return modelRoute(name, upstream, 0, extraRetry, "    idempotency: {mode: header}")
}

// sdkReplay11OpenAI is openai-go with its default retries, sending key.
func sdkReplay11OpenAI(t *testing.T, b *ballast, key string, log *sdkReplay11Log, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(b.base + "/openai/v1/"),
		option.WithAPIKey("sk-e2e"),
		option.WithHTTPClient(httpClient(t)),
		option.WithHeader("Idempotency-Key", key),
		option.WithMiddleware(log.middleware),
	}, opts...)...)
}

// sdkReplay11Anthropic is anthropic-sdk-go with its default retries, sending key.
func sdkReplay11Anthropic(t *testing.T, b *ballast, key string, log *sdkReplay11Log, opts ...aoption.RequestOption) anthropic.Client {
	return anthropic.NewClient(append([]aoption.RequestOption{
		aoption.WithBaseURL(b.base + "/anthropic/"),
		aoption.WithAPIKey("sk-ant-e2e"),
		aoption.WithHTTPClient(httpClient(t)),
		aoption.WithHeader("Idempotency-Key", key),
		aoption.WithMiddleware(log.middleware),
	}, opts...)...)
}

// sdkReplay11Case is one SDK call, run against a route of its own named
// after the provider, with the fake provider it needs.
type sdkReplay11Case struct {
	name  string
	route string // the route's name and path prefix: openai, anthropic
	fake  func(faults ...fault) (http.Handler, *script)
	// call makes the SDK call with the default retries and key.
	call func(ctx context.Context, t *testing.T, b *ballast, key string, log *sdkReplay11Log) modelResult
	// errorOf decodes the SDK's API error.
	errorOf func(error) (sdkError, bool)
}

func sdkReplay11OpenAICase(i int) sdkReplay11Case {
	c := openAICalls[i]
	return sdkReplay11Case{name: "openai " + c.name, route: "openai", fake: openAIUpstream, errorOf: openAIErrorOf,
		call: func(ctx context.Context, t *testing.T, b *ballast, key string, log *sdkReplay11Log) modelResult {
			return c.run(ctx, sdkReplay11OpenAI(t, b, key, log))
		}}
}

func sdkReplay11AnthropicCase(i int) sdkReplay11Case {
	c := anthropicCalls[i]
	return sdkReplay11Case{name: "anthropic " + c.name, route: "anthropic", fake: anthropicUpstream, errorOf: anthropicErrorOf,
		call: func(ctx context.Context, t *testing.T, b *ballast, key string, log *sdkReplay11Log) modelResult {
			return c.run(ctx, sdkReplay11Anthropic(t, b, key, log))
		}}
}

// sdkReplay11Start serves tc's fake provider with faults behind ballast on
// tc's route (extraRetry added to its retry), and returns ballast, a fresh
// log for the SDK's requests, and the fake's script.
func sdkReplay11Start(t *testing.T, tc sdkReplay11Case, extraRetry string, faults ...fault) (*ballast, *sdkReplay11Log, *script) {
	t.Helper()
	fake, sc := tc.fake(faults...)
	b := startBallast(t, nil, sdkReplay11Route(tc.route, serve(t, fake), extraRetry))
	return b, &sdkReplay11Log{}, sc
}

// sdkReplay11Each runs test for each case, in parallel subtests named after
// the cases.
func sdkReplay11Each(t *testing.T, cases []sdkReplay11Case, test func(t *testing.T, tc sdkReplay11Case)) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			test(t, tc)
		})
	}
}

// The streamed calls: chat completions, responses, messages.
func sdkReplay11Streams() []sdkReplay11Case {
	return []sdkReplay11Case{sdkReplay11OpenAICase(1), sdkReplay11OpenAICase(3), sdkReplay11AnthropicCase(1)}
}

// sdkReplay11Reason is ballast's problem reason in an SDK error, if any.
func sdkReplay11Reason(e sdkError) string {
	var p struct{ Reason string }
	if _, body, ok := strings.Cut(e.body, "\r\n\r\n"); ok {
		_ = json.Unmarshal([]byte(body), &p)
	}
	return p.Reason
}

// gateAfter runs the fake's normal handler and holds the answer after its
// n-th flush until gate closes (or ballast hangs up): a model that has
// sent its first tokens and is still generating.
func gateAfter(n int, gate <-chan struct{}) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
		next(&gatingWriter{ResponseWriter: w, left: n, gate: gate, done: r.Context().Done()}, r)
	}
}

type gatingWriter struct {
	http.ResponseWriter
	left       int
	gate, done <-chan struct{}
}

func (g *gatingWriter) Flush() {
	http.NewResponseController(g.ResponseWriter).Flush()
	g.left--
	if g.left == 0 {
		select {
		case <-g.gate:
		case <-g.done:
		}
	}
}

// sdkReplay11Gate is a gate the test opens once, and that opens at the
// latest when the test ends.
func sdkReplay11Gate(t *testing.T) (gate chan struct{}, open func()) {
	gate = make(chan struct{})
	var once sync.Once
	open = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	return gate, open
}

// TestSDKReplay11_StreamCutByProviderIsOutcomeUnknownOnce: the provider
// cuts a keyed stream after its first events. The SDK reports the cut
// stream as an error (an SDK never retries a stream whose headers came),
// and the agent retries the call with the same key: ballast answers 409
// outcome_unknown, as docs/errors.md promises (the call ran; running it
// again could do it twice). That answer cannot change for the record's
// ttl, but the Stainless SDKs retry a 409 by default: unless ballast says
// x-should-retry: false, the agent waits out two backoffs (about 1.5s)
// for the same 409 three times. The provider sees the call once.
func TestSDKReplay11_StreamCutByProviderIsOutcomeUnknownOnce(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, sdkReplay11Streams(), func(t *testing.T, tc sdkReplay11Case) {
		b, log, sc := sdkReplay11Start(t, tc, "", cutStreamAfter(2))
		ctx := testContext(t)
		checkOutcome(t, tc.call(ctx, t, b, "cut-1", log), apiOutcome{broken: true}, tc.errorOf)
		if n := log.len(); n != 1 {
			t.Fatalf("the SDK sent the cut stream's call %d times, want 1", n)
		}
		got := tc.call(ctx, t, b, "cut-1", log)
		e, ok := tc.errorOf(got.err)
		if !ok || e.status != http.StatusConflict || sdkReplay11Reason(e) != "outcome_unknown" {
			t.Fatalf("the agent's retry with the same key: want 409 outcome_unknown, got %v", got.err)
		}
		sent := log.since(1)
		for _, s := range sent {
			if s.key != "cut-1" {
				t.Errorf("a retry carried Idempotency-Key %q, want cut-1", s.key)
			}
		}
		if len(sent) != 1 {
			t.Errorf("the SDK sent the retry %d times for a 409 outcome_unknown that cannot change (x-should-retry %q)",
				len(sent), sent[0].header.Get("x-should-retry"))
		}
		if v := e.header.Get("x-should-retry"); v != "false" {
			t.Errorf("409 outcome_unknown carries x-should-retry %q, want false", v)
		}
		if n := sc.hits.Load(); n != 1 {
			t.Errorf("the provider saw the call %d times, want once", n)
		}
	})
}

// TestSDKReplay11_AgentDropMidStreamReplaysWhole: the agent's connection
// to ballast drops after the first events of a keyed stream (the SDK's
// body read fails; net/http closes the connection), while the model is
// still generating. ballast reads the rest for the agent and records it
// (docs/config.md, idempotency): the agent's retry with the same key gets
// the whole answer — attached to the call or replayed — which the SDK
// parses as complete (finish_reason stop, response.completed,
// message_stop), marked Idempotent-Replayed. The provider generates once.
func TestSDKReplay11_AgentDropMidStreamReplaysWhole(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, sdkReplay11Streams(), func(t *testing.T, tc sdkReplay11Case) {
		gate, open := sdkReplay11Gate(t)
		b, log, sc := sdkReplay11Start(t, tc, "", gateAfter(2, gate))
		drop := &sdkReplay11Drop{}
		log.onAnswer = func(n int, _ sdkReplay11Sent, resp *http.Response) {
			if n == 1 && resp != nil {
				resp.Body = drop.wrap(resp.Body)
			}
		}
		ctx := testContext(t)
		first := tc.call(ctx, t, b, "drop-1", log)
		if first.err == nil || first.complete {
			t.Fatalf("the dropped stream: want an error, got %q (complete %v)", first.text, first.complete)
		}
		if !drop.dropped() {
			t.Fatalf("the agent's connection was not dropped mid-stream: %v", first.err)
		}
		open() // the model finishes, with nobody reading
		got := tc.call(ctx, t, b, "drop-1", log)
		checkOutcome(t, got, apiOutcome{}, tc.errorOf)
		sent := log.since(1)
		if len(sent) != 1 || sent[0].header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("the agent's retry: want one request answered with Idempotent-Replayed: true, got %+v", sent)
		}
		if n := sc.hits.Load(); n != 1 {
			t.Errorf("the provider saw the call %d times, want once", n)
		}
	})
}

// sdkReplay11Drop drops the agent's connection once its first bytes have
// been read: the next read closes the body (net/http then closes the
// connection, which ballast sees) and fails.
type sdkReplay11Drop struct {
	mu   sync.Mutex
	done bool
}

func (d *sdkReplay11Drop) wrap(body io.ReadCloser) io.ReadCloser {
	return &sdkReplay11DropBody{ReadCloser: body, d: d}
}

func (d *sdkReplay11Drop) dropped() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done
}

type sdkReplay11DropBody struct {
	io.ReadCloser
	d    *sdkReplay11Drop
	read bool
}

func (b *sdkReplay11DropBody) Read(p []byte) (int, error) {
	if b.read {
		_ = b.ReadCloser.Close()
		b.d.mu.Lock()
		b.d.done = true
		b.d.mu.Unlock()
		return 0, io.ErrUnexpectedEOF
	}
	n, err := b.ReadCloser.Read(p)
	b.read = n > 0
	return n, err
}

// TestSDKReplay11_CompletedStreamReplayParses: a keyed stream that ended
// whole replays to the agent's retry with the same key: the SDK parses the
// replay as a complete answer, and Idempotent-Replayed: true and
// X-Ballast-Attempts: 0 reach it. The provider generates once.
func TestSDKReplay11_CompletedStreamReplayParses(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, sdkReplay11Streams(), func(t *testing.T, tc sdkReplay11Case) {
		b, log, sc := sdkReplay11Start(t, tc, "")
		ctx := testContext(t)
		checkOutcome(t, tc.call(ctx, t, b, "whole-1", log), apiOutcome{}, tc.errorOf)
		checkOutcome(t, tc.call(ctx, t, b, "whole-1", log), apiOutcome{}, tc.errorOf)
		sent := log.since(0)
		if len(sent) != 2 {
			t.Fatalf("the SDK sent %d requests for two calls, want 2", len(sent))
		}
		if h := sent[0].header; h.Get("Idempotent-Replayed") != "" || !strings.HasPrefix(h.Get("Content-Type"), "text/event-stream") {
			t.Errorf("the first answer: Idempotent-Replayed %q, Content-Type %q", h.Get("Idempotent-Replayed"), h.Get("Content-Type"))
		}
		h := sent[1].header
		if h.Get("Idempotent-Replayed") != "true" || h.Get("X-Ballast-Attempts") != "0" {
			t.Errorf("the replay: Idempotent-Replayed %q, X-Ballast-Attempts %q; want true, 0",
				h.Get("Idempotent-Replayed"), h.Get("X-Ballast-Attempts"))
		}
		if !strings.HasPrefix(h.Get("Content-Type"), "text/event-stream") {
			t.Errorf("the replay's Content-Type %q, want the stream's", h.Get("Content-Type"))
		}
		if n := sc.hits.Load(); n != 1 {
			t.Errorf("the provider saw the call %d times, want once", n)
		}
	})
}

// TestSDKReplay11_RelayedRateLimitFreesKey: the provider answers 429 (a
// short retry-after-ms) until ballast's retries are spent, and ballast
// relays its last 429. A 429 is not stored: the key is free, and the SDK's
// own retry, honouring the hint, with the same key runs the call — not a
// 409 — and generates exactly once.
func TestSDKReplay11_RelayedRateLimitFreesKey(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, []sdkReplay11Case{sdkReplay11OpenAICase(0), sdkReplay11OpenAICase(1), sdkReplay11AnthropicCase(1)}, func(t *testing.T, tc sdkReplay11Case) {
		limited := status(429, openAIRateLimitBody, openAIRateLimitHeaders("30ms", "retry-after-ms", "30")...)
		if tc.route == "anthropic" {
			limited = status(429, anthropicRateLimitBody, "retry-after-ms", "30")
		}
		sdkReplay11RelayedFreesKey(t, tc, "", "limited-1", 429, 4, "three 429s, one generation", limited, limited, limited)
	})
}

// sdkReplay11RelayedFreesKey runs tc's call with key on tc's route
// (extraRetry added to its retry) against faults, and checks that ballast
// relayed the provider's status relayed, that the answer freed the key (the
// SDK's own retry with it was answered 200, a whole answer), and that the
// provider saw wantHits calls (why says which).
func sdkReplay11RelayedFreesKey(t *testing.T, tc sdkReplay11Case, extraRetry, key string, relayed int, wantHits int64, why string, faults ...fault) {
	t.Helper()
	b, log, sc := sdkReplay11Start(t, tc, extraRetry, faults...)
	checkOutcome(t, tc.call(testContext(t), t, b, key, log), apiOutcome{}, tc.errorOf)
	sent := log.since(0)
	if len(sent) != 2 || sent[0].status != relayed || sent[1].status != 200 {
		t.Errorf("want the relayed %d, then the SDK's retry answered 200; got %+v", relayed, sent)
	}
	if n := sc.hits.Load(); n != wantHits {
		t.Errorf("the provider saw %d calls, want %d (%s)", n, wantHits, why)
	}
}

// TestSDKReplay11_RateLimitedProblemFreesKey: the provider's 429 asks for
// a pause longer than max_retry_after, so ballast answers its own 429
// rate_limited with Retry-After at once. The attempt did not run: the key
// is freed, and the SDK's retry (after Retry-After) with the same key
// generates, once.
func TestSDKReplay11_RateLimitedProblemFreesKey(t *testing.T) {
	t.Parallel()
	tc := sdkReplay11OpenAICase(1)
	fake, sc := tc.fake(status(429, openAIRateLimitBody, openAIRateLimitHeaders("1s", "retry-after", "1")...))
	cfg := strings.Replace(sdkReplay11Route(tc.route, serve(t, fake), ""), "max_retry_after: 5s", "max_retry_after: 100ms", 1)
	b := startBallast(t, nil, cfg)
	log := &sdkReplay11Log{}
	checkOutcome(t, tc.call(testContext(t), t, b, "pause-1", log), apiOutcome{}, tc.errorOf)
	sent := log.since(0)
	if len(sent) != 2 || sent[0].status != 429 || sent[0].header.Get("Retry-After") != "1" || sent[1].status != 200 {
		t.Errorf("want ballast's 429 with Retry-After: 1, then the SDK's retry answered 200; got %+v", sent)
	}
	if n := sc.hits.Load(); n != 2 {
		t.Errorf("the provider saw %d calls, want 2 (the 429, one generation)", n)
	}
}

// TestSDKReplay11_Relayed503FreesKey: a route that tries once relays the
// provider's 503 (no hint, no x-should-retry: ballast did not retry it).
// A 5xx is not stored: the SDK retries it with the same key and the call
// runs, generating once.
func TestSDKReplay11_Relayed503FreesKey(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, []sdkReplay11Case{sdkReplay11OpenAICase(1), sdkReplay11AnthropicCase(1)}, func(t *testing.T, tc sdkReplay11Case) {
		sdkReplay11RelayedFreesKey(t, tc, ", attempts: 1", "over-1", 503, 2, "the 503, one generation", status(503, openAIOverBody))
	})
}

// TestSDKReplay11_SDKTimeoutRetryAttaches: the agent's client gives up on
// an attempt while the model has not answered yet (anthropic-sdk-go's
// per-attempt option.WithRequestTimeout, which it retries as a connection
// error; openai-go returns that one to the caller unretried, so it is
// given an http.Client.Timeout instead), drops the connection and retries
// with the same key. The keyed call ran on, detached: the retry attaches
// to it or replays its answer, and the provider generates once.
func TestSDKReplay11_SDKTimeoutRetryAttaches(t *testing.T) {
	t.Parallel()
	const giveUp = 300 * time.Millisecond
	sdkReplay11Each(t, []sdkReplay11Case{sdkReplay11OpenAICase(0), sdkReplay11OpenAICase(1), sdkReplay11AnthropicCase(0), sdkReplay11AnthropicCase(1)}, func(t *testing.T, tc sdkReplay11Case) {
		gate, open := sdkReplay11Gate(t)
		// The model answers only once the SDK's first attempt gave up.
		held := func(w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
			next(w, r)
		}
		b, log, sc := sdkReplay11Start(t, tc, "", held)
		log.onAnswer = func(n int, s sdkReplay11Sent, _ *http.Response) {
			if n == 1 && s.err != nil {
				open()
			}
		}
		ctx := testContext(t)
		var got modelResult
		if tc.route == "openai" {
			hc := httpClient(t)
			hc.Timeout = giveUp
			got = openAICalls[map[bool]int{false: 0, true: 1}[strings.HasSuffix(tc.name, "stream")]].run(ctx,
				sdkReplay11OpenAI(t, b, "slow-1", log, option.WithHTTPClient(hc)))
		} else {
			got = anthropicCalls[map[bool]int{false: 0, true: 1}[strings.HasSuffix(tc.name, "stream")]].run(ctx,
				sdkReplay11Anthropic(t, b, "slow-1", log, aoption.WithRequestTimeout(giveUp)))
		}
		checkOutcome(t, got, apiOutcome{}, tc.errorOf)
		sent := log.since(0)
		if len(sent) != 2 || sent[0].err == nil || sent[1].status != 200 {
			t.Fatalf("want the attempt the client gave up on, then the SDK's retry answered 200; got %+v", sent)
		}
		if sent[1].header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("the SDK's retry was not answered from the first call (Idempotent-Replayed %q)", sent[1].header.Get("Idempotent-Replayed"))
		}
		if n := sc.hits.Load(); n != 1 {
			t.Errorf("the provider saw %d calls, want 1", n)
		}
	})
}

// TestSDKReplay11_InProgressIsRetriedByTheSDK: with on_conflict: reject, a
// duplicate of a keyed stream still running gets 409 in_progress with
// Retry-After: 1: a retry can change that, and the SDK retries it (409,
// and no x-should-retry: false) after the hint; once the stream has ended
// the retry gets it replayed whole. The provider generates once.
func TestSDKReplay11_InProgressIsRetriedByTheSDK(t *testing.T) {
	t.Parallel()
	gate, open := sdkReplay11Gate(t)
	fake := newFakeOpenAI(gateAfter(2, gate))
	cfg := modelRoute("openai", serve(t, fake), 0, "", "    idempotency: {mode: header, on_conflict: reject}")
	b := startBallast(t, nil, cfg)
	ctx := testContext(t)
	firstLog := &sdkReplay11Log{}
	firstDone := make(chan modelResult, 1)
	started := make(chan struct{})
	firstLog.onAnswer = func(int, sdkReplay11Sent, *http.Response) { close(started) }
	go func() { firstDone <- openAICalls[1].run(ctx, sdkReplay11OpenAI(t, b, "busy-1", firstLog)) }()
	<-started // its headers are out; the model is still generating

	log := &sdkReplay11Log{}
	log.onAnswer = func(n int, s sdkReplay11Sent, _ *http.Response) {
		if n == 1 && s.status == http.StatusConflict {
			open() // the first call ends before the SDK's retry
		}
	}
	got := openAICalls[1].run(ctx, sdkReplay11OpenAI(t, b, "busy-1", log))
	checkOutcome(t, <-firstDone, apiOutcome{}, openAIErrorOf)
	checkOutcome(t, got, apiOutcome{}, openAIErrorOf)
	sent := log.since(0)
	if len(sent) != 2 || sent[0].status != http.StatusConflict || sent[0].header.Get("Retry-After") != "1" ||
		sent[1].header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("want 409 in_progress with Retry-After: 1, then the replay; got %+v", sent)
	}
	if n := fake.script.hits.Load(); n != 1 {
		t.Errorf("the provider saw %d calls, want 1", n)
	}
}

// TestSDKReplay11_KeyRefusalsAreNotRetried: answers about the key itself
// cannot change on a retry, and the SDK sends them once: 422
// idempotency_mismatch (the key reused for another request) and 400
// bad_request (a malformed key).
func TestSDKReplay11_KeyRefusalsAreNotRetried(t *testing.T) {
	t.Parallel()
	fake := newFakeOpenAI()
	b := startBallast(t, nil, sdkReplay11Route("openai", serve(t, fake), ""))
	ctx := testContext(t)
	log := &sdkReplay11Log{}
	checkOutcome(t, openAICalls[0].run(ctx, sdkReplay11OpenAI(t, b, "reused-1", log)), apiOutcome{}, openAIErrorOf)
	// The same key for another request: a responses call.
	got := openAICalls[2].run(ctx, sdkReplay11OpenAI(t, b, "reused-1", log))
	checkOutcome(t, got, apiOutcome{status: 422, reason: "idempotency_mismatch"}, openAIErrorOf)
	got = openAICalls[0].run(ctx, sdkReplay11OpenAI(t, b, "bad key", log))
	checkOutcome(t, got, apiOutcome{status: 400, reason: "bad_request"}, openAIErrorOf)
	if n := log.len(); n != 3 {
		t.Errorf("the SDK sent %d requests for three calls, want 3 (422 and 400 are not retried)", n)
	}
	if n := fake.script.hits.Load(); n != 1 {
		t.Errorf("the provider saw %d calls, want 1", n)
	}
}

// TestSDKReplay11_BrokenKeyedAnswerStopsAtOutcomeUnknown: the provider
// resets the connection after a keyed non-streamed call was sent, on a
// route that tries once: ballast answers 502 upstream_unavailable (one
// attempt: no x-should-retry), keeps the key (the call may have run), and
// the SDK retries the 502 with the same key. That retry reads 409
// outcome_unknown, which must end the SDK's retries at once rather than
// be retried to the last: the agent learns what happened in one round
// trip, and the provider saw the call once.
func TestSDKReplay11_BrokenKeyedAnswerStopsAtOutcomeUnknown(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, []sdkReplay11Case{sdkReplay11OpenAICase(0), sdkReplay11AnthropicCase(0)}, func(t *testing.T, tc sdkReplay11Case) {
		b, log, sc := sdkReplay11Start(t, tc, ", attempts: 1", resetConn)
		got := tc.call(testContext(t), t, b, "reset-1", log)
		e, ok := tc.errorOf(got.err)
		if !ok || e.status != http.StatusConflict || sdkReplay11Reason(e) != "outcome_unknown" {
			t.Fatalf("want the SDK to end with 409 outcome_unknown, got %v", got.err)
		}
		sent := log.since(0)
		if len(sent) != 2 || sent[0].status != http.StatusBadGateway {
			t.Errorf("want ballast's 502, then one retry answered 409; the SDK sent %d: %+v", len(sent), sent)
		}
		if n := sc.hits.Load(); n != 1 {
			t.Errorf("the provider saw the call %d times, want once", n)
		}
	})
}

// TestSDKReplay11_StoredServerErrorReplayIsNotRetried: with
// store_server_errors a keyed 500 is stored, and every request with its
// key replays it until its ttl ends. The SDK retries the relayed 500 (a
// route that tries once says nothing against it) and reads the replay;
// that replay cannot change, so it tells the SDK not to retry it again
// (x-should-retry: false) rather than have the agent wait out a second
// backoff for the same answer. The provider saw the call once.
func TestSDKReplay11_StoredServerErrorReplayIsNotRetried(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, []sdkReplay11Case{sdkReplay11OpenAICase(0), sdkReplay11AnthropicCase(0)}, func(t *testing.T, tc sdkReplay11Case) {
		fake, sc := tc.fake(status(500, openAIServerBody, "x-should-retry", "true"))
		cfg := modelRoute(tc.route, serve(t, fake), 0, ", attempts: 1", "    idempotency: {mode: header, store_server_errors: true}")
		b := startBallast(t, nil, cfg)
		log := &sdkReplay11Log{}
		got := tc.call(testContext(t), t, b, "stored-1", log)
		if e, ok := tc.errorOf(got.err); !ok || e.status != 500 {
			t.Fatalf("want the stored 500, got %v", got.err)
		}
		sent := log.since(0)
		if len(sent) != 2 || sent[1].header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("want the relayed 500, then one retry answered by its replay; the SDK sent %d: %+v", len(sent), sent)
		}
		if v := sent[len(sent)-1].header.Get("x-should-retry"); v != "false" {
			t.Errorf("the replayed 500 carries x-should-retry %q, want false", v)
		}
		if n := sc.hits.Load(); n != 1 {
			t.Errorf("the provider saw the call %d times, want once", n)
		}
	})
}

// TestSDKReplay11_ShuttingDownAfterRetriesIsRetried: ballast retried a
// keyed call (a 503, then an attempt the model does not answer) when its
// drain ran out of time: the agent gets 503 shutting_down, which
// docs/errors.md says to send again (to another replica, or to this one
// after its restart; a keyed one then reads outcome_unknown). The rule
// that keeps an SDK from multiplying ballast's upstream retries
// (x-should-retry: false on a 5xx after ballast retried) is about the
// upstream, not about ballast going away: it must not tell the SDK to
// give up here. The SDK retries (this ballast refuses the connection now).
func TestSDKReplay11_ShuttingDownAfterRetriesIsRetried(t *testing.T) {
	t.Parallel()
	sent := make(chan struct{})
	hanging := func(w http.ResponseWriter, r *http.Request, next http.HandlerFunc) {
		close(sent)
		hang(w, r, next)
	}
	fake := newFakeOpenAI(status(503, openAIOverBody), hanging)
	b := startBallast(t, nil, sdkReplay11Route("openai", serve(t, fake), ""))
	ctx := testContext(t)
	go func() {
		select {
		case <-sent:
		case <-ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = b.srv.Shutdown(ctx)
	}()
	log := &sdkReplay11Log{}
	got := openAICalls[0].run(ctx, sdkReplay11OpenAI(t, b, "drain-1", log))
	if got.err == nil {
		t.Fatal("the SDK call succeeded through a ballast that shut down")
	}
	all := log.since(0)
	if len(all) == 0 || all[0].status != http.StatusServiceUnavailable {
		t.Fatalf("want 503 shutting_down first, got %+v", all)
	}
	if v := all[0].header.Get("x-should-retry"); v == "false" {
		t.Errorf("503 shutting_down carries x-should-retry: false; the SDK gives up instead of sending it again")
	}
	if len(all) < 2 {
		t.Errorf("the SDK sent the call %d times, want it retried", len(all))
	}
	if n := fake.script.hits.Load(); n != 2 {
		t.Errorf("the provider saw %d calls, want 2 (the 503, the one the drain called off)", n)
	}
}

// TestSDKReplay11_ExhaustedServerErrorsFreeKey: the provider answers 503
// (no hint) to each of ballast's three attempts; ballast relays the last
// with x-should-retry: false, so the SDK does not multiply the attempts.
// A 5xx is not stored: the agent's own retry of the call with the same key
// later runs it (not a 409), and the provider generates once.
func TestSDKReplay11_ExhaustedServerErrorsFreeKey(t *testing.T) {
	t.Parallel()
	sdkReplay11Each(t, []sdkReplay11Case{sdkReplay11OpenAICase(1), sdkReplay11AnthropicCase(1)}, func(t *testing.T, tc sdkReplay11Case) {
		over := status(503, openAIOverBody)
		b, log, sc := sdkReplay11Start(t, tc, "", over, over, over)
		ctx := testContext(t)
		got := tc.call(ctx, t, b, "spent-1", log)
		if e, ok := tc.errorOf(got.err); !ok || e.status != 503 || e.header.Get("x-should-retry") != "false" {
			t.Fatalf("want the relayed 503 with x-should-retry: false, got %v", got.err)
		}
		if n := log.len(); n != 1 {
			t.Errorf("the SDK sent the call %d times after ballast's retries were spent, want 1", n)
		}
		checkOutcome(t, tc.call(ctx, t, b, "spent-1", log), apiOutcome{}, tc.errorOf)
		if n := sc.hits.Load(); n != 4 {
			t.Errorf("the provider saw %d calls, want 4 (three 503s, one generation)", n)
		}
	})
}
