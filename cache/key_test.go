package cache

import (
	"testing"

	"github.com/valyala/fasthttp"
)

type parts struct {
	method, host, path, query, body string
	vary                            [][2]string
	identity                        [][2]string
}

func keyOf(p parts) Key {
	kb := NewKeyBuilder()
	kb.Method([]byte(p.method))
	kb.Host([]byte(p.host))
	kb.Path([]byte(p.path))
	kb.Query([]byte(p.query))
	kb.Body([]byte(p.body))
	for _, v := range p.vary {
		kb.Vary([]byte(v[0]), []byte(v[1]))
	}
	for _, v := range p.identity {
		kb.Identity([]byte(v[0]), []byte(v[1]))
	}
	return kb.Sum()
}

func TestKeyNormalisation(t *testing.T) {
	base := parts{method: "GET", host: "api.example", path: "/v1/items", query: "a=1&b=2"}
	tests := []struct {
		name string
		a, b parts
		same bool
	}{
		{name: "identical", a: base, b: base, same: true},
		{name: "query order independent",
			a: parts{method: "GET", path: "/p", query: "b=2&a=1&c=3"}, b: parts{method: "GET", path: "/p", query: "c=3&a=1&b=2"}, same: true},
		{name: "empty parameters dropped",
			a: parts{method: "GET", path: "/p", query: "a=1&&b=2&"}, b: parts{method: "GET", path: "/p", query: "a=1&b=2"}, same: true},
		{name: "repeated parameter order independent",
			a: parts{method: "GET", path: "/p", query: "a=2&a=1"}, b: parts{method: "GET", path: "/p", query: "a=1&a=2"}, same: true},
		{name: "query values differ",
			a: parts{method: "GET", path: "/p", query: "a=1"}, b: parts{method: "GET", path: "/p", query: "a=2"}},
		{name: "parameter count differs",
			a: parts{method: "GET", path: "/p", query: "a=1&a=1"}, b: parts{method: "GET", path: "/p", query: "a=1"}},
		{name: "method differs", a: base, b: parts{method: "POST", host: base.host, path: base.path, query: base.query}},
		{name: "host differs", a: base, b: parts{method: "GET", host: "other.example", path: base.path, query: base.query}},
		{name: "path and query framed apart",
			a: parts{method: "GET", path: "/a", query: "b"}, b: parts{method: "GET", path: "/ab", query: ""}},
		{name: "ampersand inside value is a separator, not data",
			a: parts{method: "GET", path: "/p", query: "a=1&b"}, b: parts{method: "GET", path: "/p", query: "a=1%26b"}},
		{name: "body differs",
			a: parts{method: "POST", path: "/p", body: `{"q":1}`}, b: parts{method: "POST", path: "/p", body: `{"q":2}`}},
		{name: "vary value differs",
			a: parts{method: "GET", path: "/p", vary: [][2]string{{"Accept", "text/plain"}}},
			b: parts{method: "GET", path: "/p", vary: [][2]string{{"Accept", "application/json"}}}},
		{name: "identity differs",
			a: parts{method: "GET", path: "/p", identity: [][2]string{{"Authorization", "Bearer A"}}},
			b: parts{method: "GET", path: "/p", identity: [][2]string{{"Authorization", "Bearer B"}}}},
		{name: "identity versus vary with same bytes",
			a: parts{method: "GET", path: "/p", identity: [][2]string{{"X", "1"}}},
			b: parts{method: "GET", path: "/p", vary: [][2]string{{"X", "1"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keyOf(tt.a) == keyOf(tt.b); got != tt.same {
				t.Errorf("same key = %v, want %v", got, tt.same)
			}
		})
	}
}

func TestKeyBuilderReuse(t *testing.T) {
	kb := NewKeyBuilder()
	kb.Method([]byte("GET"))
	kb.Path([]byte("/x"))
	first := kb.Sum()
	kb.Reset()
	kb.Method([]byte("GET"))
	kb.Path([]byte("/x"))
	if kb.Sum() != first {
		t.Fatal("same parts after Reset give a different key")
	}
}

func newRequest(method, uri, body string, headers ...string) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	req.Header.SetMethod(method)
	req.SetRequestURI(uri)
	if body != "" {
		req.SetBodyString(body)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	return req
}

func TestKeyRequest(t *testing.T) {
	tests := []struct {
		name string
		a, b *fasthttp.Request
		opts KeyOptions
		same bool
	}{
		{name: "query order independent",
			a: newRequest("GET", "http://tool.local/search?q=go&page=2", ""), b: newRequest("GET", "http://tool.local/search?page=2&q=go", ""), same: true},
		{name: "another Authorization misses",
			a: newRequest("GET", "http://tool.local/r", "", "Authorization", "Bearer tenant-a"),
			b: newRequest("GET", "http://tool.local/r", "", "Authorization", "Bearer tenant-b")},
		{name: "another x-api-key misses",
			a: newRequest("POST", "http://tool.local/r", `{}`, "X-Api-Key", "k1"),
			b: newRequest("POST", "http://tool.local/r", `{}`, "X-Api-Key", "k2")},
		{name: "another api-key misses",
			a: newRequest("POST", "http://tool.local/r", `{}`, "Api-Key", "k1"),
			b: newRequest("POST", "http://tool.local/r", `{}`, "api-key", "k2")},
		{name: "anonymous versus authenticated misses",
			a: newRequest("GET", "http://tool.local/r", ""),
			b: newRequest("GET", "http://tool.local/r", "", "Authorization", "Bearer x")},
		{name: "public route shares across callers", opts: KeyOptions{Public: true},
			a: newRequest("GET", "http://tool.local/r", "", "Authorization", "Bearer tenant-a"),
			b: newRequest("GET", "http://tool.local/r", "", "Authorization", "Bearer tenant-b"), same: true},
		{name: "custom identity header", opts: KeyOptions{IdentityHeaders: []string{"X-Tenant"}},
			a: newRequest("GET", "http://tool.local/r", "", "X-Tenant", "a", "Authorization", "same"),
			b: newRequest("GET", "http://tool.local/r", "", "X-Tenant", "b", "Authorization", "same")},
		{name: "MCP sessions differ",
			a: newRequest("POST", "http://tool.local/mcp", `{"id":1}`, "Mcp-Session-Id", "s1"),
			b: newRequest("POST", "http://tool.local/mcp", `{"id":1}`, "Mcp-Session-Id", "s2")},
		{name: "MCP sessions shared on a public route", opts: KeyOptions{Public: true},
			a: newRequest("POST", "http://tool.local/mcp", `{"id":1}`, "Mcp-Session-Id", "s1"),
			b: newRequest("POST", "http://tool.local/mcp", `{"id":1}`, "Mcp-Session-Id", "s2"), same: true},
		{name: "post bodies differ",
			a: newRequest("POST", "http://tool.local/rpc", `{"id":1}`), b: newRequest("POST", "http://tool.local/rpc", `{"id":2}`)},
		{name: "vary header differs", opts: KeyOptions{Vary: []string{"Accept-Language"}},
			a: newRequest("GET", "http://tool.local/r", "", "Accept-Language", "en"),
			b: newRequest("GET", "http://tool.local/r", "", "Accept-Language", "de")},
		{name: "unlisted header ignored",
			a: newRequest("GET", "http://tool.local/r", "", "User-Agent", "a"),
			b: newRequest("GET", "http://tool.local/r", "", "User-Agent", "b"), same: true},
		{name: "host differs",
			a: newRequest("GET", "http://a.local/r", ""), b: newRequest("GET", "http://b.local/r", "")},
	}
	kb := NewKeyBuilder()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer fasthttp.ReleaseRequest(tt.a)
			defer fasthttp.ReleaseRequest(tt.b)
			ka := kb.Request(tt.a, tt.a.Body(), &tt.opts)
			kbb := kb.Request(tt.b, tt.b.Body(), &tt.opts)
			if got := ka == kbb; got != tt.same {
				t.Errorf("same key = %v, want %v", got, tt.same)
			}
		})
	}
}

func TestDefaultIdentityHeadersIsACopy(t *testing.T) {
	h := DefaultIdentityHeaders()
	h[0] = "X-Changed"
	if DefaultIdentityHeaders()[0] != "Authorization" {
		t.Fatal("DefaultIdentityHeaders exposes shared state")
	}
}
