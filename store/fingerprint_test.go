package store

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
)

func TestFingerprint(t *testing.T) {
	type req struct {
		method, path, body string
		headers            []string
	}
	fpOf := func(r req) [32]byte {
		hs := make([][]byte, len(r.headers))
		for i, h := range r.headers {
			hs[i] = []byte(h)
		}
		return Fingerprint([]byte(r.method), []byte(r.path), []byte(r.body), hs...)
	}
	post := func(body string) req { return req{method: "POST", path: "/v1/chat", body: body} }
	tests := []struct {
		name string
		a, b req
		same bool
	}{
		{"JSON key order", post(`{"a":1,"b":2}`), post(`{"b":2,"a":1}`), true},
		{"JSON whitespace", post(`{"a": [1, 2], "b": {"c": null}}`), post("\n{\"b\":{\"c\":null},\"a\":[1,2]}\n"), true},
		{"JSON nested key order", post(`{"m":{"x":1,"y":2}}`), post(`{"m":{"y":2,"x":1}}`), true},
		{"JSON string escapes compare by value", post(`{"s":"\u0041"}`), post(`{"s":"A"}`), true},
		{"JSON array order matters", post(`[1,2]`), post(`[2,1]`), false},
		{"JSON values differ", post(`{"a":1}`), post(`{"a":2}`), false},
		{"JSON number text matters", post(`{"a":1}`), post(`{"a":1.0}`), false},
		{"JSON string vs number", post(`{"a":"1"}`), post(`{"a":1}`), false},
		{"JSON null vs false", post(`[null]`), post(`[false]`), false},
		{"JSON vs raw of same bytes", post(`{"a":1}`), post(`{"a":1} trailing`), false},
		{"invalid JSON is raw", post(`{"a":1,}`), post(`{"a":1,}`), true},
		{"invalid JSON raw differs by whitespace", post(`{"a":1,}`), post(`{"a": 1,}`), false},
		{"raw body", post("hello"), post("hello"), true},
		{"raw body differs", post("hello"), post("hellO"), false},
		{"method differs", req{method: "POST", path: "/x"}, req{method: "PUT", path: "/x"}, false},
		{"path differs", req{method: "POST", path: "/x"}, req{method: "POST", path: "/y"}, false},
		{"field boundaries are unambiguous", req{method: "PO", path: "ST/x"}, req{method: "POS", path: "T/x"}, false},
		{"path/body boundary", req{method: "P", path: "/xa", body: "b"}, req{method: "P", path: "/x", body: "ab"}, false},
		{"headers count", req{method: "P", headers: []string{"a: 1"}}, req{method: "P", headers: []string{"a: 1", ""}}, false},
		{"headers differ", req{method: "P", headers: []string{"a: 1"}}, req{method: "P", headers: []string{"a: 2"}}, false},
		{"header boundaries", req{method: "P", headers: []string{"ab", "c"}}, req{method: "P", headers: []string{"a", "bc"}}, false},
		{"empty body vs no body", post(""), post(""), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fpOf(tt.a) == fpOf(tt.b); got != tt.same {
				t.Fatalf("same = %v, want %v", got, tt.same)
			}
		})
	}
}

// FuzzFingerprint: a body is outside input. Fingerprint never panics, and a
// JSON body fingerprints like its re-encoding (sorted keys, no spaces).
func FuzzFingerprint(f *testing.F) {
	for _, s := range []string{`{"b":2,"a":[1,{"d":null,"c":"x"}]}`, `[1, 2, 3]`, `{"a":`, "plain", " {\"a\":true} ", `"str"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got := Fingerprint([]byte("POST"), []byte("/p"), body)
		if !looksJSON(body) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) != nil {
			return
		}
		if _, err := dec.Token(); err != io.EOF {
			return // trailing data: hashed raw
		}
		re, err := json.Marshal(v)
		if err != nil {
			return
		}
		if again := Fingerprint([]byte("POST"), []byte("/p"), re); again != got {
			t.Fatalf("%q and its re-encoding %q fingerprint differently", body, re)
		}
	})
}
