package policy

// IdempotentMethod reports whether method is idempotent by RFC 9110 §9.2.2:
// GET, HEAD, OPTIONS, TRACE, PUT and DELETE. Methods are case-sensitive, so
// "get" is not GET. It does not allocate.
func IdempotentMethod(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}

// RetrySafe reports whether an attempt that failed with cause may be sent
// again without risking a duplicate side effect:
//
//   - a request that was never sent (CauseConnect) may always be retried;
//   - otherwise only when the method is idempotent (IdempotentMethod), when
//     the route declares its non-idempotent methods safe to repeat
//     (retry.unsafe_methods: true, typical for model APIs), or when the
//     request carries an Idempotency-Key that ballast guards, so a repeat is
//     answered from the idempotency record instead of re-executed.
//
// A status response (429, 503) counts as possibly processed: RFC 9110 does
// not promise that the upstream did nothing.
func RetrySafe(cause Cause, method []byte, unsafeMethods, guardedByKey bool) bool {
	return cause == CauseConnect || unsafeMethods || guardedByKey || IdempotentMethod(method)
}

// Retry is a route's retry rule, resolved from config at load: which
// outcomes are retried and whether non-idempotent methods may be repeated.
// Attempts, backoff, budget and max_retry_after are applied by the retry
// loop around Decide. The zero value never retries.
type Retry struct {
	// On lists the retried outcomes (retry.on).
	On RetryOn
	// UnsafeMethods allows repeating POST, PATCH and other non-idempotent
	// methods after the request was sent (retry.unsafe_methods).
	UnsafeMethods bool
}

// Decide says whether one failed attempt may be retried. The first row that
// applies wins:
//
//	| # | the attempt                                                     | decision    |
//	|---|-----------------------------------------------------------------|-------------|
//	| 1 | is of class ok, auth, quota, caller_fault, canceled,            | final       |
//	|   | breaker_open or budget_exhausted (another try cannot help)      |             |
//	| 2 | is not listed in retry.on: its status for a response            | not_listed  |
//	|   | (CauseStatus), its cause word otherwise (a dial timeout is a    |             |
//	|   | connect-failure, not a timeout)                                 |             |
//	| 3 | was possibly processed (cause is not connect-failure), and the  | unsafe      |
//	|   | method is not idempotent, retry.unsafe_methods is false and no  |             |
//	|   | guarded Idempotency-Key covers it                               |             |
//	| 4 | otherwise                                                       | retry       |
//
// A retry decision is still subject to, in this order: attempts left, a
// wait — Wait(backoff, server hint, max_retry_after) — that ends before
// the total deadline, and the route's Budget (Withdraw), paid before the
// wait so that a refused retry is answered at once. Each of those refusals
// ends the loop with the last attempt's outcome (or, for the budget, class
// budget_exhausted).
func (r Retry) Decide(cls Class, cause Cause, status int, method []byte, guardedByKey bool) Decision {
	switch {
	case neverRetried(cls):
		return DecisionFinal
	case !r.On.Matches(cls, cause, status):
		return DecisionNotListed
	case !RetrySafe(cause, method, r.UnsafeMethods, guardedByKey):
		return DecisionUnsafe
	}
	return DecisionRetry
}

// Decision is the answer of Retry.Decide. The zero value is DecisionRetry.
type Decision uint8

const (
	// DecisionRetry: the attempt may be repeated.
	DecisionRetry Decision = iota
	// DecisionFinal: the class is never retried.
	DecisionFinal
	// DecisionNotListed: retry.on does not list the outcome.
	DecisionNotListed
	// DecisionUnsafe: the request may have been processed and repeating it
	// is not known to be safe.
	DecisionUnsafe
)

// String returns retry, final, not_listed or unsafe ("unknown" otherwise),
// for logs and debug headers.
func (d Decision) String() string {
	switch d {
	case DecisionRetry:
		return "retry"
	case DecisionFinal:
		return "final"
	case DecisionNotListed:
		return "not_listed"
	case DecisionUnsafe:
		return "unsafe"
	}
	return "unknown"
}
