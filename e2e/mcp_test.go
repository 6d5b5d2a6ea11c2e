package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpRoute is an MCP server's route: the config a user would write, with
// nothing MCP-specific but the timeouts a long-lived event stream needs.
// extraRetry is added inside the retry block.
func mcpRoute(upstream, extraRetry string) string {
	return fmt.Sprintf(`
routes:
  - name: tools
    match: {path_prefix: /mcp}
    upstream: %s/
    retry: {backoff: {base: 1ms, max: 5ms}%s}
    timeouts: {connect: 1s, per_try: 5s, idle: 30s, total: 60s}
`, upstream, extraRetry)
}

// mcpClient connects the go-sdk's streamable HTTP client to ballast, with
// its own reconnects off. Notifications the server sends arrive on the
// returned channels.
type mcpClient struct {
	session     *mcp.ClientSession
	progress    chan string
	listChanged chan struct{}
}

func connectMCP(t *testing.T, b *ballast) (*mcpClient, error) {
	t.Helper()
	c := &mcpClient{progress: make(chan string, 16), listChanged: make(chan struct{}, 4)}
	client := mcp.NewClient(&mcp.Implementation{Name: "e2e-agent", Version: "v1.0.0"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			c.progress <- req.Params.Message
		},
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
			c.listChanged <- struct{}{}
		},
	})
	session, err := client.Connect(testContext(t), &mcp.StreamableClientTransport{
		Endpoint:   b.base + "/mcp",
		HTTPClient: httpClient(t),
		MaxRetries: -1,
	}, nil)
	if err != nil {
		return nil, err
	}
	c.session = session
	t.Cleanup(func() { _ = session.Close() })
	return c, nil
}

