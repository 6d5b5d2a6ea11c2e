package validate

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	fastjson "github.com/segmentio/encoding/json"
)

// Validator runs one route's checks. It is immutable after New and safe for
// concurrent use. A nil *Validator passes every response.
type Validator struct {
	status        []statusRange
	statusText    string // the configured list, for failure details
	contentTypes  []mediaPattern
	contentText   string
	json          bool
	schema        *jsonschema.Schema
	jsonRPC       bool
	retryableRPC  []int
	providerError bool
	nonEmpty      bool
	maxBody       int64
}

// New compiles cfg. It reports every problem at once (errors.Join of
// *ConfigError values, each matching ErrConfig). The schema file, if any, is
// read here and never again.
func New(cfg Config) (*Validator, error) {
	v := &Validator{
		json:          cfg.JSON,
		jsonRPC:       cfg.JSONRPC,
		retryableRPC:  append([]int(nil), cfg.RetryableRPCCodes...),
		providerError: cfg.ProviderError,
		nonEmpty:      cfg.NonEmpty,
		maxBody:       cfg.MaxBody,
	}
	var errs []error
	for i, s := range cfg.Status {
		r, ok := parseStatus(s)
		if !ok {
			errs = append(errs, configErr("status["+strconv.Itoa(i)+"]", "%q: want a class (2xx), a code (200) or a range (200-299) within 100-599", s))
			continue
		}
		v.status = append(v.status, r)
	}
	v.statusText = strings.Join(cfg.Status, ", ")
	for i, s := range cfg.ContentType {
		p, ok := parseMediaPattern(s)
		if !ok {
			errs = append(errs, configErr("content_type["+strconv.Itoa(i)+"]", "%q: want type/subtype or type/*", s))
			continue
		}
		v.contentTypes = append(v.contentTypes, p)
	}
	v.contentText = strings.Join(cfg.ContentType, ", ")
	if cfg.MaxBody < 0 {
		errs = append(errs, configErr("max_body", "%d: must be >= 0", cfg.MaxBody))
	}
	if len(cfg.RetryableRPCCodes) > 0 && !cfg.JSONRPC {
		errs = append(errs, configErr("retryable_rpc_codes", "set without jsonrpc: true"))
	}
	switch {
	case cfg.Schema != "" && cfg.SchemaFile != "":
		errs = append(errs, configErr("schema", "set together with schema_file; use one"))
	case cfg.Schema != "" || cfg.SchemaFile != "":
		sch, err := compileSchema(cfg.Schema, cfg.SchemaFile)
		if err != nil {
			errs = append(errs, err)
		}
		v.schema = sch
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return v, nil
}

// NeedsBody reports whether any body check is configured, that is whether
// the proxy must buffer a non-streamed response before relaying it. Streams
// (see IsStream) get the head checks only, whatever NeedsBody says.
func (v *Validator) NeedsBody() bool {
	return v != nil && (v.json || v.schema != nil || v.jsonRPC || v.providerError || v.nonEmpty || v.maxBody > 0)
}

// MaxBody returns the configured body limit in bytes, 0 for none, so the
// proxy can stop reading a body early.
func (v *Validator) MaxBody() int64 {
	if v == nil {
		return 0
	}
	return v.maxBody
}

// CheckHead checks the status code and the Content-Type header value (nil
// when absent). It does not allocate when the response passes.
func (v *Validator) CheckHead(status int, contentType []byte) *Failure {
	if v == nil {
		return nil
	}
	if !statusAllowed(v.status, status) {
		return fail(CheckStatus, "got "+strconv.Itoa(status)+", want "+v.statusText)
	}
	if len(v.contentTypes) > 0 {
		mt := mediaType(contentType)
		for _, p := range v.contentTypes {
			if p.matches(mt) {
				return nil
			}
		}
		got := "none"
		if len(mt) > 0 {
			got = strconv.Quote(truncate(string(mt), maxQuoted))
		}
		return fail(CheckContentType, "got "+got+", want "+v.contentText)
	}
	return nil
}

// CheckBody runs the body checks on a complete, decoded (not
// Content-Encoding compressed) body of a response whose head passed. The
// provider_error check treats the body as the body of a 2xx. CheckBody does
// not retain body. It does not allocate when the response passes, unless a
// schema is configured.
func (v *Validator) CheckBody(body []byte) *Failure {
	if v == nil {
		return nil
	}
	return v.checkBody(body, true)
}

// Check runs CheckHead and then, if the head passed, the body checks; the
// provider_error check applies to 2xx responses only. Use it when the whole
// response is at hand.
func (v *Validator) Check(status int, contentType, body []byte) *Failure {
	if v == nil {
		return nil
	}
	if f := v.CheckHead(status, contentType); f != nil {
		return f
	}
	return v.checkBody(body, status >= 200 && status <= 299)
}

func (v *Validator) checkBody(body []byte, success bool) *Failure {
	if v.maxBody > 0 && int64(len(body)) > v.maxBody {
		return fail(CheckMaxBody, "got "+strconv.Itoa(len(body))+" bytes, want <= "+strconv.FormatInt(v.maxBody, 10))
	}
	if len(body) == 0 {
		// No body, nothing to parse: an MCP server's 202 to a notification
		// is a good answer. Routes that need a body say non_empty.
		if v.nonEmpty {
			return fail(CheckNonEmpty, "empty body")
		}
		return nil
	}
	needJSON := v.json || v.jsonRPC || v.schema != nil
	// provider_error reads what a lenient client would: any parsable body,
	// in UTF-8 or not. The json check wants RFC 8259 JSON, which is UTF-8.
	isJSON := (needJSON || v.providerError) && parsable(body)
	if needJSON && !(isJSON && utf8.Valid(body)) {
		return jsonFailure(body)
	}
	if v.jsonRPC {
		if f := v.checkJSONRPC(body); f != nil {
			return f
		}
	}
	if v.providerError && success && isJSON {
		if f := checkProviderError(body); f != nil {
			return f
		}
	}
	if v.schema != nil {
		return checkSchema(v.schema, body)
	}
	return nil
}

// maxJSONDepth is the deepest nesting of arrays and objects a JSON body may
// have, as in encoding/json (which the schema check decodes with). Deeper
// bodies are refused before a parser sees them: the parsers recurse once
// per level, and ten million '[' from a hostile upstream would overflow
// the goroutine stack, a fatal error that no recover catches.
const maxJSONDepth = 10000

// parsable reports whether body is one JSON value nested at most
// maxJSONDepth deep, whatever the encoding of its strings. It does not
// allocate.
func parsable(body []byte) bool {
	return depthExceeded(body, maxJSONDepth) < 0 && fastjson.Valid(body)
}

// jsonFailure explains why body is not one JSON value in UTF-8, with the
// byte offset.
func jsonFailure(body []byte) *Failure {
	if at := depthExceeded(body, maxJSONDepth); at >= 0 {
		return fail(CheckJSON, "nested deeper than "+strconv.Itoa(maxJSONDepth)+" at offset "+strconv.Itoa(at))
	}
	var raw json.RawMessage
	err := json.Unmarshal(body, &raw)
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fail(CheckJSON, se.Error()+" at offset "+strconv.FormatInt(se.Offset, 10))
	}
	if at := invalidUTF8(body); at >= 0 {
		return fail(CheckJSON, "invalid UTF-8 at offset "+strconv.Itoa(at))
	}
	if err == nil {
		return fail(CheckJSON, "not a single JSON value")
	}
	return fail(CheckJSON, err.Error())
}
