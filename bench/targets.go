package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// readyTimeout bounds how long a child may take to listen.
const readyTimeout = 15 * time.Second

// UpstreamArgs are the `ballast bench upstream` flags for cfg on a free
// loopback port.
func UpstreamArgs(cfg UpstreamConfig) []string {
	p := cfg.Profile
	args := []string{"bench", "upstream", "--listen", "127.0.0.1:0",
		"--size", strconv.Itoa(cfg.Size), "--seed", strconv.FormatInt(cfg.Seed, 10)}
	if p.Name != "" {
		args = append(args, "--profile", p.Name)
	}
	if cfg.StreamEvents > 0 {
		args = append(args, "--stream-events", strconv.Itoa(cfg.StreamEvents))
	}
	if cfg.StreamInterval > 0 {
		args = append(args, "--stream-interval", cfg.StreamInterval.String())
	}
	if cfg.StreamStamp {
		args = append(args, "--stream-stamp")
	}
	if cfg.MaxKeys > 0 {
		args = append(args, "--max-keys", strconv.Itoa(cfg.MaxKeys))
	}
	return args
}

// startUpstream runs `exe bench upstream` as a child.
func startUpstream(ctx context.Context, exe string, cfg UpstreamConfig) (*Process, error) {
	p, err := startProcess("upstream", exe, UpstreamArgs(cfg)...)
	if err != nil {
		return nil, err
	}
	if err := p.awaitAddr(ctx, readyTimeout); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// startBareProxy runs `exe bench bare-proxy` as a child on procs cores.
func startBareProxy(ctx context.Context, exe, upstream string, procs int) (*Process, error) {
	p, err := startProcessQuiet("bare", exe, false, goProcsEnv(procs), "bench", "bare-proxy", "--listen", "127.0.0.1:0", "--upstream", upstream)
	if err != nil {
		return nil, err
	}
	if err := p.awaitAddr(ctx, readyTimeout); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// startBallast renders the config template into dir and runs
// `exe run -c FILE` as a child, waiting for its /readyz. It returns the
// features the config enabled. It runs on procs cores (GOMAXPROCS).
func startBallast(ctx context.Context, exe, dir, upstream string, chaos bool, procs int) (*Process, []string, error) {
	return startBallastWith(ctx, exe, dir, BallastConfig{Upstream: upstream, Chaos: chaos}, procs)
}

// startBallastWith is startBallast for cfg, whose Listen and Admin it
// sets to free loopback addresses.
func startBallastWith(ctx context.Context, exe, dir string, cfg BallastConfig, procs int) (*Process, []string, error) {
	var err error
	if cfg.Listen, err = freeAddr(); err != nil {
		return nil, nil, err
	}
	if cfg.Admin, err = freeAddr(); err != nil {
		return nil, nil, err
	}
	var yaml []byte
	if cfg.Chaos {
		cfg, yaml, err = cfg.WithSupportedFeatures(ballastFeatures)
	} else {
		yaml, err = cfg.check()
	}
	if err != nil {
		return nil, nil, err
	}
	file := filepath.Join(dir, "ballast.yaml")
	if err := os.WriteFile(file, yaml, 0o600); err != nil {
		return nil, nil, fmt.Errorf("%w: ballast: %w", ErrProcess, err)
	}
	// At info the decision trail is written, one line per request, as with
	// ballast's defaults; it is part of the chain being measured.
	p, err := startBallastFile(ctx, exe, "ballast", file, cfg.Listen, cfg.Admin, goProcsEnv(procs), false, "info")
	if err != nil {
		return nil, nil, err
	}
	return p, cfg.Features, nil
}

// startBallastFile runs `exe run -c file --log-level level` as a child
// with env (nil: the harness's) and waits for its /readyz on admin. listen
// and admin are the addresses file sets; the Process records both. With
// quiet, the child's stderr goes to /dev/null.
func startBallastFile(ctx context.Context, exe, name, file, listen, admin string, env []string, quiet bool, level string) (*Process, error) {
	p, err := startProcessQuiet(name, exe, quiet, env, "run", "-c", file, "--log-level", level)
	if err != nil {
		return nil, err
	}
	p.Addr, p.Admin = listen, admin
	if err := p.awaitHTTP(ctx, admin, "/readyz", true, readyTimeout); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// startUserBallast rewrites u for the harness (userConfig.rewrite: ballast
// on fresh loopback addresses, upstream, a file store in dir, Redis on
// redis when the config uses it) into dir and runs it on procs cores,
// waiting for its /readyz.
func startUserBallast(ctx context.Context, exe, dir string, u *userConfig, upstream, redis string, procs int) (*Process, error) {
	s := site{Upstream: upstream, Redis: redis, Dir: dir, Token: rand.Text()}
	var err error
	if s.Listen, err = freeAddr(); err != nil {
		return nil, err
	}
	if s.Admin, err = freeAddr(); err != nil {
		return nil, err
	}
	env := childEnv(procs)
	y, cfg, err := u.rewrite(s, env)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "ballast-config.yaml")
	if err := os.WriteFile(file, y, 0o600); err != nil {
		return nil, fmt.Errorf("%w: ballast: %w", ErrProcess, err)
	}
	// At info, as for the built-in chain: the config's log block decides
	// whether the decision trail is written.
	p, err := startBallastFile(ctx, exe, "ballast", file, s.Listen, s.Admin, env, false, "info")
	if err != nil {
		return nil, err
	}
	p.AdminToken = cfg.Admin.Token
	return p, nil
}
