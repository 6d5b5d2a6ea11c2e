package policy

import (
	"time"

	"github.com/ballast-proxy/ballast/internal/ascii"
	"github.com/valyala/fasthttp"
)

// The response headers that carry server timing hints. Names are matched
// case-insensitively, so a HostClient that keeps header names as received
// (DisableHeaderNamesNormalizing) is read the same way.
const (
	hRetryAfter   = iota // Retry-After: delta-seconds or HTTP-date
	hRetryAfterMs        // retry-after-ms: OpenAI and Anthropic SDK convention

	// Rate limits: each reset header is followed by its remaining header.
	hOpenAIRequestsReset    // x-ratelimit-reset-requests: Go duration
	hOpenAIRequestsRemain   // x-ratelimit-remaining-requests
	hOpenAITokensReset      // x-ratelimit-reset-tokens: Go duration
	hOpenAITokensRemain     // x-ratelimit-remaining-tokens
	hAnthropicRequestsReset // anthropic-ratelimit-requests-reset: RFC 3339
	hAnthropicRequestsRemain
	hAnthropicTokensReset
	hAnthropicTokensRemain
	hAnthropicInputReset
	hAnthropicInputRemain
	hAnthropicOutputReset
	hAnthropicOutputRemain
	hRateLimitReset // RateLimit-Reset: delta seconds or unix time
	hRateLimitRemain
	hXRateLimitReset // X-RateLimit-Reset: delta seconds or unix time
	hXRateLimitRemain

	hRateLimit // RateLimit: IETF structured field, "policy";r=0;t=30

	numHintHeaders
)

// hintHeaderName returns the lower-case name of a hint header.
func hintHeaderName(i int) string {
	switch i {
	case hRetryAfter:
		return "retry-after"
	case hRetryAfterMs:
		return "retry-after-ms"
	case hOpenAIRequestsReset:
		return "x-ratelimit-reset-requests"
	case hOpenAIRequestsRemain:
		return "x-ratelimit-remaining-requests"
	case hOpenAITokensReset:
		return "x-ratelimit-reset-tokens"
	case hOpenAITokensRemain:
		return "x-ratelimit-remaining-tokens"
	case hAnthropicRequestsReset:
		return "anthropic-ratelimit-requests-reset"
	case hAnthropicRequestsRemain:
		return "anthropic-ratelimit-requests-remaining"
	case hAnthropicTokensReset:
		return "anthropic-ratelimit-tokens-reset"
	case hAnthropicTokensRemain:
		return "anthropic-ratelimit-tokens-remaining"
	case hAnthropicInputReset:
		return "anthropic-ratelimit-input-tokens-reset"
	case hAnthropicInputRemain:
		return "anthropic-ratelimit-input-tokens-remaining"
	case hAnthropicOutputReset:
		return "anthropic-ratelimit-output-tokens-reset"
	case hAnthropicOutputRemain:
		return "anthropic-ratelimit-output-tokens-remaining"
	case hRateLimitReset:
		return "ratelimit-reset"
	case hRateLimitRemain:
		return "ratelimit-remaining"
	case hXRateLimitReset:
		return "x-ratelimit-reset"
	case hXRateLimitRemain:
		return "x-ratelimit-remaining"
	case hRateLimit:
		return "ratelimit"
	}
	return ""
}

// hintHeaders holds the first value of each hint header of one response,
// and which of them came on several lines: those are read again, line by
// line, from h (see longest). The slices alias the header's memory and are
// valid only while it is.
type hintHeaders struct {
	first    [numHintHeaders][]byte
	repeated uint32 // bit i: header i came on more than one line
	h        *fasthttp.ResponseHeader
}

// scanHints reads every hint header in one pass over h without allocating.
// Empty values count as absent.
func scanHints(h *fasthttp.ResponseHeader) (hh hintHeaders, found bool) {
	if h == nil {
		return hh, false
	}
	hh.h = h
	for k, v := range h.All() {
		if len(v) == 0 {
			continue
		}
		if i := hintIndex(k); i >= 0 {
			if hh.first[i] == nil {
				hh.first[i] = v
			} else {
				hh.repeated |= 1 << i
			}
			found = true
		}
	}
	return hh, found
}

// lines calls yield with each non-empty line of hint header i, in order.
func (hh *hintHeaders) lines(i int, yield func([]byte)) {
	if hh.repeated&(1<<i) == 0 {
		if v := hh.first[i]; v != nil {
			yield(v)
		}
		return
	}
	for k, v := range hh.h.All() {
		if len(v) > 0 && hintIndex(k) == i {
			yield(v)
		}
	}
}

