package proxy

import (
	"errors"
	"io"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
)

// validationChecks are the check label values of
// ballast_validation_failures_total.
var validationChecks = []string{
	validate.CheckStatus, validate.CheckContentType, validate.CheckMaxBody, validate.CheckNonEmpty,
	validate.CheckJSON, validate.CheckJSONRPC, validate.CheckProviderError, validate.CheckSchema,
}

// buildValidator compiles a route's validate block; nil when it checks
// nothing. Errors carry the config path of the field at fault.
func buildValidator(v config.Validate, path string) (*validate.Validator, error) {
	vc := validate.Config{
		Status: v.Status, ContentType: v.ContentType, JSON: v.JSON, Schema: v.Schema, SchemaFile: v.SchemaFile,
		JSONRPC: v.JSONRPC, RetryableRPCCodes: v.RetryableRPCCodes, ProviderError: v.ProviderError,
		NonEmpty: v.NonEmpty, MaxBody: int64(v.MaxBody),
	}
	if len(vc.Status) == 0 && len(vc.ContentType) == 0 && !vc.JSON && vc.Schema == "" && vc.SchemaFile == "" &&
		!vc.JSONRPC && !vc.ProviderError && !vc.NonEmpty && vc.MaxBody == 0 {
		return nil, nil
	}
	val, err := validate.New(vc)
	if err != nil {
		var errs []error
		for _, e := range config.Problems(err) {
			var ce *validate.ConfigError
			if errors.As(e, &ce) {
				errs = append(errs, &config.FieldError{Path: path + ".validate." + ce.Field, Msg: ce.Err.Error()})
			} else {
				errs = append(errs, &config.FieldError{Path: path + ".validate", Msg: e.Error()})
			}
		}
		return nil, errors.Join(errs...)
	}
	return val, nil
}

// maxValidatedBody bounds how much of a body is read to validate it when
// the route sets no validate.max_body.
const maxValidatedBody = 32 << 20

// check runs the route's validator on an attempt the classifier judged
// successful, reading the body whole when a check needs it (never for
// event streams). It turns a failure into the class invalid, or — for a
// JSON-RPC error the route does not retry — leaves the tool's answer as it
// is, counted.
func (s *Server) check(r *route, a *attempt) {
	v := r.validator
	resp := a.resp
	ct := resp.Header.ContentType()
	f := v.CheckHead(a.status, ct)
	if f == nil && v.NeedsBody() && !isEventStream(ct) {
		if stream := resp.BodyStream(); stream != nil {
			limit := v.MaxBody()
			if limit <= 0 {
				limit = maxValidatedBody
			}
			body, err := readAllLimit(stream, limit+1)
			if err != nil {
				cls, cause := policy.ClassifyError(err)
				a.class, a.cause, a.err = cls, cause, err
				return
			}
			resp.SetBody(body) // closes the stream: read to its end, its connection is reused
		}
		f = v.CheckBody(resp.Body())
	}
	if f == nil {
		return
	}
	r.m.validationFailures[f.Check].Inc()
	if f.Check == validate.CheckJSONRPC && !f.Retryable {
		return // the tool's own JSON-RPC error: the agent's client reads it
	}
	a.class, a.cause, a.invalid = policy.Invalid, policy.CauseInvalid, f
}

func readAllLimit(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit))
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (m *metrics) validationChildren(route string) map[string]prometheus.Counter {
	out := make(map[string]prometheus.Counter, len(validationChecks))
	for _, c := range validationChecks {
		out[c] = m.validation.WithLabelValues(route, c)
	}
	return out
}

// writeInvalid answers 502 invalid_response, saying which check failed
// and where.
func writeInvalid(ctx *fasthttp.RequestCtx, r *route, t *target, f *validate.Failure, attempts int) {
	writeProblem(ctx, problem{Status: fasthttp.StatusBadGateway, Reason: ReasonInvalidResponse, Route: r.name,
		Attempts: attempts, Detail: "the upstream " + t.name + " answered a response that failed validation: " + f.Check + ": " + f.Detail})
}
