package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpUpstream is a real MCP server — the go-sdk's own streamable HTTP
// implementation — behind a recorder that counts each JSON-RPC method,
// notes the Mcp-Session-Id of each request, and injects faults by method.
type mcpUpstream struct {
	server  *mcp.Server
	handler http.Handler

	mu       sync.Mutex
	faults   map[string][]fault // by JSON-RPC method ("initialize", "tools/call") or HTTP method ("GET", "DELETE")
	counts   map[string]int     // the same keys: requests that reached the upstream
	sessions []mcpSeen
}

// mcpSeen is one request the MCP upstream saw.
type mcpSeen struct {
	key     string // the JSON-RPC method of a POST, else the HTTP method
	session string // its Mcp-Session-Id
}

type addIn struct {
	A int `json:"a" jsonschema:"the first addend"`
	B int `json:"b" jsonschema:"the second addend"`
}

type addOut struct {
	Sum int `json:"sum"`
}

type countIn struct {
	To int `json:"to" jsonschema:"count from 1 to this, reporting progress"`
}

func newMCPUpstream(t *testing.T) *mcpUpstream {
	server := mcp.NewServer(&mcp.Implementation{Name: "e2e-tools", Version: "v1.0.0"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "add", Description: "adds two integers"},
		func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
			return nil, addOut{Sum: in.A + in.B}, nil
		})
	mcp.AddTool(server, &mcp.Tool{Name: "count", Description: "counts, reporting progress as it goes"},
		func(ctx context.Context, req *mcp.CallToolRequest, in countIn) (*mcp.CallToolResult, addOut, error) {
			for i := 1; i <= in.To; i++ {
				// Server-to-client messages on the POST's own SSE response.
				if err := req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{
					ProgressToken: req.Params.GetProgressToken(), Progress: float64(i), Total: float64(in.To),
					Message: fmt.Sprintf("step %d", i),
				}); err != nil {
					return nil, addOut{}, err
				}
			}
			return nil, addOut{Sum: in.To}, nil
		})
	u := &mcpUpstream{
		server:  server,
		handler: mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil),
		faults:  map[string][]fault{},
		counts:  map[string]int{},
	}
	return u
}

// failNext makes the next request with this key answer with f.
func (u *mcpUpstream) failNext(key string, f fault) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.faults[key] = append(u.faults[key], f)
}

func (u *mcpUpstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[key]
}

func (u *mcpUpstream) seen() []mcpSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]mcpSeen(nil), u.sessions...)
}

func (u *mcpUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := r.Method
	if r.Method == http.MethodPost {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var msg struct {
			Method string `json:"method"`
		}
		if json.Unmarshal(body, &msg) == nil && msg.Method != "" {
			key = msg.Method
		}
	}
	u.mu.Lock()
	u.counts[key]++
	u.sessions = append(u.sessions, mcpSeen{key: key, session: r.Header.Get("Mcp-Session-Id")})
	var f fault
	if fs := u.faults[key]; len(fs) > 0 {
		f, u.faults[key] = fs[0], fs[1:]
	}
	u.mu.Unlock()
	if f != nil {
		f(w, r, u.handler.ServeHTTP)
		return
	}
	u.handler.ServeHTTP(w, r)
}
