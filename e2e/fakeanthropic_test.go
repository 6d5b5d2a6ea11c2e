package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"
)

// fakeAnthropic speaks enough of the Anthropic Messages API for
// anthropic-sdk-go: POST /v1/messages as JSON or, with "stream": true, as
// server-sent events (message_start, content blocks, ping, message_delta,
// message_stop). Faults come from its script.
type fakeAnthropic struct {
	script *script

	mu   sync.Mutex
	keys []string // the credential of each request that reached it: x-api-key, else Authorization
}

func newFakeAnthropic(faults ...fault) *fakeAnthropic {
	return &fakeAnthropic{script: newScript(faults...)}
}

// anthropicUpstream is a fresh fake as a handler to serve, with its script.
func anthropicUpstream(faults ...fault) (http.Handler, *script) {
	f := newFakeAnthropic(faults...)
	return f, f.script
}

func (f *fakeAnthropic) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	f.mu.Lock()
	key := r.Header.Get("X-Api-Key")
	if key == "" {
		key = r.Header.Get("Authorization") // anthropic-sdk-go v2 sends the key as a bearer token
	}
	f.keys = append(f.keys, key)
	f.mu.Unlock()
	var req struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	if r.Method != http.MethodPost || r.URL.Path != "/v1/messages" || json.Unmarshal(body, &req) != nil {
		status(404, `{"type":"error","error":{"type":"not_found_error","message":"Not found"}}`)(w, r, nil)
		return
	}
	next := func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, anthropicMessage(req.Model, "end_turn", answer()))
	}
	if req.Stream {
		next = func(w http.ResponseWriter, _ *http.Request) { anthropicStream(w, req.Model) }
	}
	f.script.serve(w, r, next)
}

func anthropicMessage(model string, stop any, text string) map[string]any {
	content := []any{}
	if text != "" {
		content = append(content, map[string]any{"type": "text", "text": text})
	}
	return map[string]any{
		"id": "msg_e2e", "type": "message", "role": "assistant", "model": model,
		"content": content, "stop_reason": stop, "stop_sequence": nil,
		"usage": map[string]any{"input_tokens": 5, "output_tokens": 6},
	}
}

func anthropicStream(w http.ResponseWriter, model string) {
	sseHeaders(w)
	sse(w, "message_start", map[string]any{"type": "message_start", "message": anthropicMessage(model, nil, "")})
	sse(w, "content_block_start", map[string]any{"type": "content_block_start", "index": 0,
		"content_block": map[string]any{"type": "text", "text": ""}})
	sse(w, "ping", map[string]any{"type": "ping"})
	for _, d := range answerDeltas {
		sse(w, "content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
			"delta": map[string]any{"type": "text_delta", "text": d}})
	}
	sse(w, "content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	sse(w, "message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil}, "usage": map[string]any{"output_tokens": 6}})
	sse(w, "message_stop", map[string]any{"type": "message_stop"})
}

// Anthropic's error bodies, as the API sends them.
const (
	anthropicRateLimitBody  = `{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 50 requests per minute."}}`
	anthropicOverloadedBody = `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`
	anthropicAPIErrorBody   = `{"type":"error","error":{"type":"api_error","message":"Internal server error"}}`
	anthropicAuthBody       = `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`
	anthropicBillingBody    = `{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}`
)

// anthropicRateLimitHeaders are the headers of an Anthropic 429: the
// requests limit is spent and resets at now+reset (RFC 3339, as Anthropic
// writes it), and retry-after, when not empty, is the whole-second hint.
func anthropicRateLimitHeaders(now time.Time, reset time.Duration, retryAfter string) []string {
	h := []string{
		"anthropic-ratelimit-requests-limit", "50",
		"anthropic-ratelimit-requests-remaining", "0",
		"anthropic-ratelimit-requests-reset", now.Add(reset).UTC().Format(time.RFC3339Nano),
		"anthropic-ratelimit-tokens-limit", "40000",
		"anthropic-ratelimit-tokens-remaining", "39000",
		"anthropic-ratelimit-tokens-reset", now.Add(time.Second).UTC().Format(time.RFC3339),
		"request-id", "req_e2e",
	}
	if retryAfter != "" {
		h = append(h, "retry-after", retryAfter)
	}
	return h
}
