package ratelimit

import "testing"

func TestUsageFromBody(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		want       Usage
		wantTokens int
		wantOK     bool
	}{
		{
			name: "openai chat completion",
			body: `{"id":"x","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}`,
			want: Usage{Input: 12, Output: 30, Total: 42}, wantTokens: 42, wantOK: true,
		},
		{
			name: "openai without total",
			body: `{"usage":{"prompt_tokens":12,"completion_tokens":30}}`,
			want: Usage{Input: 12, Output: 30}, wantTokens: 42, wantOK: true,
		},
		{
			name: "anthropic message",
			body: `{"type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":20,"cache_creation_input_tokens":5,"cache_read_input_tokens":1000,"output_tokens":7}}`,
			want: Usage{Input: 25, Output: 7}, wantTokens: 32, wantOK: true,
		},
		{
			name: "openai responses api",
			body: `{"object":"response","usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}`,
			want: Usage{Input: 9, Output: 3, Total: 12}, wantTokens: 12, wantOK: true,
		},
		{
			name: "openai stream tail with include_usage",
			body: "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n" +
				"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\n" +
				"data: [DONE]\n\n",
			want: Usage{Input: 5, Output: 6, Total: 11}, wantTokens: 11, wantOK: true,
		},
		{
			name: "anthropic stream: message_start and message_delta combine",
			body: "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\n" +
				"event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n" +
				"event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
			want: Usage{Input: 25, Output: 15}, wantTokens: 40, wantOK: true,
		},
		{
			name: "openai responses stream: response.completed",
			body: "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":4,\"total_tokens\":7}}}\n",
			want: Usage{Input: 3, Output: 4, Total: 7}, wantTokens: 7, wantOK: true,
		},
		{
			name: "cut-off first line and a data event split over lines",
			body: "ens\":1}}\n\ndata: {\"usage\":\ndata: {\"total_tokens\":99}}\n\n",
			want: Usage{Total: 99}, wantTokens: 99, wantOK: true,
		},
		{
			name: "data without a space after the colon",
			body: "data:{\"usage\":{\"total_tokens\":3}}",
			want: Usage{Total: 3}, wantTokens: 3, wantOK: true,
		},
		{
			name: "wrong types elsewhere do not hide usage",
			body: `{"message":"oops","usage":{"prompt_tokens":2,"completion_tokens":"x"}}`,
			want: Usage{Input: 2}, wantTokens: 2, wantOK: true,
		},
		{
			name: "negative and fractional counts",
			body: `{"usage":{"prompt_tokens":-4,"completion_tokens":2.7}}`,
			want: Usage{Output: 2}, wantTokens: 2, wantOK: true,
		},
		{name: "no usage", body: `{"choices":[]}`},
		{name: "usage null", body: `{"usage":null}`},
		{name: "malformed JSON", body: `{"usage":{"total_tokens":5`},
		{name: "stream without usage", body: "data: {\"choices\":[]}\n\ndata: [DONE]\n\n"},
		{name: "empty", body: ``},
		{name: "not JSON, not SSE", body: `<html>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := UsageFromBody([]byte(tt.body))
			if ok != tt.wantOK || got != tt.want {
				t.Fatalf("UsageFromBody = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
			if got.Tokens() != tt.wantTokens {
				t.Errorf("Tokens() = %d, want %d", got.Tokens(), tt.wantTokens)
			}
		})
	}
}
