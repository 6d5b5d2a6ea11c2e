package e2e

// Adversarial audit of ballast with the real SDK clients (openai-go,
// anthropic-sdk-go, the MCP go-sdk) as users run them: base URL pointed at
// ballast, nothing else changed unless a test says so. Tests named
// TestSDKBug... assert the correct behaviour and fail while the bug
// they describe is there.

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// sdkDefaultHTTPClient is the HTTP client an SDK uses when the user passes
// none: net/http's defaults, so Accept-Encoding: gzip is sent and gzip
// answers are decoded transparently. Bounded, so a bug fails the test.
func sdkDefaultHTTPClient(t *testing.T) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 25 * time.Second}
}

// sdkGzipStatus answers code with body gzip-compressed when the request
// accepts gzip, as the providers' CDNs do for JSON bodies.
func sdkGzipStatus(code int, body string, headers ...string) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.HandlerFunc) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.WriteHeader(code)
			_, _ = io.WriteString(w, body)
			return
		}
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		_, _ = io.WriteString(zw, body)
		_ = zw.Close()
		w.Header().Set("Content-Encoding", "gzip")
		w.WriteHeader(code)
		_, _ = w.Write(buf.Bytes())
	}
}

// TestGzipQuotaErrorIsNotRetried: openai-go with its default HTTP
// client sends Accept-Encoding: gzip, ballast forwards it, and the
// provider answers its 429 insufficient_quota gzip-compressed. ballast
// must still see that the plan is exhausted (class quota: never retried,
// the provider's own answer at once), as it does for an identity body.
func TestGzipQuotaErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	quota := sdkGzipStatus(429, openAIQuotaBody, "x-request-id", "req_quota")
	fake := newFakeOpenAI(quota, quota, quota)
	b := startBallast(t, nil, modelRoute("openai", serve(t, fake), 0, "", ""))
	client := openai.NewClient(
		option.WithBaseURL(b.base+"/openai/v1/"),
		option.WithAPIKey("sk-e2e"),
		option.WithMaxRetries(0), // isolate ballast's own retries
		option.WithHTTPClient(sdkDefaultHTTPClient(t)),
	)
	got := openAICalls[0].run(testContext(t), client)
	checkOutcome(t, got, apiOutcome{status: 429, code: "insufficient_quota"}, openAIErrorOf)
	if hits := fake.script.hits.Load(); hits != 1 {
		t.Fatalf("the upstream saw %d requests for a 429 insufficient_quota, want 1 (quota is never retried)", hits)
	}
}

