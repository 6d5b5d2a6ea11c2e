package store

import (
	"bytes"
	"slices"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// canonicalJSON hashes the canonical form of body, which must hold exactly
// one JSON value surrounded by optional whitespace, and reports whether it
// did. It writes nothing to the hash unless the whole body parses.
//
// The canonical form is the one encoding/json gives the value decoded into
// an any with UseNumber: strings compared by their unescaped value (with
// invalid UTF-8 and lone surrogates replaced by U+FFFD), numbers by their
// text, object members sorted by key with the last of duplicate keys
// winning, and nesting limited to encoding/json's 10,000 levels. Stored
// fingerprints depend on that form, so it must not change; a differential
// fuzz test holds it to encoding/json. Unlike decoding, it builds no values:
// the parse is a flat list of nodes in pooled scratch space.
func (s *fpState) canonicalJSON(body []byte) bool {
	p := &s.json
	if !p.parse(body) {
		return false
	}
	s.tag('j')
	s.jsonValue(0)
	return true
}

// jsonValue hashes node i with a type tag and lengths, so that distinct
// values never share an encoding.
func (s *fpState) jsonValue(i int) {
	p := &s.json
	n := p.nodes[i]
	switch n.kind {
	case jsonObject:
		s.jsonObject(i)
	case jsonArray:
		s.tag('a')
		s.uvarint(uint64(n.count))
		for j, k := i+1, 0; k < n.count; k++ {
			s.jsonValue(j)
			j = p.nodes[j].next
		}
	case jsonString:
		s.tag('s')
		s.bytes(p.text(i))
	case jsonNumber:
		s.tag('n')
		s.bytes(p.text(i))
	case jsonTrue:
		s.tag('t')
	case jsonFalse:
		s.tag('f')
	default: // jsonNull
		s.tag('z')
	}
}

// jsonObject hashes the object at node i: its distinct keys in byte
// order, each with the value of its last occurrence.
func (s *fpState) jsonObject(i int) {
	p := &s.json
	base := len(s.members)
	for j, k := i+1, 0; k < p.nodes[i].count; k++ {
		s.members = append(s.members, j) // the key; its value is j+1
		j = p.nodes[j+1].next
	}
	// A nested object appends past this window and may move s.members;
	// m keeps the window it was given either way.
	m := s.members[base:]
	slices.SortStableFunc(m, func(a, b int) int { return bytes.Compare(p.text(a), p.text(b)) })
	w := 0
	for r := range m {
		if r+1 < len(m) && bytes.Equal(p.text(m[r]), p.text(m[r+1])) {
			continue // a later duplicate wins
		}
		m[w] = m[r]
		w++
	}
	s.tag('o')
	s.uvarint(uint64(w))
	for _, k := range m[:w] {
		s.bytes(p.text(k))
		s.jsonValue(k + 1)
	}
	s.members = s.members[:base]
}

// JSON node kinds.
const (
	jsonNull byte = iota
	jsonFalse
	jsonTrue
	jsonNumber
	jsonString
	jsonArray
	jsonObject
)

// maxJSONDepth is encoding/json's nesting limit: a deeper document is not
// valid JSON to it, so it is hashed raw.
const maxJSONDepth = 10000

// jsonNode is one value of a parsed document, in document order: a
// container is followed by its elements (an object by key, value, key,
// value...).
type jsonNode struct {
	kind byte
	// decoded: the text is in the parser's dec buffer (an unescaped
	// string), not in the body.
	decoded  bool
	off, end int // the text of a string (its value) or number (its literal)
	count    int // a container's elements, or an object's members
	next     int // the index just past this node's subtree
}

// jsonParser validates a JSON document and lays it out as jsonNodes. Its
// slices are reused from parse to parse.
type jsonParser struct {
	body  []byte
	pos   int
	nodes []jsonNode
	dec   []byte // unescaped strings
}

// parse reports whether body is one JSON value with optional whitespace
// around it, leaving its nodes in p.nodes.
func (p *jsonParser) parse(body []byte) bool {
	p.body, p.pos, p.nodes, p.dec = body, 0, p.nodes[:0], p.dec[:0]
	p.skipSpace()
	if !p.value(1) {
		return false
	}
	p.skipSpace()
	return p.pos == len(body)
}

// text is the string value or number literal of node i.
func (p *jsonParser) text(i int) []byte {
	n := &p.nodes[i]
	if n.decoded {
		return p.dec[n.off:n.end]
	}
	return p.body[n.off:n.end]
}

// peek is the byte at the cursor, or 0 at the end (never valid there).
func (p *jsonParser) peek() byte {
	if p.pos < len(p.body) {
		return p.body[p.pos]
	}
	return 0
}

func (p *jsonParser) skipSpace() {
	for p.pos < len(p.body) {
		switch p.body[p.pos] {
		case ' ', '\t', '\r', '\n':
			p.pos++
		default:
			return
		}
	}
}

// value parses the value at the cursor; depth counts the containers it
// would be nested in, itself included.
func (p *jsonParser) value(depth int) bool {
	switch c := p.peek(); {
	case c == '{':
		return p.container(depth, jsonObject, '}')
	case c == '[':
		return p.container(depth, jsonArray, ']')
	case c == '"':
		return p.str()
	case c == 't':
		return p.literal("true", jsonTrue)
	case c == 'f':
		return p.literal("false", jsonFalse)
	case c == 'n':
		return p.literal("null", jsonNull)
	case c == '-' || isDigit(c):
		return p.number()
	}
	return false
}

// container parses an object or array whose opening bracket is at the
// cursor.
func (p *jsonParser) container(depth int, kind, closing byte) bool {
	if depth > maxJSONDepth {
		return false
	}
	i := len(p.nodes)
	p.nodes = append(p.nodes, jsonNode{kind: kind})
	p.pos++
	p.skipSpace()
	n := 0
	if p.peek() == closing {
		p.pos++
	} else {
		for {
			if kind == jsonObject {
				if p.peek() != '"' || !p.str() {
					return false
				}
				p.skipSpace()
				if p.peek() != ':' {
					return false
				}
				p.pos++
				p.skipSpace()
			}
			if !p.value(depth + 1) {
				return false
			}
			n++
			p.skipSpace()
			switch p.peek() {
			case ',':
				p.pos++
				p.skipSpace()
				continue
			case closing:
				p.pos++
			default:
				return false
			}
			break
		}
	}
	p.nodes[i].count, p.nodes[i].next = n, len(p.nodes)
	return true
}

func (p *jsonParser) literal(word string, kind byte) bool {
	if len(p.body)-p.pos < len(word) || string(p.body[p.pos:p.pos+len(word)]) != word {
		return false
	}
	p.pos += len(word)
	p.nodes = append(p.nodes, jsonNode{kind: kind, next: len(p.nodes) + 1})
	return true
}

// number parses -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? and keeps its
// text.
func (p *jsonParser) number() bool {
	b, i := p.body, p.pos
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		if i++; i >= len(b) || !isDigit(b[i]) {
			return false
		}
		i = skipDigits(b, i)
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return false
		}
		i = skipDigits(b, i)
	}
	p.nodes = append(p.nodes, jsonNode{kind: jsonNumber, off: p.pos, end: i, next: len(p.nodes) + 1})
	p.pos = i
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func skipDigits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}

