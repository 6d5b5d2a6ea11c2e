package policy

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// The hot path of every proxied request must not allocate: these gates
// fail as soon as one of its calls does.
func TestHotPathAllocations(t *testing.T) {
	ok200 := responseHeader(t, 200, plain200Headers, false)
	openAI200 := responseHeader(t, 200, openAI200Headers, false)
	openAI200Raw := responseHeader(t, 200, openAI200Headers, true)
	body := []byte(`{"id":"chatcmpl-1","object":"chat.completion","choices":[]}`)
	budget := NewBudget(DefaultBudgetRatio, DefaultBudgetMinPerSecond, DefaultBudgetTTL)
	on, err := ParseRetryOn([]string{"connect-failure", "reset", "timeout", "429", "502", "503", "504"})
	if err != nil {
		t.Fatal(err)
	}
	rule := Retry{On: on, UnsafeMethods: true}
	backoff := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}
	now := hintNow
	resetErr := fmt.Errorf("attempt: %w", io.EOF)

	tests := []struct {
		name string
		fn   func()
	}{
		{name: "ClassifyResponse 200", fn: func() { _ = ClassifyResponse(200, ok200, body) }},
		{name: "ClassifyResponse 429 with body", fn: func() { _ = ClassifyResponse(429, ok200, []byte(openAIRateLimit)) }},
		{name: "ClassifyResponse 503 without body", fn: func() { _ = ClassifyResponse(503, ok200, nil) }},
		{name: "ClassifyError nil", fn: func() { _, _ = ClassifyError(nil) }},
		{name: "ClassifyError wrapped EOF", fn: func() { _, _ = ClassifyError(resetErr) }},
		{name: "ClassifyError fasthttp timeout", fn: func() { _, _ = ClassifyError(fasthttp.ErrTimeout) }},
		{name: "RetryAfterHint without hint headers", fn: func() { _, _ = RetryAfterHint(ok200, now) }},
		{name: "ResetWhenExhausted without rate limit headers", fn: func() { _, _ = ResetWhenExhausted(ok200, now) }},
		{name: "ResetWhenExhausted with quota left", fn: func() { _, _ = ResetWhenExhausted(openAI200, now) }},
		{name: "ResetWhenExhausted with quota left, names as received", fn: func() { _, _ = ResetWhenExhausted(openAI200Raw, now) }},
		{name: "Budget.Deposit", fn: func() { budget.Deposit(now) }},
		{name: "Budget.Withdraw", fn: func() { _ = budget.Withdraw(now) }},
		{name: "Retry.Decide", fn: func() { _ = rule.Decide(RateLimited, CauseStatus, 429, []byte("POST"), false) }},
		{name: "IdempotentMethod", fn: func() { _ = IdempotentMethod([]byte("DELETE")) }},
		{name: "Backoff.Delay", fn: func() { _ = backoff.Delay(3, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if allocs := testing.AllocsPerRun(200, tt.fn); allocs != 0 {
				t.Errorf("%s allocates %v times per call, want 0", tt.name, allocs)
			}
		})
	}
}
