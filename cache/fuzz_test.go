package cache

import (
	"bytes"
	"slices"
	"testing"

	"github.com/valyala/fasthttp"
)

// FuzzQuery checks key normalisation on arbitrary query strings: reversing
// the parameter order never changes the key, and the builder never panics.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"", "a=1", "b=2&a=1", "a=1&&b=2&", "&&&", "a=%26&a=&=x", "q=ü&q=a"} {
		f.Add(s)
	}
	kb1, kb2 := NewKeyBuilder(), NewKeyBuilder()
	f.Fuzz(func(t *testing.T, q string) {
		params := bytes.Split([]byte(q), []byte("&"))
		slices.Reverse(params)
		reversed := bytes.Join(params, []byte("&"))
		kb1.Reset()
		kb1.Query([]byte(q))
		kb2.Reset()
		kb2.Query(reversed)
		if kb1.Sum() != kb2.Sum() {
			t.Fatalf("query %q and its reverse %q give different keys", q, reversed)
		}
	})
}

// FuzzDirectives feeds arbitrary Cache-Control, Pragma and Vary values to
// the header rules: no panic, every directive is trimmed and non-empty, and
// a value that is exactly "no-store" is never storable.
func FuzzDirectives(f *testing.F) {
	for _, s := range []string{"", "no-store", "private, max-age=5", `private="a,b", no-cache`, `x="\"", no-store`, ",,,", `"unterminated, private`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		for d := range Members([]byte(v)) {
			if len(d) == 0 || !bytes.Equal(d, bytes.TrimSpace(d)) {
				t.Fatalf("directive %q from %q is empty or untrimmed", d, v)
			}
		}
		var rh fasthttp.ResponseHeader
		rh.Set("Cache-Control", v)
		rh.Set("Vary", v)
		got := Storable(200, &rh, false)
		if v == "no-store" && got {
			t.Fatal("no-store storable")
		}
		var o KeyOptions
		if learned, ok := o.WithVary(&rh); ok && !learned.VaryCovered(&rh) {
			t.Fatalf("Vary %q: the learned options do not cover it: %q", v, learned.Vary)
		}
		var qh fasthttp.RequestHeader
		qh.Set("Cache-Control", v)
		qh.Set("Pragma", v)
		_ = RequestNoCache(&qh)
	})
}
