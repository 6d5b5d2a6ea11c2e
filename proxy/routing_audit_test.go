package proxy_test

// Routing and path handling, from an adversarial audit: can a request reach
// an upstream path, or a route, that the config did not mean to expose, or
// reach the right one with a mangled path? Every probe writes exact bytes
// on a raw socket and reads back, from a raw upstream, the request line and
// headers exactly as they arrived.
//
// The seven bugs it found (a double-decoded path escaping the base path
// among them) are fixed; their probes run with the rest.

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// raUpstream is a raw loopback upstream that answers every request with
// its own request head, byte for byte, as the body.
func raUpstream(t *testing.T) (url string) {
	t.Helper()
	return serveRawHeads(t, func(head string) string {
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=60\r\n"+
			"X-Ra-Echo: 1\r\nContent-Length: %d\r\n\r\n%s", len(head), head)
	})
}

// raSeen is ballast's answer and, when the upstream answered, what the
// upstream received.
type raSeen struct {
	status int
	echoed bool   // the answer is the raw upstream's echo
	target string // request-target as the upstream received it
	head   string // the upstream's whole request head
	body   string
}

// header returns every value of the request header name the upstream got.
func (s raSeen) header(name string) []string {
	var out []string
	for _, line := range strings.Split(s.head, "\r\n")[1:] {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

// raDo sends raw to ballast and reports what happened.
func raDo(t *testing.T, addr, raw string) raSeen {
	t.Helper()
	resp, body := secRawExchange(t, addr, raw)
	s := raSeen{status: resp.StatusCode, body: body, echoed: resp.Header.Get("X-Ra-Echo") == "1"}
	if s.echoed {
		s.head = body
		line, _, _ := strings.Cut(body, "\r\n")
		if parts := strings.Split(line, " "); len(parts) >= 3 {
			s.target = strings.Join(parts[1:len(parts)-1], " ") // a space in the target shows as one
		}
	}
	return s
}

func raGet(target, host string) string {
	return "GET " + target + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
}

// raCase is one probe: a request target (and Host) and what the upstream
// must receive. want "" means ballast must answer wantStatus itself and
// forward nothing.
type raCase struct {
	name, target, host string
	wantStatus         int
	want               string
}

func raRun(t *testing.T, addr string, tests []raCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := tt.host
			if host == "" {
				host = "x"
			}
			s := raDo(t, addr, raGet(tt.target, host))
			want := tt.wantStatus
			if want == 0 {
				want = 200
			}
			if s.status != want {
				t.Fatalf("GET %q (Host %q): status %d, want %d; upstream saw %q; body %.200q", tt.target, host, s.status, want, s.target, s.body)
			}
			if tt.want == "" {
				if s.echoed {
					t.Fatalf("GET %q was forwarded as %q; it must not be", tt.target, s.target)
				}
				return
			}
			if !s.echoed || s.target != tt.want {
				t.Errorf("GET %q (Host %q): upstream saw %q, want %q", tt.target, host, s.target, tt.want)
			}
		})
	}
}

