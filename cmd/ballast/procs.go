package main

import (
	"runtime"

	"github.com/ballast-proxy/ballast/config"
)

// applyProcs sets GOMAXPROCS for cfg and returns what is in force and
// where it came from: "GOMAXPROCS" when the environment variable is set
// (the runtime already applied it, and an operator's explicit choice
// wins), "config" for procs > 0, else "ballast": 1 core, or 2 with the file
// state store, whose fsyncs hold a core while they run.
func applyProcs(cfg *config.Config, env string) (int, string) {
	if env != "" {
		return runtime.GOMAXPROCS(0), "GOMAXPROCS"
	}
	n, from := cfg.Procs, "config"
	if n <= 0 {
		n, from = 1, "ballast"
		if cfg.State.Backend == "file" || (cfg.State.Backend == "" && cfg.State.Path != "") {
			n = 2
		}
	}
	runtime.GOMAXPROCS(n)
	return n, from
}
