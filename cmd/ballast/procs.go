package main

import "runtime"

// applyProcs sets GOMAXPROCS to the config's procs and returns what is in
// force and where it came from: "GOMAXPROCS" when the environment variable
// is set (the runtime already applied it, and an operator's explicit
// choice wins), "go default" for procs 0, else "config".
func applyProcs(procs int, env string) (int, string) {
	switch {
	case env != "":
		return runtime.GOMAXPROCS(0), "GOMAXPROCS"
	case procs <= 0:
		return runtime.GOMAXPROCS(0), "go default"
	}
	runtime.GOMAXPROCS(procs)
	return procs, "config"
}
