package proxy

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/ballast-proxy/ballast/config"
	"github.com/prometheus/client_golang/prometheus"
)

func fuzzTable(f *testing.F) *table {
	cfg, err := config.Parse([]byte(`
routes:
  - {name: a, match: {path_prefix: /api}, upstream: "http://127.0.0.1:1/base/", strip_prefix: true}
  - {name: b, match: {path_prefix: /api/v2/, methods: [POST]}, upstream: "http://127.0.0.1:1"}
  - {name: c, match: {path_prefix: /, host: "*.example.com"}, upstream: "http://127.0.0.1:1/x", strip_prefix: true}
`), config.Source{Environ: []string{}})
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(cfg, Options{Registry: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	return s.table.Load()
}

// FuzzMatch drives routing with arbitrary hosts, paths and methods: it must
// never panic, a match must honour its prefix at a segment boundary, and
// the upstream path must stay under the upstream's base path.
func FuzzMatch(f *testing.F) {
	t := fuzzTable(f)
	for _, s := range [][3]string{
		{"a.example.com", "/x", "GET"}, {"", "/api", "GET"}, {"h:80", "/api/v2/x", "POST"},
		{"[::1]:8080", "/apix", "GET"}, {"", "", ""}, {"example.com", "/", "POST"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(tt *testing.T, host, path, method string) {
		r := t.match([]byte(host), []byte(path), []byte(method))
		if r == nil {
			return
		}
		if !r.matchPath([]byte(path)) {
			tt.Fatalf("route %s matched %q without its prefix", r.name, path)
		}
		base := r.targets[0].basePath
		out := r.appendUpstreamPath(nil, r.targets[0], []byte(path))
		if len(out) == 0 || out[0] != '/' || len(out) < len(base) || string(out[:len(base)]) != string(base) {
			tt.Fatalf("route %s: %q became %q, outside base %q", r.name, path, out, base)
		}
	})
}

// FuzzTimeoutHeader: X-Ballast-Timeout never panics and never yields a
// non-positive deadline.
func FuzzTimeoutHeader(f *testing.F) {
	for _, s := range []string{"5s", "0", "-1s", "1h", "9999999999h", "1.5ms", "abc", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if d, err := parseTimeoutHeader([]byte(v)); err == nil && d <= 0 {
			t.Fatalf("%q gave %v", v, d)
		}
	})
}

// FuzzProblemJSON: whatever a detail holds (paths and hosts come from the
// agent), the problem body is valid JSON that round-trips the text.
func FuzzProblemJSON(f *testing.F) {
	for _, s := range []string{"plain", "quote \" and \\", "\x00\x1f\x7f", "\xff\xfe", "ünïcödé ✓"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q encoded as %s: %v", s, b, err)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("%q round-tripped as %q", s, got)
		}
	})
}