// sdkDefaultConfig is the embedded default config with its upstreams
// replaced by the given loopback servers, and listeners on free ports.
func sdkDefaultConfig(t *testing.T, openaiURL, anthropicURL string) string {
	t.Helper()
	raw, err := os.ReadFile("../config/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := string(raw)
	for old, repl := range map[string]string{
		"https://api.openai.com/":    openaiURL + "/",
		"https://api.anthropic.com/": anthropicURL + "/",
		"127.0.0.1:8080":             "127.0.0.1:0",
		"127.0.0.1:9901":             "127.0.0.1:0",
	} {
		if !strings.Contains(y, old) {
			t.Fatalf("config/default.yaml no longer contains %q", old)
		}
		y = strings.ReplaceAll(y, old, repl)
	}
	return y
}

// TestDefaultConfigRetriesModelCalls: the README tells users to run
// ballast on its embedded default config and to turn the SDKs' own retries
// off "so that one layer retries", and promises that ballast retries 429,
// 503 and Anthropic's 529 of model calls: the default's model routes set
// retry.unsafe_methods, so a model POST that got a 429 or a 529 is retried.
func TestDefaultConfigRetriesModelCalls(t *testing.T) {
	t.Parallel()
	oa := newFakeOpenAI(status(429, openAIRateLimitBody, openAIRateLimitHeaders("20ms", "retry-after-ms", "20")...))
	an := newFakeAnthropic(status(529, anthropicOverloadedBody))
	b := startBallast(t, nil, sdkDefaultConfig(t, serve(t, oa), serve(t, an)))

	t.Run("openai 429", func(t *testing.T) {
		got := openAICalls[0].run(testContext(t), newOpenAI(t, b)) // max_retries=0, as the README says
		if got.err != nil || oa.script.hits.Load() != 2 {
			t.Errorf("want ballast to retry the 429 once and answer: got err %v after %d upstream requests", got.err, oa.script.hits.Load())
		}
	})
	t.Run("anthropic 529", func(t *testing.T) {
		got := anthropicCalls[0].run(testContext(t), newAnthropic(t, b))
		if got.err != nil || an.script.hits.Load() != 2 {
			t.Errorf("want ballast to retry the 529 once and answer: got err %v after %d upstream requests", got.err, an.script.hits.Load())
		}
	})
}

// TestStackedRetriesDoNotMultiply: a user who keeps the SDK's
// default retries (2) on a model route. The upstream resets every
// connection; ballast tries 3 times and answers its own 502 problem, which
// the Stainless SDKs retry (>= 500) — each SDK retry buying three more
// upstream attempts. ballast has already spent the retries it judged safe:
// its own answer should tell the SDK so (x-should-retry: false, which
// both SDKs obey), so the upstream sees ballast's attempts only.
func TestStackedRetriesDoNotMultiply(t *testing.T) {
	t.Parallel()
	resets := make([]fault, 12)
	for i := range resets {
		resets[i] = resetConn
	}
	fake := newFakeOpenAI(resets...)
	b := startBallast(t, nil, modelRoute("openai", serve(t, fake), 0, "", ""))
	client := openai.NewClient(
		option.WithBaseURL(b.base+"/openai/v1/"),
		option.WithAPIKey("sk-e2e"),
		option.WithHTTPClient(httpClient(t)), // the SDK's default retries
	)
	got := openAICalls[0].run(testContext(t), client)
	e, ok := openAIErrorOf(got.err)
	if !ok || e.status != 502 {
		t.Fatalf("want ballast's 502 problem, got %v", got.err)
	}
	if hits := fake.script.hits.Load(); hits > 3 {
		t.Fatalf("the upstream saw %d requests for one SDK call (ballast's 3 attempts × the SDK's 3); ballast's final answer carries x-should-retry %q",
			hits, e.header.Get("x-should-retry"))
	}
}

// TestSDKRateLimitedProblemIsWaitedOutBySDK: when the provider asks
// for a pause longer than max_retry_after, ballast answers 429 with
// Retry-After at once; the SDK (default retries on) waits it out and comes
// back, and the second call succeeds. The SDK neither hammers nor gives up.
func TestSDKRateLimitedProblemIsWaitedOutBySDK(t *testing.T) {
	t.Parallel()
	fake := newFakeOpenAI(status(429, openAIRateLimitBody, openAIRateLimitHeaders("2s", "retry-after", "2")...))
	cfg := strings.Replace(modelRoute("openai", serve(t, fake), 0, "", ""), "max_retry_after: 5s", "max_retry_after: 1s", 1)
	b := startBallast(t, nil, cfg)
	client := openai.NewClient(
		option.WithBaseURL(b.base+"/openai/v1/"),
		option.WithAPIKey("sk-e2e"),
		option.WithHTTPClient(httpClient(t)),
	)
	start := time.Now()
	checkOutcome(t, openAICalls[0].run(testContext(t), client), apiOutcome{}, openAIErrorOf)
	if el := time.Since(start); el < 2*time.Second {
		t.Errorf("answered after %v: the SDK did not wait out Retry-After", el)
	}
	if hits := fake.script.hits.Load(); hits != 2 {
		t.Errorf("the upstream saw %d requests, want 2", hits)
	}
}

// TestSDKProblemSurfacesInSDKErrors: ballast's own problem answers
// decode into each SDK's error type with the status, a machine-readable
// code or type and ballast's explanation as the message.
func TestSDKProblemSurfacesInSDKErrors(t *testing.T) {
	t.Parallel()
	t.Run("openai 504", func(t *testing.T) {
		t.Parallel()
		fake := newFakeOpenAI(hang, hang, hang)
		b := startBallast(t, nil, modelRoute("openai", serve(t, fake), 100*time.Millisecond, "", ""))
		got := openAICalls[0].run(testContext(t), newOpenAI(t, b))
		var e *openai.Error
		if !errors.As(got.err, &e) {
			t.Fatalf("want *openai.Error, got %v (%T)", got.err, got.err)
		}
		if e.StatusCode != 504 || e.Code != "timeout" || !strings.Contains(e.Message, "did not answer") {
			t.Fatalf("openai.Error status %d code %q message %q", e.StatusCode, e.Code, e.Message)
		}
	})
	t.Run("anthropic 502", func(t *testing.T) {
		t.Parallel()
		fake := newFakeAnthropic(resetConn, resetConn, resetConn)
		b := startBallast(t, nil, modelRoute("anthropic", serve(t, fake), 0, "", ""))
		got := anthropicCalls[0].run(testContext(t), newAnthropic(t, b))
		var e *anthropic.Error
		if !errors.As(got.err, &e) {
			t.Fatalf("want *anthropic.Error, got %v (%T)", got.err, got.err)
		}
		if e.StatusCode != 502 || string(e.Type()) != "upstream_unavailable" || !strings.Contains(e.Message, "failed") {
			t.Fatalf("anthropic.Error status %d type %q message %q", e.StatusCode, e.Type(), e.Message)
		}
	})
}

// sdkHeaderRecorder wraps a fake, keeping the request headers of every
// request it saw, and adds response headers.
type sdkHeaderRecorder struct {
	next  http.Handler
	extra []string
	mu    sync.Mutex
	seen  []http.Header
}

func (h *sdkHeaderRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.seen = append(h.seen, r.Header.Clone())
	h.mu.Unlock()
	for i := 0; i+1 < len(h.extra); i += 2 {
		w.Header().Set(h.extra[i], h.extra[i+1])
	}
	h.next.ServeHTTP(w, r)
}

func (h *sdkHeaderRecorder) last() http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) == 0 {
		return http.Header{}
	}
	return h.seen[len(h.seen)-1]
}