// raRoutes is the route table most probes use; every upstream is up, so
// the echoed path names the route that took the request.
func raRoutes(up string) string {
	return fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %[1]s/base/
    strip_prefix: true
  - name: keep
    match: {path_prefix: /keep}
    upstream: %[1]s/kb
  - name: short
    match: {path_prefix: /s}
    upstream: %[1]s/sb
    strip_prefix: true
  - name: hosted
    match: {host: tool.internal, path_prefix: /h/}
    upstream: %[1]s/hosted/
    strip_prefix: true
  - name: wild
    match: {host: "*.example.com", path_prefix: /w/}
    upstream: %[1]s/wild/
    strip_prefix: true
  - name: catch
    match: {path_prefix: /}
    upstream: %[1]s/catch/
`, up)
}

// --- dot segments, slashes, prefixes ------------------------------------------

// TestRoutingAudit_DotSegments: dot segments, in any spelling, are resolved
// before routing (docs/config.md "Normalised path"), so "/tool/../admin" is
// "/admin" — the catch-all's — and never reaches /base/admin or /admin on
// the tool's upstream. RFC 3986 §5.2.4; Envoy's normalize_path and nginx do
// the same.
func TestRoutingAudit_DotSegments(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "dot-dot", target: "/tool/../admin", want: "/catch/admin"},
		{name: "dot", target: "/tool/./x", want: "/base/x"},
		{name: "encoded dot", target: "/tool/%2e/x", want: "/base/x"},
		{name: "encoded dot-dot lower", target: "/tool/%2e%2e/admin", want: "/catch/admin"},
		{name: "encoded dot-dot upper", target: "/tool/%2E%2E/admin", want: "/catch/admin"},
		{name: "mixed .%2e", target: "/tool/.%2e/admin", want: "/catch/admin"},
		{name: "mixed %2e.", target: "/tool/%2e./admin", want: "/catch/admin"},
		{name: "trailing dot-dot", target: "/tool/a/..", want: "/base/"},
		{name: "dot-dot past the root", target: "/tool/../../../../etc/passwd", want: "/catch/etc/passwd"},
		{name: "dot-dot inside the route stays inside", target: "/tool/a/../b", want: "/base/b"},
		{name: "not-strip route", target: "/keep/../admin", want: "/catch/admin"},
		{name: "overlong UTF-8 dots are data, not dots", target: "/tool/%C0%AE%C0%AE/admin", want: "/base/%C0%AE%C0%AE/admin"},
		{name: "overlong UTF-8 slash is data", target: "/tool/%C0%AFadmin", want: "/base/%C0%AFadmin"},
		{name: "three dots are a name", target: "/tool/.../x", want: "/base/.../x"},
	})
}

// TestRoutingAudit_EncodedSlashes: %2F is matched decoded (docs: "%2F becomes
// /"), but a path whose only difference from the matched path is escaped
// slashes is forwarded as written (docs "Path rewriting"), and one that
// also holds dot segments is normalised, so it cannot climb out.
func TestRoutingAudit_EncodedSlashes(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "escaped separator after the prefix", target: "/tool%2Fx", want: "/base/x"},
		{name: "climb with escaped slashes", target: "/tool/a%2F..%2F..%2Fadmin", want: "/catch/admin"},
		{name: "climb with escaped slashes and dots", target: "/tool/a%2F%2e%2e%2F%2e%2e%2Fadmin", want: "/catch/admin"},
		{name: "data slash kept", target: "/tool/a%2Fb", want: "/base/a%2Fb"},
		{name: "data slash kept lower case", target: "/tool/a%2fb", want: "/base/a%2fb"},
		{name: "data slash kept, no strip", target: "/keep/a%2Fb", want: "/kb/keep/a%2Fb"},
		{name: "data slash after a no-strip prefix", target: "/keep%2Fa", want: "/kb/keep%2Fa"},
		{name: "data slash with dot-dot normalised", target: "/tool/a%2Fb/../c", want: "/base/a/c"},
		{name: "only escaped slashes collapse", target: "/tool/%2F%2Fevil", want: "/base/evil"},
		{name: "data slash with query", target: "/tool/a%2Fb?x=1+2&y", want: "/base/a%2Fb?x=1+2&y"},
	})
}

// TestRoutingAudit_DoubleSlashes: repeated slashes are merged before
// matching and forwarding (docs; nginx merge_slashes on; Envoy's
// merge_slashes is off by default, a documented difference).
func TestRoutingAudit_DoubleSlashes(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "leading", target: "//tool/x", want: "/base/x"},
		{name: "inner", target: "/tool//x", want: "/base/x"},
		{name: "many", target: "/tool///x//y/", want: "/base/x/y/"},
		{name: "scheme-relative without :// is a path", target: "//tool.internal/h/x", want: "/catch/tool.internal/h/x"},
	})
}

// TestRoutingAudit_PrefixBoundary: a prefix matches at a segment boundary
// (docs "Routing"): /keep matches /keep and /keep/x, not /keepx; /tool/
// does not match /tool; and strip_prefix joins to the base path with one
// slash (docs "Path rewriting").
func TestRoutingAudit_PrefixBoundary(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "slash prefix, longer segment", target: "/toolbox", want: "/catch/toolbox"},
		{name: "slash prefix, bare", target: "/tool", want: "/catch/tool"},
		{name: "slash prefix, root of it", target: "/tool/", want: "/base/"},
		{name: "plain prefix, longer segment", target: "/keepx", want: "/catch/keepx"},
		{name: "plain prefix, exact", target: "/keep", want: "/kb/keep"},
		{name: "plain prefix, slash", target: "/keep/", want: "/kb/keep/"},
		{name: "strip plain prefix, exact", target: "/s", want: "/sb/"},
		{name: "strip plain prefix, below", target: "/s/x", want: "/sb/x"},
		{name: "strip plain prefix, longer segment", target: "/sx", want: "/catch/sx"},
		{name: "strip plain prefix, escaped boundary", target: "/s%2Fx", want: "/sb/x"},
		{name: "prefix case matters", target: "/TOOL/x", want: "/catch/TOOL/x"},
	})
}

// TestRoutingAudit_BaseJoins: the base path and the rest join with exactly
// one slash, whatever trailing slashes the config has.
func TestRoutingAudit_BaseJoins(t *testing.T) {
	up := raUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: nobase
    match: {path_prefix: /n/}
    upstream: %[1]s
    strip_prefix: true
  - name: slashbase
    match: {path_prefix: /sl/}
    upstream: %[1]s/
    strip_prefix: true
  - name: deep
    match: {path_prefix: /search}
    upstream: %[1]s/v2
    strip_prefix: true
  - name: rootstrip
    match: {path_prefix: /}
    upstream: %[1]s/root/
    strip_prefix: true
`, up))
	raRun(t, b.addr, []raCase{
		{name: "no base path", target: "/n/x", want: "/x"},
		{name: "no base path, root", target: "/n/", want: "/"},
		{name: "slash base path", target: "/sl/x/y", want: "/x/y"},
		{name: "base without slash, bare prefix", target: "/search", want: "/v2/"},
		{name: "base without slash, below", target: "/search/q?a=1", want: "/v2/q?a=1"},
		{name: "root prefix stripped", target: "/a/b", want: "/root/a/b"},
		{name: "root prefix, root", target: "/", want: "/root/"},
		{name: "dot-dot cannot climb out of the base", target: "/a/../../x", want: "/root/x"},
	})
}

