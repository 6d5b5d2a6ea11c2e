package validate

import (
	"encoding/json"
	"slices"
	"strconv"
)

// checkJSONRPC checks a well-formed JSON body as a JSON-RPC 2.0 response or
// batch of responses. The pass path does not allocate.
func (v *Validator) checkJSONRPC(body []byte) *Failure {
	if arr, ok := newArrayIter(body); ok {
		n := 0
		for {
			elem, ok := arr.next()
			if !ok {
				break
			}
			if f := v.checkRPCResponse(elem); f != nil {
				f.Detail = "[" + strconv.Itoa(n) + "]: " + f.Detail
				return f
			}
			n++
		}
		if n == 0 {
			return fail(CheckJSONRPC, "empty batch")
		}
		return nil
	}
	return v.checkRPCResponse(body)
}

// checkRPCResponse checks one response object.
func (v *Validator) checkRPCResponse(msg []byte) *Failure {
	obj, ok := newObjectIter(msg)
	if !ok {
		return fail(CheckJSONRPC, "response is not an object")
	}
	var version, id, result, rpcErr []byte
	for {
		key, val, ok := obj.next()
		if !ok {
			break
		}
		switch {
		case keyIs(key, "jsonrpc"):
			version = val
		case keyIs(key, "id"):
			id = val
		case keyIs(key, "result"):
			result = val
		case keyIs(key, "error"):
			rpcErr = val
		}
	}
	switch {
	case string(version) != `"2.0"`:
		return fail(CheckJSONRPC, `missing "jsonrpc": "2.0"`)
	case id == nil:
		return fail(CheckJSONRPC, `missing "id"`)
	case result != nil && rpcErr != nil:
		return fail(CheckJSONRPC, `both "result" and "error"`)
	case rpcErr != nil:
		return v.rpcError(rpcErr)
	case result == nil:
		return fail(CheckJSONRPC, `missing "result"`)
	}
	return nil
}

// rpcError turns an "error" member into a Failure (the failure path, which
// may allocate).
func (v *Validator) rpcError(raw []byte) *Failure {
	var e struct {
		Code    *json.Number `json:"code"`
		Message string       `json:"message"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || e.Code == nil {
		return fail(CheckJSONRPC, "malformed error member: "+truncate(string(raw), maxQuoted))
	}
	code, err := strconv.Atoi(string(*e.Code))
	if err != nil {
		return fail(CheckJSONRPC, "error with non-integer code "+truncate(string(*e.Code), maxQuoted))
	}
	return &Failure{
		Check:     CheckJSONRPC,
		Detail:    "error " + strconv.Itoa(code) + " " + strconv.Quote(truncate(e.Message, maxQuoted)),
		Retryable: slices.Contains(v.retryableRPC, code),
		RPCError:  true,
	}
}

// maxQuoted bounds how much upstream text a Failure detail repeats.
const maxQuoted = 200

// truncate cuts s to at most n bytes, marking the cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