// TestSDKProviderHeadersPassThrough: the headers the SDKs send
// (organization, project, API version, betas, Stainless telemetry, the
// Accept of a stream) reach the provider unchanged, and the provider's
// request ids (x-request-id, request-id) reach the SDK, where users read
// them.
func TestSDKProviderHeadersPassThrough(t *testing.T) {
	t.Parallel()
	t.Run("openai", func(t *testing.T) {
		t.Parallel()
		rec := &sdkHeaderRecorder{next: newFakeOpenAI(), extra: []string{"x-request-id", "req_upstream_1", "openai-processing-ms", "12"}}
		b := startBallast(t, nil, modelRoute("openai", serve(t, rec), 0, "", ""))
		var resp *http.Response
		client := openai.NewClient(
			option.WithBaseURL(b.base+"/openai/v1/"),
			option.WithAPIKey("sk-e2e"),
			option.WithOrganization("org-e2e"),
			option.WithProject("proj-e2e"),
			option.WithMaxRetries(0),
			option.WithHTTPClient(httpClient(t)),
		)
		_, err := client.Chat.Completions.New(testContext(t), openai.ChatCompletionNewParams{
			Model:    openai.ChatModelGPT4oMini,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
		}, option.WithResponseInto(&resp))
		if err != nil {
			t.Fatal(err)
		}
		h := rec.last()
		for k, want := range map[string]string{"Openai-Organization": "org-e2e", "Openai-Project": "proj-e2e",
			"Authorization": "Bearer sk-e2e", "X-Stainless-Retry-Count": "0", "X-Stainless-Lang": "go", "Accept": "application/json"} {
			if got := h.Get(k); got != want {
				t.Errorf("upstream saw %s %q, want %q", k, got, want)
			}
		}
		if got := resp.Header.Get("x-request-id"); got != "req_upstream_1" {
			t.Errorf("the SDK's response has x-request-id %q, want the provider's req_upstream_1", got)
		}
		if got := resp.Header.Get("openai-processing-ms"); got != "12" {
			t.Errorf("openai-processing-ms %q, want 12", got)
		}
	})
	t.Run("anthropic", func(t *testing.T) {
		t.Parallel()
		rec := &sdkHeaderRecorder{next: newFakeAnthropic(status(400, anthropicBillingBody)), extra: []string{"request-id", "req_ant_1"}}
		b := startBallast(t, nil, modelRoute("anthropic", serve(t, rec), 0, "", ""))
		client := anthropic.NewClient(
			aoption.WithBaseURL(b.base+"/anthropic/"),
			aoption.WithAPIKey("sk-ant-e2e"),
			aoption.WithMaxRetries(0),
			aoption.WithHTTPClient(httpClient(t)),
			aoption.WithHeader("anthropic-beta", "prompt-caching-2024-07-31"),
		)
		_, err := client.Messages.New(testContext(t), anthropicParams())
		var e *anthropic.Error
		if !errors.As(err, &e) || e.StatusCode != 400 {
			t.Fatalf("want the provider's 400, got %v", err)
		}
		if e.RequestID != "req_ant_1" {
			t.Errorf("anthropic.Error.RequestID %q, want the provider's req_ant_1", e.RequestID)
		}
		h := rec.last()
		if h.Get("Anthropic-Version") == "" || h.Get("Anthropic-Beta") != "prompt-caching-2024-07-31" {
			t.Errorf("upstream saw anthropic-version %q, anthropic-beta %q", h.Get("Anthropic-Version"), h.Get("Anthropic-Beta"))
		}
		// The stream's Accept is the SDK's, unchanged.
		stream := client.Messages.NewStreaming(testContext(t), anthropicParams())
		for stream.Next() {
		}
		_ = stream.Close()
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if got := rec.last().Get("Accept"); got == "" {
			t.Errorf("the stream's request reached the upstream without Accept")
		}
	})
}

