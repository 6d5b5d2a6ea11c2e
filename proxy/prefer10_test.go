package proxy

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestPreferQuotedStrings: a ",", ";" or "=" inside a quoted string of a
// Prefer header separates nothing (RFC 7240 §2; RFC 9110 §5.6.4), so a
// quoted value can neither start a job nor set a wait, nor hide a
// preference after it.
func TestPreferQuotedStrings(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		async  bool
		wait   time.Duration
	}{
		{name: "a comma quoted between", values: []string{`respond-async, foo="a,b", wait=10`}, async: true, wait: 10 * time.Second},
		{name: "respond-async quoted", values: []string{`note="x, respond-async, y"`}},
		{name: "wait quoted", values: []string{`respond-async, foo="a, wait=3, b"`}, async: true},
		{name: "a quoted wait before the real one", values: []string{`foo="a, wait=3, b", wait=7`}, wait: 7 * time.Second},
		{name: "an escaped quote", values: []string{`foo="a\", respond-async, b"`}},
		{name: "a quoted parameter", values: []string{`wait=5; p="q, wait=9", respond-async`}, async: true, wait: 5 * time.Second},
		{name: "a quoted string across two lines ends at its line", values: []string{`foo="a, b`, `respond-async`}, async: true},
		{name: "unterminated quote runs to the end", values: []string{`foo="a, respond-async`}},
		{name: "quoted wait value", values: []string{`wait="12"`}, wait: 12 * time.Second},
		{name: "quoted wait value holding a comma", values: []string{`wait="1,2", respond-async`}, async: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.RequestHeader
			for _, v := range tt.values {
				h.Add("Prefer", v)
			}
			async, wait := prefer(&h)
			if async != tt.async || wait != tt.wait {
				t.Errorf("Prefer %q: async %v, wait %v; want %v, %v", tt.values, async, wait, tt.async, tt.wait)
			}
			var values []string
			for _, v := range h.PeekAll("Prefer") {
				values = append(values, string(v))
			}
			if async, wait := refPrefer(values); async != tt.async || wait != tt.wait {
				t.Errorf("refPrefer(%q): async %v, wait %v; want %v, %v", values, async, wait, tt.async, tt.wait)
			}
		})
	}
}

// TestPreferDoesNotAllocate: reading Prefer is on the request path.
func TestPreferDoesNotAllocate(t *testing.T) {
	var h fasthttp.RequestHeader
	h.Add("Prefer", `respond-async, foo="a,b", wait=10`)
	h.Add("Prefer", `return=minimal; note="x, y"`)
	if allocs := testing.AllocsPerRun(100, func() { prefer(&h) }); allocs != 0 {
		t.Errorf("prefer allocates %v times", allocs)
	}
}