func toolNames(t *testing.T, s *mcp.ClientSession) []string {
	t.Helper()
	res, err := s.ListTools(testContext(t), nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	sort.Strings(names)
	return names
}

func callAdd(ctx context.Context, s *mcp.ClientSession, a, b int) (int, error) {
	res, err := s.CallTool(ctx, &mcp.CallToolParams{Name: "add", Arguments: map[string]any{"a": a, "b": b}})
	if err != nil {
		return 0, err
	}
	if res.IsError {
		return 0, fmt.Errorf("tool error: %v", res.Content)
	}
	raw, _ := json.Marshal(res.StructuredContent)
	var out addOut
	if err := json.Unmarshal(raw, &out); err != nil {
		return 0, err
	}
	return out.Sum, nil
}

// TestMCPThroughBallast: the go-sdk client lists and calls tools on a
// go-sdk server through ballast; the session id issued at initialize is
// carried on every request after it; progress notifications stream back on
// a tools/call's own SSE response; and a notification the server sends on
// its own (tools/list_changed) arrives over the standalone GET stream.
func TestMCPThroughBallast(t *testing.T) {
	t.Parallel()
	up := newMCPUpstream(t)
	b := startBallast(t, nil, mcpRoute(serve(t, up), ""))
	c, err := connectMCP(t, b)
	if err != nil {
		t.Fatalf("connect through ballast: %v", err)
	}
	ctx := testContext(t)

	if got := toolNames(t, c.session); fmt.Sprint(got) != "[add count]" {
		t.Fatalf("tools %v, want [add count]", got)
	}
	if sum, err := callAdd(ctx, c.session, 2, 3); err != nil || sum != 5 {
		t.Fatalf("add(2, 3) = %d, %v", sum, err)
	}

	params := &mcp.CallToolParams{Name: "count", Arguments: map[string]any{"to": 3}}
	params.SetProgressToken("e2e-progress")
	if _, err := c.session.CallTool(ctx, params); err != nil {
		t.Fatalf("count: %v", err)
	}
	for i := 1; i <= 3; i++ {
		select {
		case msg := <-c.progress:
			if msg != fmt.Sprintf("step %d", i) {
				t.Fatalf("progress %q, want step %d", msg, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("progress notification %d did not arrive", i)
		}
	}

	// The standalone GET stream is opened after initialize; once it is
	// there, a tool added on the server is announced through ballast.
	waitFor(t, "the client's standalone SSE stream", func() bool { return up.count("GET") >= 1 })
	mcp.AddTool(up.server, &mcp.Tool{Name: "echo", Description: "echoes"},
		func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
			return nil, addOut{Sum: in.A}, nil
		})
	select {
	case <-c.listChanged:
	case <-time.After(5 * time.Second):
		t.Fatal("notifications/tools/list_changed did not arrive over the standalone stream")
	}
	if got := toolNames(t, c.session); fmt.Sprint(got) != "[add count echo]" {
		t.Fatalf("tools after the change %v", got)
	}

	if err := c.session.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitFor(t, "the session's DELETE", func() bool { return up.count("DELETE") == 1 })

	id := c.session.ID()
	if id == "" {
		t.Fatal("the client has no Mcp-Session-Id: ballast lost the initialize response's header")
	}
	for _, s := range up.seen() {
		want := id
		if s.key == "initialize" || s.key == "server/discover" {
			want = "" // sent before the session exists
		}
		if s.session != want {
			t.Errorf("%s reached the server with Mcp-Session-Id %q, want %q", s.key, s.session, want)
		}
	}
}

// TestMCPRetrySafety documents what ballast does today when an MCP POST
// fails. Every JSON-RPC message is a POST in streamable HTTP, so ballast
// sees no difference between initialize or tools/list (safe to repeat) and
// tools/call (a side effect): by default none is retried, and
// retry.unsafe_methods: true retries them all, tools/call included. The
// server's counts show it.
func TestMCPRetrySafety(t *testing.T) {
	t.Parallel()
	unavailable := status(503, `{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"unavailable"}}`)
	tests := []struct {
		name       string
		extraRetry string
		failing    string // the JSON-RPC method whose next request fails
		fault      fault
		wantOK     bool
		wantCount  int // requests of that method the server saw
	}{
		{name: "tools/call 503 is never repeated by default", failing: "tools/call", fault: unavailable, wantCount: 1},
		{name: "tools/call reset is never repeated by default", failing: "tools/call", fault: resetConn, wantCount: 1},
		{name: "tools/list 503 is not retried by default (safe, but a POST)", failing: "tools/list", fault: unavailable, wantCount: 1},
		{name: "initialize 503 is not retried by default (safe, but a POST)", failing: "initialize", fault: unavailable, wantCount: 1},
		{name: "unsafe_methods: initialize 503 is retried", extraRetry: ", unsafe_methods: true",
			failing: "initialize", fault: unavailable, wantOK: true, wantCount: 2},
		{name: "unsafe_methods: tools/list 503 is retried", extraRetry: ", unsafe_methods: true",
			failing: "tools/list", fault: unavailable, wantOK: true, wantCount: 2},
		{name: "unsafe_methods: tools/call 503 is repeated too", extraRetry: ", unsafe_methods: true",
			failing: "tools/call", fault: unavailable, wantOK: true, wantCount: 2},
		{name: "jsonrpc: initialize 503 is retried (read-only method)", extraRetry: ", jsonrpc: true",
			failing: "initialize", fault: unavailable, wantOK: true, wantCount: 2},
		{name: "jsonrpc: tools/list 503 is retried (read-only method)", extraRetry: ", jsonrpc: true",
			failing: "tools/list", fault: unavailable, wantOK: true, wantCount: 2},
		{name: "jsonrpc: tools/call 503 is never repeated", extraRetry: ", jsonrpc: true",
			failing: "tools/call", fault: unavailable, wantCount: 1},
		{name: "jsonrpc: tools/call of a tool declared idempotent is retried", extraRetry: ", jsonrpc: true, idempotent_tools: [add]",
			failing: "tools/call", fault: unavailable, wantOK: true, wantCount: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := newMCPUpstream(t)
			b := startBallast(t, nil, mcpRoute(serve(t, up), tt.extraRetry))
			up.failNext(tt.failing, tt.fault)
			var err error
			c, err := connectMCP(t, b)
			if err == nil {
				switch tt.failing {
				case "tools/list":
					_, err = c.session.ListTools(testContext(t), nil)
				case "tools/call":
					var sum int
					sum, err = callAdd(testContext(t), c.session, 20, 22)
					if err == nil && sum != 42 {
						t.Fatalf("add(20, 22) = %d", sum)
					}
				}
			}
			if tt.wantOK && err != nil {
				t.Fatalf("%s failed: %v", tt.failing, err)
			}
			if !tt.wantOK && err == nil {
				t.Fatalf("%s succeeded; want the failure passed to the client", tt.failing)
			}
			if got := up.count(tt.failing); got != tt.wantCount {
				t.Errorf("the server saw %d %s requests, want %d", got, tt.failing, tt.wantCount)
			}
			if err != nil {
				t.Logf("the client's error: %v", err)
			}
		})
	}
}
