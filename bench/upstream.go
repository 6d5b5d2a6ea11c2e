// Package bench is ballast's benchmark harness: an upstream to measure
// against, and (as the harness grows) load drivers and scenarios.
package bench

import (
	"bytes"
	"net"

	"github.com/valyala/fasthttp"
)

// UpstreamConfig configures the benchmark upstream.
type UpstreamConfig struct {
	// Size is the size in bytes of the JSON answer. Default 1024.
	Size int
}

// Upstream is a fasthttp server answering every request with a fixed JSON
// body: the cheapest possible upstream, so measurements show the proxy.
type Upstream struct {
	srv  *fasthttp.Server
	body []byte
}

// NewUpstream builds the upstream.
func NewUpstream(cfg UpstreamConfig) *Upstream {
	if cfg.Size <= 0 {
		cfg.Size = 1024
	}
	u := &Upstream{body: jsonBody(cfg.Size)}
	u.srv = &fasthttp.Server{Handler: u.handle, NoDefaultServerHeader: true}
	return u
}

func (u *Upstream) handle(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	ctx.SetBody(u.body)
}

// Serve answers on ln until Shutdown.
func (u *Upstream) Serve(ln net.Listener) error { return u.srv.Serve(ln) }

// Shutdown stops the upstream.
func (u *Upstream) Shutdown() error { return u.srv.Shutdown() }

// jsonBody returns a valid chat-completion-shaped JSON document of exactly
// size bytes (at least its fixed envelope).
func jsonBody(size int) []byte {
	const head = `{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`
	const tail = `"},"finish_reason":"stop"}]}`
	pad := max(size-len(head)-len(tail), 0)
	var b bytes.Buffer
	b.WriteString(head)
	b.Write(bytes.Repeat([]byte("x"), pad))
	b.WriteString(tail)
	return b.Bytes()
}