// longest parses each line of hint header i and returns the longest valid
// wait. Retry-After and the reset headers are not lists, so a response
// with several lines of one is malformed (RFC 9110 §5.3), and the
// recipient chooses: a malformed line never hides a valid one, and the
// longest valid wait comes back no sooner than any line allows — as the
// latest of several limits' resets is taken.
func (hh *hintHeaders) longest(i int, now time.Time, parse func([]byte, time.Time) (time.Duration, bool)) (d time.Duration, ok bool) {
	hh.lines(i, func(v []byte) {
		if w, valid := parse(v, now); valid && (!ok || w > d) {
			d, ok = w, true
		}
	})
	return d, ok
}

// exhausted reports whether a line of the remaining header i says 0.
func (hh *hintHeaders) exhausted(i int) (zero bool) {
	hh.lines(i, func(v []byte) {
		if z, _ := parseRemaining(v); z {
			zero = true
		}
	})
	return zero
}

// rateLimit parses the IETF RateLimit field: a list, so its lines are
// members of one list, and every member counts.
func (hh *hintHeaders) rateLimit() (f rateLimitField) {
	hh.lines(hRateLimit, func(v []byte) {
		g := parseRateLimitField(v)
		if g.okAll && (!f.okAll || g.all > f.all) {
			f.all, f.okAll = g.all, true
		}
		if g.okExhausted && (!f.okExhausted || g.exhausted > f.exhausted) {
			f.exhausted, f.okExhausted = g.exhausted, true
		}
	})
	return f
}

// hintIndex returns the hint header index of key, or -1. The names differ
// in length but for one pair, so the length picks the candidate and one
// comparison settles it: most headers are rejected on length alone.
func hintIndex(key []byte) int {
	var cand int
	switch len(key) {
	case 9:
		cand = hRateLimit
	case 11:
		cand = hRetryAfter
	case 14:
		cand = hRetryAfterMs
	case 15:
		cand = hRateLimitReset
	case 17:
		cand = hXRateLimitReset
	case 19:
		cand = hRateLimitRemain
	case 21:
		cand = hXRateLimitRemain
	case 24:
		cand = hOpenAITokensReset
	case 26:
		cand = hOpenAIRequestsReset
	case 28:
		cand = hOpenAITokensRemain
	case 30:
		cand = hOpenAIRequestsRemain
	case 32:
		cand = hAnthropicTokensReset
	case 34:
		cand = hAnthropicRequestsReset
	case 36:
		cand = hAnthropicTokensRemain
	case 38:
		if ascii.EqualFoldLower(key, hintHeaderName(hAnthropicRequestsRemain)) {
			return hAnthropicRequestsRemain
		}
		cand = hAnthropicInputReset
	case 39:
		cand = hAnthropicOutputReset
	case 42:
		cand = hAnthropicInputRemain
	case 43:
		cand = hAnthropicOutputRemain
	default:
		return -1
	}
	if ascii.EqualFoldLower(key, hintHeaderName(cand)) {
		return cand
	}
	return -1
}

// limit is one rate limit a response reports: its reset and whether its
// remaining count is zero.
type limit struct {
	reset     time.Duration
	exhausted bool // remaining is present and 0
}

// limits evaluates every rate limit of hh, calling yield for each one whose
// reset is valid. Resets are only parsed when yield wants them: when
// onlyExhausted is set, limits whose remaining is not 0 are skipped
// without parsing, which keeps the common success path allocation-free.
func (hh *hintHeaders) limits(now time.Time, onlyExhausted bool, yield func(limit)) {
	pairs := [...]struct {
		reset, remain int
		parse         func([]byte, time.Time) (time.Duration, bool)
	}{
		{hOpenAIRequestsReset, hOpenAIRequestsRemain, parseGoDurationAt},
		{hOpenAITokensReset, hOpenAITokensRemain, parseGoDurationAt},
		{hAnthropicRequestsReset, hAnthropicRequestsRemain, parseResetInstant},
		{hAnthropicTokensReset, hAnthropicTokensRemain, parseResetInstant},
		{hAnthropicInputReset, hAnthropicInputRemain, parseResetInstant},
		{hAnthropicOutputReset, hAnthropicOutputRemain, parseResetInstant},
		{hRateLimitReset, hRateLimitRemain, parseResetSeconds},
		{hXRateLimitReset, hXRateLimitRemain, parseResetSeconds},
	}
	for _, p := range pairs {
		if hh.first[p.reset] == nil {
			continue
		}
		exhausted := hh.exhausted(p.remain)
		if onlyExhausted && !exhausted {
			continue
		}
		if reset, ok := hh.longest(p.reset, now, p.parse); ok {
			yield(limit{reset: reset, exhausted: exhausted})
		}
	}
	if hh.first[hRateLimit] != nil {
		f := hh.rateLimit()
		if f.okExhausted {
			yield(limit{reset: f.exhausted, exhausted: true})
		}
		if f.okAll && !onlyExhausted {
			yield(limit{reset: f.all})
		}
	}
}

