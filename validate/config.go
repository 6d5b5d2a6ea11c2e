package validate

import (
	"errors"
	"fmt"
)

// Config lists the checks one route runs on every upstream response. The
// zero Config checks nothing: every response passes.
type Config struct {
	// Status lists the allowed status codes, each as a class ("2xx"), a code
	// ("200") or an inclusive range ("200-299"). Empty allows every status.
	Status []string
	// ContentType lists the allowed media types, each either exact
	// ("application/json") or a whole top-level type ("text/*"; "*/*" allows
	// anything but a missing Content-Type). Matching ignores parameters
	// (charset=...) and case; "+json" suffixes are not special, list
	// "application/problem+json" explicitly. Empty allows every type,
	// including none.
	ContentType []string
	// JSON requires the body to be one well-formed JSON value (RFC 8259):
	// in UTF-8, and nested at most 10000 deep, as encoding/json allows.
	JSON bool
	// Schema is a JSON Schema document given inline as JSON text. Relative
	// $refs in an inline schema cannot be resolved; use SchemaFile for
	// schemas split over files. At most one of Schema and SchemaFile.
	// Schemas without "$schema" are read as draft 2020-12, where "format" is
	// an annotation, not an assertion.
	Schema string
	// SchemaFile is the path of a JSON Schema document; relative $refs are
	// resolved against it. It is read once, by New.
	SchemaFile string
	// JSONRPC requires a JSON-RPC 2.0 response (an object, or a non-empty
	// batch array of objects) with "jsonrpc": "2.0", an "id" and exactly one
	// of "result" or "error". An "error" member is a failure.
	JSONRPC bool
	// RetryableRPCCodes lists the JSON-RPC error codes reported as
	// Retryable. Other codes are failures that are not retryable.
	RetryableRPCCodes []int
	// ProviderError rejects a body that is a JSON object with a top-level
	// "error" member that is not null, false or "" — the way model APIs
	// report failures inside a 2xx.
	ProviderError bool
	// NonEmpty rejects an empty body.
	NonEmpty bool
	// MaxBody rejects a body longer than this many bytes. 0 means no limit.
	MaxBody int64
}

// ErrConfig is matched by every error New returns for a bad Config.
var ErrConfig = errors.New("validate: invalid config")

// ConfigError names the Config field at fault, with an index when the field
// is a list ("status[1]", "schema", "schema_file"), and the problem. The
// caller prefixes its own path (routes[2].validate.) when it prints it.
type ConfigError struct {
	Field string
	Err   error
}

// Error returns "validate: <field>: <problem>".
func (e *ConfigError) Error() string { return "validate: " + e.Field + ": " + e.Err.Error() }

// Unwrap returns the underlying problem.
func (e *ConfigError) Unwrap() error { return e.Err }

// Is reports whether target is ErrConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

func configErr(field string, format string, args ...any) error {
	return &ConfigError{Field: field, Err: fmt.Errorf(format, args...)}
}
