package validate

import "errors"

// Check names, as reported in Failure.Check and used as metric labels.
const (
	CheckStatus        = "status"
	CheckContentType   = "content_type"
	CheckJSON          = "json"
	CheckSchema        = "schema"
	CheckJSONRPC       = "jsonrpc"
	CheckProviderError = "provider_error"
	CheckNonEmpty      = "non_empty"
	CheckMaxBody       = "max_body"

	// CheckContentEncoding is not a Validator check: the proxy reports it
	// when a Content-Encoded body it must decode for CheckBody does not
	// decode.
	CheckContentEncoding = "content_encoding"
)

// ErrInvalid is matched by every *Failure: errors.Is(err, ErrInvalid) tells
// a validation failure from a transport error.
var ErrInvalid = errors.New("validate: invalid response")

// Failure says which check rejected a response and where.
//
// Check is one of the Check* constants. Detail names the place and the
// problem, for example
//
//	json:           invalid character 'x' looking for beginning of value at offset 17
//	schema:         /items/0/price: minimum: got -1, want >= 0
//	jsonrpc:        error -32603 "Internal error"
//	provider_error: type "overloaded_error" message "Overloaded"
//
// Retryable is a hint that asking again may succeed: it is set for a
// JSON-RPC error whose code is listed in Config.RetryableRPCCodes, and for a
// provider error envelope whose code, status or type says the provider was
// overloaded, rate limited or failing internally (HTTP-like code 408, 429 or
// 5xx; status UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL, DEADLINE_EXCEEDED;
// a type containing "overloaded", "rate_limit", "server_error", "timeout" or
// "unavailable"). Every other failure has Retryable false; whether an invalid
// response is retried at all is the retry policy's decision.
//
// Denial is set for a provider error envelope that refuses the call for a
// reason no retry can change (see DenialAuth, DenialQuota); Retryable is
// then false. It is "" for every other failure.
//
// RPCError is set when the body is a well-formed JSON-RPC response whose
// "error" member carries an integer code: the tool's own answer to the
// call, as opposed to a response that is not valid JSON-RPC at all.
//
// A nil *Failure means "passed". Do not store a nil *Failure in an error
// variable (the interface would be non-nil); test it first.
type Failure struct {
	Check     string
	Detail    string
	Retryable bool
	Denial    string
	RPCError  bool
}

// Denials, as reported in Failure.Denial: the same envelopes that make an
// error status final when they arrive with one (a 401, a 429 quota).
const (
	// DenialAuth: the credentials or their permissions were refused
	// (code or type invalid_api_key, authentication_error,
	// permission_error, permission_denied; status UNAUTHENTICATED or
	// PERMISSION_DENIED; reason API_KEY_INVALID; HTTP-like code 401, 403).
	DenialAuth = "auth"
	// DenialQuota: the plan, balance or quota is spent (code or type
	// insufficient_quota, billing_error, billing_hard_limit_reached,
	// quotaExceeded, dailyLimitExceeded; HTTP-like code 402).
	DenialQuota = "quota"
)

// Error returns "validate: <check>: <detail>".
func (f *Failure) Error() string { return "validate: " + f.Check + ": " + f.Detail }

// Is reports whether target is ErrInvalid.
func (f *Failure) Is(target error) bool { return target == ErrInvalid }

func fail(check, detail string) *Failure { return &Failure{Check: check, Detail: detail} }
