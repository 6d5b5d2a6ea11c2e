package policy

import (
	"strconv"
	"testing"
	"time"
)

var hintNow = time.Date(2024, 5, 14, 10, 0, 0, 0, time.UTC)

// durationCase is one input to a parser of a wait (a header value in seconds,
// milliseconds, a Go duration or an instant): the wait it means, and whether
// it is a valid one.
type durationCase struct {
	name   string
	value  string
	want   time.Duration
	wantOK bool
}

// runDurationCases checks parse against each case in a subtest of its own;
// fn names parse in the failure messages.
func runDurationCases(t *testing.T, fn string, parse func([]byte) (time.Duration, bool), tests []durationCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parse([]byte(tt.value))
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("%s(%q) = %v, %v; want %v, %v", fn, tt.value, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	tests := []durationCase{
		{name: "delta seconds", value: "30", want: 30 * time.Second, wantOK: true},
		{name: "zero", value: "0", want: 0, wantOK: true},
		{name: "spaces around", value: "  7\t", want: 7 * time.Second, wantOK: true},
		{name: "fraction", value: "1.5", want: 1500 * time.Millisecond, wantOK: true},
		{name: "fraction beyond nanoseconds is truncated", value: "0.0000000019", want: 1, wantOK: true},
		{name: "exactly one year", value: "31536000", want: MaxHint, wantOK: true},
		{name: "over one year is absurd", value: "31536001", wantOK: false},
		{name: "huge overflows are rejected", value: "99999999999999999999999999", wantOK: false},
		{name: "imf-fixdate", value: "Tue, 14 May 2024 10:01:00 GMT", want: time.Minute, wantOK: true},
		{name: "rfc 850 date", value: "Tuesday, 14-May-24 10:00:30 GMT", want: 30 * time.Second, wantOK: true},
		{name: "asctime date", value: "Tue May 14 10:00:05 2024", want: 5 * time.Second, wantOK: true},
		{name: "date in the past means now", value: "Mon, 13 May 2024 10:00:00 GMT", want: 0, wantOK: true},
		{name: "date over a year ahead", value: "Fri, 14 May 2100 10:00:00 GMT", wantOK: false},
		{name: "date in another zone", value: "Tue, 14 May 2024 10:01:00 PST", wantOK: false},
		{name: "negative", value: "-5", wantOK: false},
		{name: "plus sign", value: "+5", wantOK: false},
		{name: "NaN", value: "NaN", wantOK: false},
		{name: "Inf", value: "Inf", wantOK: false},
		{name: "exponent", value: "1e3", wantOK: false},
		{name: "trailing dot", value: "5.", wantOK: false},
		{name: "leading dot", value: ".5", wantOK: false},
		{name: "unit suffix", value: "30s", wantOK: false},
		{name: "two numbers", value: "30, 40", wantOK: false},
		{name: "empty", value: "", wantOK: false},
		{name: "garbage", value: "soon, please", wantOK: false},
	}
	runDurationCases(t, "ParseRetryAfter", func(v []byte) (time.Duration, bool) { return ParseRetryAfter(v, hintNow) }, tests)
}

func TestParseMillis(t *testing.T) {
	tests := []durationCase{
		{name: "integer", value: "1500", want: 1500 * time.Millisecond, wantOK: true},
		{name: "fraction", value: "20.5", want: 20500 * time.Microsecond, wantOK: true},
		{name: "zero", value: "0", want: 0, wantOK: true},
		{name: "one year of ms", value: "31536000000", want: MaxHint, wantOK: true},
		{name: "over a year", value: "31536000001", wantOK: false},
		{name: "negative", value: "-1", wantOK: false},
		{name: "unit", value: "20ms", wantOK: false},
	}
	runDurationCases(t, "parseMillis", parseMillis, tests)
}

func TestParseGoDuration(t *testing.T) {
	tests := []durationCase{
		{name: "seconds", value: "1s", want: time.Second, wantOK: true},
		{name: "minutes and zero seconds", value: "6m0s", want: 6 * time.Minute, wantOK: true},
		{name: "milliseconds", value: "20ms", want: 20 * time.Millisecond, wantOK: true},
		{name: "openai fractional", value: "1m30.5s", want: 90500 * time.Millisecond, wantOK: true},
		{name: "groq style", value: "2m59.56s", want: 179560 * time.Millisecond, wantOK: true},
		{name: "fraction of a second", value: "7.66s", want: 7660 * time.Millisecond, wantOK: true},
		{name: "hours", value: "1h2m3s", want: time.Hour + 2*time.Minute + 3*time.Second, wantOK: true},
		{name: "bare number is seconds", value: "12", want: 12 * time.Second, wantOK: true},
		{name: "zero", value: "0s", want: 0, wantOK: true},
		{name: "leading dot", value: ".5s", want: 500 * time.Millisecond, wantOK: true},
		{name: "negative", value: "-1s", wantOK: false},
		{name: "plus", value: "+1s", wantOK: false},
		{name: "over a year", value: "8761h", wantOK: false},
		{name: "overflow", value: "9999999999999h", wantOK: false},
		{name: "unknown unit", value: "3days", wantOK: false},
		{name: "empty", value: "", wantOK: false},
		{name: "NaN", value: "NaNs", wantOK: false},
	}
	runDurationCases(t, "parseGoDuration", parseGoDuration, tests)
}

func TestParseResetInstant(t *testing.T) {
	tests := []durationCase{
		{name: "anthropic instant", value: "2024-05-14T10:00:17Z", want: 17 * time.Second, wantOK: true},
		{name: "with fraction", value: "2024-05-14T10:00:01.250Z", want: 1250 * time.Millisecond, wantOK: true},
		{name: "with offset", value: "2024-05-14T12:00:30+02:00", want: 30 * time.Second, wantOK: true},
		{name: "past instant means now", value: "2024-05-14T09:59:00Z", want: 0, wantOK: true},
		{name: "far future", value: "2030-01-01T00:00:00Z", wantOK: false},
		{name: "date only", value: "2024-05-14", wantOK: false},
		{name: "not a time", value: "tomorrow at ten", wantOK: false},
		{name: "seconds instead", value: "17", wantOK: false},
	}
	runDurationCases(t, "parseResetInstant", func(v []byte) (time.Duration, bool) { return parseResetInstant(v, hintNow) }, tests)
}

func TestParseResetSeconds(t *testing.T) {
	unix := hintNow.Unix()
	tests := []durationCase{
		{name: "delta seconds", value: "30", want: 30 * time.Second, wantOK: true},
		{name: "delta fraction", value: "0.5", want: 500 * time.Millisecond, wantOK: true},
		{name: "unix timestamp", value: itoa(unix + 45), want: 45 * time.Second, wantOK: true},
		{name: "unix timestamp with fraction", value: itoa(unix+1) + ".5", want: 1500 * time.Millisecond, wantOK: true},
		{name: "unix milliseconds", value: itoa(unix*1000 + 2500), want: 2500 * time.Millisecond, wantOK: true},
		{name: "past timestamp means now", value: itoa(unix - 100), want: 0, wantOK: true},
		{name: "delta over a year", value: "40000000", wantOK: false},
		{name: "timestamp over a year ahead", value: itoa(unix + 400*86400), wantOK: false},
		{name: "negative", value: "-30", wantOK: false},
		{name: "overflow", value: "123456789012345678901234567890", wantOK: false},
	}
	runDurationCases(t, "parseResetSeconds", func(v []byte) (time.Duration, bool) { return parseResetSeconds(v, hintNow) }, tests)
}

func TestParseRemaining(t *testing.T) {
	tests := []struct {
		name      string
		value     string
		wantZero  bool
		wantKnown bool
	}{
		{name: "zero", value: "0", wantZero: true, wantKnown: true},
		{name: "zero with spaces", value: " 0 ", wantZero: true, wantKnown: true},
		{name: "zero fraction", value: "0.0", wantZero: true, wantKnown: true},
		{name: "some left", value: "9999", wantKnown: true},
		{name: "a fraction left", value: "0.5", wantKnown: true},
		{name: "negative", value: "-1"},
		{name: "garbage", value: "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			zero, known := parseRemaining([]byte(tt.value))
			if zero != tt.wantZero || known != tt.wantKnown {
				t.Errorf("parseRemaining(%q) = %v, %v; want %v, %v", tt.value, zero, known, tt.wantZero, tt.wantKnown)
			}
		})
	}
}

