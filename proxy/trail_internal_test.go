package proxy

import (
	"testing"
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/valyala/fasthttp"
)

// happyTrail is a trail as the happy path leaves it: one OK attempt.
func happyTrail(ctx *fasthttp.RequestCtx) (*trail, time.Time) {
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/chat/completions")
	ctx.Response.Header.Set(headerRequestID, "01JDZ8Q6V3K6ZC3M1W4Y2T9N7B")
	ctx.Response.SetStatusCode(200)
	start := time.Date(2026, 11, 26, 21, 45, 32, 123456789, time.UTC)
	tr := &trail{start: start, buf: make([]byte, 0, 1024)}
	tr.attempt("openai", policy.OK, 200, 812*time.Microsecond)
	return tr, start.Add(1234567 * time.Nanosecond)
}

// BenchmarkTrailLine is the cost of formatting one happy-path trail line.
func BenchmarkTrailLine(b *testing.B) {
	var ctx fasthttp.RequestCtx
	tr, end := happyTrail(&ctx)
	b.ReportAllocs()
	for b.Loop() {
		tr.buf = tr.appendJSON(tr.buf[:0], &ctx, "model", 200, false, end)
	}
}
