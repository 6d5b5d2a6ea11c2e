package proxy_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// echo answers with what the upstream received, as JSON.
type echoed struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Query   string              `json:"query"`
	Host    string              `json:"host"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
}

func echoUpstream(t *testing.T) string {
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("Connection", "X-Upstream-Hop")
		w.Header().Set("X-Upstream-Hop", "secret-hop")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Kept", "yes")
		_ = json.NewEncoder(w).Encode(echoed{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery,
			Host: r.Host, Headers: r.Header, Body: string(b)})
	})
	return url
}

func decodeEcho(t *testing.T, body string) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("upstream echo: %v: %q", err, body)
	}
	return e
}

// wantNone fails for each of names that reached the upstream.
func (e echoed) wantNone(t *testing.T, names ...string) {
	t.Helper()
	for _, h := range names {
		if v, ok := e.Headers[h]; ok {
			t.Errorf("upstream received %s: %q; it must be stripped", h, v)
		}
	}
}

// wantOne fails unless the upstream received header name as exactly one
// line, want; why says what that line should be.
func (e echoed) wantOne(t *testing.T, name, want, why string) {
	t.Helper()
	if got := e.Headers[name]; len(got) != 1 || got[0] != want {
		t.Errorf("upstream %s = %q, want one line %q (%s)", name, got, want, why)
	}
}

func TestForwardingRewritesPathAndHeaders(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf(`
routes:
  - name: tool
    match: {path_prefix: /tool/}
    upstream: %s/base/
    strip_prefix: true
    headers:
      set: {Authorization: "Bearer ${TOOL_KEY}", X-Static: v1}
      remove: [X-Drop-Me]
  - name: keep
    match: {path_prefix: /keep}
    upstream: %s
