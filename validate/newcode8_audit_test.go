package validate

import (
	"bytes"
	"encoding/json"
	"testing"
)

// refDepth is a recursive reference for depthExceeded on valid JSON: the
// offset of the first '[' or '{' nested more than max deep, or -1.
func refDepth(b []byte, max int) int {
	at := -1
	var value func(i, depth int) int
	str := func(i int) int { // b[i] == '"'
		for i++; i < len(b); i++ {
			if b[i] == '\\' {
				i++
				continue
			}
			if b[i] == '"' {
				return i + 1
			}
		}
		return len(b)
	}
	value = func(i, depth int) int {
		for i < len(b) && at < 0 {
			switch c := b[i]; c {
			case '"':
				i = str(i)
			case '[', '{':
				if depth+1 > max {
					at = i
					return len(b)
				}
				i = value(i+1, depth+1)
			case ']', '}':
				return i + 1
			default:
				i++
			}
		}
		return len(b)
	}
	for i := 0; i < len(b) && at < 0; {
		i = value(i, 0)
	}
	return at
}

// FuzzNewCode8AuditDepth checks depthExceeded against a recursive
// reference on valid JSON with small limits, and parsable against
// encoding/json (whose depth limit is also 10,000) with bodies nested
// around that limit.
func FuzzNewCode8AuditDepth(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), uint8(2), uint16(9999))
	}
	f.Add([]byte(`[{"a":"[[[\"{{"},[[]]]`), uint8(1), uint16(9998))
	f.Add([]byte(`[]]]`), uint8(0), uint16(10000))
	f.Fuzz(func(t *testing.T, b []byte, m uint8, k uint16) {
		max := int(m % 8)
		got := depthExceeded(b, max)
		if got >= 0 && (got >= len(b) || (b[got] != '[' && b[got] != '{')) {
			t.Fatalf("depthExceeded(%q, %d) = %d: not a bracket", b, max, got)
		}
		if json.Valid(b) {
			if want := refDepth(b, max); got != want {
				t.Fatalf("depthExceeded(%q, %d) = %d, want %d", b, max, got, want)
			}
		}
		n := 9990 + int(k%25)
		body := append(append(bytes.Repeat([]byte{'['}, n), b...), bytes.Repeat([]byte{']'}, n)...)
		if p, v := parsable(body), json.Valid(body); p != v {
			t.Fatalf("parsable = %v, encoding/json Valid = %v with %d levels around %q", p, v, n, b)
		}
	})
}
