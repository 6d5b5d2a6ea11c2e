package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// newOpenAI is an openai-go client pointed at ballast by base URL alone,
// with the SDK's own retries off: every retry the tests see is ballast's.
func newOpenAI(t *testing.T, b *ballast) openai.Client {
	return openai.NewClient(
		option.WithBaseURL(b.base+"/openai/v1/"),
		option.WithAPIKey("sk-e2e"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(httpClient(t)),
	)
}

// modelResult is what an agent got from one SDK call.
type modelResult struct {
	text     string
	complete bool // the answer ended as a whole one: finish_reason, response.completed, message_stop
	err      error
}

// sdkCall is one kind of call an agent makes with a provider's SDK client C.
type sdkCall[C any] struct {
	name   string
	stream bool
	run    func(context.Context, C) modelResult
}

var openAICalls = []sdkCall[openai.Client]{
	{"chat", false, func(ctx context.Context, c openai.Client) modelResult {
		resp, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    openai.ChatModelGPT4oMini,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
		})
		if err != nil {
			return modelResult{err: err}
		}
		if len(resp.Choices) == 0 {
			return modelResult{}
		}
		return modelResult{text: resp.Choices[0].Message.Content, complete: resp.Choices[0].FinishReason == "stop"}
	}},
	{"chat stream", true, func(ctx context.Context, c openai.Client) modelResult {
		stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:    openai.ChatModelGPT4oMini,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
		})
		defer stream.Close()
		var r modelResult
		for stream.Next() {
			for _, ch := range stream.Current().Choices {
				r.text += ch.Delta.Content
				r.complete = r.complete || ch.FinishReason == "stop"
			}
		}
		r.err = stream.Err()
		return r
	}},
	{"responses", false, func(ctx context.Context, c openai.Client) modelResult {
		resp, err := c.Responses.New(ctx, responses.ResponseNewParams{
			Model: openai.ChatModelGPT4oMini,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")},
		})
		if err != nil {
			return modelResult{err: err}
		}
		return modelResult{text: resp.OutputText(), complete: resp.Status == "completed"}
	}},
	{"responses stream", true, func(ctx context.Context, c openai.Client) modelResult {
		stream := c.Responses.NewStreaming(ctx, responses.ResponseNewParams{
			Model: openai.ChatModelGPT4oMini,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say hello")},
		})
		defer stream.Close()
		var r modelResult
		for stream.Next() {
			ev := stream.Current()
			switch ev.Type {
			case "response.output_text.delta":
				r.text += ev.Delta
			case "response.completed":
				r.complete = true
			}
		}
		r.err = stream.Err()
		return r
	}},
}

// apiOutcome is what an SDK call should end with: a whole answer, or an
// error with these properties.
type apiOutcome struct {
	status     int    // the HTTP status of the SDK's API error; 0: success, or no API error
	code       string // the provider's error code or type, when the upstream's own answer is relayed
	reason     string // ballast's problem reason, when ballast answered itself
	retryAfter string // the Retry-After the agent is given
	broken     bool   // a non-API error: a body that does not decode, a stream cut short
}

