package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

type problemBody struct {
	Type        string `json:"type"`
	Title       string `json:"title"`
	Status      int    `json:"status"`
	Detail      string `json:"detail"`
	Reason      string `json:"reason"`
	Route       string `json:"route"`
	Attempts    int    `json:"attempts"`
	RetryAfterS int    `json:"retry_after_s"`
	RequestID   string `json:"request_id"`
}

func decodeProblem(t *testing.T, resp *http.Response, body string) problemBody {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q, want application/problem+json; body %q", ct, body)
	}
	var p problemBody
	if err := json.Unmarshal([]byte(body), &p); err != nil {
		t.Fatalf("problem body %q: %v", body, err)
	}
	if p.Status != resp.StatusCode || p.Type != "urn:ballast:problem:"+p.Reason || p.Title == "" || p.Detail == "" {
		t.Errorf("incomplete problem: %+v (status %d)", p, resp.StatusCode)
	}
	if p.RequestID == "" || p.RequestID != resp.Header.Get("X-Request-Id") {
		t.Errorf("problem request_id %q, header %q", p.RequestID, resp.Header.Get("X-Request-Id"))
	}
	return p
}

func TestRoutingTable(t *testing.T) {
	a := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: api, match: {path_prefix: /api}, upstream: %[1]q}
  - {name: api-v2, match: {path_prefix: /api/v2/}, upstream: %[1]q}
  - {name: api-host, match: {path_prefix: /api, host: tools.internal}, upstream: %[1]q}
  - {name: wild, match: {path_prefix: /w, host: "*.example.com"}, upstream: %[1]q}
  - {name: posts, match: {path_prefix: /m, methods: [POST]}, upstream: %[1]q}
`, a))
	c := client(t)
	tests := []struct {
		name, method, host, path string
		wantStatus               int
		wantRoute                string
	}{
		{"prefix at boundary", "GET", "", "/api/x", 200, "api"},
		{"exact prefix", "GET", "", "/api", 200, "api"},
		{"not at a boundary", "GET", "", "/apix", 404, ""},
		{"longest prefix wins", "GET", "", "/api/v2/models", 200, "api-v2"},
		{"host route beats hostless", "GET", "tools.internal", "/api/x", 200, "api-host"},
		{"host with port", "GET", "tools.internal:8080", "/api/x", 200, "api-host"},
		{"wildcard host", "GET", "a.example.com", "/w/1", 200, "wild"},
		{"wildcard needs a subdomain", "GET", "example.com", "/w/1", 404, ""},
		{"method allowed", "POST", "", "/m", 200, "posts"},
		{"method refused", "GET", "", "/m", 404, ""},
		{"nothing matches", "GET", "", "/else", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, b.base+tt.path, nil)
			if tt.host != "" {
				req.Host = tt.host
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantStatus == 404 {
				p := decodeProblem(t, resp, string(body))
				if p.Reason != "no_route" || !strings.Contains(p.Detail, tt.path) {
					t.Errorf("404 problem %+v must name the path %s", p, tt.path)
				}
				return
			}
			if got := b.metric("ballast_requests_total", map[string]string{"route": tt.wantRoute, "code": "2xx"}); got < 1 {
				t.Errorf("route %s did not count the request (%v)", tt.wantRoute, got)
			}
		})
	}
}

func TestNeverAnOpenProxy(t *testing.T) {
	var hits int
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) { hits++; _, _ = io.WriteString(w, "route upstream") })
	b := startBallast(t, fmt.Sprintf("routes: [{name: only, match: {path_prefix: /only/}, upstream: %q}]", up))
	// Absolute-form request lines and Host headers naming another host must
	// never make ballast connect anywhere but a route's upstream.
	for _, reqLine := range []string{
		"GET http://example.org/only/x HTTP/1.1\r\nHost: example.org\r\n\r\n",
		"GET /elsewhere HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
		"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
	} {
		resp, body := secRawExchange(t, b.addr, reqLine)
		status := resp.StatusCode
		if strings.HasPrefix(reqLine, "GET http://example.org/only/x") {
			if status != 200 || !strings.Contains(body, "route upstream") {
				t.Errorf("%q: %d %q: a matching path goes to the route's upstream, whatever host it names", reqLine, status, body)
			}
			continue
		}
		if status != 404 {
			t.Errorf("%q answered %d: no route must mean no forwarding", reqLine, status)
		}
	}
	if hits != 1 {
		t.Errorf("the upstream saw %d requests, want 1", hits)
	}
}

func TestBodyLimit(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: small, match: {path_prefix: /}, upstream: %q, max_body: 1KiB}]", up))
	c := client(t)
	for _, tc := range []struct {
		name    string
		body    io.Reader
		chunked bool
	}{
		{"content-length", strings.NewReader(strings.Repeat("a", 2048)), false},
		{"chunked", io.MultiReader(strings.NewReader(strings.Repeat("a", 2048))), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", b.base+"/x", tc.body)
			if tc.chunked {
				req.ContentLength = -1
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if p := decodeProblem(t, resp, string(body)); p.Reason != "body_too_large" || p.Route != "small" {
				t.Errorf("problem %+v", p)
			}
		})
	}
	resp, err := c.Post(b.base+"/x", "text/plain", strings.NewReader(strings.Repeat("a", 1024)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || decodeEcho(t, string(body)).Body != strings.Repeat("a", 1024) {
		t.Errorf("a body at the limit must pass whole: %d", resp.StatusCode)
	}
}

func TestHostileFraming(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]", up))
	tests := []struct {
		name, req  string
		wantStatus int
		wantReason string
	}{
		{"content-length and transfer-encoding",
			"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 400, "bad_request"},
		{"conflicting content-lengths",
			"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400, "bad_request"},
		{"oversized headers",
			"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", 431, "headers_too_large"},
		{"malformed request line", "GARBAGE\r\n\r\n", 400, "bad_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := secRawExchange(t, b.addr, tt.req)
			status := resp.StatusCode
			if status != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tt.wantStatus, body)
			}
			var p problemBody
			if err := json.Unmarshal([]byte(body), &p); err != nil || p.Reason != tt.wantReason {
				t.Errorf("problem %q (%v), want reason %s", body, err, tt.wantReason)
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	up, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		select { // hangs before sending headers
		case <-release:
		case <-r.Context().Done():
		}
	})
	b := startBallast(t, fmt.Sprintf(`
