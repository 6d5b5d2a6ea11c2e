package bench

import (
	"testing"

	"github.com/valyala/fasthttp"
)

func newCtx(path, key string) *fasthttp.RequestCtx {
	ctx := &fasthttp.RequestCtx{}
	ctx.Request.SetRequestURI(path)
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetBodyString(`{"model":"m"}`)
	if key != "" {
		ctx.Request.Header.Set("X-Bench-Op", key)
	}
	return ctx
}

// The happy path is the overhead scenario's upstream: it must cost nothing
// but the answer, or the upstream's CPU would blur the proxies'.
func TestUpstreamHappyPathAllocations(t *testing.T) {
	u := NewUpstream(UpstreamConfig{})
	ctx := newCtx("/v1/chat/completions", "")
	if n := testing.AllocsPerRun(1000, func() { ctx.Response.Reset(); u.handle(ctx) }); n != 0 {
		t.Errorf("%v allocations per request, want 0", n)
	}
}

func BenchmarkUpstreamHappyPath(b *testing.B) {
	u := NewUpstream(UpstreamConfig{})
	ctx := newCtx("/v1/chat/completions", "")
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		u.handle(ctx)
	}
}

func BenchmarkUpstreamKeyedNoFault(b *testing.B) {
	u := NewUpstream(UpstreamConfig{Profile: Profile{Error503: 0.0001}})
	ctx := newCtx("/v1/chat/completions", "op-1")
	b.ReportAllocs()
	for b.Loop() {
		ctx.Response.Reset()
		u.handle(ctx)
	}
}

func BenchmarkClassify(b *testing.B) {
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	resp.SetStatusCode(503)
	wl := &Workload{}
	b.ReportAllocs()
	for b.Loop() {
		if classify(nil, resp, wl) != "5xx" {
			b.Fatal("class")
		}
	}
}