// --- odd bytes --------------------------------------------------------------

// TestRoutingAudit_OddBytesInPath: backslashes, NUL, control bytes, raw
// non-ASCII, path parameters, fragments and very long paths.
func TestRoutingAudit_OddBytesInPath(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	long := strings.Repeat("a", 9000)
	raRun(t, b.addr, []raCase{
		// Backslashes are data, never separators (RFC 3986; docs: no
		// backslash in a prefix). An upstream that reads %5C as "/" (IIS)
		// could still climb: see the report.
		{name: "raw backslash dot-dot", target: "/tool/a\\..\\b", want: "/base/a%5C..%5Cb"},
		{name: "escaped backslash dot-dot", target: "/tool/a%5C..%5Cb", want: "/base/a%5C..%5Cb"},
		{name: "escaped NUL stays escaped", target: "/tool/a%00b", want: "/base/a%00b"},
		{name: "escaped CR LF stay escaped", target: "/tool/a%0D%0AX-Evil:%201", want: "/base/a%0D%0AX-Evil:%201"},
		{name: "raw NUL refused", target: "/tool/a\x00b", wantStatus: 400},
		{name: "raw control byte refused", target: "/tool/a\x01b", wantStatus: 400},
		{name: "raw DEL refused", target: "/tool/a\x7fb", wantStatus: 400},
		{name: "raw tab refused", target: "/tool/a\tb", wantStatus: 400},
		{name: "raw invalid UTF-8 escaped", target: "/tool/\xff\xfe", want: "/base/%FF%FE"},
		{name: "raw UTF-8 escaped", target: "/tool/\xc3\xa9", want: "/base/%C3%A9"},
		{name: "path parameter kept", target: "/tool/a;b/c", want: "/base/a;b/c"},
		// Tomcat reads "..;" as ".." (parsing9_audit_test.go).
		{name: "dot-dot-semicolon climbing out refused", target: "/tool/..;/admin", wantStatus: 400},
		{name: "fragment dropped, never climbs", target: "/tool/x#/../../admin", want: "/base/x"},
		{name: "fragment after query", target: "/tool/x?q=1#frag", want: "/base/x?q=1"},
		{name: "query inside fragment is fragment", target: "/tool/x#f?q=1", want: "/base/x"},
		{name: "fragment cannot pick the route", target: "/other#/tool/x", want: "/catch/other"},
		{name: "encoded ? stays in the path", target: "/tool/a%3Fb=1?q=2", want: "/base/a%3Fb=1?q=2"},
		{name: "encoded # stays in the path", target: "/tool/a%23b", want: "/base/a%23b"},
		{name: "encoded space", target: "/tool/a%20b", want: "/base/a%20b"},
		{name: "encoded percent", target: "/tool/100%25", want: "/base/100%25"},
		{name: "relative target refused", target: "tool/x", wantStatus: 400},
		{name: "asterisk on GET refused", target: "*", wantStatus: 400},
		{name: "long path intact", target: "/tool/" + long, want: "/base/" + long},
		{name: "over max_header_bytes refused", target: "/tool/" + strings.Repeat("a", 20000), wantStatus: 431},
	})
}

