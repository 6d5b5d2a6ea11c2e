package ratelimit

import (
	"strings"
	"testing"
)

func TestEstimateTokens(t *testing.T) {
	long := strings.Repeat("abcd", 250) // 1000 bytes: 250 tokens
	tests := []struct {
		name string
		body string
		want int
	}{
		{
			name: "openai chat with max_tokens",
			body: `{"model":"gpt-4o","messages":[{"role":"system","content":"` + long + `"},{"role":"user","content":"` + long + `"}],"max_tokens":100}`,
			want: 500 + 100,
		},
		{
			name: "openai chat without output limit",
			body: `{"model":"gpt-4o","messages":[{"role":"user","content":"` + long + `"}]}`,
			want: 250 + DefaultMaxOutputTokens,
		},
		{
			name: "max_completion_tokens and n",
			body: `{"messages":[{"role":"user","content":"abcd"}],"max_completion_tokens":50,"n":3}`,
			want: 1 + 150,
		},
		{
			name: "anthropic with system blocks and content parts",
			body: `{"model":"claude","max_tokens":1024,"system":[{"type":"text","text":"` + long + `","cache_control":{"type":"ephemeral"}}],` +
				`"messages":[{"role":"user","content":[{"type":"text","text":"` + long + `"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + strings.Repeat("A", 100000) + `"}}]}]}`,
			want: 500 + 1024,
		},
		{
			name: "openai image_url part is not text",
			body: `{"messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"},{"type":"image_url","image_url":{"url":"data:image/png;base64,` + strings.Repeat("A", 4000) + `"}}]}],"max_tokens":10}`,
			want: 2 + 10,
		},
		{
			name: "responses api input string, instructions and max_output_tokens",
			body: `{"model":"o3","instructions":"` + long + `","input":"` + long + `","max_output_tokens":2000}`,
			want: 500 + 2000,
		},
		{
			name: "legacy completions prompt array",
			body: `{"prompt":["abcd","efgh"],"max_tokens":7}`,
			want: 2 + 7,
		},
		{
			name: "escapes count as the text they stand for",
			body: `{"prompt":"a\nb\u00e9\u4e2d","max_tokens":0}`, // a, \n, b, é (2 bytes), 中 (3 bytes): 8 bytes
			want: 2,
		},
		{
			name: "CJK counts bytes, not characters",
			body: `{"prompt":"中文中文","max_tokens":0}`, // 12 bytes
			want: 3,
		},
		{
			name: "fields outside the prompt are not counted",
			body: `{"metadata":{"note":"` + long + `"},"prompt":"abcd","max_tokens":1}`,
			want: 1 + 1,
		},
		{
			name: "fractional and huge max_tokens",
			body: `{"prompt":"","max_tokens":1e20}`,
			want: maxEstimate / maxChoices,
		},
		{
			name: "max_tokens of the wrong type is ignored",
			body: `{"prompt":"abcd","max_tokens":"lots"}`,
			want: 1 + DefaultMaxOutputTokens,
		},
		{name: "empty object", body: `{}`, want: DefaultMaxOutputTokens},
		{name: "not JSON", body: `hello world!`, want: 3 + DefaultMaxOutputTokens},
		{name: "truncated JSON", body: `{"prompt":"abcdabcd","max_tokens":5`, want: 9 + DefaultMaxOutputTokens},
		{name: "array at top level", body: `["abcd"]`, want: 2 + DefaultMaxOutputTokens},
		{name: "empty body", body: ``, want: DefaultMaxOutputTokens},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EstimateTokens([]byte(tt.body)); got != tt.want {
				t.Errorf("EstimateTokens = %d, want %d", got, tt.want)
			}
		})
	}
}
