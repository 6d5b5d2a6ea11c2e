package ratelimit

// jsonScanner walks JSON text without building values, to size the prompt
// text of a model request. It never panics: any byte that is not where JSON
// allows it stops the walk with bad set. It does not allocate.
type jsonScanner struct {
	b     []byte
	i     int
	depth int
	bad   bool
	deep  bool // bad because nesting passed maxScanDepth
	text  int  // decoded UTF-8 bytes of counted string values
}

// maxScanDepth bounds nesting, and so the recursion, of the walk.
const maxScanDepth = 128

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next byte after white space, or 0 at the end.
func (s *jsonScanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

// expect consumes c after white space, or marks the input bad.
func (s *jsonScanner) expect(c byte) bool {
	if s.bad || s.peek() != c {
		s.bad = true
		return false
	}
	s.i++
	return true
}

// value walks one value; string values inside it count toward text when
// count is set, except those under a key for which skipKey reports true.
func (s *jsonScanner) value(count bool) {
	if s.bad {
		return
	}
	switch c := s.peek(); {
	case c == '{':
		s.object(count)
	case c == '[':
		s.array(count)
	case c == '"':
		n := s.str()
		if count {
			s.text += n
		}
	case c == '-' || (c >= '0' && c <= '9'):
		s.number()
	case c == 't':
		s.literal("true")
	case c == 'f':
		s.literal("false")
	case c == 'n':
		s.literal("null")
	default:
		s.bad = true
	}
}

func (s *jsonScanner) enter() bool {
	s.depth++
	if s.depth > maxScanDepth {
		s.bad, s.deep = true, true
		return false
	}
	s.i++ // the opening bracket
	return true
}

func (s *jsonScanner) object(count bool) {
	if !s.enter() {
		return
	}
	defer func() { s.depth-- }()
	if s.peek() == '}' {
		s.i++
		return
	}
	for !s.bad {
		key, ok := s.key()
		if !ok {
			return
		}
		s.value(count && !skipKey(key))
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return
		default:
			s.bad = true
		}
	}
}

// key reads an object key and its colon, returning the key's raw bytes
// (escapes left as they are).
func (s *jsonScanner) key() ([]byte, bool) {
	if s.peek() != '"' {
		s.bad = true
		return nil, false
	}
	start := s.i + 1
	s.str()
	if s.bad {
		return nil, false
	}
	key := s.b[start : s.i-1]
	return key, s.expect(':')
}

func (s *jsonScanner) array(count bool) {
	if !s.enter() {
		return
	}
	defer func() { s.depth-- }()
	if s.peek() == ']' {
		s.i++
		return
	}
	for !s.bad {
		s.value(count)
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return
		default:
			s.bad = true
		}
	}
}

// str consumes a string (s.b[s.i] is the opening quote) and returns its
// decoded length in UTF-8 bytes.
func (s *jsonScanner) str() int {
	s.i++
	n := 0
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return n
		case c == '\\':
			if s.i+1 >= len(s.b) {
				s.bad = true
				return n
			}
			if s.b[s.i+1] == 'u' {
				r, ok := hex4(s.b, s.i+2)
				if !ok {
					s.bad = true
					return n
				}
				n += utf8Len(r)
				s.i += 6
				continue
			}
			n++
			s.i += 2
		case c < 0x20:
			s.bad = true
			return n
		default:
			n++
			s.i++
		}
	}
	s.bad = true
	return n
}

func (s *jsonScanner) number() {
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c >= '0' && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			s.i++
		default:
			goto done
		}
	}
done:
	if s.i == start {
		s.bad = true
	}
}

func (s *jsonScanner) literal(lit string) {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		s.bad = true
		return
	}
	s.i += len(lit)
}

func hex4(b []byte, at int) (rune, bool) {
	if at+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

func utf8Len(r rune) int {
	switch {
	case r < 0x80:
		return 1
	case r < 0x800:
		return 2
	default:
		return 3
	}
}

// skipKey reports whether a key's value is left out of the prompt text:
// labels that are not text the model reads as such, and media carried as
// base64 or URLs, whose token cost bears no relation to its length.
func skipKey(key []byte) bool {
	switch string(key) {
	case "type", "role", "id", "tool_call_id", "tool_use_id", "cache_control",
		"image_url", "input_audio", "file_data", "source", "data", "b64_json":
		return true
	}
	return false
}
