package policy

import (
	"bufio"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// responseHeader parses raw header lines (without the status line) as a
// fasthttp client would receive them. keepCase mimics a HostClient with
// DisableHeaderNamesNormalizing.
func responseHeader(t testing.TB, status int, lines string, keepCase bool) *fasthttp.ResponseHeader {
	t.Helper()
	h := new(fasthttp.ResponseHeader)
	if keepCase {
		h.DisableNormalizing()
	}
	raw := "HTTP/1.1 " + itoa(int64(status)) + " X\r\n" + strings.ReplaceAll(strings.TrimSpace(lines), "\n", "\r\n") + "\r\nContent-Length: 0\r\n\r\n"
	if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		t.Fatalf("parse header: %v", err)
	}
	return h
}

// Header sets as the providers send them on a 429.
const (
	openAI429Headers = `
date: Tue, 14 May 2024 10:00:00 GMT
content-type: application/json; charset=utf-8
x-ratelimit-limit-requests: 10000
x-ratelimit-limit-tokens: 30000
x-ratelimit-remaining-requests: 9999
x-ratelimit-remaining-tokens: 0
x-ratelimit-reset-requests: 6ms
x-ratelimit-reset-tokens: 2.214s
x-request-id: req_abc`
	anthropic429Headers = `
date: Tue, 14 May 2024 10:00:00 GMT
content-type: application/json
retry-after: 17
anthropic-ratelimit-requests-limit: 50
anthropic-ratelimit-requests-remaining: 49
anthropic-ratelimit-requests-reset: 2024-05-14T10:00:01Z
anthropic-ratelimit-input-tokens-limit: 40000
anthropic-ratelimit-input-tokens-remaining: 0
anthropic-ratelimit-input-tokens-reset: 2024-05-14T10:00:17Z
anthropic-ratelimit-output-tokens-limit: 8000
anthropic-ratelimit-output-tokens-remaining: 8000
anthropic-ratelimit-output-tokens-reset: 2024-05-14T10:00:00Z
anthropic-ratelimit-tokens-limit: 48000
anthropic-ratelimit-tokens-remaining: 8000
anthropic-ratelimit-tokens-reset: 2024-05-14T10:00:17Z
request-id: req_011CSHoEeqs5C35K2UUqR7Fy`
	openAI200Headers = `
date: Tue, 14 May 2024 10:00:00 GMT
content-type: application/json
openai-organization: user-abc
openai-processing-ms: 393
openai-version: 2020-10-01
x-ratelimit-limit-requests: 10000
x-ratelimit-limit-tokens: 30000
x-ratelimit-remaining-requests: 9999
x-ratelimit-remaining-tokens: 29980
x-ratelimit-reset-requests: 6ms
x-ratelimit-reset-tokens: 40ms
x-request-id: req_abc
strict-transport-security: max-age=15724800; includeSubDomains
cf-cache-status: DYNAMIC
server: cloudflare`
	plain200Headers = `
date: Tue, 14 May 2024 10:00:00 GMT
content-type: application/json
cache-control: no-store
x-request-id: abc
server: nginx`
)