func TestParseRateLimitField(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  rateLimitField
	}{
		{name: "draft example", value: `"default";r=0;t=30`, want: rateLimitField{all: 30 * time.Second, okAll: true, exhausted: 30 * time.Second, okExhausted: true}},
		{name: "quota left", value: `"default";r=50;t=30`, want: rateLimitField{all: 30 * time.Second, okAll: true}},
		{name: "token name", value: `day;r=0;t=3600`, want: rateLimitField{all: time.Hour, okAll: true, exhausted: time.Hour, okExhausted: true}},
		{
			name:  "two policies, the exhausted one shorter",
			value: `"burst";r=0;t=5, "daily";r=100;t=3600`,
			want:  rateLimitField{all: time.Hour, okAll: true, exhausted: 5 * time.Second, okExhausted: true},
		},
		{name: "parameter order and spaces", value: `"p"; t=12 ;r=0`, want: rateLimitField{all: 12 * time.Second, okAll: true, exhausted: 12 * time.Second, okExhausted: true}},
		{name: "quoted name with separators", value: `"a;t=99,b";r=0;t=4`, want: rateLimitField{all: 4 * time.Second, okAll: true, exhausted: 4 * time.Second, okExhausted: true}},
		{name: "escaped quote in name", value: `"a\";t=99";t=4`, want: rateLimitField{all: 4 * time.Second, okAll: true}},
		{name: "repeated parameter: last wins", value: `"p";t=99;t=3`, want: rateLimitField{all: 3 * time.Second, okAll: true}},
		{name: "no t", value: `"default";r=0`},
		{name: "negative t", value: `"default";r=0;t=-5`},
		{name: "absurd t", value: `"default";r=0;t=999999999`},
		{name: "unterminated quote", value: `"default;r=0;t=30`},
		{name: "empty", value: ``},
		{name: "only commas", value: `,,,`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseRateLimitField([]byte(tt.value)); got != tt.want {
				t.Errorf("parseRateLimitField(%q) = %+v, want %+v", tt.value, got, tt.want)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
