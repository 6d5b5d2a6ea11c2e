package proxy

import (
	"bytes"
	"net/url"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestDecodesTo(t *testing.T) {
	tests := []struct {
		name, raw, want string
		ok              bool
	}{
		{name: "plain", raw: "/a/b", want: "/a/b", ok: true},
		{name: "escapes of either case", raw: "/a%2Fb%2fc%20d", want: "/a/b/c d", ok: true},
		{name: "a different path", raw: "/a%2Fb", want: "/a/c", ok: false},
		{name: "longer than want", raw: "/a/b", want: "/a", ok: false},
		{name: "shorter than want", raw: "/a", want: "/a/b", ok: false},
		{name: "a cut escape", raw: "/a%2", want: "/a", ok: false},
		{name: "a bad escape", raw: "/a%zz", want: "/a", ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decodesTo([]byte(tt.raw), []byte(tt.want)); got != tt.ok {
				t.Errorf("decodesTo(%q, %q) = %v, want %v", tt.raw, tt.want, got, tt.ok)
			}
		})
	}
}

// Whatever the agent sends, keeping its escapes never changes the path
// the upstream decodes: it is the path the route matched, rewritten.
func FuzzRawUpstreamPath(f *testing.F) {
	for _, s := range []string{"/tool/o/a%2Fb", "/tool/..%2Fx", "/tool%2Fx", "/tool/a%2F%2E%2E/b", "/tool//a%2Fb", "/tool/%2f", "/x/%2F"} {
		f.Add(s)
	}
	routes := []*route{
		{prefix: []byte("/tool/"), slashEnd: true, strip: true},
		{prefix: []byte("/tool"), strip: true},
		{prefix: []byte("/"), slashEnd: true},
	}
	tg := &target{basePath: []byte("/base")}
	f.Fuzz(func(t *testing.T, raw string) {
		var u fasthttp.URI
		u.SetPath(raw) // what the server matches: decoded, normalized
		matched := u.Path()
		for _, r := range routes {
			if !r.matchPath(matched) {
				continue
			}
			got, ok := r.appendRawUpstreamPath(nil, tg, []byte(raw), matched)
			if !ok {
				continue
			}
			// The normalized path as forwarded, escaped again: what it
			// decodes to is the path the upstream must see.
			want, err := url.PathUnescape(string(r.appendUpstreamPath(nil, tg, matched)))
			if err != nil {
				t.Fatalf("route %q: the normalized path of %q is not escaped right: %v", r.prefix, raw, err)
			}
			if !decodesTo(got, []byte(want)) {
				t.Errorf("route %q: %q kept as %q, which decodes to something else than %q", r.prefix, raw, got, want)
			}
			if !bytes.HasPrefix(got, tg.basePath) {
				t.Errorf("route %q: %q kept as %q, outside the base path", r.prefix, raw, got)
			}
		}
	})
}