func TestOpenAIThroughBallast(t *testing.T) {
	t.Parallel()
	rateLimited := func(reset string, extra ...string) fault {
		return status(429, openAIRateLimitBody, openAIRateLimitHeaders(reset, extra...)...)
	}
	tests := []faultCase{
		{name: "no fault", wantHits: 1},
		{name: "429 with x-ratelimit-reset-requests: retried after the reset",
			faults: []fault{rateLimited("40ms")}, wantHits: 2, minElapsed: 40 * time.Millisecond},
		{name: "429 with retry-after beyond max_retry_after: ballast answers 429 with Retry-After",
			faults: []fault{rateLimited("30s", "retry-after", "30")},
			want:   apiOutcome{status: 429, reason: "rate_limited", retryAfter: "30"}, wantHits: 1},
		{name: "429 insufficient_quota: never retried",
			faults: []fault{status(429, openAIQuotaBody)},
			want:   apiOutcome{status: 429, code: "insufficient_quota"}, wantHits: 1},
		{name: "401 invalid_api_key: never retried",
			faults: []fault{status(401, openAIAuthBody)},
			want:   apiOutcome{status: 401, code: "invalid_api_key"}, wantHits: 1},
		{name: "500: not retried by default",
			faults: []fault{status(500, openAIServerBody)},
			want:   apiOutcome{status: 500, code: "server_error"}, wantHits: 1},
		{name: "500: retried when retry.on lists 5xx",
			faults: []fault{status(500, openAIServerBody)}, extraRetry: ", on: [connect-failure, reset, timeout, 429, 5xx]",
			wantHits: 2},
		{name: "503 twice: retried", faults: []fault{status(503, openAIOverBody), status(503, openAIOverBody)}, wantHits: 3},
		{name: "503 on every attempt: the upstream's own 503",
			faults: []fault{status(503, openAIOverBody), status(503, openAIOverBody), status(503, openAIOverBody)},
			want:   apiOutcome{status: 503, code: "server_error"}, wantHits: 3},
		{name: "reset connection: retried", faults: []fault{resetConn}, wantHits: 2},
		{name: "reset on every attempt: 502 problem",
			faults: []fault{resetConn, resetConn, resetConn},
			want:   apiOutcome{status: 502, reason: "upstream_unavailable"}, wantHits: 3},
		{name: "hang past per_try: retried", faults: []fault{hang}, perTry: 250 * time.Millisecond, wantHits: 2},
		{name: "hang on every attempt: 504 problem", faults: []fault{hang, hang, hang}, perTry: 150 * time.Millisecond,
			want: apiOutcome{status: 504, reason: "timeout"}, wantHits: 3},
		{name: "malformed JSON in a 200: the SDK's decode error", only: "unary",
			faults: []fault{malformedJSON}, want: apiOutcome{broken: true}, wantHits: 1},
		{name: "SSE stream cut in the middle: an error, never a complete answer", only: "stream",
			faults: []fault{cutStreamAfter(3)}, want: apiOutcome{broken: true}, wantHits: 1},
	}
	runFaultCases(t, "openai", tests, openAICalls, openAIUpstream, newOpenAI, openAIErrorOf)
}

// faultCase is one row of a provider's fault table: what its fake upstream
// does, the route's retry settings, and how the agent's SDK call must end.
type faultCase struct {
	name       string
	faults     []fault
	extraRetry string
	perTry     time.Duration
	only       string // "stream" or "unary": the fault exists for one kind of call
	want       apiOutcome
	wantHits   int64
	minElapsed time.Duration
}

// runFaultCases runs each case against each of a provider's SDK calls, in
// parallel subtests: a fresh fake upstream from upstream, a ballast with one
// model route to it, and a client from newClient. It checks the outcome, the
// requests the upstream saw, and that no reset the provider asked for was cut short.
func runFaultCases[C any](t *testing.T, provider string, tests []faultCase, calls []sdkCall[C],
	upstream func(...fault) (http.Handler, *script), newClient func(*testing.T, *ballast) C,
	errorOf func(error) (sdkError, bool)) {
	t.Helper()
	for _, tt := range tests {
		for _, call := range calls {
			if tt.only == "stream" && !call.stream || tt.only == "unary" && call.stream {
				continue
			}
			t.Run(tt.name+"/"+call.name, func(t *testing.T) {
				t.Parallel()
				fake, sc := upstream(tt.faults...)
				b := startBallast(t, nil, modelRoute(provider, serve(t, fake), tt.perTry, tt.extraRetry, ""))
				start := time.Now()
				got := call.run(testContext(t), newClient(t, b))
				checkOutcome(t, got, tt.want, errorOf)
				if hits := sc.hits.Load(); hits != tt.wantHits {
					t.Errorf("the upstream saw %d requests, want %d", hits, tt.wantHits)
				}
				if el := time.Since(start); el < tt.minElapsed {
					t.Errorf("answered after %v: ballast did not wait out the provider's reset (%v)", el, tt.minElapsed)
				}
			})
		}
	}
}