func parseGoDurationAt(v []byte, _ time.Time) (time.Duration, bool) { return parseGoDuration(v) }

func parseMillisAt(v []byte, _ time.Time) (time.Duration, bool) { return parseMillis(v) }

// RetryAfterHint returns how long the server asks the client to wait before
// trying again, read from the response headers of h relative to now. ok is
// false when no header carries a valid hint; malformed, negative, NaN,
// overflowing or absurd (over MaxHint) values are ignored, never trusted.
//
// Precedence, because an explicit answer about this response beats a
// description of the limits behind it:
//
//  1. retry-after-ms when valid: providers that send it (OpenAI, and the
//     SDK convention) send Retry-After as the same wait rounded up to whole
//     seconds, so the milliseconds are the precise answer; otherwise
//     Retry-After (delta-seconds or HTTP-date).
//  2. Otherwise the rate-limit resets: OpenAI x-ratelimit-reset-requests
//     and -tokens (Go durations such as "6m0s", "1m30.5s"), Anthropic
//     anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset
//     (RFC 3339 instants), RateLimit-Reset and X-RateLimit-Reset (delta
//     seconds, or a unix timestamp above 1e9), and the IETF RateLimit
//     field's t= parameter. When some limit reports 0 remaining, the
//     largest reset among those limits; otherwise the largest of all.
//
// The caller decides for which statuses it honours hints (429 and 503 by
// design) and caps the result with CapWait. It does not allocate when h
// carries no hint header.
func RetryAfterHint(h *fasthttp.ResponseHeader, now time.Time) (time.Duration, bool) {
	hh, found := scanHints(h)
	if !found {
		return 0, false
	}
	return hh.retryAfter(now)
}

func (hh *hintHeaders) retryAfter(now time.Time) (time.Duration, bool) {
	if d, ok := hh.longest(hRetryAfterMs, now, parseMillisAt); ok {
		return d, true
	}
	if d, ok := hh.longest(hRetryAfter, now, ParseRetryAfter); ok {
		return d, true
	}
	var all, exhausted time.Duration
	okAll, okExhausted := false, false
	hh.limits(now, false, func(l limit) {
		if l.exhausted && (!okExhausted || l.reset > exhausted) {
			exhausted, okExhausted = l.reset, true
		}
		if !okAll || l.reset > all {
			all, okAll = l.reset, true
		}
	})
	if okExhausted {
		return exhausted, true
	}
	return all, okAll
}

// ResetWhenExhausted reports until when sending should pause because the
// upstream said a rate limit has nothing left: among the limits whose
// remaining header is 0 (x-ratelimit-remaining-requests/-tokens,
// anthropic-ratelimit-*-remaining, RateLimit-Remaining,
// X-RateLimit-Remaining, or a RateLimit field policy with r=0), the latest
// matching reset instant. ok is false when no limit is exhausted, the
// matching reset is missing or invalid, or it has already passed.
//
// It is meant for every response, successful ones included, and does not
// allocate unless a limit is exhausted.
func ResetWhenExhausted(h *fasthttp.ResponseHeader, now time.Time) (time.Time, bool) {
	hh, present := scanHints(h)
	if !present {
		return time.Time{}, false
	}
	var latest time.Duration
	found := false
	hh.limits(now, true, func(l limit) {
		if l.reset > 0 && (!found || l.reset > latest) {
			latest, found = l.reset, true
		}
	})
	if !found {
		return time.Time{}, false
	}
	return now.Add(latest), true
}

// CapWait limits a server-hinted wait to max (the route's
// max_retry_after, default 60s). A negative wait counts as 0, and a max ≤ 0
// means hints are not waited for at all.
func CapWait(wait, max time.Duration) time.Duration {
	if wait <= 0 || max <= 0 {
		return 0
	}
	return min(wait, max)
}

// Wait is the delay before the next attempt: the larger of the jittered
// backoff and the server's hint capped by maxRetryAfter. Pass hint 0 when
// RetryAfterHint found none. If the hint exceeds maxRetryAfter, coming back
// within the cap will likely be refused again; the caller may prefer to
// give up and pass the upstream's answer (and its Retry-After) through.
func Wait(backoff, hint, maxRetryAfter time.Duration) time.Duration {
	return max(backoff, CapWait(hint, maxRetryAfter), 0)
}
