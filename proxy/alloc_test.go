//go:build !race

package proxy_test

import "testing"

// TestPassThroughAllocations is the allocation gate: a proxied request, in
// steady state, allocates nothing — in ballast, in the fasthttp client that
// sends it, or in the upstream. (The race detector allocates, so the gate
// is built without it; `make test` runs it in a second, race-free pass.)
func TestPassThroughAllocations(t *testing.T) {
	bl := benchBallast(t)
	p := newPassThrough(t, bl.addr, "/v1/chat/completions")
	for range 100 { // warm the pools
		p.do(t)
	}
	allocs := testing.AllocsPerRun(1000, func() { p.do(t) })
	if allocs > 0 {
		t.Errorf("a pass-through request allocates %.2f times; the hot path must not allocate", allocs)
	}
}
