package validate

import (
	"bytes"
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// The scanner below walks JSON that encoding/json.Valid has already accepted,
// so it only needs to find boundaries, never to report syntax errors. It does
// not allocate, which keeps the jsonrpc and provider_error pass paths free of
// garbage. Every index it returns is within [0, len(b)], even on input that
// is not valid, so misuse cannot panic.

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just after the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just after the value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return len(b)
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// objectIter walks the members of a JSON object.
type objectIter struct {
	b []byte
	i int
}

// newObjectIter returns an iterator over the object v (leading whitespace
// allowed); ok is false when v is not an object.
func newObjectIter(v []byte) (objectIter, bool) {
	i := skipWS(v, 0)
	if i >= len(v) || v[i] != '{' {
		return objectIter{}, false
	}
	return objectIter{b: v, i: i + 1}, true
}

// next returns the next member: key is the raw key text between the quotes
// (escapes not decoded) and val the raw value.
func (it *objectIter) next() (key, val []byte, ok bool) {
	b := it.b
	i := skipWS(b, it.i)
	if i < len(b) && b[i] == ',' {
		i = skipWS(b, i+1)
	}
	if i >= len(b) || b[i] != '"' {
		it.i = len(b)
		return nil, nil, false
	}
	end := skipString(b, i)
	key = b[i+1 : max(i+1, end-1)]
	i = skipWS(b, end)
	if i >= len(b) || b[i] != ':' {
		it.i = len(b)
		return nil, nil, false
	}
	i = skipWS(b, i+1)
	vend := skipValue(b, i)
	val = b[i:vend]
	it.i = vend
	return key, val, true
}

// arrayIter walks the elements of a JSON array.
type arrayIter struct {
	b []byte
	i int
}

// newArrayIter returns an iterator over the array v; ok is false when v is
// not an array.
func newArrayIter(v []byte) (arrayIter, bool) {
	i := skipWS(v, 0)
	if i >= len(v) || v[i] != '[' {
		return arrayIter{}, false
	}
	return arrayIter{b: v, i: i + 1}, true
}

// next returns the next raw element.
func (it *arrayIter) next() (val []byte, ok bool) {
	b := it.b
	i := skipWS(b, it.i)
	if i < len(b) && b[i] == ',' {
		i = skipWS(b, i+1)
	}
	if i >= len(b) || b[i] == ']' {
		it.i = len(b)
		return nil, false
	}
	end := skipValue(b, i)
	if end == i {
		it.i = len(b)
		return nil, false
	}
	it.i = end
	return b[i:end], true
}

// keyIs reports whether the raw key (as returned by objectIter.next) equals
// want once decoded. Keys without escapes compare without allocating.
func keyIs(raw []byte, want string) bool {
	if strings.IndexByte(string(raw), '\\') < 0 {
		return string(raw) == want
	}
	quoted := make([]byte, 0, len(raw)+2)
	quoted = append(append(append(quoted, '"'), raw...), '"')
	var s string
	return json.Unmarshal(quoted, &s) == nil && s == want
}

// isNullish reports whether a raw value is null, false or the empty string.
func isNullish(v []byte) bool {
	s := string(v)
	return s == "null" || s == "false" || s == `""`
}

// depthExceeded returns the offset of the first '[' or '{' of b, outside
// strings, nested more than max deep, or -1. Bodies with at most max
// brackets in all, most of them, are judged by a fast count alone.
func depthExceeded(b []byte, max int) int {
	if bytes.Count(b, []byte{'['})+bytes.Count(b, []byte{'{'}) <= max {
		return -1
	}
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			i = skipString(b, i) - 1
		case '[', '{':
			if depth++; depth > max {
				return i
			}
		case ']', '}':
			depth--
		}
	}
	return -1
}

// invalidUTF8 returns the offset of the first byte of b that is not part
// of valid UTF-8, or -1.
func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}
