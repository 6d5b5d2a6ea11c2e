package proxy

import (
	"bytes"
	"encoding/json"
	"io"
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
//
// The body is read strictly (rpcCalls): a body that two JSON parsers
// could read as different calls is not safe, whatever either reading says.
func (j *jsonrpcSafety) safe(body []byte) bool {
	calls, ok := rpcCalls(body)
	if !ok {
		return false
	}
	for _, c := range calls {
		switch {
		case readOnlyRPC[c.method], strings.HasSuffix(c.method, "/list"):
		case c.method == "tools/call" && j.tools[c.tool]:
		default:
			return false
		}
	}
	return true
}

// rpcCall is what decides whether a JSON-RPC call may be repeated: its
// method, and for tools/call the tool's name (params.name).
type rpcCall struct {
	method, tool string
}

// rpcCalls reads the calls of a JSON-RPC body: one call object, or a
// non-empty batch of them. It fails (false) on anything but well-formed
// JSON of that shape, and on every body that JSON parsers disagree about:
// a key "method", "params" or "name" given twice (Go's encoding/json and
// JavaScript keep the last, others the first), or spelled in another case
// ("Method": encoding/json, and so the MCP Go SDK, reads it as "method";
// JavaScript does not). A server must not see a tools/call where ballast
// saw a ping.
func rpcCalls(body []byte) ([]rpcCall, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, false
	}
	var calls []rpcCall
	switch tok {
	case json.Delim('['):
		for dec.More() {
			if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
				return nil, false
			}
			c, ok := readRPCCall(dec)
			if !ok {
				return nil, false
			}
			calls = append(calls, c)
		}
		if tok, err := dec.Token(); err != nil || tok != json.Delim(']') || len(calls) == 0 {
			return nil, false
		}
	case json.Delim('{'):
		c, ok := readRPCCall(dec)
		if !ok {
			return nil, false
		}
		calls = append(calls, c)
	default:
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // trailing data
	}
	return calls, true
}

// readRPCCall reads one call object whose '{' dec has just read, through
// its closing '}'.
func readRPCCall(dec *json.Decoder) (rpcCall, bool) {
	var (
		c                    rpcCall
		sawMethod, sawParams bool
	)
	for dec.More() {
		key, ok := readKey(dec)
		if !ok {
			return c, false
		}
		switch {
		case key == "method":
			if sawMethod {
				return c, false
			}
			sawMethod = true
			s, ok := readString(dec)
			if !ok {
				return c, false
			}
			c.method = s
		case key == "params":
			if sawParams {
				return c, false
			}
			sawParams = true
			var raw json.RawMessage
			if dec.Decode(&raw) != nil {
				return c, false
			}
			tool, ok := rpcToolName(raw)
			if !ok {
				return c, false
			}
			c.tool = tool
		case strings.EqualFold(key, "method"), strings.EqualFold(key, "params"), strings.IndexByte(key, 0) >= 0:
			return c, false // read as the real key by some parsers only (case folding, keys cut at NUL)
		default:
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return c, false
			}
		}
	}
	tok, err := dec.Token()
	return c, err == nil && tok == json.Delim('}')
}

// rpcToolName is params.name when params is an object, and "" for other
// params (a by-position array names no tool). Like readRPCCall it fails on
// a duplicated or case-varied "name".
func rpcToolName(params json.RawMessage) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(params))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", true
	}
	var (
		name    string
		sawName bool
	)
	for dec.More() {
		key, ok := readKey(dec)
		if !ok {
			return "", false
		}
		switch {
		case key == "name":
			if sawName {
				return "", false
			}
			sawName = true
			s, ok := readString(dec)
			if !ok {
				return "", false
			}
			name = s
		case strings.EqualFold(key, "name"), strings.IndexByte(key, 0) >= 0:
			return "", false
		default:
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return "", false
			}
		}
	}
	return name, true
}

func readKey(dec *json.Decoder) (string, bool) {
	tok, err := dec.Token()
	key, ok := tok.(string)
	return key, err == nil && ok
}

// readString reads a value that must be a JSON string.
func readString(dec *json.Decoder) (string, bool) {
	tok, err := dec.Token()
	s, ok := tok.(string)
	return s, err == nil && ok
}
