package proxy

import (
	"bytes"
	"encoding/json"
	"strings"
)

// jsonrpcSafety is a route's retry.jsonrpc setting, resolved.
type jsonrpcSafety struct {
	tools map[string]bool // tools whose tools/call may be repeated
}

// readOnlyRPC are the JSON-RPC (MCP) methods that change nothing, so a
// repeat is harmless.
var readOnlyRPC = map[string]bool{
	"initialize": true, "ping": true, "server/discover": true, "resources/read": true,
	"prompts/get": true, "completion/complete": true,
}

// safe reports whether every call in a JSON-RPC body (one request or a
// batch) may be repeated: read-only methods, notifications of them, and
// tools/call of a tool the route lists as idempotent.
func (j *jsonrpcSafety) safe(body []byte) bool {
	type call struct {
		Method string `json:"method"`
		Params struct {
			Name string `json:"name"`
		} `json:"params"`
	}
	body = bytes.TrimSpace(body)
	var calls []call
	switch {
	case len(body) > 0 && body[0] == '[':
		if json.Unmarshal(body, &calls) != nil || len(calls) == 0 {
			return false
		}
	default:
		var c call
		if json.Unmarshal(body, &c) != nil {
			return false
		}
		calls = []call{c}
	}
	for _, c := range calls {
		switch {
		case readOnlyRPC[c.Method], strings.HasSuffix(c.Method, "/list"):
		case c.Method == "tools/call" && j.tools[c.Params.Name]:
		default:
			return false
		}
	}
	return true
}