func TestRetryAfterHint(t *testing.T) {
	unix := hintNow.Unix()
	tests := []struct {
		name   string
		lines  string
		want   time.Duration
		wantOK bool
	}{
		{name: "no hint headers", lines: plain200Headers, wantOK: false},
		{name: "openai 429: exhausted tokens reset", lines: openAI429Headers, want: 2214 * time.Millisecond, wantOK: true},
		{name: "anthropic 429: retry-after wins over resets", lines: anthropic429Headers, want: 17 * time.Second, wantOK: true},
		{name: "retry-after seconds", lines: "Retry-After: 30", want: 30 * time.Second, wantOK: true},
		{name: "retry-after date", lines: "Retry-After: Tue, 14 May 2024 10:02:00 GMT", want: 2 * time.Minute, wantOK: true},
		{name: "retry-after-ms", lines: "retry-after-ms: 1500", want: 1500 * time.Millisecond, wantOK: true},
		{name: "retry-after-ms is the precise one", lines: "retry-after: 3\nretry-after-ms: 2500", want: 2500 * time.Millisecond, wantOK: true},
		{name: "retry-after-ms beats a rounded-up retry-after", lines: "retry-after: 1\nretry-after-ms: 100", want: 100 * time.Millisecond, wantOK: true},
		{name: "malformed retry-after-ms falls back to retry-after", lines: "retry-after: 2\nretry-after-ms: soon", want: 2 * time.Second, wantOK: true},
		{name: "malformed retry-after falls back to ms", lines: "retry-after: soon\nretry-after-ms: 800", want: 800 * time.Millisecond, wantOK: true},
		{name: "malformed retry-after falls back to resets", lines: "retry-after: -1\nx-ratelimit-reset: 12", want: 12 * time.Second, wantOK: true},
		{name: "absurd retry-after ignored", lines: "retry-after: 99999999", wantOK: false},
		{name: "openai resets without remaining: largest", lines: "x-ratelimit-reset-requests: 1s\nx-ratelimit-reset-tokens: 6m0s", want: 6 * time.Minute, wantOK: true},
		{name: "no limit exhausted: largest reset", lines: "x-ratelimit-remaining-requests: 5\nx-ratelimit-reset-requests: 1m30.5s\nx-ratelimit-remaining-tokens: 100\nx-ratelimit-reset-tokens: 20ms", want: 90500 * time.Millisecond, wantOK: true},
		{name: "exhausted requests beat a longer token reset", lines: "x-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 20ms\nx-ratelimit-remaining-tokens: 100\nx-ratelimit-reset-tokens: 6m0s", want: 20 * time.Millisecond, wantOK: true},
		{name: "anthropic resets without retry-after", lines: "anthropic-ratelimit-requests-remaining: 0\nanthropic-ratelimit-requests-reset: 2024-05-14T10:00:09Z\nanthropic-ratelimit-tokens-remaining: 0\nanthropic-ratelimit-tokens-reset: 2024-05-14T10:00:04Z", want: 9 * time.Second, wantOK: true},
		{name: "anthropic output tokens", lines: "anthropic-ratelimit-output-tokens-remaining: 0\nanthropic-ratelimit-output-tokens-reset: 2024-05-14T10:00:03Z", want: 3 * time.Second, wantOK: true},
		{name: "RateLimit-Reset delta", lines: "RateLimit-Remaining: 0\nRateLimit-Reset: 42", want: 42 * time.Second, wantOK: true},
		{name: "X-RateLimit-Reset unix time", lines: "X-RateLimit-Remaining: 0\nX-RateLimit-Reset: " + itoa(unix+75), want: 75 * time.Second, wantOK: true},
		{name: "IETF RateLimit field", lines: `RateLimit: "default";r=0;t=30`, want: 30 * time.Second, wantOK: true},
		{name: "IETF RateLimit exhausted policy", lines: `RateLimit: "burst";r=0;t=5, "daily";r=10;t=3600`, want: 5 * time.Second, wantOK: true},
		{name: "IETF RateLimit none exhausted", lines: `RateLimit: "burst";r=3;t=5, "daily";r=10;t=3600`, want: time.Hour, wantOK: true},
		{name: "only malformed values", lines: "retry-after: NaN\nx-ratelimit-reset-tokens: -3s\nanthropic-ratelimit-tokens-reset: never\nRateLimit-Reset: 1e9\nRateLimit: \"x\";t=abc", wantOK: false},
		{name: "empty values", lines: "retry-after: \nretry-after-ms:", wantOK: false},
		// Several lines of a field that is not a list (RFC 9110 §5.3): no
		// line hides another, and the longest valid wait wins.
		{name: "longest of repeated headers", lines: "retry-after: 40\nretry-after: 4", want: 40 * time.Second, wantOK: true},
		{name: "garbage line before a valid one", lines: "retry-after: soon\nretry-after: 4", want: 4 * time.Second, wantOK: true},
		{name: "garbage retry-after-ms line before a valid one", lines: "retry-after-ms: x\nretry-after-ms: 2500\nretry-after: 9", want: 2500 * time.Millisecond, wantOK: true},
		{name: "repeated reset, a remaining line says 0", lines: "x-ratelimit-remaining-requests: 5\nx-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: bad\nx-ratelimit-reset-requests: 7s\nx-ratelimit-reset-tokens: 30s", want: 7 * time.Second, wantOK: true},
		{name: "RateLimit list over two lines", lines: "RateLimit: \"a\";r=5;t=60\nRateLimit: \"b\";r=0;t=3", want: 3 * time.Second, wantOK: true},
	}
	for _, tt := range tests {
		for _, keepCase := range []bool{false, true} {
			name := tt.name
			if keepCase {
				name += " (names as received)"
			}
			t.Run(name, func(t *testing.T) {
				h := responseHeader(t, 429, tt.lines, keepCase)
				got, ok := RetryAfterHint(h, hintNow)
				if ok != tt.wantOK || got != tt.want {
					t.Errorf("RetryAfterHint = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
				}
			})
		}
	}
	t.Run("nil header", func(t *testing.T) {
		if d, ok := RetryAfterHint(nil, hintNow); ok || d != 0 {
			t.Errorf("RetryAfterHint(nil) = %v, %v", d, ok)
		}
	})
	t.Run("upper-case names set by code", func(t *testing.T) {
		var h fasthttp.ResponseHeader
		h.DisableNormalizing()
		h.Set("RETRY-AFTER", "9")
		if d, ok := RetryAfterHint(&h, hintNow); !ok || d != 9*time.Second {
			t.Errorf("RetryAfterHint = %v, %v; want 9s", d, ok)
		}
	})
}

func TestResetWhenExhausted(t *testing.T) {
	unix := hintNow.Unix()
	tests := []struct {
		name   string
		lines  string
		want   time.Duration // after hintNow
		wantOK bool
	}{
		{name: "no rate limit headers", lines: plain200Headers},
		{name: "openai 200 with quota left", lines: openAI200Headers},
		{name: "openai tokens exhausted", lines: openAI429Headers, want: 2214 * time.Millisecond, wantOK: true},
		{name: "openai requests exhausted", lines: "x-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 6m0s\nx-ratelimit-remaining-tokens: 100\nx-ratelimit-reset-tokens: 9m0s", want: 6 * time.Minute, wantOK: true},
		{name: "anthropic input tokens exhausted", lines: anthropic429Headers, want: 17 * time.Second, wantOK: true},
		{name: "both exhausted: the later reset", lines: "x-ratelimit-remaining-requests: 0\nx-ratelimit-reset-requests: 1s\nx-ratelimit-remaining-tokens: 0\nx-ratelimit-reset-tokens: 20s", want: 20 * time.Second, wantOK: true},
		{name: "exhausted without a reset", lines: "x-ratelimit-remaining-tokens: 0"},
		{name: "exhausted with a malformed reset", lines: "x-ratelimit-remaining-tokens: 0\nx-ratelimit-reset-tokens: forever"},
		{name: "exhausted but already reset", lines: "anthropic-ratelimit-requests-remaining: 0\nanthropic-ratelimit-requests-reset: 2024-05-14T09:00:00Z"},
		{name: "exhausted with an absurd reset", lines: "x-ratelimit-remaining-tokens: 0\nx-ratelimit-reset-tokens: 100000h"},
		{name: "reset without remaining is not exhaustion", lines: "x-ratelimit-reset-tokens: 20s"},
		{name: "retry-after alone is not exhaustion", lines: "retry-after: 30"},
		{name: "github style", lines: "X-RateLimit-Remaining: 0\nX-RateLimit-Reset: " + itoa(unix+600), want: 10 * time.Minute, wantOK: true},
		{name: "RateLimit-Remaining", lines: "RateLimit-Remaining: 0\nRateLimit-Reset: 5", want: 5 * time.Second, wantOK: true},
		{name: "IETF RateLimit r=0", lines: `RateLimit: "default";r=0;t=30`, want: 30 * time.Second, wantOK: true},
		{name: "IETF RateLimit with quota left", lines: `RateLimit: "default";r=1;t=30`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := responseHeader(t, 200, tt.lines, false)
			got, ok := ResetWhenExhausted(h, hintNow)
			if ok != tt.wantOK {
				t.Fatalf("ResetWhenExhausted ok = %v (%v), want %v", ok, got, tt.wantOK)
			}
			if want := hintNow.Add(tt.want); ok && !got.Equal(want) {
				t.Errorf("ResetWhenExhausted = %v, want %v", got, want)
			}
		})
	}
	t.Run("nil header", func(t *testing.T) {
		if _, ok := ResetWhenExhausted(nil, hintNow); ok {
			t.Error("ResetWhenExhausted(nil) reported a pause")
		}
	})
}

