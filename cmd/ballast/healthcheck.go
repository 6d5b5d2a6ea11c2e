package main

import (
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/valyala/fasthttp"
)

// cmdHealthcheck GETs the admin /healthz (or /readyz with --ready), for
// container images without a shell or curl: a Kubernetes exec probe can
// then check readiness while the admin listener stays on localhost. Exit 0
// when healthy, 1 otherwise.
func cmdHealthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9901", "admin listener address")
	ready := fs.Bool("ready", false, "check /readyz (ready to serve) instead of /healthz (alive)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	status, body, err := fasthttp.GetTimeout(nil, "http://"+*admin+path, 3*time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "ballast healthcheck: %v\n", err)
		return 1
	}
	if status != fasthttp.StatusOK {
		fmt.Fprintf(stderr, "ballast healthcheck: %s answered %d: %s\n", path, status, body)
		return 1
	}
	fmt.Fprintln(stdout, "healthy")
	return 0
}
