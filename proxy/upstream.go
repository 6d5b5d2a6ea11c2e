package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/ballast-proxy/ballast/config"
	"github.com/valyala/fasthttp"
)

// upstream is one pooled, keep-alive connection set to a scheme+host.
type upstream struct {
	client *fasthttp.HostClient
	scheme []byte
	host   []byte // host[:port] as sent in the Host header
}

// upstreamPool shares upstreams across config generations, so a reload
// that keeps an upstream keeps its warm connections.
type upstreamPool struct {
	mu  sync.Mutex
	all map[string]*upstream
}

func newUpstreamPool() *upstreamPool { return &upstreamPool{all: map[string]*upstream{}} }

func (p *upstreamPool) get(u *url.URL, rc *config.Route) (*upstream, error) {
	key := fmt.Sprintf("%s|%s|%s|%s", u.Scheme, u.Host, rc.CAFile, rc.Timeouts.Connect.D())
	p.mu.Lock()
	defer p.mu.Unlock()
	if up, ok := p.all[key]; ok {
		return up, nil
	}
	up, err := newUpstream(u, rc)
	if err != nil {
		return nil, err
	}
	p.all[key] = up
	return up, nil
}

// closeIdle closes every pooled upstream connection not in use.
func (p *upstreamPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, up := range p.all {
		up.client.CloseIdleConnections()
	}
}

func newUpstream(u *url.URL, rc *config.Route) (*upstream, error) {
	isTLS := u.Scheme == "https"
	addr := u.Host
	if u.Port() == "" {
		if isTLS {
			addr = net.JoinHostPort(u.Hostname(), "443")
		} else {
			addr = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	connect := rc.Timeouts.Connect.D()
	hc := &fasthttp.HostClient{
		Addr:  addr,
		IsTLS: isTLS,
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			if connect > 0 && (timeout <= 0 || connect < timeout) {
				timeout = connect
			}
			d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			return newUpstreamConn(c), nil
		},
		MaxConns:                      4096,
		MaxIdleConnDuration:           90 * time.Second,
		MaxIdemponentCallAttempts:     1, // ballast's retry policy decides, not fasthttp
		RetryIf:                       func(*fasthttp.Request) bool { return false },
		StreamResponseBody:            true,
		DisablePathNormalizing:        false, // fasthttp re-encodes the decoded path on the way out
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: false,
		ReadBufferSize:                16 << 10,
		WriteBufferSize:               16 << 10,
	}
	if isTLS {
		tc := &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
		if rc.CAFile != "" {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			pem, err := os.ReadFile(rc.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ca_file: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca_file: %s holds no PEM certificate", rc.CAFile)
			}
			tc.RootCAs = pool
		}
		hc.TLSConfig = tc
	}
	return &upstream{client: hc, scheme: []byte(u.Scheme), host: []byte(u.Host)}, nil
}

// upstreamConn lets ballast bound the gaps while a response body streams.
// fasthttp sets one read deadline before it reads the response headers (the
// per-try timeout); once the headers are in, beginBody switches the
// connection to a per-read deadline of min(total deadline, now+idle).
// Any deadline fasthttp sets again (the next request on this pooled
// connection) switches it back.
type upstreamConn struct {
	net.Conn
	addr      connAddr
	streaming bool
	idle      time.Duration
	hard      time.Time
}

// connAddr is the upstream's address with a way back to its connection:
// fasthttp exposes the connection's RemoteAddr on the response, and that is
// the only handle ballast has on the connection a response arrived on.
type connAddr struct {
	net.Addr
	conn *upstreamConn
}

func newUpstreamConn(c net.Conn) *upstreamConn {
	uc := &upstreamConn{Conn: c}
	uc.addr = connAddr{Addr: c.RemoteAddr(), conn: uc}
	return uc
}

func (c *upstreamConn) RemoteAddr() net.Addr { return &c.addr }

func (c *upstreamConn) Read(p []byte) (int, error) {
	if c.streaming && c.idle > 0 {
		d := time.Now().Add(c.idle)
		if !c.hard.IsZero() && c.hard.Before(d) {
			d = c.hard
		}
		_ = c.Conn.SetReadDeadline(d)
	}
	return c.Conn.Read(p)
}

func (c *upstreamConn) SetReadDeadline(t time.Time) error {
	c.streaming = false
	return c.Conn.SetReadDeadline(t)
}

func (c *upstreamConn) SetDeadline(t time.Time) error {
	c.streaming = false
	return c.Conn.SetDeadline(t)
}

// beginBody bounds the body of the response that arrived on addr's
// connection by idle gaps and the request's total deadline.
func beginBody(addr net.Addr, idle time.Duration, deadline time.Time) {
	ca, ok := addr.(*connAddr)
	if !ok {
		return
	}
	c := ca.conn
	c.idle, c.hard, c.streaming = idle, deadline, true
	if idle <= 0 {
		_ = c.Conn.SetReadDeadline(deadline)
	}
}
