package main

import (
	"runtime"
	"testing"

	"github.com/ballast-proxy/ballast/config"
)

func TestApplyProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	for _, tc := range []struct {
		name     string
		procs    int
		backend  string
		path     string
		env      string
		preset   int // GOMAXPROCS in force before, as the runtime set it from env
		want     int
		wantFrom string
	}{
		{name: "ballast chooses one core", backend: "memory", preset: 4, want: 1, wantFrom: "ballast"},
		{name: "two for the file store", backend: "file", preset: 4, want: 2, wantFrom: "ballast"},
		{name: "one with redis", backend: "redis", preset: 4, want: 1, wantFrom: "ballast"},
		{name: "a state path means the file store", path: "/tmp/state.db", preset: 4, want: 2, wantFrom: "ballast"},
		{name: "config sets it", procs: 3, backend: "file", preset: 1, want: 3, wantFrom: "config"},
		{name: "GOMAXPROCS wins", procs: 1, backend: "memory", env: "3", preset: 3, want: 3, wantFrom: "GOMAXPROCS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runtime.GOMAXPROCS(tc.preset)
			cfg := &config.Config{Procs: tc.procs}
			cfg.State.Backend, cfg.State.Path = tc.backend, tc.path
			n, from := applyProcs(cfg, tc.env)
			if n != tc.want || from != tc.wantFrom || runtime.GOMAXPROCS(0) != tc.want {
				t.Fatalf("got %d from %s, runtime has %d; want %d from %s", n, from, runtime.GOMAXPROCS(0), tc.want, tc.wantFrom)
			}
		})
	}
}