// sdkError is the part of an SDK's API error the tests read.
type sdkError struct {
	status int
	code   string // OpenAI: error.code, else error.type; Anthropic: error.type
	header http.Header
	body   string
}

func openAIErrorOf(err error) (sdkError, bool) {
	var e *openai.Error
	if !errors.As(err, &e) {
		return sdkError{}, false
	}
	code := e.Code
	if code == "" {
		code = e.Type
	}
	out := sdkError{status: e.StatusCode, code: code}
	if e.Response != nil {
		out.header = e.Response.Header
		out.body = string(e.DumpResponse(true))
	}
	return out, true
}

// checkOutcome asserts that an SDK call ended as want says.
func checkOutcome(t *testing.T, got modelResult, want apiOutcome, errorOf func(error) (sdkError, bool)) {
	t.Helper()
	switch {
	case want == apiOutcome{}:
		if got.err != nil {
			t.Fatalf("the SDK call failed: %v (%T)", got.err, got.err)
		}
		if got.text != answer() || !got.complete {
			t.Fatalf("answer %q (complete %v), want %q complete", got.text, got.complete, answer())
		}
	case want.broken:
		if got.err == nil {
			t.Fatalf("the SDK returned no error; answer %q (complete %v)", got.text, got.complete)
		}
		if got.complete {
			t.Fatalf("the SDK reported a complete answer %q alongside the error %v", got.text, got.err)
		}
		if e, ok := errorOf(got.err); ok {
			t.Fatalf("want a decode or stream error, got an API error with status %d", e.status)
		}
		t.Logf("the SDK's error: %v", got.err)
	default:
		e, ok := errorOf(got.err)
		if !ok {
			t.Fatalf("want an API error with status %d, got %v (%T)", want.status, got.err, got.err)
		}
		if e.status != want.status {
			t.Errorf("status %d, want %d", e.status, want.status)
		}
		if want.code != "" && e.code != want.code {
			t.Errorf("error code %q, want %q", e.code, want.code)
		}
		if want.reason != "" {
			if ct := e.header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type %q, want application/problem+json", ct)
			}
			if !strings.Contains(e.body, `"reason":"`+want.reason+`"`) {
				t.Errorf("want ballast's problem with reason %q, got:\n%s", want.reason, e.body)
			}
		}
		if want.retryAfter != "" && e.header.Get("Retry-After") != want.retryAfter {
			t.Errorf("Retry-After %q, want %q", e.header.Get("Retry-After"), want.retryAfter)
		}
	}
}

// TestOpenAIRetryAfterIsHonoured shows that ballast waits out OpenAI's own
// hint (retry-after: 1, whole seconds as OpenAI sends it) before its retry,
// although its own backoff is a few milliseconds.
func TestOpenAIRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	fake := newFakeOpenAI(status(429, openAIRateLimitBody, openAIRateLimitHeaders("1s", "retry-after", "1")...))
	b := startBallast(t, nil, modelRoute("openai", serve(t, fake), 0, "", ""))
	start := time.Now()
	checkOutcome(t, openAICalls[0].run(testContext(t), newOpenAI(t, b)), apiOutcome{}, openAIErrorOf)
	if el := time.Since(start); el < time.Second {
		t.Fatalf("answered after %v: ballast retried before retry-after elapsed", el)
	}
	if n := fake.script.hits.Load(); n != 2 {
		t.Fatalf("upstream hits %d, want 2", n)
	}
}

// TestOpenAIKeyPassesThrough: the agent's own API key reaches the provider
// unchanged, on every attempt.
func TestOpenAIKeyPassesThrough(t *testing.T) {
	t.Parallel()
	fake := newFakeOpenAI(status(503, openAIOverBody))
	b := startBallast(t, nil, modelRoute("openai", serve(t, fake), 0, "", ""))
	checkOutcome(t, openAICalls[0].run(testContext(t), newOpenAI(t, b)), apiOutcome{}, openAIErrorOf)
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.auths) != 2 || fake.auths[0] != "Bearer sk-e2e" || fake.auths[1] != "Bearer sk-e2e" {
		t.Fatalf("Authorization seen upstream: %q", fake.auths)
	}
}