routes:
  - {name: slow, match: {path_prefix: /}, upstream: %q, timeouts: {per_try: 300ms, total: 10s}}
`, up))
	c := client(t)
	check := func(t *testing.T, headers []string, wantStatus int, wantReason string, within time.Duration) {
		start := time.Now()
		resp, body := get(t, c, b.base+"/x", headers...)
		took := time.Since(start)
		if resp.StatusCode != wantStatus {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if p := decodeProblem(t, resp, body); p.Reason != wantReason {
			t.Errorf("reason %q, want %q", p.Reason, wantReason)
		}
		if took > within {
			t.Errorf("answered after %v, want within %v", took, within)
		}
	}
	t.Run("per_try fires while waiting for headers", func(t *testing.T) { check(t, nil, 504, "timeout", 5*time.Second) })
	t.Run("X-Ballast-Timeout lowers the deadline", func(t *testing.T) {
		check(t, []string{"X-Ballast-Timeout", "100ms"}, 504, "timeout", 5*time.Second)
	})
	t.Run("invalid X-Ballast-Timeout", func(t *testing.T) {
		check(t, []string{"X-Ballast-Timeout", "soon"}, 400, "bad_request", 5*time.Second)
	})
}

func TestUnreachableUpstream(t *testing.T) {
	addr := deadAddr(t) // nothing listens here
	b := startBallast(t, fmt.Sprintf("routes: [{name: gone, match: {path_prefix: /}, upstream: http://%s}]", addr))
	resp, body := get(t, client(t), b.base+"/x")
	if resp.StatusCode != 502 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// A refused connection sent nothing, so it is retried (3 attempts by default).
	if p := decodeProblem(t, resp, body); p.Reason != "upstream_unavailable" || p.Attempts != 3 || p.Route != "gone" {
		t.Errorf("problem %+v", p)
	}
}
