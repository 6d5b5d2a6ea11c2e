// Package redisconn builds the go-redis client that ballast's Redis backends
// (store.Redis, ratelimit.Redis, ratelimit.Cooldown) share, and watches its
// health.
//
// One client serves every backend of a process: go-redis keeps a pool of
// connections, pipelines nothing implicitly, reconnects on its own (a broken
// connection is dropped and the next command dials again; after PoolSize
// failed dials in a row the pool answers at once with the last dial error
// and probes the server in the background once a second), and closes every
// connection and goroutine on Close. The caller closes the client after the
// backends that use it.
//
// go-redis was chosen over rueidis because it is already a dependency, it
// runs Lua with EVALSHA and falls back to EVAL on NOSCRIPT (redis.Script),
// and it is well maintained; no measured comparison with rueidis was made.
package redisconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults used when the corresponding Options field is zero. They are short
// on purpose: a proxy that waits seconds for its state backend has already
// failed its caller, and the backends degrade on ErrUnavailable instead.
const (
	DefaultDialTimeout  = time.Second
	DefaultReadTimeout  = 500 * time.Millisecond
	DefaultWriteTimeout = 500 * time.Millisecond
)

// ErrInvalid is wrapped by every New error about unusable options.
var ErrInvalid = errors.New("redisconn: invalid options")

// Options configure the client: the `state.redis` config block.
type Options struct {
	// Addr is host:port of the Redis (or Valkey) server. Required.
	Addr string
	// Username and Password authenticate (AUTH / ACL); empty: none. The
	// config resolves ${ENV} references before they get here.
	Username, Password string
	// TLS turns TLS on. The server name is the host of Addr.
	TLS bool
	// CAFile is a PEM file of the CAs to trust with TLS; empty: the system
	// roots. Ignored without TLS.
	CAFile string
	// DialTimeout bounds one connection attempt (DefaultDialTimeout when ≤ 0).
	DialTimeout time.Duration
	// ReadTimeout and WriteTimeout bound one socket read or write
	// (DefaultReadTimeout and DefaultWriteTimeout when ≤ 0). A context
	// deadline shorter than them wins.
	ReadTimeout, WriteTimeout time.Duration
	// PoolSize is the number of pooled connections; 0: go-redis's default of
	// 10 per CPU.
	PoolSize int
}

// New returns a client for o. It does not connect: the first command does,
// so a process may start while Redis is down (its backends then return
// ErrUnavailable until Redis answers).
func New(o Options) (*redis.Client, error) {
	if o.Addr == "" {
		return nil, fmt.Errorf("%w: address is required", ErrInvalid)
	}
	opt := &redis.Options{
		Addr:                  o.Addr,
		Username:              o.Username,
		Password:              o.Password,
		DialTimeout:           orDefault(o.DialTimeout, DefaultDialTimeout),
		ReadTimeout:           orDefault(o.ReadTimeout, DefaultReadTimeout),
		WriteTimeout:          orDefault(o.WriteTimeout, DefaultWriteTimeout),
		ContextTimeoutEnabled: true, // a caller's deadline bounds the socket wait
		PoolSize:              o.PoolSize,
		// One retry covers a pooled connection that died with a restarted
		// server; more would only delay the failure the caller degrades on.
		MaxRetries: 1,
		// One dial per attempt: a refused dial is reported at once.
		DialerRetries: 1,
		// No CLIENT SETINFO or maintenance-notification handshakes: they only
		// add round trips and log noise on servers (and Valkey) without them.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if o.TLS {
		cfg, err := tlsConfig(o.Addr, o.CAFile)
		if err != nil {
			return nil, err
		}
		opt.TLSConfig = cfg
	}
	return redis.NewClient(opt), nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func tlsConfig(addr, caFile string) (*tls.Config, error) {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: ca_file: %w", ErrInvalid, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: ca_file %s: no PEM certificate found", ErrInvalid, caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}
