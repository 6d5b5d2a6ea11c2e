package proxy_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

var jsonAnswer = []byte(`{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}`)

// fastUpstream is a fasthttp server answering a fixed JSON body, the
// cheapest possible upstream, so benchmarks measure the proxy.
func fastUpstream(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBody(jsonAnswer)
	}}
	go func() { _ = s.Serve(ln) }()
	tb.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}

type passThrough struct {
	client *fasthttp.HostClient
	req    *fasthttp.Request
	resp   *fasthttp.Response
}

func newPassThrough(tb testing.TB, addr, path string) *passThrough {
	p := &passThrough{
		client: &fasthttp.HostClient{Addr: addr, MaxConns: 64,
			Dial: func(a string) (net.Conn, error) { return net.Dial("tcp", a) }},
		req:  fasthttp.AcquireRequest(),
		resp: fasthttp.AcquireResponse(),
	}
	p.req.SetRequestURI("http://" + addr + path)
	p.req.Header.Set("Authorization", "Bearer sk-bench")
	tb.Cleanup(func() {
		p.client.CloseIdleConnections()
		fasthttp.ReleaseRequest(p.req)
		fasthttp.ReleaseResponse(p.resp)
	})
	return p
}

func (p *passThrough) do(tb testing.TB) {
	if err := p.client.DoTimeout(p.req, p.resp, 5*time.Second); err != nil {
		tb.Fatal(err)
	}
	if p.resp.StatusCode() != 200 || len(p.resp.Body()) != len(jsonAnswer) {
		tb.Fatalf("status %d body %q", p.resp.StatusCode(), p.resp.Body())
	}
}

func benchBallast(tb testing.TB) *ballast { return benchBallastWith(tb, "") }

// fullChain is the happy-path policy chain on top of the defaults, as the
// benchmark harness's overhead scenario runs it: a rate limit that does not
// bind, response validation, and a fallback cache that stores every answer.
const fullChain = `    rate_limit: {rps: 100000}
    validate: {status: [2xx], content_type: [application/json], json: true}
    cache: {mode: fallback}
`

// benchBallastWith starts ballast on a fast upstream with extra route keys.
func benchBallastWith(tb testing.TB, extra string) *ballast {
	up := fastUpstream(tb)
	return startBallastWith(tb, nil, io.Discard, fmt.Sprintf(`
routes:
  - name: model
    match: {path_prefix: /v1/}
    upstream: http://%s
    headers: {set: {X-Tenant: bench}}
%s`, up, extra))
}

// BenchmarkRetryMachinery compares the happy path (a 200 on the first try)
// with the retry policy, budget, breaker and cool-down armed (the defaults)
// against the same route with all of them off.
func BenchmarkRetryMachinery(b *testing.B) {
	for _, tc := range []struct{ name, extra string }{
		{"off", "    retry: {attempts: 1}\n    breaker: {enabled: false}\n"},
		{"armed", ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bl := benchBallastWith(b, tc.extra)
			p := newPassThrough(b, bl.addr, "/v1/chat/completions")
			b.ReportAllocs()
			for b.Loop() {
				p.do(b)
			}
		})
	}
}

func BenchmarkDirect(b *testing.B) {
	up := fastUpstream(b)
	p := newPassThrough(b, up, "/v1/chat/completions")
	b.ReportAllocs()
	for b.Loop() {
		p.do(b)
	}
}

func BenchmarkPassThrough(b *testing.B) {
	bl := benchBallast(b)
	p := newPassThrough(b, bl.addr, "/v1/chat/completions")
	b.ReportAllocs()
	for b.Loop() {
		p.do(b)
	}
}

// BenchmarkPassThroughFullChain is BenchmarkPassThrough with the full
// happy-path chain (fullChain) on the route.
func BenchmarkPassThroughFullChain(b *testing.B) {
	bl := benchBallastWith(b, fullChain)
	p := newPassThrough(b, bl.addr, "/v1/chat/completions")
	b.ReportAllocs()
	for b.Loop() {
		p.do(b)
	}
}

func BenchmarkPassThroughParallel(b *testing.B) {
	bl := benchBallast(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		p := newPassThrough(b, bl.addr, "/v1/chat/completions")
		for pb.Next() {
			p.do(b)
		}
	})
}

// BenchmarkTrail measures the decision trail on the happy path: one JSON
// line per request (to io.Discard) against none.
func BenchmarkTrail(b *testing.B) {
	for _, tc := range []struct{ name, cfg string }{
		{"off", "log: {requests: false}\n"},
		{"on", ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			up := fastUpstream(b)
			bl := startBallastWith(b, nil, io.Discard, fmt.Sprintf("%sroutes: [{name: model, match: {path_prefix: /v1/}, upstream: 'http://%s'}]\n", tc.cfg, up))
			p := newPassThrough(b, bl.addr, "/v1/chat/completions")
			b.ReportAllocs()
			for b.Loop() {
				p.do(b)
			}
		})
	}
}

// BenchmarkBareProxy is the library floor in the same harness: a fasthttp
// server whose handler only forwards with HostClient.Do, no policies.
// BenchmarkPassThrough against it is what ballast adds.
func BenchmarkBareProxy(b *testing.B) {
	up := fastUpstream(b)
	hc := &fasthttp.HostClient{Addr: up, MaxConns: 64, Dial: func(a string) (net.Conn, error) { return net.Dial("tcp", a) }}
	defer hc.CloseIdleConnections()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
			ctx.Error(err.Error(), fasthttp.StatusBadGateway)
		}
	}}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Shutdown()
	p := newPassThrough(b, ln.Addr().String(), "/v1/chat/completions")
	b.ReportAllocs()
	for b.Loop() {
		p.do(b)
	}
}
