// Command ballast is the reliability sidecar for AI agents: a fast HTTP
// proxy between an agent and the tools and model APIs it calls.
//
//	ballast run [-c FILE] [--listen ADDR] [--admin ADDR]
//	ballast validate -c FILE
//	ballast healthcheck [--admin ADDR] [--ready]
//	ballast bench overhead|chaos|policies|state|soak|all|upstream
//	ballast version
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `ballast — the reliability layer between AI agents and their tools and model APIs

Usage:
  ballast run [-c FILE] [--listen ADDR] [--admin ADDR] [--log-level L]   run the proxy
  ballast validate -c FILE                                check a config; exit 1 on errors
  ballast healthcheck [--admin ADDR] [--ready]            GET the admin /healthz (or /readyz)
  ballast bench SCENARIO|upstream [flags]                 the benchmark harness: ballast bench --help
                                                          (overhead, chaos, policies, state, soak, all)
  ballast version                                         print the version

Without -c, run uses ./ballast.yaml when present, otherwise the embedded default
(/openai/ → api.openai.com, /anthropic/ → api.anthropic.com).
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "bench":
		return cmdBench(args[1:], stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "ballast", ballastVersion())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ballast: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
