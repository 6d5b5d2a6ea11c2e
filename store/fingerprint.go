package store

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"sync"
)

// Fingerprint identifies a request for idempotency: two requests with the
// same key and different fingerprints are a mismatch. It hashes (SHA-256) an
// unambiguous encoding of method, path, body and headers, in that order;
// the caller chooses which headers count (for example Content-Type) and
// passes each as it wants it compared (typically "name: value").
//
// A body whose first non-space byte is '{' or '[' and that parses as one
// JSON value is hashed in canonical form — object keys sorted, whitespace
// dropped, strings compared by value — so {"a":1,"b":2} and {"b":2,"a":1}
// match. Numbers are compared by their text (1 and 1.0 differ). Any other
// body is hashed raw.
//
// Fingerprint does not allocate once its pooled scratch space has grown to
// the size of the bodies it sees (a node per JSON value).
func Fingerprint(method, path []byte, body []byte, headers ...[]byte) [32]byte {
	s := fpPool.Get().(*fpState)
	s.h.Reset()
	s.bytes(method)
	s.bytes(path)
	if !looksJSON(body) || !s.canonicalJSON(body) {
		s.tag('r')
		s.bytes(body)
	}
	s.uvarint(uint64(len(headers)))
	for _, h := range headers {
		s.bytes(h)
	}
	s.h.Sum(s.sum[:0])
	out := s.sum
	s.release()
	return out
}

// fpState is pooled so that hashing does not allocate. The pool is a cache
// of scratch space, not state: Fingerprint is a pure function.
type fpState struct {
	h       hash.Hash
	scratch [binary.MaxVarintLen64]byte
	sum     [sha256.Size]byte
	json    jsonParser
	members []int // object members being sorted, a window per open object
}

// maxPooledJSONNodes bounds the scratch space a pooled fpState keeps (and
// 64 times as many bytes of unescaped strings): the scratch of one
// unusually large body is dropped rather than held.
const maxPooledJSONNodes = 1 << 14

// release returns s to the pool without the body it last parsed.
func (s *fpState) release() {
	s.json.body = nil
	if cap(s.json.nodes) > maxPooledJSONNodes || cap(s.json.dec) > maxPooledJSONNodes*64 {
		s.json.nodes, s.json.dec, s.members = nil, nil, nil
	}
	fpPool.Put(s)
}

var fpPool = sync.Pool{New: func() any { return &fpState{h: sha256.New()} }}

func (s *fpState) tag(b byte) {
	s.scratch[0] = b
	s.h.Write(s.scratch[:1])
}

func (s *fpState) uvarint(v uint64) {
	n := binary.PutUvarint(s.scratch[:], v)
	s.h.Write(s.scratch[:n])
}

func (s *fpState) bytes(p []byte) {
	s.uvarint(uint64(len(p)))
	s.h.Write(p)
}

func looksJSON(body []byte) bool {
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			return true
		}
		return false
	}
	return false
}
