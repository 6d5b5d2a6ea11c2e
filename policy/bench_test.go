package policy

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func BenchmarkClassifyResponse(b *testing.B) {
	h := responseHeader(b, 200, plain200Headers, false)
	cases := []struct {
		name   string
		status int
		body   []byte
	}{
		{name: "200", status: 200, body: []byte(`{"id":"chatcmpl-1"}`)},
		{name: "429 openai rate limit", status: 429, body: []byte(openAIRateLimit)},
		{name: "429 google per-day quota", status: 429, body: []byte(googlePerDay)},
		{name: "502 html", status: 502, body: []byte(nginx502)},
		{name: "503 streamed", status: 503},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ClassifyResponse(c.status, h, c.body)
			}
		})
	}
}

func BenchmarkClassifyError(b *testing.B) {
	cases := []struct {
		name string
		err  error
	}{
		{name: "nil", err: nil},
		{name: "timeout", err: fasthttp.ErrTimeout},
		{name: "wrapped eof", err: fmt.Errorf("attempt: %w", io.EOF)},
		{name: "dial refused", err: fmt.Errorf("attempt: %w", fasthttp.ErrDialTimeout)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ClassifyError(c.err)
			}
		})
	}
}

func BenchmarkRetryAfterHint(b *testing.B) {
	cases := []struct {
		name  string
		lines string
	}{
		{name: "no hint", lines: plain200Headers},
		{name: "openai 429", lines: openAI429Headers},
		{name: "anthropic 429", lines: anthropic429Headers},
		{name: "retry-after date", lines: "Retry-After: Tue, 14 May 2024 10:02:00 GMT"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			h := responseHeader(b, 429, c.lines, false)
			b.ReportAllocs()
			for b.Loop() {
				RetryAfterHint(h, hintNow)
			}
		})
	}
}

func BenchmarkResetWhenExhausted(b *testing.B) {
	cases := []struct {
		name  string
		lines string
	}{
		{name: "openai 200 quota left", lines: openAI200Headers},
		{name: "openai tokens exhausted", lines: openAI429Headers},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			h := responseHeader(b, 200, c.lines, false)
			b.ReportAllocs()
			for b.Loop() {
				ResetWhenExhausted(h, hintNow)
			}
		})
	}
}

func BenchmarkBudgetDeposit(b *testing.B) {
	budget := NewBudget(DefaultBudgetRatio, DefaultBudgetMinPerSecond, DefaultBudgetTTL)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := time.Now()
		i := 0
		for pb.Next() {
			// Cross a slot boundary now and then, as real time does.
			if i++; i%4096 == 0 {
				now = time.Now()
			}
			budget.Deposit(now)
		}
	})
}

func BenchmarkBudgetWithdraw(b *testing.B) {
	budget := NewBudget(DefaultBudgetRatio, DefaultBudgetMinPerSecond, DefaultBudgetTTL)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			budget.Deposit(now)
			budget.Withdraw(now)
		}
	})
}

func BenchmarkBackoffDelay(b *testing.B) {
	bo := Backoff{Base: 100 * time.Millisecond, Max: 10 * time.Second}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			bo.Delay(3, nil)
		}
	})
}

func BenchmarkDecide(b *testing.B) {
	on, err := ParseRetryOn([]string{"connect-failure", "reset", "timeout", "429", "502", "503", "504"})
	if err != nil {
		b.Fatal(err)
	}
	r := Retry{On: on}
	method := []byte("POST")
	b.ReportAllocs()
	for b.Loop() {
		r.Decide(Transient, CauseStatus, 503, method, true)
	}
}
