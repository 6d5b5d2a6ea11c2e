package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
)

// tokens_per_minute settles every stream with its usage, read once: from
// wherever the provider puts it (Anthropic: input tokens in the first
// event, output tokens in the last; OpenAI with include_usage: all in the
// last chunk), however long the stream, and without counting an event
// twice when the stream is short enough to be read whole.
func TestStreamSettlesTokensOnce(t *testing.T) {
	const (
		anthropicStart = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":900,\"output_tokens\":1}}}\n\n"
		anthropicDelta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdef0123456789\"}}\n\n"
		anthropicEnd   = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":50}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
		openaiChunk    = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789abcdef0123456789\"}}],\"usage\":null}\n\n"
		openaiEnd      = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":700,\"completion_tokens\":300,\"total_tokens\":1000}}\n\ndata: [DONE]\n\n"
	)
	tests := []struct {
		name       string
		path       string
		events     []string
		wantTokens int
	}{
		{name: "anthropic short (read whole)", path: "/v1/messages",
			events: append(append([]string{anthropicStart}, repeatEvent(anthropicDelta, 5)...), anthropicEnd), wantTokens: 950},
		{name: "anthropic medium (head and tail meet)", path: "/v1/messages",
			events: append(append([]string{anthropicStart}, repeatEvent(anthropicDelta, 110)...), anthropicEnd), wantTokens: 950},
		{name: "anthropic long (bytes between head and tail)", path: "/v1/messages",
			events: append(append([]string{anthropicStart}, repeatEvent(anthropicDelta, 600)...), anthropicEnd), wantTokens: 950},
		{name: "openai short", path: "/v1/chat/completions",
			events: append(repeatEvent(openaiChunk, 3), openaiEnd), wantTokens: 1000},
		{name: "openai long", path: "/v1/chat/completions",
			events: append(repeatEvent(openaiChunk, 600), openaiEnd), wantTokens: 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := policy.NewFakeClock(time.Now())
			up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				for _, e := range tt.events {
					io.WriteString(w, e)
					w.(http.Flusher).Flush()
				}
			})
			b := startBallastClock(t, clock, fmt.Sprintf(`
routes:
  - name: llm
    match: {path_prefix: /}
    upstream: %q
    retry: {unsafe_methods: true}
    rate_limit: {tokens_per_minute: 2000, max_wait: 0s}
`, up))
			body := `{"model":"m","stream":true,"max_tokens":100,"messages":[{"role":"user","content":"hi"}]}`
			resp, got := do(t, "POST", b.base+tt.path, body)
			if resp.StatusCode != 200 || len(got) != len(strings.Join(tt.events, "")) {
				t.Fatalf("stream: %d, %d bytes", resp.StatusCode, len(got))
			}
			// A probe larger than the bucket is refused; its RateLimit
			// field reports the tokens left: 2000 − the 101 estimated,
			// until the stream's settlement replaces the estimate.
			left := func() string {
				resp, _ := do(t, "POST", b.base+tt.path, `{"model":"m","max_tokens":1000000,"messages":[]}`)
				if resp.StatusCode != 429 {
					t.Fatalf("probe: %d", resp.StatusCode)
				}
				f := resp.Header.Get("RateLimit")
				if i := strings.Index(f, "r="); i >= 0 {
					f = f[i+2:]
					if j := strings.IndexByte(f, ';'); j >= 0 {
						f = f[:j]
					}
				}
				return f
			}
			waitFor(t, func() bool { return left() != "1899" })
			if got, want := left(), fmt.Sprint(2000-tt.wantTokens); got != want {
				t.Errorf("tokens left after a %d-byte stream that used %d tokens of 2000: %s, want %s",
					len(strings.Join(tt.events, "")), tt.wantTokens, got, want)
			}
		})
	}
}

func repeatEvent(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}
