package ratelimit

import (
	"testing"
	"time"
)

func TestAppendRateLimitFields(t *testing.T) {
	tests := []struct {
		name       string
		policyName string
		q          Quota
		wantPolicy string
		wantLimit  string
	}{
		{
			name: "requests", policyName: "openai",
			q:          Quota{Limit: 50, Window: time.Second, Remaining: 7, Reset: 60 * time.Millisecond},
			wantPolicy: `"openai";q=50;w=1`, wantLimit: `"openai";r=7;t=1`,
		},
		{
			name: "tokens per minute", policyName: "gpt-tokens",
			q:          Quota{Limit: 90000, Window: time.Minute, Remaining: 0, Reset: 42*time.Second + time.Nanosecond},
			wantPolicy: `"gpt-tokens";q=90000;w=60`, wantLimit: `"gpt-tokens";r=0;t=43`,
		},
		{
			name: "full bucket", policyName: "x",
			q:          Quota{Limit: 10, Window: 10 * time.Second, Remaining: 10},
			wantPolicy: `"x";q=10;w=10`, wantLimit: `"x";r=10;t=0`,
		},
		{
			name: "empty name", q: Quota{Limit: 1, Window: time.Second},
			wantPolicy: `"default";q=1;w=1`, wantLimit: `"default";r=0;t=0`,
		},
		{
			name: "name escaped", policyName: "a\"b\\c\ndé",
			q:          Quota{Limit: 1, Window: time.Second},
			wantPolicy: `"a\"b\\cd";q=1;w=1`, wantLimit: `"a\"b\\cd";r=0;t=0`,
		},
		{
			name: "negative numbers clamp to zero", policyName: "n",
			q:          Quota{Limit: -1, Window: -time.Second, Remaining: -5, Reset: -time.Second},
			wantPolicy: `"n";q=0;w=0`, wantLimit: `"n";r=0;t=0`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf, policy, limit := AppendRateLimitFields([]byte("prefix:"), tt.policyName, tt.q)
			if string(policy) != tt.wantPolicy || string(limit) != tt.wantLimit {
				t.Errorf("fields = %s | %s; want %s | %s", policy, limit, tt.wantPolicy, tt.wantLimit)
			}
			if want := "prefix:" + tt.wantPolicy + tt.wantLimit; string(buf) != want {
				t.Errorf("buf = %s, want %s", buf, want)
			}
			// The policy slice must not be extended over the limit by append.
			if cap(policy) != len(policy) {
				t.Errorf("policy slice has spare capacity %d", cap(policy)-len(policy))
			}
		})
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	tests := []struct {
		name string
		d    time.Duration
		want int64
	}{
		{name: "zero", d: 0, want: 0},
		{name: "negative", d: -time.Second, want: 0},
		{name: "a little", d: time.Millisecond, want: 1},
		{name: "whole", d: 2 * time.Second, want: 2},
		{name: "rounds up", d: 2*time.Second + 1, want: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RetryAfterSeconds(tt.d); got != tt.want {
				t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tt.d, got, tt.want)
			}
		})
	}
}