// TestRoutingAudit_DoubleDecodedPath: a path is percent-decoded once. The
// bytes %25 are a literal "%", so /tool/%252e%252e/admin names a segment
// "%2e%2e" under the tool's base path and must reach the upstream as
// /base/%252e%252e/admin (RFC 3986 §2.4: "implementations must not
// percent-encode or decode the same string more than once").
func TestRoutingAudit_DoubleDecodedPath(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "double-encoded dot-dot", target: "/tool/%252e%252e/admin", want: "/base/%252e%252e/admin"},
		{name: "double-encoded dot-dot twice", target: "/tool/%252e%252e/%252e%252e/admin", want: "/base/%252e%252e/%252e%252e/admin"},
		{name: "double-encoded dot-dot, no strip", target: "/keep/%252e%252e/%252e%252e/admin", want: "/kb/keep/%252e%252e/%252e%252e/admin"},
		{name: "double-encoded dot-dot with a dot segment", target: "/tool/./%252e%252e/admin", want: "/base/%252e%252e/admin"},
		{name: "double-encoded letter", target: "/tool/%2541", want: "/base/%2541"},
		{name: "double-encoded slash", target: "/tool/a%252Fb", want: "/base/a%252Fb"},
	})
}

// TestRoutingAudit_EncodedBasePath: a base path's own escapes reach the
// upstream as configured, on both forwarding branches (normalised, and the
// raw one kept for escaped slashes).
func TestRoutingAudit_EncodedBasePath(t *testing.T) {
	up := raUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %[1]s/my%%20api/
    strip_prefix: true
  - name: pct
    match: {path_prefix: /pct/}
    upstream: %[1]s/a%%2520b/
    strip_prefix: true
`, up))
	raRun(t, b.addr, []raCase{
		{name: "normalised branch", target: "/tool/a", want: "/my%20api/a"},
		{name: "raw branch", target: "/tool/a%2Fb", want: "/my%20api/a%2Fb"},
		{name: "escaped percent in base, normalised branch", target: "/pct/x", want: "/a%2520b/x"},
		{name: "escaped percent in base, raw branch", target: "/pct/a%2Fb", want: "/a%2520b/a%2Fb"},
	})
}

// TestRoutingAudit_ReservedEscapesPreserved: RFC 3986 §2.2: "URIs that
// differ in the replacement of a reserved character with its corresponding
// percent-encoded octet are not equivalent". %3B is data, ";" starts a path
// parameter (a servlet container drops it); %2B is a plus sign, "+" may be
// read as a space. Envoy (normalize_path decodes unreserved characters
// only) and nginx (proxy_pass without a URI) keep them; ballast keeps %2F
// but decodes every other reserved escape and escapes raw sub-delims.
func TestRoutingAudit_ReservedEscapesPreserved(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	var tests []raCase
	for _, esc := range []string{"%3B", "%2B", "%2C", "%3D", "%40", "%24", "%26", "%3A", "%21", "%27", "%28", "%29", "%2A"} {
		tests = append(tests, raCase{name: "escaped " + esc, target: "/tool/a" + esc + "b", want: "/base/a" + esc + "b"})
	}
	tests = append(tests,
		raCase{name: "raw sub-delims", target: "/tool/a!b(c)*'d", want: "/base/a!b(c)*'d"},
		raCase{name: "OData key", target: "/tool/Products(1)", want: "/base/Products(1)"},
	)
	raRun(t, b.addr, tests)
}

// --- query strings -----------------------------------------------------------

// TestRoutingAudit_QueryPreserved: the query string is forwarded unchanged
// (docs "Path rewriting"): order, repeated keys, empty values, "+", bad
// escapes, and the characters that look like delimiters.
func TestRoutingAudit_QueryPreserved(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	var tests []raCase
	for _, q := range []string{
		"b=2&a=1&a=&c&d=%2B+x&e=%zz&a=3",
		"a=%2F%3F%26%3D%23",
		"next=/a?b=c/../d",
		"q=1;r=2",
		"&&a&&",
		"x=%00",
		"sig=AbC%2bdEf%3d%3D&Expires=1",
		"?a",
		"a=http://evil.example/",
		"=",
	} {
		tests = append(tests, raCase{name: q, target: "/tool/x?" + q, want: "/base/x?" + q})
	}
	raRun(t, b.addr, tests)
}

// --- route choice --------------------------------------------------------------

// TestRoutingAudit_RoutePrecedence: longest prefix first; among equal
// prefixes a route with a host before one without and one with methods
// before one without; otherwise the file order (docs "Routing"). Methods
// are case-sensitive (RFC 9110 §9.1).
func TestRoutingAudit_RoutePrecedence(t *testing.T) {
	up := raUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: short
    match: {path_prefix: /a/}
    upstream: %[1]s/short/
  - name: long
    match: {path_prefix: /a/b/}
    upstream: %[1]s/long/
  - name: nohost
    match: {path_prefix: /p/}
    upstream: %[1]s/nohost/
  - name: withhost
    match: {host: api.example.com, path_prefix: /p/}
    upstream: %[1]s/withhost/
  - name: anymethod
    match: {path_prefix: /m/}
    upstream: %[1]s/any/
  - name: getonly
    match: {path_prefix: /m/, methods: [GET]}
    upstream: %[1]s/get/
  - name: wildfirst
    match: {host: "*.example.com", path_prefix: /o/}
    upstream: %[1]s/wild/
  - name: exactsecond
    match: {host: api.example.com, path_prefix: /o/}
    upstream: %[1]s/exact/
`, up))
	tests := []struct {
		name, raw, want string
	}{
		{"longest prefix wins", raGet("/a/b/c", "x"), "/long/a/b/c"},
		{"segment boundary of the longer prefix", raGet("/a/bc", "x"), "/short/a/bc"},
		{"host route before hostless", raGet("/p/x", "api.example.com"), "/withhost/p/x"},
		{"other host falls to hostless", raGet("/p/x", "other.example.com"), "/nohost/p/x"},
		{"methods route before any-method", raGet("/m/x", "x"), "/get/m/x"},
		{"other method falls through", "POST /m/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "/any/m/x"},
		{"lower-case method is another method", "get /m/x HTTP/1.1\r\nHost: x\r\n\r\n", "/any/m/x"},
		// The exact name wins over a wildcard listed before it, as in
		// nginx and Envoy (docs/config.md, Routing).
		{"exact host before a wildcard listed first", raGet("/o/x", "api.example.com"), "/exact/o/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := raDo(t, b.addr, tt.raw)
			if s.status != 200 || s.target != tt.want {
				t.Errorf("%q: status %d, upstream saw %q, want %q", tt.raw, s.status, s.target, tt.want)
			}
		})
	}
}

