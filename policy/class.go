package policy

// Class is the failure class of one outcome: the small closed set every
// decision (retry, fallback, cache, breaker, metrics, logs) reads instead of
// raw statuses and errors. Each outcome is classified once, by ClassifyError
// for transport errors or ClassifyResponse for responses.
//
// The zero value is OK.
type Class uint8

const (
	// OK is a usable response: 1xx–3xx, or any status the route accepts.
	OK Class = iota

	// Transient is a failure that a later attempt, or another upstream, is
	// likely not to meet: refused or reset connections, 500, 502, 503,
	// provider "overloaded" answers (Anthropic's 529). Retrying helps.
	Transient

	// Timeout is a failure in which time ran out: the per-try or total
	// deadline, a dial timeout, or an upstream saying so (408, 504). Unlike
	// Transient it cost the full timeout, which matters for budgets and
	// breakers.
	Timeout

	// RateLimited means the upstream refused this caller for now (429,
	// Anthropic rate_limit_error, Google rateLimitExceeded). Waiting helps:
	// retries honour the server's hint (Retry-After and friends).
	RateLimited

	// Invalid is a response that arrived but is unusable: it failed
	// validation, was malformed, or was larger than allowed. Retrying may help
	// only if the upstream is flaky, so it is retried only when the route
	// lists "invalid".
	Invalid

	// CallerFault is a request the upstream will refuse however often it is
	// sent (400, 404, 413, 422, a request larger than a rate limit allows).
	// Retrying never helps; the caller must change the request.
	CallerFault

	// Auth is a rejected credential or a missing permission (401, 403,
	// invalid_api_key, authentication_error, permission_error). Unlike a
	// rate limit, waiting does not help: it is never retried, and it is not
	// the upstream's fault, so it does not trip breakers.
	Auth

	// Quota is an exhausted plan, balance or daily quota (OpenAI
	// insufficient_quota, Anthropic billing_error, 402). Although it often
	// arrives as a 429, unlike a rate limit waiting does not help: it is
	// never retried as if it were transient.
	Quota

	// BreakerOpen means ballast did not send the request because the
	// upstream's circuit breaker is open. Nothing reached the upstream.
	BreakerOpen

	// BudgetExhausted means a retry was wanted but the route's retry budget
	// had no tokens left, so ballast gave up to protect the upstream.
	BudgetExhausted

	// Canceled means the caller went away (its context was canceled). Nobody
	// waits for the answer, so it is never retried and never counts against
	// the upstream.
	Canceled
)

// String returns the class as a snake_case word (ok, transient, timeout,
// rate_limited, invalid, caller_fault, auth, quota, breaker_open,
// budget_exhausted, canceled), the form used in metrics labels and logs.
// Values outside the set return "unknown".
func (c Class) String() string {
	switch c {
	case OK:
		return "ok"
	case Transient:
		return "transient"
	case Timeout:
		return "timeout"
	case RateLimited:
		return "rate_limited"
	case Invalid:
		return "invalid"
	case CallerFault:
		return "caller_fault"
	case Auth:
		return "auth"
	case Quota:
		return "quota"
	case BreakerOpen:
		return "breaker_open"
	case BudgetExhausted:
		return "budget_exhausted"
	case Canceled:
		return "canceled"
	}
	return "unknown"
}

// Cause says how an attempt failed, which is what retry safety and the
// retry.on words read. The zero value is CauseNone.
type Cause uint8

const (
	// CauseNone is no failure, or one with no transport cause (canceled).
	CauseNone Cause = iota
	// CauseConnect is a failure before the request was sent: dial, DNS,
	// refused, TLS handshake, no free connection. Always safe to retry.
	CauseConnect
	// CauseReset is a connection that broke after the request was (maybe)
	// sent: reset, broken pipe, closed before the first response byte. The
	// upstream may have processed the request.
	CauseReset
	// CauseTimeout is a per-try or total deadline that expired after the
	// request was (maybe) sent.
	CauseTimeout
	// CauseStatus is a response whose status code is the failure.
	CauseStatus
	// CauseInvalid is a response that failed validation or was malformed.
	CauseInvalid

	numCauses
)

// String returns the cause in the words of the retry.on config key
// (connect-failure, reset, timeout, status, invalid), or "none".
// Values outside the set return "unknown".
func (c Cause) String() string {
	switch c {
	case CauseNone:
		return "none"
	case CauseConnect:
		return "connect-failure"
	case CauseReset:
		return "reset"
	case CauseTimeout:
		return "timeout"
	case CauseStatus:
		return "status"
	case CauseInvalid:
		return "invalid"
	}
	return "unknown"
}
