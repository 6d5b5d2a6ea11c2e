package ratelimit

import (
	"strings"
	"testing"
)

const (
	anthropicStart = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":900,\"cache_creation_input_tokens\":10,\"output_tokens\":1}}}\n\n"
	anthropicDelta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"abc\"}}\n\n"
	anthropicEnd   = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":50}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	openaiChunk    = "data: {\"choices\":[{\"delta\":{\"content\":\"abc\"}}],\"usage\":null}\n\n"
	openaiEnd      = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":60,\"total_tokens\":100}}\n\ndata: [DONE]\n\n"
)

func TestUsageFromParts(t *testing.T) {
	tests := []struct {
		name   string
		parts  []string
		want   Usage
		wantOK bool
	}{
		{
			name:  "anthropic head and tail combine",
			parts: []string{anthropicStart + anthropicDelta + anthropicDelta[:20], anthropicDelta[30:] + anthropicEnd},
			want:  Usage{Input: 910, Output: 50}, wantOK: true,
		},
		{
			name:  "anthropic head alone (the tail lost)",
			parts: []string{anthropicStart + anthropicDelta, ""},
			want:  Usage{Input: 910, Output: 1}, wantOK: true,
		},
		{
			name:  "openai usage in the tail only",
			parts: []string{openaiChunk + openaiChunk, openaiChunk[10:] + openaiEnd},
			want:  Usage{Input: 40, Output: 60, Total: 100}, wantOK: true,
		},
		{
			name:  "the same events in both parts count once",
			parts: []string{anthropicStart + anthropicDelta + anthropicEnd, anthropicStart + anthropicDelta + anthropicEnd},
			want:  Usage{Input: 910, Output: 50}, wantOK: true,
		},
		{
			name:  "overlapping parts: the tail repeats the head's last events",
			parts: []string{anthropicStart + anthropicDelta + anthropicEnd, anthropicDelta + anthropicEnd},
			want:  Usage{Input: 910, Output: 50}, wantOK: true,
		},
		{
			name:  "openai events repeated count once",
			parts: []string{openaiChunk + openaiEnd, openaiEnd},
			want:  Usage{Input: 40, Output: 60, Total: 100}, wantOK: true,
		},
		{
			name:  "an event cut by the head's edge is skipped",
			parts: []string{anthropicStart[:len(anthropicStart)-20], anthropicEnd},
			want:  Usage{Output: 50}, wantOK: true,
		},
		{
			name:  "a JSON body in one part",
			parts: []string{`{"usage":{"input_tokens":3,"output_tokens":4}}`},
			want:  Usage{Input: 3, Output: 4}, wantOK: true,
		},
		{name: "no usage anywhere", parts: []string{openaiChunk, openaiChunk}},
		{name: "no parts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts := make([][]byte, len(tt.parts))
			for i, p := range tt.parts {
				parts[i] = []byte(p)
			}
			got, ok := UsageFromParts(parts...)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("UsageFromParts = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// Reading a whole stream in one part or cut into two at an event boundary
// gives the same usage.
func TestUsageFromPartsMatchesWholeBody(t *testing.T) {
	streams := []struct {
		name string
		body string
	}{
		{name: "anthropic", body: anthropicStart + strings.Repeat(anthropicDelta, 5) + anthropicEnd},
		{name: "openai", body: strings.Repeat(openaiChunk, 5) + openaiEnd},
	}
	for _, tt := range streams {
		t.Run(tt.name, func(t *testing.T) {
			whole, wholeOK := UsageFromBody([]byte(tt.body))
			for cut := 0; cut <= len(tt.body); cut++ {
				if cut > 0 && cut < len(tt.body) && !strings.HasSuffix(tt.body[:cut], "\n\n") {
					continue
				}
				got, ok := UsageFromParts([]byte(tt.body[:cut]), []byte(tt.body[cut:]))
				if got != whole || ok != wholeOK {
					t.Errorf("cut at %d: %+v, %v; whole body: %+v, %v", cut, got, ok, whole, wholeOK)
				}
			}
		})
	}
}

func FuzzUsageFromParts(f *testing.F) {
	for i, s := range usageSeeds {
		f.Add([]byte(s), []byte(usageSeeds[(i+1)%len(usageSeeds)]))
	}
	f.Add([]byte(anthropicStart+anthropicDelta), []byte(anthropicEnd))
	f.Fuzz(func(t *testing.T, head, tail []byte) {
		u, ok := UsageFromParts(head, tail)
		if !ok && u != (Usage{}) {
			t.Fatalf("usage %+v reported with ok=false", u)
		}
		for _, n := range []int{u.Input, u.Output, u.Total} {
			if n < 0 || n > maxEstimate {
				t.Fatalf("count %d out of [0, 2^31] in %+v", n, u)
			}
		}
		// A part repeated counts once.
		if again, okAgain := UsageFromParts(head, tail, tail); again != u || okAgain != ok {
			t.Fatalf("tail repeated: %+v, %v; once: %+v, %v", again, okAgain, u, ok)
		}
		if one, okOne := UsageFromParts(head); okOne {
			if twice, _ := UsageFromParts(head, head); twice != one {
				t.Fatalf("head repeated: %+v; once: %+v", twice, one)
			}
		}
	})
}
