package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
)

// The answer every fake model gives, split into the deltas its streams send.
var answerDeltas = []string{"Hello", " from the", " fake upstream."}

func answer() string { return strings.Join(answerDeltas, "") }

// fakeOpenAI speaks enough of the OpenAI wire format for openai-go:
// POST /v1/chat/completions and POST /v1/responses, each as JSON or, with
// "stream": true, as server-sent events. Faults come from its script.
type fakeOpenAI struct {
	script *script

	mu    sync.Mutex
	auths []string // the Authorization header of each request that reached it
}

func newFakeOpenAI(faults ...fault) *fakeOpenAI { return &fakeOpenAI{script: newScript(faults...)} }

// openAIUpstream is a fresh fake as a handler to serve, with its script.
func openAIUpstream(faults ...fault) (http.Handler, *script) {
	f := newFakeOpenAI(faults...)
	return f, f.script
}

func (f *fakeOpenAI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	f.mu.Unlock()
	var req struct {
		Model  string `json:"model"`
		Stream bool   `json:"stream"`
	}
	if r.Method != http.MethodPost || json.Unmarshal(body, &req) != nil {
		status(400, `{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}`)(w, r, nil)
		return
	}
	var next http.HandlerFunc
	switch {
	case r.URL.Path == "/v1/chat/completions" && req.Stream:
		next = func(w http.ResponseWriter, _ *http.Request) { openAIChatStream(w, req.Model) }
	case r.URL.Path == "/v1/chat/completions":
		next = func(w http.ResponseWriter, _ *http.Request) { openAIChat(w, req.Model) }
	case r.URL.Path == "/v1/responses" && req.Stream:
		next = func(w http.ResponseWriter, _ *http.Request) { openAIResponseStream(w, req.Model) }
	case r.URL.Path == "/v1/responses":
		next = func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, openAIResponse(req.Model, "completed")) }
	default:
		status(404, `{"error":{"message":"unknown path `+r.URL.Path+`","type":"invalid_request_error","param":null,"code":"unknown_url"}}`)(w, r, nil)
		return
	}
	f.script.serve(w, r, next)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func openAIChat(w http.ResponseWriter, model string) {
	writeJSON(w, map[string]any{
		"id": "chatcmpl-e2e", "object": "chat.completion", "created": 1700000000, "model": model,
		"choices": []any{map[string]any{
			"index": 0, "finish_reason": "stop", "logprobs": nil,
			"message": map[string]any{"role": "assistant", "content": answer(), "refusal": nil},
		}},
		"usage": map[string]any{"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
	})
}

// sse writes one event and flushes it. An empty name writes a data-only
// event, as chat completions do.
func sse(w http.ResponseWriter, name string, data any) {
	b, _ := json.Marshal(data)
	if name != "" {
		fmt.Fprintf(w, "event: %s\n", name)
	}
	fmt.Fprintf(w, "data: %s\n\n", b)
	flush(w)
}

func sseHeaders(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
}

func openAIChatStream(w http.ResponseWriter, model string) {
	sseHeaders(w)
	openAIChatStreamBody(w, model)
}

// openAIChatStreamBody is openAIChatStream after its headers.
func openAIChatStreamBody(w http.ResponseWriter, model string) {
	chunk := func(delta map[string]any, finish any) map[string]any {
		return map[string]any{
			"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": nil}},
		}
	}
	sse(w, "", chunk(map[string]any{"role": "assistant", "content": ""}, nil))
	for _, d := range answerDeltas {
		sse(w, "", chunk(map[string]any{"content": d}, nil))
	}
	sse(w, "", chunk(map[string]any{}, "stop"))
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
	flush(w)
}

func openAIResponse(model, state string) map[string]any {
	output := []any{}
	if state == "completed" {
		output = append(output, map[string]any{
			"type": "message", "id": "msg_e2e", "status": "completed", "role": "assistant",
			"content": []any{map[string]any{"type": "output_text", "text": answer(), "annotations": []any{}}},
		})
	}
	return map[string]any{
		"id": "resp_e2e", "object": "response", "created_at": 1700000000, "status": state, "model": model,
		"output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": []any{},
		"error": nil, "incomplete_details": nil, "instructions": nil, "metadata": map[string]any{},
		"temperature": 1, "top_p": 1,
	}
}

func openAIResponseStream(w http.ResponseWriter, model string) {
	sseHeaders(w)
	seq := 0
	event := func(typ string, fields map[string]any) {
		fields["type"], fields["sequence_number"] = typ, seq
		seq++
		sse(w, typ, fields)
	}
	event("response.created", map[string]any{"response": openAIResponse(model, "in_progress")})
	for _, d := range answerDeltas {
		event("response.output_text.delta", map[string]any{
			"item_id": "msg_e2e", "output_index": 0, "content_index": 0, "delta": d, "logprobs": []any{}})
	}
	event("response.output_text.done", map[string]any{
		"item_id": "msg_e2e", "output_index": 0, "content_index": 0, "text": answer(), "logprobs": []any{}})
	event("response.completed", map[string]any{"response": openAIResponse(model, "completed")})
}

// OpenAI's error bodies and rate-limit headers, as the API sends them.
const (
	openAIRateLimitBody = `{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-e2e on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`
	openAIQuotaBody     = `{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`
	openAIAuthBody      = `{"error":{"message":"Incorrect API key provided: sk-e2e.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`
	openAIServerBody    = `{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}`
	openAIOverBody      = `{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}`
)

// openAIRateLimitHeaders are the headers of an OpenAI 429 whose requests
// limit resets after reset (a Go duration, as OpenAI writes it).
func openAIRateLimitHeaders(reset string, extra ...string) []string {
	return append([]string{
		"x-ratelimit-limit-requests", "3",
		"x-ratelimit-remaining-requests", "0",
		"x-ratelimit-reset-requests", reset,
		"x-ratelimit-limit-tokens", "200000",
		"x-ratelimit-remaining-tokens", "199950",
		"x-ratelimit-reset-tokens", "15ms",
		"x-request-id", "req_e2e",
	}, extra...)
}
