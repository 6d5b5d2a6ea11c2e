package bench

import (
	"bytes"
	_ "embed"
	"fmt"
	"slices"
	"text/template"
	"time"

	"github.com/ballast-proxy/ballast/config"
)

//go:embed ballast.yaml.tmpl
var ballastTemplate string

// ballastFeatures are the optional config blocks of ballast.yaml.tmpl, in
// the order they are tried.
var ballastFeatures = []string{"retry", "validate", "idempotency"}

// BallastConfig holds the values ballast.yaml.tmpl is rendered with.
type BallastConfig struct {
	// Listen, Admin and Upstream are host:port addresses.
	Listen, Admin, Upstream string
	// Chaos selects the chaos scenario's routes and short timeouts.
	Chaos bool
	// Stream lets the overhead chain's validate policy take SSE answers
	// (content_type text/event-stream besides application/json), as a
	// model route that streams must: the stream scenario's chain.
	Stream bool
	// StreamTimeout, with Stream, is how long the driver waits for a
	// stream: when ballast's default route timeouts (idle 30s, total
	// 120s) are shorter, the route's are raised to it, so that ballast
	// never ends a stream the driver still waits for (it would count as
	// ballast's failure). Zero keeps the defaults.
	StreamTimeout time.Duration
	// Features are the optional blocks to include (see Has).
	Features []string
}

// ballast's default route timeouts (config/load.go), which the stream
// chain raises to its StreamTimeout when that is longer.
const (
	ballastDefaultIdle  = 30 * time.Second
	ballastDefaultTotal = 120 * time.Second
)

// StreamTimeouts is the stream chain's route timeouts block, "" when
// ballast's defaults outlast StreamTimeout; the template calls it.
func (c BallastConfig) StreamTimeouts() string {
	if !c.Stream || c.StreamTimeout <= ballastDefaultIdle {
		return ""
	}
	return fmt.Sprintf("{idle: %v, total: %v}", c.StreamTimeout, max(c.StreamTimeout, ballastDefaultTotal))
}

// Has reports whether feature is enabled; the template calls it.
func (c BallastConfig) Has(feature string) bool { return slices.Contains(c.Features, feature) }

// Render returns the YAML of the config.
func (c BallastConfig) Render() ([]byte, error) {
	t, err := template.New("ballast.yaml").Option("missingkey=error").Parse(ballastTemplate)
	if err != nil {
		return nil, fmt.Errorf("bench: ballast template: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, c); err != nil {
		return nil, fmt.Errorf("bench: ballast template: %w", err)
	}
	return b.Bytes(), nil
}

// check renders c and parses it as ballast would.
func (c BallastConfig) check() ([]byte, error) {
	y, err := c.Render()
	if err != nil {
		return nil, err
	}
	if _, err := config.Parse(y, config.Source{File: "bench ballast.yaml", Environ: []string{}}); err != nil {
		return nil, fmt.Errorf("bench: ballast config: %w", err)
	}
	return y, nil
}

// WithSupportedFeatures returns c with every candidate feature the config
// package accepts on its own, then checks them together; if they clash it
// falls back to none. It returns the rendered YAML too.
func (c BallastConfig) WithSupportedFeatures(candidates []string) (BallastConfig, []byte, error) {
	c.Features = nil
	base, err := c.check()
	if err != nil {
		return c, nil, err
	}
	var ok []string
	for _, f := range candidates {
		try := c
		try.Features = []string{f}
		if _, err := try.check(); err == nil {
			ok = append(ok, f)
		}
	}
	if len(ok) == 0 {
		return c, base, nil
	}
	all := c
	all.Features = ok
	if y, err := all.check(); err == nil {
		return all, y, nil
	}
	return c, base, nil
}
