package validate

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
	"unicode/utf8"
)

var fuzzSeeds = []string{
	``, `{}`, `[]`, `null`, `"x"`, `1e9`, `{"a":`, `{"a": 1, "b": x}`,
	`{"items":[{"price":-1}]}`, `{"items":[{"price":"1"},{}]}`,
	`{"jsonrpc":"2.0","id":1,"result":{}}`,
	`{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error"}}`,
	`[{"jsonrpc":"2.0","id":1,"result":1},{"jsonrpc":"2.0","id":2,"error":{"code":1.5}}]`,
	`{"error":{"type":"overloaded_error","message":"Overloaded"}}`,
	`{"error":"x","e\u0072ror":{"code":503}}`, `{"a":"\"}\\","error":null}`,
	" \t\n{\"error\" : [ ] }\r\n",
	// Regressions found by fuzzing the tests themselves.
	"1e1000", "{\"\xa7\":{}}",
}

// FuzzCheckBody runs every kind of body check on arbitrary bodies: no panic,
// every failure names a check and a detail, and well-formed JSON never fails
// the json check.
func FuzzCheckBody(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	const providerOnly = 3
	configs := []Config{
		{JSON: true},
		{Schema: priceSchema},
		{JSONRPC: true, RetryableRPCCodes: []int{-32603}},
		{ProviderError: true},
		{JSON: true, JSONRPC: true, ProviderError: true, Schema: `{"type":"object"}`, NonEmpty: true, MaxBody: 4096},
	}
	validators := make([]*Validator, len(configs))
	for i, c := range configs {
		v, err := New(c)
		if err != nil {
			f.Fatal(err)
		}
		validators[i] = v
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		valid := json.Valid(body) && utf8.Valid(body) // RFC 8259 JSON is UTF-8
		for i, v := range validators {
			fl := v.CheckBody(body)
			if fl == nil {
				if !valid && i != providerOnly && len(body) > 0 {
					t.Fatalf("config %d passed invalid JSON %q", i, body)
				}
				continue
			}
			if fl.Check == "" || fl.Detail == "" {
				t.Fatalf("config %d: failure without check or detail: %+v", i, fl)
			}
			if valid && fl.Check == CheckJSON {
				t.Fatalf("config %d: json failure on valid JSON %q: %v", i, body, fl)
			}
			// provider_error reads parsable bodies, UTF-8 or not.
			if !json.Valid(body) && configs[i].ProviderError && !configs[i].JSON && fl.Check == CheckProviderError {
				t.Fatalf("provider_error reported on non-JSON %q", body)
			}
		}
	})
}

// FuzzScanner checks the allocation-free scanner against encoding/json: on
// any valid JSON object it yields the same top-level keys in the same
// order, and on any valid array the same number of elements.
func FuzzScanner(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Invalid input must not panic either, whatever it yields.
		if it, ok := newObjectIter(b); ok {
			for n := 0; n <= len(b); n++ {
				if _, _, ok := it.next(); !ok {
					break
				}
			}
		}
		if it, ok := newArrayIter(b); ok {
			for n := 0; n <= len(b); n++ {
				if _, ok := it.next(); !ok {
					break
				}
			}
		}
		if !json.Valid(b) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		switch tok {
		case json.Delim('{'):
			it, ok := newObjectIter(b)
			if !ok {
				t.Fatalf("object not recognised: %q", b)
			}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					t.Fatal(err)
				}
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					t.Fatal(err)
				}
				key, val, ok := it.next()
				if !ok || decodeKey(t, key) != k.(string) {
					t.Fatalf("key = %q (%v), want %q in %q", key, ok, k, b)
				}
				if !json.Valid(val) {
					t.Fatalf("value %q of key %q is not a JSON value", val, k)
				}
			}
			if _, _, ok := it.next(); ok {
				t.Fatalf("extra member in %q", b)
			}
		case json.Delim('['):
			it, ok := newArrayIter(b)
			if !ok {
				t.Fatalf("array not recognised: %q", b)
			}
			for dec.More() {
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					t.Fatal(err)
				}
				val, ok := it.next()
				if !ok || !json.Valid(val) {
					t.Fatalf("element %q (%v) in %q", val, ok, b)
				}
			}
			if _, ok := it.next(); ok {
				t.Fatalf("extra element in %q", b)
			}
		default:
			if _, ok := newObjectIter(b); ok {
				t.Fatalf("scalar %q taken for an object", b)
			}
		}
		if _, err := dec.Token(); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	})
}

// decodeKey decodes a raw key as encoding/json does (escapes, and invalid
// UTF-8 replaced by U+FFFD). keyIs agrees with it for the ASCII keys the
// checks look for.
func decodeKey(t *testing.T, raw []byte) string {
	var s string
	if err := json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &s); err != nil {
		t.Fatalf("raw key %q: %v", raw, err)
	}
	return s
}
