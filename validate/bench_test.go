package validate

import "testing"

var benchBody = []byte(`{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"The answer is 42."}}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}`)

func benchValidator(b *testing.B, cfg Config) *Validator {
	b.Helper()
	v, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

func BenchmarkCheckHead(b *testing.B) {
	v := benchValidator(b, Config{Status: []string{"2xx"}, ContentType: []string{"application/json"}})
	ct := []byte("application/json; charset=utf-8")
	b.ReportAllocs()
	for b.Loop() {
		if v.CheckHead(200, ct) != nil {
			b.Fatal("failed")
		}
	}
}

func BenchmarkCheckBodyJSON(b *testing.B) {
	v := benchValidator(b, Config{JSON: true, ProviderError: true, NonEmpty: true})
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		if v.CheckBody(benchBody) != nil {
			b.Fatal("failed")
		}
	}
}

func BenchmarkCheckBodyJSONRPC(b *testing.B) {
	v := benchValidator(b, Config{JSONRPC: true})
	body := []byte(`{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}]}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if v.CheckBody(body) != nil {
			b.Fatal("failed")
		}
	}
}

func BenchmarkCheckBodySchema(b *testing.B) {
	v := benchValidator(b, Config{Schema: `{"type":"object","required":["choices"],"properties":{"choices":{"type":"array","minItems":1}}}`})
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		if v.CheckBody(benchBody) != nil {
			b.Fatal("failed")
		}
	}
}

func BenchmarkCheckBodyFailure(b *testing.B) {
	v := benchValidator(b, Config{JSONRPC: true})
	body := []byte(`{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"Internal error"}}`)
	b.ReportAllocs()
	for b.Loop() {
		if v.CheckBody(body) == nil {
			b.Fatal("passed")
		}
	}
}
