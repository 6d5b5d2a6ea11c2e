package bench

import (
	"bytes"
	_ "embed"
	"fmt"
	"slices"
	"text/template"

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
	// Features are the optional blocks to include (see Has).
	Features []string
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
