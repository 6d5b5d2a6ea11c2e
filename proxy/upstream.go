package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"github.com/ballast-proxy/ballast/internal/rawio"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/policy"
	"github.com/valyala/fasthttp"
)

// upstream is one pooled, keep-alive connection set to a scheme+host.
type upstream struct {
	client *fasthttp.HostClient // owns the connection pool
	ex     exchanger            // performs exchanges on it
	// cool holds the pauses after the provider said a key is rate limited
	// until some instant: every route using the upstream with that key
	// waits.
	cool   cooldowns
	scheme []byte
	host   []byte // host[:port] as sent in the Host header
	// retired is set when a reload dropped the upstream (see
	// upstreamPool.sweep): a connection a request still running on an
	// older table gives back is closed rather than pooled, so that the
	// pool nothing uses any more drains as its last requests end.
	retired atomic.Bool
}

// retiringRelease returns the release of an upstream's connections: back
// to the pool, or closed once retired is set. A release that races the
// retirement closes the idle connections, the one it pooled among them.
func retiringRelease[C any](retired *atomic.Bool, release, closeConn func(C), closeIdle func()) func(C) {
	return func(cc C) {
		if retired.Load() {
			closeConn(cc)
			return
		}
		release(cc)
		if retired.Load() {
			closeIdle()
		}
	}
}

// upstreamPool shares upstreams across config generations, so a reload
// that keeps an upstream keeps its warm connections. Like limiterPool, it
// keeps only the generation in force: a table build marks what it takes,
// and sweep drops (and closes the idle connections of) the rest.
type upstreamPool struct {
	clock policy.Clock
	mu    sync.Mutex
	all   map[string]*upstream
	cools map[string]bool // hosts whose cool-down gauge is registered
	used  map[string]bool // the keys the table being built takes
	hosts map[string]bool // the hosts the table being built takes
}

// begin starts a table build.
func (p *upstreamPool) begin() {
	p.mu.Lock()
	p.used = map[string]bool{}
	p.hosts = map[string]bool{}
	p.mu.Unlock()
}

// sweep drops the upstreams the table now in force did not take. Requests
// still running on one keep it until they end; its idle connections close
// now, and the others as those requests end.
func (p *upstreamPool) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used == nil {
		return
	}
	for k, up := range p.all {
		if !p.used[k] {
			up.retired.Store(true)
			up.client.CloseIdleConnections()
			delete(p.all, k)
		}
	}
	for h := range p.cools {
		if !p.hosts[h] {
			delete(p.cools, h) // metrics.retain drops its gauge
		}
	}
}

// longestCooldown is the longest pause any upstream of host holds at now.
func (p *upstreamPool) longestCooldown(host string, now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var longest time.Duration
	for _, up := range p.all {
		if string(up.host) == host {
			longest = max(longest, up.cool.Longest(now))
		}
	}
	return longest
}

func newUpstreamPool(clock policy.Clock) *upstreamPool {
	return &upstreamPool{clock: clock, all: map[string]*upstream{}, cools: map[string]bool{}}
}

// get returns the pooled upstream for u, creating it once, and its key.
func (p *upstreamPool) get(u *url.URL, caFile string, connect time.Duration, m *metrics) (*upstream, string, error) {
	key := fmt.Sprintf("%s|%s|%s|%s", u.Scheme, u.Host, caFile, connect)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used != nil {
		p.used[key] = true
		p.hosts[u.Host] = true
	}
	if up, ok := p.all[key]; ok {
		return up, key, nil
	}
	up, err := newUpstream(u, caFile, connect)
	if err != nil {
		return nil, "", err
	}
	p.all[key] = up
	if m != nil && !p.cools[u.Host] {
		p.cools[u.Host] = true
		host := string(up.host)
		m.registerCooldown(u.Host, func() float64 { return p.longestCooldown(host, p.clock.Now()).Seconds() })
	}
	return up, key, nil
}

// closeIdle closes every pooled upstream connection not in use.
func (p *upstreamPool) closeIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, up := range p.all {
		up.client.CloseIdleConnections()
	}
}

