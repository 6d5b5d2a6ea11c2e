//go:build !race

// The race detector allocates, so the allocation gates build without it;
// make test runs them in a second, race-free pass.

package validate

import "testing"

// TestPassPathAllocs pins the allocation-free pass path: head checks and
// every body check except schema.
func TestPassPathAllocs(t *testing.T) {
	v, err := New(Config{
		Status:        []string{"2xx"},
		ContentType:   []string{"application/json"},
		JSON:          true,
		ProviderError: true,
		NonEmpty:      true,
		MaxBody:       1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	rpc, err := New(Config{JSONRPC: true, RetryableRPCCodes: []int{-32603}})
	if err != nil {
		t.Fatal(err)
	}
	ct := []byte("application/json; charset=utf-8")
	body := []byte(`{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi \"there\""}}],"usage":{"total_tokens":12}}`)
	rpcBody := []byte(`{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ok"}]}}`)
	tests := []struct {
		name string
		fn   func()
	}{
		{name: "CheckHead", fn: func() {
			if v.CheckHead(200, ct) != nil {
				t.Fatal("head failed")
			}
		}},
		{name: "CheckBody json+provider_error", fn: func() {
			if f := v.CheckBody(body); f != nil {
				t.Fatal(f)
			}
		}},
		{name: "CheckBody jsonrpc", fn: func() {
			if f := rpc.CheckBody(rpcBody); f != nil {
				t.Fatal(f)
			}
		}},
		{name: "IsStream", fn: func() { _ = IsStream(ct) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(200, tt.fn); n != 0 {
				t.Errorf("%s allocates %.1f times per call, want 0", tt.name, n)
			}
		})
	}
}
