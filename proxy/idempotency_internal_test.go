package proxy

import "testing"

func TestWithoutCacheMember(t *testing.T) {
	tests := []struct{ in, want string }{
		{"ballast; fwd=uri-miss; stored", ""},
		{`cdn; hit, ballast; fwd=uri-miss; stored`, "cdn; hit"},
		{`ballast; hit, cdn; detail="a, ballast; b"`, `cdn; detail="a, ballast; b"`},
		{`Ballast ; hit ,edge;fwd=miss`, "edge;fwd=miss"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := string(withoutCacheMember([]byte(tt.in), "ballast")); got != tt.want {
			t.Errorf("withoutCacheMember(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
