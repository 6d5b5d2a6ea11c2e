package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
)

// newAnthropic is an anthropic-sdk-go client pointed at ballast by base URL
// alone, with the SDK's own retries off.
func newAnthropic(t *testing.T, b *ballast) anthropic.Client {
	return anthropic.NewClient(
		option.WithBaseURL(b.base+"/anthropic/"),
		option.WithAPIKey("sk-ant-e2e"),
		option.WithMaxRetries(0),
		option.WithHTTPClient(httpClient(t)),
	)
}

func anthropicParams() anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     "claude-e2e",
		MaxTokens: 256,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say hello"))},
	}
}

var anthropicCalls = []sdkCall[anthropic.Client]{
	{"messages", false, func(ctx context.Context, c anthropic.Client) modelResult {
		msg, err := c.Messages.New(ctx, anthropicParams())
		if err != nil {
			return modelResult{err: err}
		}
		var r modelResult
		for _, b := range msg.Content {
			r.text += b.Text
		}
		r.complete = msg.StopReason == anthropic.StopReasonEndTurn
		return r
	}},
	{"messages stream", true, func(ctx context.Context, c anthropic.Client) modelResult {
		stream := c.Messages.NewStreaming(ctx, anthropicParams())
		defer stream.Close()
		var r modelResult
		msg := anthropic.Message{}
		stopped := false
		for stream.Next() {
			ev := stream.Current()
			if err := msg.Accumulate(ev); err != nil {
				return modelResult{err: err}
			}
			stopped = stopped || ev.Type == "message_stop"
		}
		for _, b := range msg.Content {
			r.text += b.Text
		}
		r.complete = stopped && msg.StopReason == anthropic.StopReasonEndTurn
		r.err = stream.Err()
		return r
	}},
}

func anthropicErrorOf(err error) (sdkError, bool) {
	var e *anthropic.Error
	if !errors.As(err, &e) {
		return sdkError{}, false
	}
	out := sdkError{status: e.StatusCode}
	if e.Response != nil {
		out.header = e.Response.Header
		out.body = string(e.DumpResponse(true))
	}
	// The error object's type: rate_limit_error, overloaded_error, ...
	var body struct {
		Error struct {
			Type string `json:"type"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(e.RawJSON()), &body) == nil {
		out.code = body.Error.Type
	}
	return out, true
}

func TestAnthropicThroughBallast(t *testing.T) {
	t.Parallel()
	all5xx := ", on: [connect-failure, reset, timeout, 429, 5xx]"
	tests := []faultCase{
		{name: "no fault", wantHits: 1},
		{name: "429 with anthropic-ratelimit-requests-reset: retried after the reset",
			faults: []fault{statusFunc(429, anthropicRateLimitBody, func() []string {
				return anthropicRateLimitHeaders(time.Now(), 60*time.Millisecond, "")
			})},
			wantHits: 2, minElapsed: 40 * time.Millisecond},
		{name: "429 with retry-after beyond max_retry_after: ballast answers 429 with Retry-After",
			faults: []fault{statusFunc(429, anthropicRateLimitBody, func() []string {
				return anthropicRateLimitHeaders(time.Now(), 40*time.Second, "40")
			})},
			want: apiOutcome{status: 429, reason: "rate_limited", retryAfter: "40"}, wantHits: 1},
		{name: "401 authentication_error: never retried", faults: []fault{status(401, anthropicAuthBody)},
			want: apiOutcome{status: 401, code: "authentication_error"}, wantHits: 1},
		{name: "400 credit balance too low: never retried", faults: []fault{status(400, anthropicBillingBody)},
			want: apiOutcome{status: 400, code: "invalid_request_error"}, wantHits: 1},
		{name: "500 api_error: not retried by default", faults: []fault{status(500, anthropicAPIErrorBody)},
			want: apiOutcome{status: 500, code: "api_error"}, wantHits: 1},
		{name: "500 api_error: retried when retry.on lists 5xx", faults: []fault{status(500, anthropicAPIErrorBody)},
			extraRetry: all5xx, wantHits: 2},
		{name: "529 overloaded_error: retried by the default retry.on", faults: []fault{status(529, anthropicOverloadedBody)},
			wantHits: 2},
		{name: "529 overloaded_error: retried when retry.on lists 5xx", faults: []fault{status(529, anthropicOverloadedBody)},
			extraRetry: all5xx, wantHits: 2},
		{name: "503: retried", faults: []fault{status(503, anthropicOverloadedBody)}, wantHits: 2},
		{name: "reset connection: retried", faults: []fault{resetConn, resetConn}, wantHits: 3},
		{name: "hang past per_try: retried", faults: []fault{hang}, perTry: 250 * time.Millisecond, wantHits: 2},
		{name: "hang on every attempt: 504 problem", faults: []fault{hang, hang, hang}, perTry: 150 * time.Millisecond,
			want: apiOutcome{status: 504, reason: "timeout"}, wantHits: 3},
		{name: "malformed JSON in a 200: the SDK's decode error", only: "unary",
			faults: []fault{malformedJSON}, want: apiOutcome{broken: true}, wantHits: 1},
		{name: "SSE stream cut in the middle: an error, never a complete answer", only: "stream",
			faults: []fault{cutStreamAfter(4)}, want: apiOutcome{broken: true}, wantHits: 1},
	}
	runFaultCases(t, "anthropic", tests, anthropicCalls, anthropicUpstream, newAnthropic, anthropicErrorOf)
}

// TestAnthropicRetryAfterIsHonoured: Anthropic's 429 says retry-after: 1
// with an RFC 3339 reset a second away; ballast waits it out before its
// retry, on a stream, and the agent's key reaches the provider each time.
func TestAnthropicRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	fake := newFakeAnthropic(statusFunc(429, anthropicRateLimitBody, func() []string {
		return anthropicRateLimitHeaders(time.Now(), time.Second, "1")
	}))
	b := startBallast(t, nil, modelRoute("anthropic", serve(t, fake), 0, "", ""))
	start := time.Now()
	checkOutcome(t, anthropicCalls[1].run(testContext(t), newAnthropic(t, b)), apiOutcome{}, anthropicErrorOf)
	if el := time.Since(start); el < time.Second {
		t.Fatalf("answered after %v: ballast retried before retry-after elapsed", el)
	}
	if n := fake.script.hits.Load(); n != 2 {
		t.Fatalf("upstream hits %d, want 2", n)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	for _, k := range fake.keys {
		if k != "Bearer sk-ant-e2e" && k != "sk-ant-e2e" {
			t.Fatalf("credentials seen upstream: %q", fake.keys)
		}
	}
}

var _ http.Handler = (*fakeAnthropic)(nil)
var _ http.Handler = (*fakeOpenAI)(nil)
