package bench

import (
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// BareProxy is the library floor: a fasthttp.Server whose handler only
// does HostClient.Do(&ctx.Request, &ctx.Response) to one upstream. No
// routing, header hygiene, timeouts beyond fasthttp's or metrics. Any proxy
// built on fasthttp costs at least this much.
type BareProxy struct {
	srv    *fasthttp.Server
	client *fasthttp.HostClient
}

// NewBareProxy builds a bare proxy to upstream (host:port).
func NewBareProxy(upstream string) *BareProxy {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	p := &BareProxy{client: &fasthttp.HostClient{
		Addr:                     upstream,
		Dial:                     func(a string) (net.Conn, error) { return dialer.Dial("tcp", a) },
		MaxConns:                 4096,
		NoDefaultUserAgentHeader: true,
		DisablePathNormalizing:   true,
	}}
	p.srv = &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if err := p.client.Do(&ctx.Request, &ctx.Response); err != nil {
				ctx.Error("bad gateway: "+err.Error(), fasthttp.StatusBadGateway)
			}
		},
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		CloseOnShutdown:       true,
		Logger:                quietLogger{},
	}
	return p
}

// Serve proxies connections on ln until Shutdown.
func (p *BareProxy) Serve(ln net.Listener) error { return p.srv.Serve(ln) }

// Shutdown stops the proxy and closes its upstream connections.
func (p *BareProxy) Shutdown() error {
	err := p.srv.Shutdown()
	p.client.CloseIdleConnections()
	return err
}
