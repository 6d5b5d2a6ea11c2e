package policy

import (
	"time"
)

// MaxHint is the longest wait or reset a server hint may announce and still
// be trusted: one year. Longer values are treated as malformed and ignored.
const MaxHint = 365 * 24 * time.Hour

// Thresholds that tell a RateLimit-Reset / X-RateLimit-Reset timestamp from
// a delay: no sane delay is over 1e9 seconds (31 years), and a value over
// 1e12 is a timestamp in milliseconds.
const (
	unixSecondsThreshold = 1e9
	unixMillisThreshold  = 1e12
	maxDecimalWhole      = 1e15 // larger numbers are rejected before they can overflow
)

// ParseRetryAfter parses one Retry-After value: delta-seconds (a
// non-negative decimal; a fraction such as "1.5" is accepted) or an
// HTTP-date, relative to now. A date in the past gives 0 (retry now). ok is
// false for anything else: signs, exponents, NaN, garbage, or a wait longer
// than MaxHint.
func ParseRetryAfter(v []byte, now time.Time) (time.Duration, bool) {
	v = trimOWS(v)
	if d, ok := parseSeconds(v); ok {
		return d, true
	}
	if len(v) < len("Sun Nov  6 08:49:37 1994") {
		return 0, false
	}
	s := string(v)
	// The three HTTP-date forms of RFC 9110 §5.6.7.
	for _, layout := range [...]string{
		"Mon, 02 Jan 2006 15:04:05 GMT",  // IMF-fixdate
		"Monday, 02-Jan-06 15:04:05 GMT", // obsolete RFC 850
		"Mon Jan _2 15:04:05 2006",       // obsolete asctime
	} {
		if t, err := time.Parse(layout, s); err == nil {
			return untilInstant(t, now)
		}
	}
	return 0, false
}

// parseSeconds parses a non-negative decimal number of seconds.
func parseSeconds(v []byte) (time.Duration, bool) {
	whole, frac, ok := parseDecimal(v)
	if !ok || whole > int64(MaxHint/time.Second) {
		return 0, false
	}
	return capHint(time.Duration(whole)*time.Second + time.Duration(frac))
}

// parseMillis parses a non-negative decimal number of milliseconds
// (retry-after-ms).
func parseMillis(v []byte) (time.Duration, bool) {
	whole, frac, ok := parseDecimal(trimOWS(v))
	if !ok || whole > int64(MaxHint/time.Millisecond) {
		return 0, false
	}
	return capHint(time.Duration(whole)*time.Millisecond + time.Duration(frac/1e3))
}

// parseGoDuration parses OpenAI's x-ratelimit-reset-* values, which are Go
// durations ("1s", "6m0s", "20ms", "1m30.5s"). A bare decimal is taken as
// seconds. Signs are rejected.
func parseGoDuration(v []byte) (time.Duration, bool) {
	v = trimOWS(v)
	if len(v) == 0 || !(isDigit(v[0]) || v[0] == '.') {
		return 0, false
	}
	if d, ok := parseSeconds(v); ok {
		return d, true
	}
	d, err := time.ParseDuration(string(v))
	if err != nil {
		return 0, false
	}
	return capHint(d)
}

// parseResetInstant parses an RFC 3339 instant (Anthropic's
// anthropic-ratelimit-*-reset) and returns the time from now until it; an
// instant in the past gives 0.
func parseResetInstant(v []byte, now time.Time) (time.Duration, bool) {
	v = trimOWS(v)
	if len(v) < len("2006-01-02T15:04:05Z") || !isDigit(v[0]) {
		return 0, false
	}
	t, err := time.Parse(time.RFC3339, string(v))
	if err != nil {
		return 0, false
	}
	return untilInstant(t, now)
}

// parseResetSeconds parses RateLimit-Reset / X-RateLimit-Reset: delta
// seconds, or a unix timestamp when the number is larger than 1e9 seconds
// (1e12 for milliseconds), as GitHub and others send.
func parseResetSeconds(v []byte, now time.Time) (time.Duration, bool) {
	whole, frac, ok := parseDecimal(trimOWS(v))
	switch {
	case !ok:
		return 0, false
	case whole > unixMillisThreshold:
		return untilInstant(time.UnixMilli(whole), now)
	case whole > unixSecondsThreshold:
		return untilInstant(time.Unix(whole, frac), now)
	}
	return parseSeconds(trimOWS(v))
}