func TestCapWaitAndWait(t *testing.T) {
	tests := []struct {
		name                       string
		backoff, hint, maxAfter    time.Duration
		wantCapped, wantWaitResult time.Duration
	}{
		{name: "hint below cap", backoff: 50 * time.Millisecond, hint: 2 * time.Second, maxAfter: time.Minute, wantCapped: 2 * time.Second, wantWaitResult: 2 * time.Second},
		{name: "hint above cap", backoff: 0, hint: 10 * time.Minute, maxAfter: time.Minute, wantCapped: time.Minute, wantWaitResult: time.Minute},
		{name: "backoff above hint", backoff: 3 * time.Second, hint: time.Second, maxAfter: time.Minute, wantCapped: time.Second, wantWaitResult: 3 * time.Second},
		{name: "no hint", backoff: 80 * time.Millisecond, hint: 0, maxAfter: time.Minute, wantCapped: 0, wantWaitResult: 80 * time.Millisecond},
		{name: "zero cap ignores hints", backoff: 80 * time.Millisecond, hint: 5 * time.Second, maxAfter: 0, wantCapped: 0, wantWaitResult: 80 * time.Millisecond},
		{name: "negative inputs", backoff: -time.Second, hint: -time.Second, maxAfter: -time.Second, wantCapped: 0, wantWaitResult: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CapWait(tt.hint, tt.maxAfter); got != tt.wantCapped {
				t.Errorf("CapWait = %v, want %v", got, tt.wantCapped)
			}
			if got := Wait(tt.backoff, tt.hint, tt.maxAfter); got != tt.wantWaitResult {
				t.Errorf("Wait = %v, want %v", got, tt.wantWaitResult)
			}
		})
	}
}

// Every hint header name is found, in any case, and near misses are not.
func TestHintIndex(t *testing.T) {
	for i := range numHintHeaders {
		name := hintHeaderName(i)
		for _, key := range []string{name, strings.ToUpper(name), http1Canonical(name)} {
			if got := hintIndex([]byte(key)); got != i {
				t.Errorf("hintIndex(%q) = %d, want %d", key, got, i)
			}
		}
		if got := hintIndex([]byte(name[:len(name)-1] + "_")); got != -1 {
			t.Errorf("hintIndex of a near miss of %q = %d, want -1", name, got)
		}
	}
	for _, key := range []string{"", "date", "content-type", "x-request-id", "anthropic-ratelimit-requests-limit"} {
		if got := hintIndex([]byte(key)); got != -1 {
			t.Errorf("hintIndex(%q) = %d, want -1", key, got)
		}
	}
}

// http1Canonical is how fasthttp normalizes a header name: Retry-After-Ms.
func http1Canonical(name string) string {
	b := []byte(name)
	upper := true
	for i, c := range b {
		if upper && 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
		upper = c == '-'
	}
	return string(b)
}