// TestRoutingAudit_HostMatching: the Host header, without its port, compared
// case-insensitively; a trailing dot is another name; *.example.com is any
// subdomain but not example.com, evil-example.com or ".example.com".
func TestRoutingAudit_HostMatching(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "exact", target: "/h/x", host: "tool.internal", want: "/hosted/x"},
		{name: "case and port", target: "/h/x", host: "TOOL.INTERNAL:8080", want: "/hosted/x"},
		{name: "trailing dot", target: "/h/x", host: "tool.internal.", want: "/catch/h/x"},
		{name: "suffix of another name", target: "/h/x", host: "eviltool.internal", want: "/catch/h/x"},
		{name: "subdomain of the exact name", target: "/h/x", host: "a.tool.internal", want: "/catch/h/x"},
		{name: "IPv6 literal with port", target: "/h/x", host: "[::1]:8080", want: "/catch/h/x"},
		{name: "IPv4 literal", target: "/h/x", host: "127.0.0.1", want: "/catch/h/x"},
		{name: "two ports refused", target: "/h/x", host: "tool.internal:80:90", wantStatus: 400},
		{name: "non-numeric port refused", target: "/h/x", host: "tool.internal:x", wantStatus: 400},
		{name: "space refused", target: "/h/x", host: "tool internal", wantStatus: 400},
		{name: "slash refused", target: "/h/x", host: "tool.internal/h", wantStatus: 400},
		{name: "wildcard subdomain", target: "/w/x", host: "a.example.com", want: "/wild/x"},
		{name: "wildcard deep subdomain with port", target: "/w/x", host: "A.b.Example.com:1", want: "/wild/x"},
		{name: "wildcard apex", target: "/w/x", host: "example.com", want: "/catch/w/x"},
		{name: "wildcard look-alike", target: "/w/x", host: "evil-example.com", want: "/catch/w/x"},
		{name: "wildcard empty label", target: "/w/x", host: ".example.com", want: "/catch/w/x"},
		{name: "wildcard suffix then more", target: "/w/x", host: "a.example.com.evil.com", want: "/catch/w/x"},
		{name: "wildcard trailing dot", target: "/w/x", host: "a.example.com.", want: "/catch/w/x"},
	})
}