// str parses the string whose opening quote is at the cursor. A string
// without escapes or non-ASCII bytes is its own value in the body; any
// other is unescaped into p.dec as encoding/json would.
func (p *jsonParser) str() bool {
	b := p.body
	start := p.pos + 1
	i := start
	for ; i < len(b); i++ {
		c := b[i]
		if c == '"' {
			p.nodes = append(p.nodes, jsonNode{kind: jsonString, off: start, end: i, next: len(p.nodes) + 1})
			p.pos = i + 1
			return true
		}
		if c < 0x20 {
			return false
		}
		if c == '\\' || c >= utf8.RuneSelf {
			break
		}
	}
	off := len(p.dec)
	p.dec = append(p.dec, b[start:i]...)
	for i < len(b) {
		switch c := b[i]; {
		case c == '"':
			p.nodes = append(p.nodes, jsonNode{kind: jsonString, decoded: true, off: off, end: len(p.dec), next: len(p.nodes) + 1})
			p.pos = i + 1
			return true
		case c < 0x20:
			return false
		case c == '\\':
			var ok bool
			if i, ok = p.escape(i); !ok {
				return false
			}
		case c < utf8.RuneSelf:
			p.dec = append(p.dec, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				p.dec = utf8.AppendRune(p.dec, unicode.ReplacementChar)
			} else {
				p.dec = append(p.dec, b[i:i+size]...)
			}
			i += size
		}
	}
	return false // unterminated
}

// escape unescapes the escape sequence at b[i] (a backslash) into p.dec
// and returns the index after it. A \u escape of a surrogate takes the
// next \u escape as its pair when the two decode; otherwise it stands for
// U+FFFD, and the next escape is read on its own.
func (p *jsonParser) escape(i int) (int, bool) {
	b := p.body
	if i+1 >= len(b) {
		return i, false
	}
	switch e := b[i+1]; e {
	case '"', '\\', '/':
		p.dec = append(p.dec, e)
	case 'b':
		p.dec = append(p.dec, '\b')
	case 'f':
		p.dec = append(p.dec, '\f')
	case 'n':
		p.dec = append(p.dec, '\n')
	case 'r':
		p.dec = append(p.dec, '\r')
	case 't':
		p.dec = append(p.dec, '\t')
	case 'u':
		r := hex4(b[i+2:])
		if r < 0 {
			return i, false
		}
		i += 6
		if utf16.IsSurrogate(r) {
			if pair := utf16.DecodeRune(r, u4(b[i:])); pair != unicode.ReplacementChar {
				r = pair
				i += 6
			} else {
				r = unicode.ReplacementChar
			}
		}
		p.dec = utf8.AppendRune(p.dec, r)
		return i, true
	default:
		return i, false
	}
	return i + 2, true
}

// u4 is the rune of a \uXXXX escape at the start of b, or -1.
func u4(b []byte) rune {
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return -1
	}
	return hex4(b[2:])
}

// hex4 is the value of four hex digits at the start of b, or -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}
