package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// cmdHealthcheck GETs the admin /healthz (or /readyz with --ready), for
// container images without a shell or curl: a Kubernetes exec probe can
// then check readiness while the admin listener stays on localhost. Exit 0
// when healthy, 1 otherwise, 2 for a usage error (a malformed --admin).
func cmdHealthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9901", "admin listener address, as admin.listen takes it (\":9901\" and \"0.0.0.0:9901\" are dialled on 127.0.0.1)")
	ready := fs.Bool("ready", false, "check /readyz (ready to serve) instead of /healthz (alive)")
	if err := fs.Parse(args); err != nil || strayArgument(fs, "") {
		return 2
	}
	addr, err := dialAddr(*admin)
	if err != nil {
		fmt.Fprintf(stderr, "ballast healthcheck: --admin: %v\n", err)
		return 2
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	c := &fasthttp.Client{DialDualStack: true} // for [::1]
	status, body, err := c.GetTimeout(nil, "http://"+addr+path, 3*time.Second)
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

// dialAddr turns a listen address (admin.listen's form) into one to dial:
// an empty or unspecified host (":9901", "0.0.0.0:9901") becomes
// 127.0.0.1, and "[::]:9901" becomes [::1]; any other host is kept. It
// fails on an address without a port.
func dialAddr(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", err
	}
	if port == "" {
		return "", &net.AddrError{Err: "missing port in address", Addr: listen}
	}
	switch ip := net.ParseIP(host); {
	case host == "", ip.Equal(net.IPv4zero):
		host = "127.0.0.1"
	case ip.Equal(net.IPv6unspecified):
		host = "::1"
	}
	return net.JoinHostPort(host, port), nil
}