`, up, up), "TOOL_KEY=sk-test-123")
	c := client(t)

	tests := []struct {
		name, path, wantPath, wantQuery string
	}{
		{"strip prefix onto base path", "/tool/v1/chat?b=2&a=1", "/base/v1/chat", "b=2&a=1"},
		{"prefix alone", "/tool/", "/base/", ""},
		{"no strip keeps the path", "/keep/x/y", "/keep/x/y", ""},
		{"segment boundary exact", "/keep", "/keep", ""},
		{"encoded characters survive", "/tool/a%20b", "/base/a%20b", ""},
		{"an escaped slash stays escaped", "/tool/o/a%2Fb/meta?alt=json", "/base/o/a%2Fb/meta", "alt=json"},
		{"so does a lower-case one, without strip", "/keep/repos/owner%2fname", "/keep/repos/owner%2fname", ""},
		{"beside other escapes", "/tool/o/a%2Fb%20c", "/base/o/a%2Fb%20c", ""},
		{"but dot segments normalize it", "/tool/o/..%2Fx", "/base/x", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(t, c, b.base+tt.path)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			e := decodeEcho(t, body)
			if e.Path != tt.wantPath || e.Query != tt.wantQuery {
				t.Errorf("upstream saw %s?%s, want %s?%s", e.Path, e.Query, tt.wantPath, tt.wantQuery)
			}
		})
	}

	req, _ := http.NewRequest("POST", b.base+"/tool/run", strings.NewReader(`{"x":1}`))
	req.Header.Set("Connection", "keep-alive, X-Hop-Listed")
	req.Header.Set("X-Hop-Listed", "must-not-pass")
	req.Header.Set("Keep-Alive", "timeout=10")
	req.Header.Set("Proxy-Authorization", "Basic abc")
	req.Header.Set("X-Ballast-Debug", "1")
	req.Header.Set("X-Ballast-Timeout", "10s")
	req.Header.Set("X-Drop-Me", "1")
	req.Header.Set("X-Forwarded-For", "10.1.2.3")
	req.Header.Set("Authorization", "Bearer agent-key")
	req.Header.Set("X-Request-Id", "agent-req-7")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e := decodeEcho(t, string(raw))
	if e.Method != "POST" || e.Body != `{"x":1}` {
		t.Errorf("method/body = %s %q", e.Method, e.Body)
	}
	e.wantNone(t, "X-Hop-Listed", "Keep-Alive", "Proxy-Authorization", "X-Ballast-Debug", "X-Ballast-Timeout", "X-Drop-Me")
	e.wantOne(t, "Authorization", "Bearer sk-test-123", "the route's secret from ${TOOL_KEY}")
	e.wantOne(t, "X-Static", "v1", "set by the route")
	e.wantOne(t, "X-Forwarded-For", "10.1.2.3, 127.0.0.1", "the agent's list then its address")
	e.wantOne(t, "X-Forwarded-Proto", "http", "ballast's own")
	e.wantOne(t, "X-Request-Id", "agent-req-7", "the agent's")
	if !strings.HasPrefix(e.Host, "127.0.0.1:") {
		t.Errorf("Host = %q, want the upstream's", e.Host)
	}

	// Response side: hop-by-hop stripped, ballast headers added.
	for _, h := range []string{"Keep-Alive", "X-Upstream-Hop", "Proxy-Authenticate"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("agent received %s: %q; it must be stripped", h, v)
		}
	}
	if resp.Header.Get("X-Kept") != "yes" {
		t.Error("end-to-end response header X-Kept was dropped")
	}
	if resp.Header.Get("X-Request-Id") != "agent-req-7" {
		t.Errorf("X-Request-Id = %q", resp.Header.Get("X-Request-Id"))
	}
	if resp.Header.Get("X-Ballast-Attempts") != "1" || !strings.HasPrefix(resp.Header.Get("X-Ballast-Upstream"), "127.0.0.1:") {
		t.Errorf("ballast headers: attempts %q upstream %q", resp.Header.Get("X-Ballast-Attempts"), resp.Header.Get("X-Ballast-Upstream"))
	}
	if strings.Contains(b.logs.String(), "sk-test-123") {
		t.Error("the secret appeared in the logs")
	}
}

func TestRequestIDGeneratedWhenAbsent(t *testing.T) {
	up := echoUpstream(t)
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]", up))
	c := client(t)
	resp1, body1 := get(t, c, b.base+"/a")
	resp2, _ := get(t, c, b.base+"/a", "X-Request-Id", "bad id with spaces")
	id1, id2 := resp1.Header.Get("X-Request-Id"), resp2.Header.Get("X-Request-Id")
	if id1 == "" || id2 == "" || id1 == id2 || id2 == "bad id with spaces" {
		t.Fatalf("ids %q %q: want two fresh, distinct ids", id1, id2)
	}
	if got := decodeEcho(t, body1).Headers["X-Request-Id"]; len(got) != 1 || got[0] != id1 {
		t.Errorf("upstream saw X-Request-Id %v, agent got %q", got, id1)
	}
	_, body := get(t, c, b.base+"/nowhere/../x")
	if decodeEcho(t, body).Path != "/x" {
		t.Errorf("dot segments were not normalised: %s", body)
	}
}

func TestUpstreamRequestIDIsKept(t *testing.T) {
	url, _ := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "req_openai_abc")
		_, _ = io.WriteString(w, "{}")
	})
	b := startBallast(t, fmt.Sprintf("routes: [{name: r, match: {path_prefix: /}, upstream: %q}]", url))
	resp, _ := get(t, client(t), b.base+"/v1/x")
	if resp.Header.Get("X-Request-Id") != "req_openai_abc" || resp.Header.Get("X-Ballast-Request-Id") == "" {
		t.Errorf("X-Request-Id %q, X-Ballast-Request-Id %q: the provider's id must survive and ballast's move aside",
			resp.Header.Get("X-Request-Id"), resp.Header.Get("X-Ballast-Request-Id"))
	}
}
