package proxy

import (
	"bytes"
	"errors"
	"io"
	"strconv"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/policy"
	"github.com/ballast-proxy/ballast/validate"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

// validationChecks are the check label values of
// ballast_validation_failures_total.
var validationChecks = []string{
	validate.CheckStatus, validate.CheckContentType, validate.CheckMaxBody, validate.CheckNonEmpty,
	validate.CheckJSON, validate.CheckJSONRPC, validate.CheckProviderError, validate.CheckSchema,
	validate.CheckContentEncoding,
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
// streams: event streams, NDJSON, see validate.IsStream). It turns a
// failure into the class invalid, or — for a well-formed JSON-RPC error
// the route does not retry — leaves the tool's answer as it is, counted.
// A body longer than the validation limit is invalid (max_body) even when
// validate.max_body is not set: only its beginning was read.
func (s *Server) check(r *route, a *attempt) {
	v := r.validator
	resp := a.resp
	ct := resp.Header.ContentType()
	f := v.CheckHead(a.status, ct)
	if f == nil && v.NeedsBody() && !validate.IsStream(ct) {
		if stream := resp.BodyStream(); stream != nil {
			limit := validationLimit(v)
			body, err := readAllLimit(stream, limit+1)
			if err != nil {
				// The body broke off: nothing of it has reached the agent,
				// so this is a transport failure, with no answer to relay.
				cls, cause := policy.ClassifyError(err)
				a.class, a.cause, a.err = cls, cause, err
				fasthttp.ReleaseResponse(resp) // closes the broken stream
				a.resp, a.status = nil, 0
				return
			}
			resp.SetBody(body) // closes the stream: read to its end, its connection is reused
			if int64(len(body)) > limit && v.MaxBody() == 0 {
				// Cut at the limit: what is held can be neither judged nor
				// relayed as the whole answer.
				f = &validate.Failure{Check: validate.CheckMaxBody, Detail: "longer than " + strconv.Itoa(maxValidatedBody>>20) +
					"MiB, the most ballast reads to check a body when validate.max_body is not set"}
			}
		}
		if f == nil {
			f = checkBody(v, resp.Header.ContentEncoding(), resp.Body())
		}
	}
	if f == nil {
		return
	}
	r.m.validationFailures[f.Check].Inc()
	if f.RPCError && !f.Retryable {
		// The tool's own JSON-RPC error: the agent's client reads it, but
		// it is no answer to keep and serve again. A response that is not
		// JSON-RPC at all is invalid like any other.
		a.noStore = true
		return
	}
	a.class, a.cause, a.invalid = policy.Invalid, policy.CauseInvalid, f
	// A provider error in a 200 that refuses the key or the quota is
	// final, as the same error with its 401 or 429 status would be:
	// retrying it only spends retries and the budget.
	switch f.Denial {
	case validate.DenialAuth:
		a.class = policy.Auth
	case validate.DenialQuota:
		a.class = policy.Quota
	}
}

// validationLimit is how many bytes of a body, as received or decoded, are
// read to validate it: validate.max_body, or maxValidatedBody.
func validationLimit(v *validate.Validator) int64 {
	if limit := v.MaxBody(); limit > 0 {
		return limit
	}
	return maxValidatedBody
}

// checkBody runs v's body checks on body, a response body whole as
// received (at most validationLimit+1 bytes of it), whose Content-Encoding
// is encoding. The checks judge what the agent will read:
//
//   - no encoding, or identity: body itself;
//   - gzip (or x-gzip), deflate (zlib, or raw deflate as some servers send
//     it), br or zstd: body decoded into a scratch buffer. Decoding stops
//     after validationLimit+1 bytes, so a decompression bomb costs no
//     more memory than a plain body over the limit, and is judged as one:
//     by max_body when set (which then applies to the decoded size), else
//     on what was decoded. A body already over the limit as received is
//     judged as received. A body that does not decode fails the
//     content_encoding check;
//   - any other encoding, or several: ballast cannot read the body, so the
//     body checks are skipped (the head checks have passed).
//
// The response itself is never changed: the agent gets the bytes as sent.
func checkBody(v *validate.Validator, encoding, body []byte) *validate.Failure {
	coding := codingOf(encoding)
	switch {
	case coding == codingIdentity || len(body) == 0 || int64(len(body)) > validationLimit(v):
		return v.CheckBody(body)
	case coding == codingUnknown:
		return nil
	}
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	if err := decodeBody(&capWriter{b: buf, max: int(validationLimit(v)) + 1}, coding, body); err != nil && !errors.Is(err, errCapReached) {
		return &validate.Failure{Check: validate.CheckContentEncoding,
			Detail: "the " + strconv.Quote(string(encoding)) + " body does not decode: " + err.Error()}
	}
	return v.CheckBody(buf.B) // which does not retain it
}

// contentCoding is a response's Content-Encoding, as far as validation
// is concerned.
type contentCoding uint8

const (
	codingIdentity contentCoding = iota // none, or identity
	codingGzip
	codingDeflate
	codingBrotli
	codingZstd
	codingUnknown // anything else, or a list of codings
)

// codingOf reads a Content-Encoding value (case-insensitive).
func codingOf(encoding []byte) contentCoding {
	enc := bytes.TrimSpace(encoding)
	for _, c := range [...]struct {
		name   string
		coding contentCoding
	}{
		{"", codingIdentity}, {"identity", codingIdentity}, {"gzip", codingGzip}, {"x-gzip", codingGzip},
		{"deflate", codingDeflate}, {"br", codingBrotli}, {"zstd", codingZstd},
	} {
		if asciiEqualFold(enc, []byte(c.name)) {
			return c.coding
		}
	}
	return codingUnknown
}

// zstdMaxWindow is the largest zstd window accepted: RFC 8878 asks HTTP
// decoders to support 8MiB and allows them to refuse more, which keeps a
// hostile frame from reserving a huge window.
const zstdMaxWindow = 8 << 20

// decodeBody writes body, encoded with coding, decoded to w; it stops at
// w's first error.
func decodeBody(w io.Writer, coding contentCoding, body []byte) error {
	var err error
	switch coding {
	case codingGzip:
		_, err = fasthttp.WriteGunzip(w, body)
	case codingDeflate:
		if _, err = fasthttp.WriteInflate(w, body); errors.Is(err, zlib.ErrHeader) {
			_, err = io.Copy(w, flate.NewReader(bytes.NewReader(body))) // raw deflate
		}
	case codingBrotli:
		_, err = fasthttp.WriteUnbrotli(w, body)
	case codingZstd:
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(bytes.NewReader(body), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow)); err == nil {
			_, err = zr.WriteTo(w)
			zr.Close()
		}
	}
	return err
}

// decodedPrefix returns body decoded per its Content-Encoding encoding,
// at most limit bytes of it, in buf (body itself when it is not encoded).
// ok is false for an unknown coding, or a body that does not decode that
// far. For what reads an answer's body besides validation: the error
// classifier and token usage.
func decodedPrefix(encoding, body []byte, limit int, buf *bytebufferpool.ByteBuffer) (out []byte, ok bool) {
	switch coding := codingOf(encoding); coding {
	case codingIdentity:
		return body, true
	case codingUnknown:
		return nil, false
	default:
		if err := decodeBody(&capWriter{b: buf, max: limit}, coding, body); err != nil && !errors.Is(err, errCapReached) {
			return nil, false
		}
		return buf.B, true
	}
}

// errCapReached is capWriter's error once it is full.
var errCapReached = errors.New("proxy: decoded body reached the validation limit")

// capWriter appends to b up to max bytes, then fails with errCapReached,
// which stops the decoder writing to it.
type capWriter struct {
	b   *bytebufferpool.ByteBuffer
	max int
}

func (w *capWriter) Write(p []byte) (int, error) {
	if room := w.max - len(w.b.B); len(p) > room {
		w.b.B = append(w.b.B, p[:room]...)
		return room, errCapReached
	}
	w.b.B = append(w.b.B, p...)
	return len(p), nil
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