// TestRoutingAudit_InvalidAuthorityRefused: RFC 9112 §3.2: a Host with an
// invalid value gets 400 (userinfo is not part of Host's grammar, RFC 9110
// §7.2), and RFC 9110 §4.2.1: an http URI with an empty host MUST be
// rejected as invalid. Neither can reach a host no route names (see
// ForwardProxyTargets); both are parser differentials with a front proxy.
func TestRoutingAudit_InvalidAuthorityRefused(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	raRun(t, b.addr, []raCase{
		{name: "userinfo in Host", target: "/h/x", host: "evil.com@tool.internal", wantStatus: 400},
		{name: "empty authority", target: "http:///tool/x", wantStatus: 400},
	})
}

// TestRoutingAudit_SchemeRelativeTarget: "//a/b" in origin form is a path
// whose first segment is empty (RFC 9112 §3.2.1, RFC 3986 §3.3), whatever
// follows. fasthttp reads it as an authority when "://" occurs anywhere in
// the target (a redirect URL in the query, say), so the route is chosen by
// a path segment posing as a host, and the rest of the path is matched as
// if it were the whole path: a front proxy that allowed "/evil.example/..."
// sends it to /tool/.
func TestRoutingAudit_SchemeRelativeTarget(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	for _, tt := range []struct{ name, target, pathWant string }{
		{"host route", "//tool.internal/h/x?u=http://z", "/catch/tool.internal/h/x?u=http://z"},
		{"path route", "//evil.example/tool/x?u=http://z", "/catch/evil.example/tool/x?u=http://z"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := raDo(t, b.addr, raGet(tt.target, "x"))
			// Either refused, or matched as the path it is.
			if s.status == 400 && !s.echoed {
				return
			}
			if s.target != tt.pathWant {
				t.Errorf("GET %q (Host x): status %d, upstream saw %q, want %q (or 400)", tt.target, s.status, s.target, tt.pathWant)
			}
		})
	}
}

