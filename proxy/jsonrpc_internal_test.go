package proxy

import (
	"encoding/json"
	"testing"
)

func TestJSONRPCSafety(t *testing.T) {
	j := &jsonrpcSafety{tools: map[string]bool{"search_docs": true}}
	tests := []struct {
		name string
		body string
		safe bool
	}{
		{"read-only method", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, true},
		{"idempotent tool", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{"q":"x"},"name":"search_docs"}}`, true},
		{"other tool", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_email"}}`, false},
		{"read-only batch", `[{"method":"ping"},{"method":"prompts/get","params":{"name":"p"}}]`, true},
		{"batch with a side effect", `[{"method":"ping"},{"method":"tools/call","params":{"name":"send_email"}}]`, false},
		{"empty batch", `[]`, false},
		{"surrounding space", " \n{\"method\":\"ping\"}\n", true},
		{"by-position params name no tool", `{"method":"tools/call","params":["search_docs"]}`, false},
		{"client response", `{"jsonrpc":"2.0","id":9,"result":{}}`, false},
		{"not JSON", `method=ping`, false},
		{"trailing data", `{"method":"ping"}{"method":"tools/call","params":{"name":"send_email"}}`, false},
		{"method not a string", `{"method":["ping"]}`, false},
		{"name not a string", `{"method":"tools/call","params":{"name":1}}`, false},

		// Bodies two parsers read differently: never safe.
		{"method twice, last read-only", `{"method":"tools/call","params":{"name":"send_email"},"method":"ping"}`, false},
		{"method twice, first read-only", `{"method":"ping","method":"tools/call","params":{"name":"send_email"}}`, false},
		{"method in another case", `{"method":"tools/call","params":{"name":"send_email"},"Method":"ping"}`, false},
		{"only a case-varied method", `{"METHOD":"ping"}`, false},
		{"params twice", `{"method":"tools/call","params":{"name":"send_email"},"params":{"name":"search_docs"}}`, false},
		{"params in another case", `{"method":"tools/call","params":{"name":"send_email"},"Params":{"name":"search_docs"}}`, false},
		{"params folded by Unicode", "{\"method\":\"tools/call\",\"params\":{\"name\":\"send_email\"},\"param\u017f\":{\"name\":\"search_docs\"}}", false},
		{"name twice", `{"method":"tools/call","params":{"name":"send_email","name":"search_docs"}}`, false},
		{"name in another case", `{"method":"tools/call","params":{"name":"send_email","Name":"search_docs"}}`, false},
		{"nested method keys do not count", `{"method":"tools/call","params":{"name":"search_docs","arguments":{"method":"x","Method":"y"}}}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := j.safe([]byte(tt.body)); got != tt.safe {
				t.Errorf("safe(%s) = %v, want %v", tt.body, got, tt.safe)
			}
		})
	}
}

// FuzzRPCCalls holds the strict reader to encoding/json: whatever it
// accepts, encoding/json (case-insensitive, last duplicate wins) reads as
// the same calls, so ballast and a Go server never disagree on a call it
// let through.
func FuzzRPCCalls(f *testing.F) {
	for _, s := range []string{
		`{"method":"ping"}`, `[{"method":"tools/call","params":{"name":"a"}},{"method":"x/list"}]`,
		`{"method":"a","Method":"b"}`, `{"params":{"name":"a","NAME":"b"},"method":"tools/call"}`,
		`{"method":"\u0074ools/call","params":{"name":"a\"b"}}`, `[]`, `{}`, `{"method":"ping"} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		calls, ok := rpcCalls(body)
		if !ok {
			return
		}
		type call struct {
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		var std []call
		var err error
		if body[firstNonSpace(body)] == '[' {
			err = json.Unmarshal(body, &std)
		} else {
			var c call
			err = json.Unmarshal(body, &c)
			std = []call{c}
		}
		if err != nil {
			t.Fatalf("accepted %q, encoding/json: %v", body, err)
		}
		if len(std) != len(calls) {
			t.Fatalf("%q: %d calls, encoding/json %d", body, len(calls), len(std))
		}
		for i, c := range calls {
			var params struct {
				Name string `json:"name"`
			}
			if p := std[i].Params; len(p) > 0 && p[firstNonSpace(p)] == '{' {
				if err := json.Unmarshal(p, &params); err != nil {
					t.Fatalf("accepted %q, encoding/json on params: %v", body, err)
				}
			}
			if c.method != std[i].Method || c.tool != params.Name {
				t.Fatalf("%q: call %d read as %+v, encoding/json %+v", body, i, c, std[i])
			}
		}
	})
}

func firstNonSpace(b []byte) int {
	for i, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return i
		}
	}
	return 0
}
