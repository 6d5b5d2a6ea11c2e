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

// ballastAnswer is a response as ballast's built-in chain gives it: the
// upstream's 200 with ballast's headers, its Cache-Status member among
// them, and the degraded answers' markers when asked.
func ballastAnswer(extra ...string) *fasthttp.Response {
	resp := &fasthttp.Response{}
	resp.SetStatusCode(200)
	resp.Header.SetContentType("application/json")
	for _, kv := range [][2]string{{"Date", "Mon, 02 Jan 2026 15:04:05 GMT"}, {"X-Request-Id", "01JH0000000000000000000000"},
		{"X-Ballast-Attempts", "1"}, {"X-Ballast-Upstream", "127.0.0.1:9000"}, {"Cache-Status", "ballast; fwd=bypass; stored"}} {
		resp.Header.Add(kv[0], kv[1])
	}
	for i := 0; i+1 < len(extra); i += 2 {
		resp.Header.Add(extra[i], extra[i+1])
	}
	resp.SetBodyString(`{"id":"chatcmpl-bench"}`)
	return resp
}

// The load driver classes every answer it measures: peeking for
// ballast's degraded answers must cost no allocation, or the driver
// would take CPU from the target it measures.
func TestClassifyAllocations(t *testing.T) {
	wl := &Workload{}
	for _, c := range []struct {
		name string
		resp *fasthttp.Response
		want string
	}{
		{"the upstream's answer", ballastAnswer(), ""},
		{"static fallback", ballastAnswer("X-Ballast-Fallback", "static"), "fallback"},
		{"stale", ballastAnswer("Cache-Status", "ballast; fwd=stale; fwd-status=503; ttl=-42; detail=stale-if-error"), "stale"},
	} {
		if got := classify(nil, c.resp, wl); got != c.want {
			t.Errorf("%s: class %q, want %q", c.name, got, c.want)
		}
		if n := testing.AllocsPerRun(1000, func() { classify(nil, c.resp, wl) }); n != 0 {
			t.Errorf("%s: %v allocations per answer, want 0", c.name, n)
		}
	}
}

func BenchmarkClassifyBallastAnswer(b *testing.B) {
	resp := ballastAnswer()
	wl := &Workload{}
	b.ReportAllocs()
	for b.Loop() {
		if classify(nil, resp, wl) != "" {
			b.Fatal("class")
		}
	}
}