// --- forward-proxy mode -----------------------------------------------------------

// TestRoutingAudit_ForwardProxyTargets: in absolute form the route is
// chosen by the URL's authority (RFC 9112 §3.2.2: Host is ignored), parsed
// per RFC 3986: the host is what follows the last "@", a "#" or "?" ends
// the authority, and IP literals in other notations are other names. The
// request only ever goes to the route's configured upstream; userinfo is
// never forwarded as credentials.
func TestRoutingAudit_ForwardProxyTargets(t *testing.T) {
	var strayHits atomic.Int64
	_, stray := upstream(t, func(w http.ResponseWriter, r *http.Request) { strayHits.Add(1) })
	b := startBallast(t, raRoutes(raUpstream(t)))
	tests := []struct {
		name, target string
		wantStatus   int
		want         string
	}{
		{"allowed host", "http://tool.internal/h/x", 200, "/hosted/x"},
		{"allowed host with port and case", "http://TOOL.internal:80/h/x", 200, "/hosted/x"},
		{"allowed name as userinfo", "http://tool.internal@evil.com/h/x", 200, "/catch/h/x"},
		{"allowed name as userinfo with password", "http://tool.internal:pw@evil.com/h/x", 200, "/catch/h/x"},
		{"userinfo then allowed host", "http://evil.com@tool.internal/h/x", 200, "/hosted/x"},
		{"fragment before @", "http://evil.com#@tool.internal/h/x", 200, "/catch/"},
		{"query before @", "http://evil.com?@tool.internal/h/x", 200, "/catch/?@tool.internal/h/x"},
		{"backslash before @ refused", "http://evil.com\\@tool.internal/h/x", 400, ""},
		{"trailing dot", "http://tool.internal./h/x", 200, "/catch/h/x"},
		{"decimal IP", "http://2130706433/h/x", 200, "/catch/h/x"},
		{"hex IP", "http://0x7f.1/h/x", 200, "/catch/h/x"},
		{"octal IP", "http://0177.0.0.1/h/x", 200, "/catch/h/x"},
		{"IPv6 literal", "http://[::1]:8080/h/x", 200, "/catch/h/x"},
		{"wildcard host", "http://a.example.com/w/x", 200, "/wild/x"},
		{"wildcard look-alike", "http://evil-example.com/w/x", 200, "/catch/w/x"},
		{"dot-dot resolved in absolute form", "http://tool.internal/h/../../x", 200, "/catch/x"},
		{"stray host is never dialled", "http://" + stray + "/h/x", 200, "/catch/h/x"},
		{"stray host behind allowed userinfo", "http://tool.internal@" + stray + "/tool/x", 200, "/base/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := raDo(t, b.addr, raGet(tt.target, "tool.internal"))
			if s.status != tt.wantStatus {
				t.Fatalf("GET %q: status %d, want %d: %.200q", tt.target, s.status, tt.wantStatus, s.body)
			}
			if tt.want == "" {
				if s.echoed {
					t.Fatalf("GET %q was forwarded as %q", tt.target, s.target)
				}
				return
			}
			if s.target != tt.want {
				t.Errorf("GET %q: upstream saw %q, want %q", tt.target, s.target, tt.want)
			}
			if a := s.header("Authorization"); len(a) > 0 {
				t.Errorf("GET %q: userinfo forwarded as Authorization %q", tt.target, a)
			}
			if h := s.header("Host"); len(h) != 1 || !strings.HasPrefix(h[0], "127.0.0.1:") {
				t.Errorf("GET %q: upstream Host %q, want the configured upstream's", tt.target, h)
			}
		})
	}
	if n := strayHits.Load(); n != 0 {
		t.Errorf("a host no route names got %d requests", n)
	}
}

