package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ballast-proxy/ballast/config"
)

// offPolicy is plain ballast with every policy switched off: one attempt,
// no breaker, no per-request log line. The policies, state and soak
// scenarios start from it.
const offPolicy = "retry: {attempts: 1}\nbreaker: {enabled: false}\n"

// smallConfig is a one-route ballast config built from YAML fragments:
// top holds top-level keys (log, state), policy the keys of the defaults
// block every route inherits. Each fragment is one key per line.
type smallConfig struct {
	Listen, Admin, Upstream string
	Top, Policy             string
}

// Render returns the YAML document.
func (c smallConfig) Render() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nadmin: {listen: %s}\nshutdown_timeout: 5s\n", c.Listen, c.Admin)
	b.WriteString(c.Top)
	if c.Policy != "" {
		b.WriteString("defaults:\n")
		for line := range strings.SplitSeq(strings.TrimRight(c.Policy, "\n"), "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	fmt.Fprintf(&b, "routes:\n  - name: bench\n    match: {path_prefix: /}\n    upstream: http://%s\n", c.Upstream)
	return []byte(b.String())
}

// check renders c and parses it as ballast would.
func (c smallConfig) check() ([]byte, error) {
	y := c.Render()
	if _, err := config.Parse(y, config.Source{File: "bench ballast.yaml", Environ: []string{}}); err != nil {
		return nil, fmt.Errorf("bench: ballast config: %w", err)
	}
	return y, nil
}

// logsRequests reports whether a config fragment switches the per-request
// log line on (the built-in default is on, so only an explicit false is off).
func logsRequests(top string) bool { return !strings.Contains(top, "log: {requests: false}") }

// startSmallBallast writes c (with fresh loopback addresses) into
// dir/name.yaml and runs `exe run -c` on it, waiting for /readyz. With
// quiet, the child's stderr goes to /dev/null; it runs on procs cores (a per-request log costs
// ballast its write, not the harness a pipe read).
func startSmallBallast(ctx context.Context, exe, dir, name string, c smallConfig, quiet bool, procs int) (*Process, error) {
	var err error
	if c.Listen, err = freeAddr(); err != nil {
		return nil, err
	}
	if c.Admin, err = freeAddr(); err != nil {
		return nil, err
	}
	y, err := c.check()
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(file, y, 0o600); err != nil {
		return nil, fmt.Errorf("%w: ballast: %w", ErrProcess, err)
	}
	level := "error"
	if quiet {
		level = "info" // the request log is written at INFO
	}
	return startBallastFile(ctx, exe, "ballast "+name, file, c.Listen, c.Admin, goProcsEnv(procs), quiet, level)
}
