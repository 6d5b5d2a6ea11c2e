package main

import (
	"runtime"
	"testing"
)

func TestApplyProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	if n, from := applyProcs(1, ""); n != 1 || from != "config" || runtime.GOMAXPROCS(0) != 1 {
		t.Fatalf("procs 1: got %d from %s, runtime has %d", n, from, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(3)
	if n, from := applyProcs(1, "3"); n != 3 || from != "GOMAXPROCS" || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("with GOMAXPROCS set: got %d from %s, runtime has %d", n, from, runtime.GOMAXPROCS(0))
	}
	if n, from := applyProcs(0, ""); n != 3 || from != "go default" || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("procs 0: got %d from %s, runtime has %d", n, from, runtime.GOMAXPROCS(0))
	}
}
