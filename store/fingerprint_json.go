package store

import (
	"bytes"
	"encoding/json"
	"io"
	"slices"
)

// canonicalJSON hashes the canonical form of body, which must hold exactly
// one JSON value, and reports whether it did. It writes nothing to the hash
// unless the whole body parses.
func (s *fpState) canonicalJSON(body []byte) bool {
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
	s.value(v)
	return true
}

// value writes v with a type tag and lengths, so that distinct values never
// share an encoding.
func (s *fpState) value(v any) {
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
			s.str(k)
			s.value(x[k])
		}
	case []any:
		s.tag('a')
		s.uvarint(uint64(len(x)))
		for _, e := range x {
			s.value(e)
		}
	case string:
		s.tag('s')
		s.str(x)
	case json.Number:
		s.tag('n')
		s.str(string(x))
	case bool:
		if x {
			s.tag('t')
		} else {
			s.tag('f')
		}
	default: // nil: the decoder produces no other types
		s.tag('z')
	}
}

func (s *fpState) str(v string) {
	s.uvarint(uint64(len(v)))
	io.WriteString(s.h, v)
}
