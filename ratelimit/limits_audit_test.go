package ratelimit

import (
	"testing"
	"time"
)

// TestLimitsAuditNegativeUsageIsNoUsage: a negative count is no count: it
// does not make usage found (which would settle a reservation to zero and
// refund it), nor replace an earlier event's count in a stream.
func TestLimitsAuditNegativeUsageIsNoUsage(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		want   Usage
		wantOK bool
	}{
		{name: "only negative", body: `{"usage":{"total_tokens":-5,"prompt_tokens":-1}}`},
		{name: "negative total, real parts", body: `{"usage":{"total_tokens":-5,"prompt_tokens":3,"completion_tokens":4}}`,
			want: Usage{Input: 3, Output: 4}, wantOK: true},
		{name: "a later negative keeps the earlier count",
			body:   "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":-3,\"output_tokens\":8}}\n\n",
			want:   Usage{Input: 12, Output: 8},
			wantOK: true},
		{name: "zero is a count", body: `{"usage":{"total_tokens":0}}`, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := UsageFromBody([]byte(tt.body))
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("UsageFromBody = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestLimitsAuditRefusalNeverSaysNow: a refusal a hair before the next
// token still says to come back in a whole second (Retry-After is never 0
// while refused), and its quota reports nothing remaining.
func TestLimitsAuditRefusalNeverSaysNow(t *testing.T) {
	b := mustBucket(t, Config{Rate: 0.5})
	if _, err := b.Reserve(0, 1, at(0), 0); err != nil {
		t.Fatal(err)
	}
	_, err := b.Reserve(0, 1, at(2*time.Second-time.Nanosecond), 0)
	le, ok := err.(*LimitedError)
	if !ok {
		t.Fatalf("Reserve a nanosecond early: %v, want *LimitedError", err)
	}
	if le.RetryAfter <= 0 || RetryAfterSeconds(le.RetryAfter) != 1 || le.Remaining != 0 || le.Limit != 1 || le.Window != 2*time.Second {
		t.Errorf("refusal %+v (Retry-After %ds), want a positive wait of 1s, r=0, q=1, w=2s", le, RetryAfterSeconds(le.RetryAfter))
	}
	if _, err := b.Reserve(0, 1, at(2*time.Second), 0); err != nil {
		t.Errorf("Reserve on the dot: %v", err)
	}
}
