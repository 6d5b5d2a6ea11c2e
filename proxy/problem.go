package proxy

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"
)

// Reason is the machine-readable word in every problem+json ballast answers
// itself. The set is closed; docs/errors.md describes each one.
type Reason string

// The reasons ballast answers with.
const (
	ReasonNoRoute             Reason = "no_route"
	ReasonBadRequest          Reason = "bad_request"
	ReasonHeadersTooLarge     Reason = "headers_too_large"
	ReasonBodyTooLarge        Reason = "body_too_large"
	ReasonTimeout             Reason = "timeout"
	ReasonUpstreamUnavailable Reason = "upstream_unavailable"
	ReasonRateLimited         Reason = "rate_limited"
	ReasonOverloaded          Reason = "overloaded"
	ReasonBudgetExhausted     Reason = "budget_exhausted"
	ReasonBreakerOpen         Reason = "breaker_open"
	ReasonInvalidResponse     Reason = "invalid_response"
	ReasonShuttingDown        Reason = "shutting_down"
	ReasonInProgress          Reason = "in_progress"
	ReasonIdempotencyMismatch Reason = "idempotency_mismatch"
	ReasonOutcomeUnknown      Reason = "outcome_unknown"
	ReasonStateUnavailable    Reason = "state_unavailable"
	// ReasonAgentGone is never read by an agent: it is why ballast stopped
	// retrying for one that had closed its connection (logs, /status).
	ReasonAgentGone Reason = "agent_gone"
	// reasonStreamTruncated is never read by an agent either: its answer's
	// headers were out when the upstream broke the body off (/status).
	reasonStreamTruncated Reason = "stream_truncated"
)

// problem is an RFC 9457 problem detail ballast answers itself.
type problem struct {
	Status     int
	Reason     Reason
	Title      string
	Detail     string
	Route      string
	Attempts   int
	RetryAfter time.Duration // > 0 adds retry_after_s and a Retry-After header
	// Allow, when set, is the Allow header a 405 must carry (RFC 9110
	// §15.5.6).
	Allow string
	// WWWAuthenticate, when set, is the challenge a 401 must carry (RFC
	// 9110 §15.5.2).
	WWWAuthenticate string
}

const (
	problemTypePrefix  = "urn:ballast:problem:"
	problemContentType = "application/problem+json"
)

// writeProblem replaces whatever response ctx holds with p as
// application/problem+json.
func writeProblem(ctx *fasthttp.RequestCtx, p problem) {
	resp := &ctx.Response
	id := resp.Header.Peek(headerRequestID)
	var idBuf [maxRequestIDLen]byte
	n := copy(idBuf[:], id)
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	if n > 0 {
		resp.Header.SetBytesV(headerRequestID, idBuf[:n])
	}
	resp.SetStatusCode(p.Status)
	resp.Header.SetContentType(problemContentType)
	resp.Header.Set("Cache-Control", "no-store")
	if p.Allow != "" {
		resp.Header.Set("Allow", p.Allow)
	}
	if p.WWWAuthenticate != "" {
		resp.Header.Set("WWW-Authenticate", p.WWWAuthenticate)
	}
	if p.Reason == ReasonOutcomeUnknown {
		// The answer holds for the key's ttl, so a retry with the same key
		// reads it again; the OpenAI and Anthropic SDKs retry a 409 unless
		// told not to, and would wait out their backoffs for nothing.
		resp.Header.Set(headerShouldRetry, "false")
	}
	secs := 0
	if p.RetryAfter > 0 {
		secs = int((p.RetryAfter + time.Second - 1) / time.Second)
		resp.Header.Set("Retry-After", strconv.Itoa(secs))
	}
	title := p.Title
	if title == "" {
		title = fasthttp.StatusMessage(p.Status)
	}
	buf := make([]byte, 0, 256)
	buf = append(buf, `{"type":`...)
	buf = appendJSONString(buf, problemTypePrefix+string(p.Reason))
	buf = append(buf, `,"title":`...)
	buf = appendJSONString(buf, title)
	buf = append(buf, `,"status":`...)
	buf = strconv.AppendInt(buf, int64(p.Status), 10)
	buf = append(buf, `,"detail":`...)
	buf = appendJSONString(buf, p.Detail)
	buf = append(buf, `,"reason":`...)
	buf = appendJSONString(buf, string(p.Reason))
	if p.Route != "" {
		buf = append(buf, `,"route":`...)
		buf = appendJSONString(buf, p.Route)
	}
	buf = append(buf, `,"attempts":`...)
	buf = strconv.AppendInt(buf, int64(p.Attempts), 10)
	if secs > 0 {
		buf = append(buf, `,"retry_after_s":`...)
		buf = strconv.AppendInt(buf, int64(secs), 10)
	}
	if n > 0 {
		buf = append(buf, `,"request_id":`...)
		buf = appendJSONString(buf, string(idBuf[:n]))
	}
	// The error member mirrors the model providers' envelope, so an SDK
	// that reads error.message shows the agent the detail.
	buf = append(buf, `,"error":{"type":`...)
	buf = appendJSONString(buf, string(p.Reason))
	buf = append(buf, `,"code":`...)
	buf = appendJSONString(buf, string(p.Reason))
	buf = append(buf, `,"message":`...)
	buf = appendJSONString(buf, p.Detail)
	buf = append(buf, '}')
	buf = append(buf, "}\n"...)
	resp.SetBodyRaw(buf)
}

// appendJSONString appends s as a JSON string, escaping quotes,
// backslashes, control characters and invalid UTF-8.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	// Most strings need no escaping: copy the longest such prefix at once.
	i := 0
	for i < len(s) && s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\' {
		i++
	}
	dst = append(dst, s[:i]...)
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
