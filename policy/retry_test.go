package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestClassAndCauseStrings(t *testing.T) {
	classes := []struct {
		c    Class
		want string
	}{
		{OK, "ok"}, {Transient, "transient"}, {Timeout, "timeout"}, {RateLimited, "rate_limited"},
		{Invalid, "invalid"}, {CallerFault, "caller_fault"}, {Auth, "auth"}, {Quota, "quota"},
		{BreakerOpen, "breaker_open"}, {BudgetExhausted, "budget_exhausted"}, {Canceled, "canceled"},
		{Class(200), "unknown"},
	}
	for _, tt := range classes {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Class(%d).String() = %q, want %q", tt.c, got, tt.want)
		}
	}
	causes := []struct {
		c    Cause
		want string
	}{
		{CauseNone, "none"}, {CauseConnect, "connect-failure"}, {CauseReset, "reset"},
		{CauseTimeout, "timeout"}, {CauseStatus, "status"}, {CauseInvalid, "invalid"}, {Cause(99), "unknown"},
	}
	for _, tt := range causes {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Cause(%d).String() = %q, want %q", tt.c, got, tt.want)
		}
	}
	// Every cause word except status and none is a retry.on word.
	for _, c := range []Cause{CauseConnect, CauseReset, CauseTimeout, CauseInvalid} {
		on, err := ParseRetryOn([]string{c.String()})
		if err != nil || !on.HasCause(c) {
			t.Errorf("ParseRetryOn(%q) = %v, %v; want the cause listed", c, on, err)
		}
	}
	decisions := []struct {
		d    Decision
		want string
	}{
		{DecisionRetry, "retry"}, {DecisionFinal, "final"}, {DecisionNotListed, "not_listed"},
		{DecisionUnsafe, "unsafe"}, {Decision(9), "unknown"},
	}
	for _, tt := range decisions {
		if got := tt.d.String(); got != tt.want {
			t.Errorf("Decision(%d).String() = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestIdempotentMethod(t *testing.T) {
	tests := []struct {
		name   string
		method string
		want   bool
	}{
		{name: "GET", method: "GET", want: true},
		{name: "HEAD", method: "HEAD", want: true},
		{name: "OPTIONS", method: "OPTIONS", want: true},
		{name: "TRACE", method: "TRACE", want: true},
		{name: "PUT", method: "PUT", want: true},
		{name: "DELETE", method: "DELETE", want: true},
		{name: "POST", method: "POST", want: false},
		{name: "PATCH", method: "PATCH", want: false},
		{name: "CONNECT", method: "CONNECT", want: false},
		{name: "methods are case-sensitive", method: "get", want: false},
		{name: "empty", method: "", want: false},
		{name: "prefix of GET", method: "GE", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IdempotentMethod([]byte(tt.method)); got != tt.want {
				t.Errorf("IdempotentMethod(%q) = %v, want %v", tt.method, got, tt.want)
			}
		})
	}
}

func TestRetrySafe(t *testing.T) {
	tests := []struct {
		name          string
		cause         Cause
		method        string
		unsafeMethods bool
		guardedByKey  bool
		want          bool
	}{
		{name: "never sent POST", cause: CauseConnect, method: "POST", want: true},
		{name: "reset GET", cause: CauseReset, method: "GET", want: true},
		{name: "reset POST", cause: CauseReset, method: "POST", want: false},
		{name: "timeout POST", cause: CauseTimeout, method: "POST", want: false},
		{name: "429 POST", cause: CauseStatus, method: "POST", want: false},
		{name: "429 POST on an unsafe_methods route", cause: CauseStatus, method: "POST", unsafeMethods: true, want: true},
		{name: "reset PATCH with a guarded idempotency key", cause: CauseReset, method: "PATCH", guardedByKey: true, want: true},
		{name: "timeout DELETE", cause: CauseTimeout, method: "DELETE", want: true},
		{name: "invalid PUT", cause: CauseInvalid, method: "PUT", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RetrySafe(tt.cause, []byte(tt.method), tt.unsafeMethods, tt.guardedByKey); got != tt.want {
				t.Errorf("RetrySafe = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseRetryOn(t *testing.T) {
	tests := []struct {
		name        string
		words       []string
		wantCauses  []Cause
		wantCodes   []int
		wantMissing []int
		wantErrs    []string // substrings, one per bad word
	}{
		{name: "empty matches nothing", words: nil, wantMissing: []int{429, 500, 502}},
		{
			name:        "config default",
			words:       []string{"connect-failure", "reset", "timeout", "429", "502", "503", "504"},
			wantCauses:  []Cause{CauseConnect, CauseReset, CauseTimeout},
			wantCodes:   []int{429, 502, 503, 504},
			wantMissing: []int{500, 400, 501},
		},
		{name: "5xx", words: []string{"5xx"}, wantCodes: []int{500, 502, 529, 599}, wantMissing: []int{429, 499, 600}},
		{name: "gateway-error", words: []string{"gateway-error"}, wantCodes: []int{502, 503, 504}, wantMissing: []int{500, 529}},
		{name: "case and spaces", words: []string{" Connect-Failure ", "INVALID"}, wantCauses: []Cause{CauseConnect, CauseInvalid}},
		{name: "unknown word", words: []string{"reset", "bogus"}, wantErrs: []string{`on[1]`}},
		{name: "every bad word reported", words: []string{"2xx", "200", "4291", "-429", "", "status"}, wantErrs: []string{"on[0]", "on[1]", "on[2]", "on[3]", "on[4]", "on[5]"}},
		{name: "status word is not a cause", words: []string{"status"}, wantErrs: []string{"on[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			on, err := ParseRetryOn(tt.words)
			if len(tt.wantErrs) > 0 {
				if err == nil {
					t.Fatalf("ParseRetryOn(%q) succeeded, want errors", tt.words)
				}
				if !errors.Is(err, ErrRetryOn) {
					t.Errorf("error %v does not wrap ErrRetryOn", err)
				}
				for _, want := range tt.wantErrs {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
				if on != (RetryOn{}) {
					t.Errorf("got %+v with an error, want the zero RetryOn", on)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRetryOn(%q): %v", tt.words, err)
			}
			for _, c := range []Cause{CauseConnect, CauseReset, CauseTimeout, CauseInvalid, CauseStatus, CauseNone} {
				want := false
				for _, w := range tt.wantCauses {
					want = want || w == c
				}
				if got := on.HasCause(c); got != want {
					t.Errorf("HasCause(%v) = %v, want %v", c, got, want)
				}
			}
			for _, s := range tt.wantCodes {
				if !on.HasStatus(s) {
					t.Errorf("HasStatus(%d) = false, want true", s)
				}
			}
			for _, s := range tt.wantMissing {
				if on.HasStatus(s) {
					t.Errorf("HasStatus(%d) = true, want false", s)
				}
			}
			for _, s := range []int{-1, 0, 600, 1 << 20} {
				if on.HasStatus(s) {
					t.Errorf("HasStatus(%d) = true for an impossible status", s)
				}
			}
		})
	}
}

func TestDecide(t *testing.T) {
	on, err := ParseRetryOn([]string{"connect-failure", "reset", "timeout", "429", "502", "503", "504"})
	if err != nil {
		t.Fatal(err)
	}
	def := Retry{On: on}
	model := Retry{On: on, UnsafeMethods: true}
	withInvalid, _ := ParseRetryOn([]string{"invalid"})
	tests := []struct {
		name    string
		rule    Retry
		class   Class
		cause   Cause
		status  int
		method  string
		guarded bool
		want    Decision
	}{
		// Row 1: classes never retried, even when listed and safe.
		{name: "ok", rule: model, class: OK, cause: CauseNone, status: 200, method: "GET", want: DecisionFinal},
		{name: "auth 401 listed", rule: Retry{On: mustRetryOn(t, "401", "403")}, class: Auth, cause: CauseStatus, status: 401, method: "GET", want: DecisionFinal},
		{name: "quota on a 429", rule: model, class: Quota, cause: CauseStatus, status: 429, method: "POST", want: DecisionFinal},
		{name: "caller fault on a 429", rule: model, class: CallerFault, cause: CauseStatus, status: 429, method: "POST", want: DecisionFinal},
		{name: "canceled", rule: model, class: Canceled, cause: CauseNone, method: "GET", want: DecisionFinal},
		{name: "breaker open", rule: model, class: BreakerOpen, cause: CauseNone, method: "GET", want: DecisionFinal},
		{name: "budget exhausted", rule: model, class: BudgetExhausted, cause: CauseNone, method: "GET", want: DecisionFinal},
		{name: "unknown class", rule: model, class: Class(77), cause: CauseReset, method: "GET", want: DecisionFinal},

		// Row 2: not listed.
		{name: "500 not listed", rule: def, class: Transient, cause: CauseStatus, status: 500, method: "GET", want: DecisionNotListed},
		{name: "invalid not listed", rule: def, class: Invalid, cause: CauseInvalid, status: 200, method: "GET", want: DecisionNotListed},
		{name: "zero rule retries nothing", rule: Retry{}, class: Transient, cause: CauseConnect, method: "GET", want: DecisionNotListed},
		{name: "dial timeout is a connect failure, not a timeout", rule: Retry{On: mustRetryOn(t, "timeout")}, class: Timeout, cause: CauseConnect, method: "GET", want: DecisionNotListed},
		{name: "403 rate limit needs 403 listed", rule: model, class: RateLimited, cause: CauseStatus, status: 403, method: "GET", want: DecisionNotListed},

		// Row 3: possibly processed and not safe to repeat.
		{name: "POST reset", rule: def, class: Transient, cause: CauseReset, method: "POST", want: DecisionUnsafe},
		{name: "POST timeout", rule: def, class: Timeout, cause: CauseTimeout, method: "POST", want: DecisionUnsafe},
		{name: "POST 429", rule: def, class: RateLimited, cause: CauseStatus, status: 429, method: "POST", want: DecisionUnsafe},
		{name: "PATCH 503", rule: def, class: Transient, cause: CauseStatus, status: 503, method: "PATCH", want: DecisionUnsafe},

		// Row 4: retry.
		{name: "POST connect failure", rule: def, class: Transient, cause: CauseConnect, method: "POST", want: DecisionRetry},
		{name: "POST dial timeout", rule: def, class: Timeout, cause: CauseConnect, method: "POST", want: DecisionRetry},
		{name: "GET reset", rule: def, class: Transient, cause: CauseReset, method: "GET", want: DecisionRetry},
		{name: "GET 504", rule: def, class: Timeout, cause: CauseStatus, status: 504, method: "GET", want: DecisionRetry},
		{name: "POST 429 on a model route", rule: model, class: RateLimited, cause: CauseStatus, status: 429, method: "POST", want: DecisionRetry},
		{name: "POST 503 with a guarded key", rule: def, class: Transient, cause: CauseStatus, status: 503, method: "POST", guarded: true, want: DecisionRetry},
		{name: "anthropic 529 overloaded when 5xx listed", rule: Retry{On: mustRetryOn(t, "5xx"), UnsafeMethods: true}, class: Transient, cause: CauseStatus, status: 529, method: "POST", want: DecisionRetry},
		{name: "invalid listed", rule: Retry{On: withInvalid}, class: Invalid, cause: CauseInvalid, status: 200, method: "GET", want: DecisionRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.rule.Decide(tt.class, tt.cause, tt.status, []byte(tt.method), tt.guarded)
			if got != tt.want {
				t.Errorf("Decide(%v, %v, %d, %s) = %v, want %v", tt.class, tt.cause, tt.status, tt.method, got, tt.want)
			}
			if matches := tt.rule.On.Matches(tt.class, tt.cause, tt.status); matches != (got == DecisionRetry || got == DecisionUnsafe) {
				t.Errorf("Matches = %v disagrees with Decide = %v", matches, got)
			}
		})
	}
}

func mustRetryOn(t *testing.T, words ...string) RetryOn {
	t.Helper()
	on, err := ParseRetryOn(words)
	if err != nil {
		t.Fatal(err)
	}
	return on
}
