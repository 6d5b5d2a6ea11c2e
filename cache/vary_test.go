package cache

import (
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestVaryCoveredAndLearned(t *testing.T) {
	tests := []struct {
		name    string
		opts    KeyOptions
		vary    []string // Vary header lines of the answer
		covered bool
		learned []string // o.Vary after WithVary
	}{
		{name: "no Vary", covered: true},
		{name: "identity header covered", vary: []string{"Authorization"}, covered: true},
		{name: "identity header, any case", vary: []string{"x-api-key, COOKIE"}, covered: true},
		{name: "identity header on a public route", opts: KeyOptions{Public: true}, vary: []string{"Authorization"},
			learned: []string{"Authorization"}},
		{name: "configured vary covers", opts: KeyOptions{Vary: []string{"Accept-Language"}}, vary: []string{"accept-language"},
			covered: true, learned: []string{"Accept-Language"}},
		{name: "Accept-Encoding learned", vary: []string{"Accept-Encoding"}, learned: []string{"Accept-Encoding"}},
		{name: "two lines, learned once each", opts: KeyOptions{Vary: []string{"A"}}, vary: []string{"B, a", "C, b"},
			learned: []string{"A", "B", "C"}},
		{name: "star is Storable's", vary: []string{"*"}, covered: true},
		{name: "custom identity headers", opts: KeyOptions{IdentityHeaders: []string{"X-Tenant"}}, vary: []string{"X-Tenant, Authorization"},
			learned: []string{"Authorization"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.ResponseHeader
			for _, v := range tt.vary {
				h.Add("Vary", v)
			}
			if got := tt.opts.VaryCovered(&h); got != tt.covered {
				t.Errorf("VaryCovered = %v, want %v", got, tt.covered)
			}
			before := slices.Clone(tt.opts.Vary)
			n, ok := tt.opts.WithVary(&h)
			if !ok {
				t.Fatal("WithVary refused")
			}
			if !slices.Equal(n.Vary, tt.learned) && !(len(n.Vary) == 0 && len(tt.learned) == 0) {
				t.Errorf("learned Vary %q, want %q", n.Vary, tt.learned)
			}
			if !n.VaryCovered(&h) {
				t.Error("the learned options do not cover the answer")
			}
			if !slices.Equal(tt.opts.Vary, before) {
				t.Error("WithVary changed its receiver")
			}
		})
	}
}

func TestWithVaryIsBounded(t *testing.T) {
	var names []string
	for i := range MaxVary + 1 {
		names = append(names, "X-H"+strings.Repeat("a", i))
	}
	var h fasthttp.ResponseHeader
	h.Set("Vary", strings.Join(names, ", "))
	o := &KeyOptions{}
	if n, ok := o.WithVary(&h); ok || n != o {
		t.Fatalf("%d names learned (ok %v), want a refusal beyond %d", len(n.Vary), ok, MaxVary)
	}
}

func TestVaryCoveredDoesNotAllocate(t *testing.T) {
	var h fasthttp.ResponseHeader
	h.Set("Vary", "Accept-Encoding, Authorization")
	o := &KeyOptions{Vary: []string{"Accept-Encoding"}}
	if n := testing.AllocsPerRun(100, func() { o.VaryCovered(&h) }); n != 0 {
		t.Fatalf("VaryCovered allocates %v times", n)
	}
}