// --- forwarding headers --------------------------------------------------------------

// TestRoutingAudit_ForwardingHeaders: X-Forwarded-For is the agent's value
// followed by the agent's address, X-Forwarded-Proto is ballast's own, in
// whatever case or number the agent sent them (docs "Request headers").
func TestRoutingAudit_ForwardingHeaders(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	tests := []struct {
		name, headers string
		wantXFF       string
	}{
		{"none", "", "127.0.0.1"},
		{"agent's chain kept, agent appended", "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n", "10.0.0.1, 10.0.0.2, 127.0.0.1"},
		{"lower-case name", "x-forwarded-for: 10.0.0.1\r\n", "10.0.0.1, 127.0.0.1"},
		{"proto spoof replaced", "X-Forwarded-Proto: https\r\nx-forwarded-proto: https\r\n", "127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := raDo(t, b.addr, "GET /tool/x HTTP/1.1\r\nHost: x\r\n"+tt.headers+"\r\n")
			if xff := s.header("X-Forwarded-For"); len(xff) != 1 || xff[0] != tt.wantXFF {
				t.Errorf("X-Forwarded-For %q, want one line %q", xff, tt.wantXFF)
			}
			if xfp := s.header("X-Forwarded-Proto"); len(xfp) != 1 || xfp[0] != "http" {
				t.Errorf("X-Forwarded-Proto %q, want one line http", xfp)
			}
			if h := s.header("Host"); len(h) != 1 || !strings.HasPrefix(h[0], "127.0.0.1:") {
				t.Errorf("Host %q, want the upstream's", h)
			}
		})
	}
}

// TestRoutingAudit_ForwardedForLinesJoined: several X-Forwarded-For lines
// are one comma-separated list (RFC 9110 §5.3); ballast keeps only the
// first line and drops the rest of the agent's chain. (nginx's
// $proxy_add_x_forwarded_for and Envoy join them.)
func TestRoutingAudit_ForwardedForLinesJoined(t *testing.T) {
	b := startBallast(t, raRoutes(raUpstream(t)))
	s := raDo(t, b.addr, "GET /tool/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n")
	if xff := s.header("X-Forwarded-For"); len(xff) != 1 || xff[0] != "10.0.0.1, 10.0.0.2, 127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want one line %q", xff, "10.0.0.1, 10.0.0.2, 127.0.0.1")
	}
}

// --- cache key vs upstream path ----------------------------------------------------------

// TestRoutingAudit_CacheKeyFollowsUpstreamPath: /tool/a%2Fb is forwarded as
// /base/a%2Fb and /tool/a/b as /base/a/b — two upstream resources — so they
// must not share a cache entry. The cache key is built from the decoded
// path, which is the same for both.
func TestRoutingAudit_CacheKeyFollowsUpstreamPath(t *testing.T) {
	up := raUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s/base/
    strip_prefix: true
    cache: {mode: fresh, ttl: 1m}
`, up))
	first := raDo(t, b.addr, raGet("/tool/a%2Fb", "x"))
	if first.target != "/base/a%2Fb" {
		t.Fatalf("first: upstream saw %q", first.target)
	}
	second := raDo(t, b.addr, raGet("/tool/a/b", "x"))
	if second.target != "/base/a/b" {
		t.Errorf("GET /tool/a/b answered with the response for %q", second.target)
	}
}