func newUpstream(u *url.URL, caFile string, connect time.Duration) (*upstream, error) {
	isTLS := u.Scheme == "https"
	addr := u.Host
	if u.Port() == "" {
		if isTLS {
			addr = net.JoinHostPort(u.Hostname(), "443")
		} else {
			addr = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	var tc *tls.Config
	if isTLS {
		tc = &tls.Config{
			ServerName: u.Hostname(),
			MinVersion: tls.VersionTLS12,
			// Its own cache, for this upstream (scheme, host, ca_file,
			// connect) alone, so that a new connection, after the
			// upstream closed an idle one or beside a busy one, resumes
			// the session rather than paying a full handshake: a session
			// is never offered to another upstream, nor kept across a
			// ca_file change (a new upstream). crypto/tls keys the cache
			// by ServerName, which every connection here shares, so it
			// holds one session, the latest, which every new connection
			// offers (concurrent ones too); a server that declines it
			// answers with a full handshake. Resumption verifies the
			// session's certificate chains again against RootCAs.
			ClientSessionCache: tls.NewLRUClientSessionCache(sessionCacheSize),
		}
		if caFile != "" {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return nil, fmt.Errorf("ca_file: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca_file: %s holds no PEM certificate", caFile)
			}
			tc.RootCAs = pool
		}
	}
	hc := &fasthttp.HostClient{
		Addr:  addr,
		IsTLS: isTLS,
		// timeout is the attempt's time left (0: none). The TCP connect
		// and then the TLS handshake each get connect, within it.
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			start := time.Now()
			var window time.Time // the attempt's end; zero: none
			if timeout > 0 {
				window = start.Add(timeout)
			}
			if connect > 0 && (timeout <= 0 || connect < timeout) {
				timeout = connect
			}
			d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			c = rawio.Wrap(c)
			if tc == nil {
				return c, nil
			}
			hs := window
			if connect > 0 && (hs.IsZero() || time.Now().Add(connect).Before(hs)) {
				hs = time.Now().Add(connect)
			}
			return handshake(c, tc, hs)
		},
		// Unused while the dial hands fasthttp a *tls.Conn whose
		// handshake is done (fasthttp then adds none of its own); kept
		// so that a handshake of fasthttp's would verify as the dial's.
		TLSConfig:                tc,
		MaxConns:                 4096,
		MaxIdleConnDuration:      90 * time.Second,
		MaxConnWaitTimeout:       time.Second,
		ConnPoolStrategy:         fasthttp.LIFO,
		NoDefaultUserAgentHeader: true,
		ReadBufferSize:           16 << 10,
		WriteBufferSize:          16 << 10,
	}
	up := &upstream{client: hc, scheme: []byte(u.Scheme), host: []byte(u.Host)}
	up.ex = newTransport(hc, hc.AcquireConn, retiringRelease(&up.retired, hc.ReleaseConn, hc.CloseConn, hc.CloseIdleConnections), hc.CloseConn)
	return up, nil
}

// sessionCacheSize is the capacity of an upstream's TLS session cache:
// one entry, its server name's (see newUpstream).
const sessionCacheSize = 1

// handshake runs the TLS handshake on a connection just dialed, before
// deadline (zero: none), and returns the TLS connection. Left to fasthttp,
// which hands a TLS connection out before its handshake unless a
// HostClient.WriteTimeout is set, the handshake would run inside the
// request's first write: bounded by per_try (minutes on a model route)
// rather than timeouts.connect, and failing as a per-try timeout or a
// reset, which say the request may have reached the upstream, although
// nothing of it was sent. Every error wraps policy.ErrTLSHandshake, which
// makes it a connect-failure, and closes c; one that ended with a fatal
// alert in the clear, from either side, wraps a *policy.TLSAlertError
// too (see alertWatch), which policy.Deterministic reads.
func handshake(c net.Conn, cfg *tls.Config, deadline time.Time) (net.Conn, error) {
	w := &alertWatch{Conn: c}
	tc := tls.Client(w, cfg)
	err := tc.SetDeadline(deadline)
	if err == nil {
		err = tc.Handshake()
	}
	w.done = true
	if err != nil {
		_ = c.Close()
		if w.alert != nil {
			return nil, fmt.Errorf("%w: %w: %w", policy.ErrTLSHandshake, w.alert, err)
		}
		return nil, fmt.Errorf("%w: %w", policy.ErrTLSHandshake, err)
	}
	if err := tc.SetDeadline(time.Time{}); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}
