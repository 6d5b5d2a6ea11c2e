package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"
)

// referenceFingerprint is Fingerprint as it was first written: the body
// decoded by encoding/json into an any, then hashed. Fingerprints are
// stored (file and Redis backends), so the parser that replaced the
// decoder must give every body the same fingerprint as this.
func referenceFingerprint(method, path, body []byte, headers ...[]byte) [32]byte {
	s := &fpState{h: sha256.New()}
	s.bytes(method)
	s.bytes(path)
	if !looksJSON(body) || !referenceCanonical(s, body) {
		s.tag('r')
		s.bytes(body)
	}
	s.uvarint(uint64(len(headers)))
	for _, h := range headers {
		s.bytes(h)
	}
	var out [32]byte
	s.h.Sum(out[:0])
	return out
}

func referenceCanonical(s *fpState, body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		return false
	}
	s.tag('j')
	referenceValue(s, v)
	return true
}

func referenceValue(s *fpState, v any) {
	switch x := v.(type) {
	case map[string]any:
		s.tag('o')
		s.uvarint(uint64(len(x)))
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			s.bytes([]byte(k))
			referenceValue(s, x[k])
		}
	case []any:
		s.tag('a')
		s.uvarint(uint64(len(x)))
		for _, e := range x {
			referenceValue(s, e)
		}
	case string:
		s.tag('s')
		s.bytes([]byte(x))
	case json.Number:
		s.tag('n')
		s.bytes([]byte(x))
	case bool:
		if x {
			s.tag('t')
		} else {
			s.tag('f')
		}
	default:
		s.tag('z')
	}
}

// canonicalSeeds are the corners where a hand-written parser could part
// from encoding/json.
var canonicalSeeds = []string{
	`{"b":2,"a":[1,{"d":null,"c":"x"}]}`,
	`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"a":{"x":1},"a":[2]}`,
	`{"s":"\u0041\n\t\"\\\/\b\f\r"}`, `{"s":"\ud83d\ude00"}`, `{"s":"\ud83d"}`, `{"s":"\ud83dx"}`,
	`{"s":"\ude00\ud83d"}`, `{"s":"\ud83d\u0041"}`, `{"s":"\ud83d\ud83d\ude00"}`, `{"s":"\u12"}`, `{"s":"\uZZZZ"}`,
	"{\"s\":\"\xff\xfe\"}", "{\"s\":\"\xe2\x82\"}", "{\"\xc3\":1,\"\xef\xbf\xbd\":2}", "{\"s\":\"é€😀\"}",
	"{\"s\":\"a\x01\"}", `{"s":"\'"}`, `{"s":"\x"}`, `{"s":"abc`, `{"s":"abc\`,
	`[0,-0,1.5,-1e10,1E+2,2e-3,123456789012345678901234567890]`, `[01]`, `[1.]`, `[.5]`, `[-]`, `[1e]`, `[+1]`, `[0x1]`, `[1.5e+]`,
	`[true,false,null]`, `[tru]`, `[nul]`, `[truex]`, `[true false]`,
	`[]`, `{}`, `[ ]`, `{ }`, ` [1] `, "\n\t{\"a\" : 1 }\r\n", `[1,]`, `{"a":1,}`, `{,}`, `[,1]`, `{"a"}`, `{"a":}`, `{1:2}`,
	`{} x`, `{}{}`, `[1]]`, `[1] ,`, `{"a":1}}`, `[[[]]]`, `[{"a":[{"b":{}}]}]`,
	`{"z":1,"y":{"b":1,"a":2},"x":[{"d":1,"c":2}]}`, `{"":1,"a":2," ":3}`, `{"ab":1,"a":2,"b":3,"a\u0000":4}`,
	`[` + strings.Repeat("[", 9998) + strings.Repeat("]", 9999),  // depth 10,000: valid
	`[` + strings.Repeat("[", 9999) + strings.Repeat("]", 10000), // depth 10,001: not
	`{"a":` + strings.Repeat(`{"a":`, 9998) + `1` + strings.Repeat("}", 10000),
	`{"a":` + strings.Repeat(`{"a":`, 9999) + `1` + strings.Repeat("}", 10001),
}

func TestCanonicalJSONMatchesEncodingJSON(t *testing.T) {
	for _, body := range canonicalSeeds {
		got := Fingerprint([]byte("POST"), []byte("/p"), []byte(body), []byte("h"))
		want := referenceFingerprint([]byte("POST"), []byte("/p"), []byte(body), []byte("h"))
		if got != want {
			name := body
			if len(name) > 60 {
				name = name[:60] + "..."
			}
			t.Errorf("%q: fingerprint differs from encoding/json's canonical form", name)
		}
	}
}

// FuzzCanonicalJSONMatchesEncodingJSON holds the parser to encoding/json
// on any body: the same fingerprint, and never a panic.
func FuzzCanonicalJSONMatchesEncodingJSON(f *testing.F) {
	for _, s := range canonicalSeeds {
		if len(s) < 1000 {
			f.Add([]byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if got, want := Fingerprint([]byte("POST"), []byte("/p"), body), referenceFingerprint([]byte("POST"), []byte("/p"), body); got != want {
			t.Fatalf("%q: fingerprint differs from encoding/json's canonical form", body)
		}
	})
}

func TestCanonicalJSONEquivalences(t *testing.T) {
	fp := func(body string) [32]byte { return Fingerprint([]byte("POST"), []byte("/p"), []byte(body)) }
	tests := []struct {
		name string
		a, b string
		same bool
	}{
		{"a later duplicate key wins", `{"a":1,"a":2}`, `{"a":2}`, true},
		{"duplicates by value, not by spelling", `{"a":1,"\u0061":2}`, `{"a":2}`, true},
		{"an escaped surrogate pair is its character", `["\ud83d\ude00"]`, `["😀"]`, true},
		{"a lone surrogate is U+FFFD", `["\ud83d"]`, `["\ufffd"]`, true},
		{"an invalid UTF-8 byte is U+FFFD", "[\"\xff\"]", `["\ufffd"]`, true},
		{"nested order", `[{"b":[{"d":1,"c":2}],"a":0}]`, `[{"a":0,"b":[{"c":2,"d":1}]}]`, true},
		{"an empty key is a key", `{"":1}`, `{}`, false},
		{"keys sort bytewise", `{"a":1,"B":2}`, `{"B":2,"a":1}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fp(tt.a) == fp(tt.b); got != tt.same {
				t.Fatalf("same = %v, want %v", got, tt.same)
			}
		})
	}
}