// sdkGated serves a stream whose first event is written at once and the
// rest only once the test says the client saw that first event: a relay
// that buffers the stream deadlocks it.
type sdkGated struct {
	first   func(w http.ResponseWriter)
	rest    func(w http.ResponseWriter)
	release chan struct{}
}

func (g *sdkGated) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.ReadAll(r.Body)
	sseHeaders(w)
	g.first(w)
	select {
	case <-g.release:
	case <-r.Context().Done():
		return
	}
	g.rest(w)
}

// TestSDKStreamsArriveIncrementally: the first event of a chat
// completions stream and of an Anthropic messages stream reaches the SDK
// while the upstream is still holding the rest; usage arrives at the end.
func TestSDKStreamsArriveIncrementally(t *testing.T) {
	t.Parallel()
	t.Run("openai chat stream with usage", func(t *testing.T) {
		t.Parallel()
		chunk := func(delta map[string]any, finish any) map[string]any {
			return map[string]any{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
				"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}}
		}
		g := &sdkGated{release: make(chan struct{}),
			first: func(w http.ResponseWriter) {
				sse(w, "", chunk(map[string]any{"role": "assistant", "content": "Hello"}, nil))
			},
			rest: func(w http.ResponseWriter) {
				sse(w, "", chunk(map[string]any{"content": " world"}, "stop"))
				sse(w, "", map[string]any{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
					"choices": []any{}, "usage": map[string]any{"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
				_, _ = io.WriteString(w, "data: [DONE]\n\n")
			}}
		b := startBallast(t, nil, modelRoute("openai", serve(t, g), 0, "", ""))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		oc := newOpenAI(t, b)
		stream := oc.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:         openai.ChatModelGPT4oMini,
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		defer stream.Close()
		var text string
		var total int64
		n := 0
		for stream.Next() {
			if n == 0 {
				close(g.release)
			}
			n++
			c := stream.Current()
			for _, ch := range c.Choices {
				text += ch.Delta.Content
			}
			total += c.Usage.TotalTokens
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream error after %d events: %v (a buffering relay holds the first event back)", n, err)
		}
		if text != "Hello world" || total != 5 {
			t.Fatalf("text %q usage total %d", text, total)
		}
	})
	t.Run("anthropic messages stream", func(t *testing.T) {
		t.Parallel()
		g := &sdkGated{release: make(chan struct{}),
			first: func(w http.ResponseWriter) {
				sse(w, "message_start", map[string]any{"type": "message_start", "message": anthropicMessage("m", nil, "")})
			},
			rest: func(w http.ResponseWriter) {
				sse(w, "content_block_start", map[string]any{"type": "content_block_start", "index": 0,
					"content_block": map[string]any{"type": "text", "text": ""}})
				sse(w, "content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
					"delta": map[string]any{"type": "text_delta", "text": "Hi"}})
				sse(w, "content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
				sse(w, "message_delta", map[string]any{"type": "message_delta",
					"delta": map[string]any{"stop_reason": "end_turn"}, "usage": map[string]any{"output_tokens": 9}})
				sse(w, "message_stop", map[string]any{"type": "message_stop"})
			}}
		b := startBallast(t, nil, modelRoute("anthropic", serve(t, g), 0, "", ""))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ac := newAnthropic(t, b)
		stream := ac.Messages.NewStreaming(ctx, anthropicParams())
		defer stream.Close()
		msg := anthropic.Message{}
		n := 0
		for stream.Next() {
			if n == 0 {
				close(g.release)
			}
			n++
			if err := msg.Accumulate(stream.Current()); err != nil {
				t.Fatal(err)
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream error after %d events: %v", n, err)
		}
		if msg.StopReason != anthropic.StopReasonEndTurn || msg.Usage.OutputTokens != 9 || len(msg.Content) != 1 || msg.Content[0].Text != "Hi" {
			t.Fatalf("message %+v", msg)
		}
	})
}

// TestSDKStalledStreamIsAnError: a provider stream that stalls
// mid-answer past timeouts.idle reaches the SDK as an error with the
// partial text, never as a clean end of stream.
func TestSDKStalledStreamIsAnError(t *testing.T) {
	t.Parallel()
	stall := func(w http.ResponseWriter, r *http.Request, _ http.HandlerFunc) {
		sseHeaders(w)
		sse(w, "message_start", map[string]any{"type": "message_start", "message": anthropicMessage("m", nil, "")})
		sse(w, "content_block_start", map[string]any{"type": "content_block_start", "index": 0,
			"content_block": map[string]any{"type": "text", "text": ""}})
		sse(w, "content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
			"delta": map[string]any{"type": "text_delta", "text": "Hel"}})
		<-r.Context().Done() // stalls until ballast gives up on it
	}
	fake := newFakeAnthropic(stall)
	cfg := strings.Replace(modelRoute("anthropic", serve(t, fake), 0, "", ""), "idle: 2s", "idle: 300ms", 1)
	b := startBallast(t, nil, cfg)
	got := anthropicCalls[1].run(testContext(t), newAnthropic(t, b))
	if got.err == nil || got.complete {
		t.Fatalf("a stalled stream ended with err %v, complete %v, text %q: want an error", got.err, got.complete, got.text)
	}
	if got.text != "Hel" {
		t.Errorf("partial text %q, want Hel", got.text)
	}
}

// TestQuietMCPSessionSurvives: an MCP server's standalone GET event stream
// speaks only when it has news. ballast must not cut it at timeouts.idle
// (nor at the total deadline): the go-sdk client counts a reconnect that
// brings no new event id as a retry without progress and, after
// MaxRetries of them, fails the whole session — which, with the example's
// idle of 300s and the SDK's default of 5, would end every session quiet
// for half an hour. Here idle is 150ms and MaxRetries 2.
func TestQuietMCPSessionSurvives(t *testing.T) {
	t.Parallel()
	up := newMCPUpstream(t)
	cfg := strings.Replace(mcpRoute(serve(t, up), ""), "idle: 30s", "idle: 150ms", 1)
	b := startBallast(t, nil, cfg)
	listChanged := make(chan struct{}, 4)
	client := mcp.NewClient(&mcp.Implementation{Name: "audit", Version: "v1"}, &mcp.ClientOptions{
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) { listChanged <- struct{}{} },
	})
	session, err := client.Connect(testContext(t), &mcp.StreamableClientTransport{
		Endpoint: b.base + "/mcp", HTTPClient: httpClient(t), MaxRetries: 2,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = session.Close() })
	ended := make(chan error, 1)
	go func() { ended <- session.Wait() }()

	// A quiet spell of many idle timeouts: the quiet is what is tested, so
	// the test waits it out. The stream must neither end the session nor
	// be cut (a cut and a reconnect with no new event id count as a retry
	// without progress, and MaxRetries of them end the session).
	select {
	case err := <-ended:
		t.Fatalf("the MCP session ended after %d GET streams with nothing but quiet: %v", up.count("GET"), err)
	case <-time.After(1500 * time.Millisecond): // ten times timeouts.idle
	}
	if n := up.count("GET"); n != 1 {
		t.Errorf("the quiet GET stream was opened %d times, want once (never cut)", n)
	}
	if _, err := session.ListTools(testContext(t), nil); err != nil {
		t.Fatalf("tools/list after a quiet spell: %v", err)
	}
}

// TestSDKMCPSessionLifecycle: through ballast, the go-sdk session's
// id is carried on every request, a tools/call the server answers over
// SSE with progress works, a server that lost the session (404) surfaces
// as the SDK's session-missing error, and the DELETE on close reaches the
// server with the session id.
func TestSDKMCPSessionLifecycle(t *testing.T) {
	t.Parallel()
	up := newMCPUpstream(t)
	b := startBallast(t, nil, mcpRoute(serve(t, up), ", jsonrpc: true"))
	c, err := connectMCP(t, b)
	if err != nil {
		t.Fatal(err)
	}
	// The fake 404 leaves the server's session open (and its GET stream
	// relayed by ballast): close it before ballast shuts down.
	t.Cleanup(func() {
		for ss := range up.server.Sessions() {
			_ = ss.Close()
		}
	})
	if sum, err := callAdd(testContext(t), c.session, 1, 2); err != nil || sum != 3 {
		t.Fatalf("add = %d, %v", sum, err)
	}
	// The server forgets the session (restarted): 404 on the next call.
	up.failNext("tools/call", status(404, `{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"session not found"}}`))
	_, err = callAdd(testContext(t), c.session, 1, 2)
	if err == nil {
		t.Fatal("a tools/call the server answered 404 succeeded")
	}
	if !errors.Is(err, mcp.ErrSessionMissing) {
		t.Logf("the SDK's error for a lost session: %v", err)
	}
	if got := up.count("tools/call"); got != 2 {
		t.Errorf("the server saw %d tools/call, want 2 (a 404 is never retried)", got)
	}
	id := c.session.ID()
	_ = c.session.Close()
	if errors.Is(err, mcp.ErrSessionMissing) {
		return // the SDK skips the DELETE of a session it knows is gone
	}
	waitFor(t, "the DELETE", func() bool { return up.count("DELETE") == 1 })
	for _, s := range up.seen() {
		if s.key == "DELETE" && s.session != id {
			t.Errorf("DELETE carried Mcp-Session-Id %q, want %q", s.session, id)
		}
	}
}

// TestSDKStreamOutlivesPerTry: per_try bounds the wait for the
// response headers, not a healthy stream: a chat completions stream whose
// events keep coming (each gap well inside idle) for longer than per_try
// reaches the SDK whole.
func TestSDKStreamOutlivesPerTry(t *testing.T) {
	t.Parallel()
	slow := func(w http.ResponseWriter, r *http.Request, _ http.HandlerFunc) {
		sseHeaders(w)
		chunk := func(content string, finish any) map[string]any {
			return map[string]any{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
				"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"content": content}, "finish_reason": finish}}}
		}
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := range 15 { // ~600ms of events, per_try is 250ms
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
			sse(w, "", chunk(fmt.Sprint(i%10), nil))
		}
		sse(w, "", chunk("", "stop"))
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}
	fake := newFakeOpenAI(slow)
	b := startBallast(t, nil, modelRoute("openai", serve(t, fake), 250*time.Millisecond, "", ""))
	got := openAICalls[1].run(testContext(t), newOpenAI(t, b))
	if got.err != nil || !got.complete || got.text != "012345678901234" {
		t.Fatalf("a healthy stream longer than per_try: err %v, complete %v, text %q", got.err, got.complete, got.text)
	}
}
