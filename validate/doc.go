// Package validate checks upstream responses before the agent sees them.
//
// A Validator is built once per route from a Config (New compiles the status
// ranges, content types and JSON Schema up front) and is then safe for
// concurrent use by any number of requests. The proxy calls CheckHead as soon
// as the status line and headers arrive and, when NeedsBody reports true and
// the response is not a stream, CheckBody on the buffered body. The first
// check that fails is returned as a *Failure naming the check and the place
// (JSON offset, JSON pointer, schema keyword, JSON-RPC error code); a nil
// *Failure means the response passed. A failed response is of the "invalid"
// failure class.
//
// Checks run in a fixed order:
//
//	head: status, content_type
//	body: max_body, non_empty, json, jsonrpc, provider_error, schema
//
// so an error envelope is reported as such rather than as a schema mismatch.
//
// The pass path of the head checks and of the json, jsonrpc, provider_error,
// non_empty and max_body checks does not allocate; schema validation decodes
// the body and does.
package validate
