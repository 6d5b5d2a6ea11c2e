package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrRetryOn is wrapped by the errors ParseRetryOn returns for words it
// does not know.
var ErrRetryOn = errors.New("policy: unknown retry.on value")

// RetryOn is the set of outcomes a route retries: transport causes
// (connect-failure, reset, timeout, invalid) and response status codes. It
// is a value type, built once at config load by ParseRetryOn and read
// concurrently without locks.
//
// The zero value matches nothing: a route with an empty retry.on never
// retries.
type RetryOn struct {
	causes uint8                           // bit per Cause
	codes  [(statusLimit + 63) / 64]uint64 // bit per status code 400..599
}

const statusLimit = 600

// ParseRetryOn builds a RetryOn from the words of the retry.on config key:
//
//	connect-failure   the request could not be sent (dial, DNS, TLS, refused)
//	reset             the connection broke after the request was sent
//	timeout           the per-try timeout expired
//	invalid           the response failed validation or was malformed
//	5xx               every status 500–599
//	gateway-error     502, 503 and 504
//	NNN               one status code, 400–599 (e.g. 429)
//
// Words are case-insensitive and surrounding spaces are ignored. Every bad
// word is reported, joined, each wrapping ErrRetryOn and prefixed with its
// index (on[2]).
func ParseRetryOn(words []string) (RetryOn, error) {
	var o RetryOn
	var errs []error
	for i, raw := range words {
		w := strings.ToLower(strings.TrimSpace(raw))
		switch w {
		case "connect-failure":
			o.causes |= 1 << CauseConnect
		case "reset":
			o.causes |= 1 << CauseReset
		case "timeout":
			o.causes |= 1 << CauseTimeout
		case "invalid":
			o.causes |= 1 << CauseInvalid
		case "5xx":
			for s := 500; s < 600; s++ {
				o.setStatus(s)
			}
		case "gateway-error":
			o.setStatus(502)
			o.setStatus(503)
			o.setStatus(504)
		default:
			code, err := strconv.Atoi(w)
			if err != nil || len(w) != 3 || code < 400 || code > 599 {
				errs = append(errs, fmt.Errorf("on[%d]: %w %q (want connect-failure, reset, timeout, invalid, 5xx, gateway-error or a status 400-599)", i, ErrRetryOn, raw))
				continue
			}
			o.setStatus(code)
		}
	}
	if len(errs) > 0 {
		return RetryOn{}, errors.Join(errs...)
	}
	return o, nil
}

func (o *RetryOn) setStatus(s int) { o.codes[s/64] |= 1 << (s % 64) }

// HasStatus reports whether the status code is listed.
func (o RetryOn) HasStatus(status int) bool {
	if status < 0 || status >= statusLimit {
		return false
	}
	return o.codes[status/64]&(1<<(status%64)) != 0
}

// HasCause reports whether the transport cause is listed. CauseStatus is
// never listed as such: statuses are matched one by one with HasStatus.
func (o RetryOn) HasCause(c Cause) bool {
	if c >= numCauses || c == CauseStatus {
		return false
	}
	return o.causes&(1<<c) != 0
}

// Matches reports whether an attempt's outcome is listed: by its status
// when the cause is CauseStatus, by its cause otherwise. Classes that are
// never retried (ok, auth, quota, caller_fault, canceled, breaker_open,
// budget_exhausted) never match, even when their status is listed: a 429
// carrying insufficient_quota is not retried under "429".
func (o RetryOn) Matches(cls Class, cause Cause, status int) bool {
	if neverRetried(cls) {
		return false
	}
	if cause == CauseStatus {
		return o.HasStatus(status)
	}
	return o.HasCause(cause)
}

// neverRetried lists the classes for which another attempt cannot help.
func neverRetried(cls Class) bool {
	switch cls {
	case Transient, Timeout, RateLimited, Invalid:
		return false
	}
	return true
}
