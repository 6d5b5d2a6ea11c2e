package policy

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// FuzzRetryAfterHint feeds arbitrary values to every hint header (and one
// arbitrary header name), and checks that nothing panics and that every
// answer stays within the trusted range.
func FuzzRetryAfterHint(f *testing.F) {
	seeds := []struct{ name, value string }{
		{"Retry-After", "30"},
		{"Retry-After", "Tue, 14 May 2024 10:01:00 GMT"},
		{"Retry-After", "Tuesday, 14-May-24 10:00:30 GMT"},
		{"Retry-After", "Tue May 14 10:00:05 2024"},
		{"retry-after-ms", "1500.25"},
		{"x-ratelimit-reset-tokens", "1m30.5s"},
		{"x-ratelimit-reset-requests", "6m0s"},
		{"anthropic-ratelimit-tokens-reset", "2024-05-14T10:00:17Z"},
		{"X-RateLimit-Reset", "1715680875"},
		{"RateLimit-Reset", "1715680875123"},
		{"RateLimit", `"default";r=0;t=30, "b";r=1;t=5`},
		{"RateLimit", `"a\";t=99";t=4`},
		{"Retry-After", "-1"},
		{"Retry-After", "NaN"},
		{"Retry-After", "1e400"},
		{"x-ratelimit-reset-tokens", "9223372036854775807ns"},
		{"x-ratelimit-reset-tokens", "99999999999999999999h"},
		{"Retry-After", "99999999999999999999999999999999999.9999999999999"},
		{"X-Custom", "0"},
	}
	for _, s := range seeds {
		f.Add(s.name, s.value, int64(1715680800))
	}
	f.Fuzz(func(t *testing.T, name, value string, nowUnix int64) {
		// Keep now within the years time.Time handles without saturating.
		now := time.Unix(nowUnix%(1<<36), 0)
		check := func(h *fasthttp.ResponseHeader) {
			d, ok := RetryAfterHint(h, now)
			if d < 0 || d > MaxHint || (!ok && d != 0) {
				t.Fatalf("RetryAfterHint = %v, %v for %q: %q", d, ok, name, value)
			}
			at, ok := ResetWhenExhausted(h, now)
			if ok && (!at.After(now) || at.Sub(now) > MaxHint) {
				t.Fatalf("ResetWhenExhausted = %v (now %v) for %q: %q", at, now, name, value)
			}
			if !ok && !at.IsZero() {
				t.Fatalf("ResetWhenExhausted = %v, false; want the zero time", at)
			}
		}
		var h fasthttp.ResponseHeader
		h.DisableNormalizing()
		h.Add(name, value)
		check(&h)

		// The same value in every hint header, with every limit exhausted.
		var all fasthttp.ResponseHeader
		for i := range numHintHeaders {
			v := value
			if n := hintHeaderName(i); len(n) > len("remaining") && n[len(n)-len("remaining"):] == "remaining" {
				v = "0"
			}
			all.Add(hintHeaderName(i), v)
		}
		check(&all)

		// The single-value parsers directly.
		if d, ok := ParseRetryAfter([]byte(value), now); d < 0 || d > MaxHint || (!ok && d != 0) {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v", value, d, ok)
		}
		for _, parse := range []func([]byte, time.Time) (time.Duration, bool){parseGoDurationAt, parseResetInstant, parseResetSeconds} {
			if d, ok := parse([]byte(value), now); d < 0 || d > MaxHint || (!ok && d != 0) {
				t.Fatalf("parser returned %v, %v for %q", d, ok, value)
			}
		}
		if d, ok := parseMillis([]byte(value)); d < 0 || d > MaxHint || (!ok && d != 0) {
			t.Fatalf("parseMillis(%q) = %v, %v", value, d, ok)
		}
		f := parseRateLimitField([]byte(value))
		if f.all < 0 || f.all > MaxHint || f.exhausted < 0 || f.exhausted > MaxHint || (f.okExhausted && !f.okAll) || f.exhausted > f.all {
			t.Fatalf("parseRateLimitField(%q) = %+v", value, f)
		}
	})
}