// parseRemaining parses a *-remaining value and reports whether it is known
// and whether it is zero.
func parseRemaining(v []byte) (zero, known bool) {
	whole, frac, ok := parseDecimal(trimOWS(v))
	if !ok {
		return false, false
	}
	return whole == 0 && frac == 0, true
}

// rateLimitField is what the IETF RateLimit structured field
// (draft-ietf-httpapi-ratelimit-headers: `"default";r=0;t=30`) says:
// the longest reset of any policy, and of the policies with none remaining.
type rateLimitField struct {
	all, exhausted     time.Duration
	okAll, okExhausted bool
}

// parseRateLimitField parses a RateLimit field value: a list of policies,
// each a token or quoted string with parameters, of which r (remaining
// quota units) and t (seconds until the quota resets) are read. Members
// without a valid t are skipped; quoted strings may contain ',' and ';'.
func parseRateLimitField(v []byte) rateLimitField {
	var f rateLimitField
	for len(v) > 0 {
		var member []byte
		member, v = cutTopLevel(v, ',')
		t, okT, exhausted := rateLimitMember(member)
		if !okT {
			continue
		}
		if !f.okAll || t > f.all {
			f.all, f.okAll = t, true
		}
		if exhausted && (!f.okExhausted || t > f.exhausted) {
			f.exhausted, f.okExhausted = t, true
		}
	}
	return f
}

func rateLimitMember(member []byte) (t time.Duration, okT, exhausted bool) {
	_, params := cutTopLevel(member, ';') // the policy name itself is not needed
	for len(params) > 0 {
		var p []byte
		p, params = cutTopLevel(params, ';')
		p = trimOWS(p)
		if len(p) < 3 || p[1] != '=' {
			continue
		}
		val := p[2:]
		switch p[0] {
		case 't':
			// Parameters may repeat; the last one wins (RFC 8941 §3.1.2).
			t, okT = parseSeconds(val)
		case 'r':
			whole, frac, ok := parseDecimal(val)
			exhausted = ok && whole == 0 && frac == 0
		}
	}
	return t, okT, exhausted
}

// cutTopLevel splits b at the first sep that is not inside a quoted string.
func cutTopLevel(b []byte, sep byte) (head, tail []byte) {
	inQuote := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == sep:
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}

// parseDecimal parses digits with an optional fraction ("12", "0.25"): no
// sign, no exponent, at least one digit before any '.', and at least one
// after it. The fraction is returned in billionths (further digits are
// truncated). Whole parts above 1e15 are rejected, so callers can scale
// without overflow.
func parseDecimal(v []byte) (whole, frac int64, ok bool) {
	i := 0
	for ; i < len(v) && isDigit(v[i]); i++ {
		whole = whole*10 + int64(v[i]-'0')
		if whole > maxDecimalWhole {
			return 0, 0, false
		}
	}
	if i == 0 {
		return 0, 0, false
	}
	if i == len(v) {
		return whole, 0, true
	}
	if v[i] != '.' || i+1 == len(v) {
		return 0, 0, false
	}
	scale := int64(1e8)
	for i++; i < len(v); i++ {
		if !isDigit(v[i]) {
			return 0, 0, false
		}
		frac += int64(v[i]-'0') * scale
		scale /= 10
	}
	return whole, frac, true
}

// untilInstant is the wait from now until t: 0 when t has passed, not ok
// when t is more than MaxHint away.
func untilInstant(t, now time.Time) (time.Duration, bool) {
	if !t.After(now) {
		return 0, true
	}
	return capHint(t.Sub(now))
}

// capHint rejects negative and absurd (over MaxHint) durations.
func capHint(d time.Duration) (time.Duration, bool) {
	if d < 0 || d > MaxHint {
		return 0, false
	}
	return d, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}
