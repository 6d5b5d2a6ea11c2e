package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/ballast-proxy/ballast/bench"
)

// cmdBench runs the benchmark harness. `ballast bench upstream` serves the
// benchmark upstream until interrupted.
func cmdBench(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "upstream" {
		fmt.Fprintln(stderr, "usage: ballast bench upstream [--listen ADDR] [--size BYTES]")
		return 2
	}
	fs := flag.NewFlagSet("bench upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9000", "address to serve on")
	size := fs.Int("size", 1024, "size of the JSON answer in bytes")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "ballast bench upstream: %v\n", err)
		return 1
	}
	u := bench.NewUpstream(bench.UpstreamConfig{Size: *size})
	fmt.Fprintf(stdout, "bench upstream on http://%s (%d-byte JSON answers)\n", ln.Addr(), *size)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; _ = u.Shutdown() }()
	if err := u.Serve(ln); err != nil {
		fmt.Fprintf(stderr, "ballast bench upstream: %v\n", err)
		return 1
	}
	return 0
}
