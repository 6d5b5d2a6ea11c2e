package policy

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// BodyScanLimit is how many leading bytes of an error body ClassifyResponse
// inspects for provider error codes. Provider error objects put their codes
// well within it.
const BodyScanLimit = 4 << 10

// ClassifyResponse classifies a response by its status code and, for
// statuses ≥ 400, by the provider error codes found in the first
// BodyScanLimit bytes of body. h and body may be nil (body is nil when the
// response is streamed); a body with a Content-Encoding other than identity
// is not inspected. It does not allocate, and for statuses below 400 it
// reads neither h nor body.
//
// Status alone:
//
//	1xx, 2xx, 3xx                            ok
//	401, 403, 407, 511                       auth
//	402                                      quota
//	408, 504, 522, 524, 598, 599             timeout
//	421, 425                                 transient (RFC 9110: retry on a new connection / later)
//	429                                      rate_limited
//	other 4xx, 501, 505                      caller_fault
//	other 5xx (500, 502, 503, 529, ...)      transient
//	< 100 or > 599                           invalid
//
// Provider error codes override the status (first match wins):
//
//	"insufficient_quota", "billing_error",
//	"billing_hard_limit_reached", "quotaExceeded",
//	"dailyLimitExceeded", "credit balance is too low",
//	and on a 429 a Google quota id containing "PerDay"       quota
//	"invalid_api_key", "authentication_error",
//	"permission_error", "API_KEY_INVALID"                    auth
//	on a 429, OpenAI's "Request too large for"               caller_fault (the request exceeds the limit itself)
//	"rate_limit_error", "rate_limit_exceeded",
//	"rateLimitExceeded", "userRateLimitExceeded"             rate_limited
//	"overloaded_error"                                       transient
//
// The quoted codes are matched with their JSON quotes, so a message that
// merely mentions a word does not match. A code may turn a retryable
// status final (a 429 into quota), but never a final status retryable: a
// 401 or 400 stays final whatever its body says; only a 403 may become
// rate_limited, as Google's legacy APIs report rate limits that way.
func ClassifyResponse(status int, h *fasthttp.ResponseHeader, body []byte) Class {
	if status >= 100 && status < 400 {
		return OK
	}
	cls := classifyStatus(status)
	if cls == Invalid || len(body) == 0 || !identityEncoded(h) {
		return cls
	}
	if len(body) > BodyScanLimit {
		body = body[:BodyScanLimit]
	}
	c, ok := classifyBody(status, body)
	if !ok || neverRetried(cls) && !neverRetried(c) && status != 403 {
		// A body never makes a 4xx the status calls final retryable,
		// except Google's 403 rate limits.
		return cls
	}
	return c
}

func classifyStatus(status int) Class {
	switch status {
	case 401, 403, 407, 511:
		return Auth
	case 402:
		return Quota
	case 408, 504, 522, 524, 598, 599:
		return Timeout
	case 421, 425:
		return Transient
	case 429:
		return RateLimited
	case 501, 505:
		return CallerFault
	}
	switch {
	case status >= 400 && status < 500:
		return CallerFault
	case status >= 500 && status < 600:
		return Transient
	}
	return Invalid
}

func identityEncoded(h *fasthttp.ResponseHeader) bool {
	if h == nil {
		return true
	}
	ce := h.ContentEncoding()
	return len(ce) == 0 || bytes.EqualFold(ce, []byte("identity"))
}

// classifyBody looks for provider error codes, most specific first: a
// quota or credential problem can be reported with a rate-limit status, but
// never the other way round.
func classifyBody(status int, body []byte) (Class, bool) {
	switch {
	case containsAny(body,
		`"insufficient_quota"`,         // OpenAI 429: no credit left on the plan
		`"billing_error"`,              // Anthropic 402
		`"billing_hard_limit_reached"`, // OpenAI: hard spending limit
		`"quotaExceeded"`,              // Google legacy 403
		`"dailyLimitExceeded"`,         // Google legacy 403
		`credit balance is too low`,    // Anthropic 400 invalid_request_error
	):
		return Quota, true
	case status == 429 && bytes.Contains(body, []byte("PerDay")):
		// Google RESOURCE_EXHAUSTED with a QuotaFailure whose quotaId is a
		// per-day quota: it will not reset within any sensible wait.
		return Quota, true
	case containsAny(body,
		`"invalid_api_key"`,      // OpenAI 401
		`"authentication_error"`, // Anthropic 401
		`"permission_error"`,     // Anthropic 403
		`"API_KEY_INVALID"`,      // Google 400 ErrorInfo reason
	):
		return Auth, true
	case status == 429 && bytes.Contains(body, []byte("Request too large for")):
		// OpenAI: a single request larger than the per-minute token limit.
		return CallerFault, true
	case containsAny(body,
		`"rate_limit_error"`,      // Anthropic 429
		`"rate_limit_exceeded"`,   // OpenAI 429
		`"rateLimitExceeded"`,     // Google legacy 403
		`"userRateLimitExceeded"`, // Google legacy 403
	):
		return RateLimited, true
	case bytes.Contains(body, []byte(`"overloaded_error"`)): // Anthropic 529
		return Transient, true
	}
	return 0, false
}

func containsAny(body []byte, markers ...string) bool {
	for _, m := range markers {
		if bytes.Contains(body, []byte(m)) {
			return true
		}
	}
	return false
}
