package ratelimit

import (
	"encoding/json"
	"testing"
)

var estimateSeeds = []string{
	`{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}],"max_tokens":100}`,
	`{"system":[{"type":"text","text":"be brief"}],"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image","source":{"type":"base64","data":"AAAA"}}]}],"max_tokens":1024}`,
	`{"input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}],"max_output_tokens":5,"n":2}`,
	`{"prompt":"a\u00e9\ud83d\ude00","max_tokens":1e400}`,
	`{"prompt":"unterminated`,
	`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]`,
	`{"messages":[` + `{"a":[` + `]}]}`,
	`{"max_tokens":-1,"n":-5}`,
	``, `{`, `}`, `"`, `nul`, `{"a":tru}`,
}

func FuzzEstimateTokens(f *testing.F) {
	for _, s := range estimateSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := EstimateTokens(body)
		if got < 0 || got > maxEstimate {
			t.Fatalf("EstimateTokens = %d, out of [0, 2^31]", got)
		}
		// The scanner must accept all valid JSON (short of its depth cap).
		s := jsonScanner{b: body}
		s.value(true)
		if json.Valid(body) && s.bad && !s.deep {
			t.Fatalf("scanner rejected valid JSON %q", body)
		}
	})
}

var usageSeeds = []string{
	`{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`,
	`{"usage":{"input_tokens":1,"output_tokens":2,"cache_creation_input_tokens":3}}`,
	"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25}}}\n\ndata: {\"usage\":{\"output_tokens\":15}}\n\n",
	"data: {\"response\":{\"usage\":{\"total_tokens\":7}}}\r\n\r\ndata: [DONE]\r\n",
	"data: {\"usage\":\ndata: {\"total_tokens\":1e308}}\n\n",
	`{"usage":{"total_tokens":-1e308}}`,
	`{"usage":"none","message":7}`,
	"data:", "data: [DONE]", "\n\n\n", `{`,
}

func FuzzUsageFromBody(f *testing.F) {
	for _, s := range usageSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		u, ok := UsageFromBody(body)
		if !ok && u != (Usage{}) {
			t.Fatalf("usage %+v reported with ok=false", u)
		}
		for _, n := range []int{u.Input, u.Output, u.Total} {
			if n < 0 || n > maxEstimate {
				t.Fatalf("count %d out of [0, 2^31] in %+v", n, u)
			}
		}
		if tok := u.Tokens(); tok < 0 {
			t.Fatalf("Tokens() = %d", tok)
		}
	})
}

func FuzzParsePriority(f *testing.F) {
	for _, s := range []string{"low", " LOW ", "normal", "", "l\x00w"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		if p := ParsePriority(v); p != PriorityNormal && p != PriorityLow {
			t.Fatalf("ParsePriority(%q) = %d", v, p)
		}
	})
}

func FuzzAppendRateLimitFields(f *testing.F) {
	f.Add("openai", int64(50), int64(7))
	f.Add("a\"b\\c\x00é", int64(-1), int64(1<<62))
	f.Fuzz(func(t *testing.T, name string, limit, remaining int64) {
		_, policy, rl := AppendRateLimitFields(nil, name, Quota{Limit: limit, Remaining: remaining})
		for _, field := range [][]byte{policy, rl} {
			if len(field) < 2 || field[0] != '"' {
				t.Fatalf("field %q does not start with a string", field)
			}
			for _, c := range field {
				if c < 0x20 || c > 0x7e {
					t.Fatalf("field %q has byte %#x outside visible ASCII", field, c)
				}
			}
		}
	})
}
