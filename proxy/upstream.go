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
	client *fasthttp.HostClient // owns the connection pool
	ex     exchanger            // performs exchanges on it
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
			return d.Dial("tcp", addr)
		},
		MaxConns:                      4096,
		MaxIdleConnDuration:           90 * time.Second,
		MaxConnWaitTimeout:            time.Second,
		NoDefaultUserAgentHeader:      true,
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
	return &upstream{
		client: hc,
		ex:     newTransport(hc, hc.AcquireConn, hc.ReleaseConn, hc.CloseConn),
		scheme: []byte(u.Scheme),
		host:   []byte(u.Host),
	}, nil
}
