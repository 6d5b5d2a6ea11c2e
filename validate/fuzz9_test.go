package validate

import (
	"errors"
	"mime"
	"strings"
	"testing"
)

// FuzzContentTypeMatch is a differential test of the content_type check
// (a configured pattern against a response's Content-Type) against
// mime.ParseMediaType: on every printable ASCII value the standard library
// parses, a pattern "type/subtype", "type/*" or "*/*" matches exactly when
// the parsed media type is that type, has that type, or is any type,
// whatever the case, spaces and parameters.
func FuzzContentTypeMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"application/json", "application/json"}, {"application/*", "Application/JSON; charset=utf-8"},
		{"*/*", "text/plain"}, {"text/event-stream", "text/event-stream ; x=1"},
		{"application/json", "application/jsonx"}, {"text/*", "text"}, {"application/problem+json", "application/problem+json;a=\"b;c\""},
		{"application/json", " application/json\t"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, ct string) {
		p, ok := parseMediaPattern(pattern)
		if !ok {
			return
		}
		for i := 0; i < len(ct); i++ {
			if c := ct[i]; (c < 0x20 || c > 0x7e) && c != '\t' {
				return
			}
		}
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) {
			return
		}
		want := false
		pat := strings.ToLower(strings.TrimSpace(pattern))
		typ, _, slash := strings.Cut(mt, "/")
		switch {
		case pat == "*/*":
			want = true
		case strings.HasSuffix(pat, "/*"):
			want = slash && typ == strings.TrimSuffix(pat, "/*")
		default:
			want = mt == pat
		}
		if got := p.matches(mediaType([]byte(ct))); got != want {
			t.Fatalf("pattern %q, Content-Type %q (media type %q): matches = %v, want %v", pattern, ct, mt, got, want)
		}
	})
}
