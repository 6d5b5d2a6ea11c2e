package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"slices"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// Key identifies a cached response: the SHA-256 of the request's
// cache-relevant parts (see KeyBuilder). SHA-256 rather than a fast
// non-cryptographic hash because the key is what keeps one tenant's response
// from being served to another: nobody can craft a colliding request.
type Key [sha256.Size]byte

// defaultIdentityHeaders: see DefaultIdentityHeaders.
var defaultIdentityHeaders = [...]string{
	"Authorization", "Proxy-Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key", "Cookie",
}

// sessionHeader is the MCP session a request belongs to. Unless
// KeyOptions.Public, it is part of the key like the caller's identity: a
// tool's answer within one session (its state, its client) is not another
// session's, and JSON-RPC ids restart at 1, so bodies collide.
const sessionHeader = "Mcp-Session-Id"

// DefaultIdentityHeaders returns (a copy of) the request headers that
// identify the caller and are part of every key unless KeyOptions.Public is
// set: Authorization, Proxy-Authorization, X-Api-Key, Api-Key,
// X-Goog-Api-Key and Cookie, so that a response fetched with one tenant's
// credentials is never served to another.
func DefaultIdentityHeaders() []string { return slices.Clone(defaultIdentityHeaders[:]) }

// Piece tags separate the parts so that no two different requests frame to
// the same byte stream (a path "/a" with query "b" never equals path "/ab").
const (
	tagMethod byte = iota + 1
	tagHost
	tagPath
	tagQuery
	tagBody
	tagVary
	tagIdentity
	tagRawPath
)

// KeyBuilder hashes request parts into a Key without allocating (after its
// first use grows its internal buffers). Each part is written as a tag, a
// length and the bytes, so parts cannot run into each other; the same parts
// written in the same order give the same Key. A KeyBuilder is not safe for
// concurrent use: keep one per worker or take it from a sync.Pool.
//
// Low-level use:
//
//	kb.Reset()
//	kb.Method(m); kb.Host(h); kb.Path(p); kb.Query(q); kb.Body(b)
//	kb.Vary(name, value)...; kb.Identity(name, value)...
//	key := kb.Sum()
//
// or Request, which does all of that for a fasthttp request.
type KeyBuilder struct {
	h      hash.Hash
	params []span
	lenBuf [1 + binary.MaxVarintLen64]byte
	sum    [sha256.Size]byte
}

type span struct{ start, end int }

// NewKeyBuilder returns a reset KeyBuilder.
func NewKeyBuilder() *KeyBuilder {
	return &KeyBuilder{h: sha256.New()}
}

// Reset starts a new key.
func (b *KeyBuilder) Reset() { b.h.Reset() }

// Method adds the request method, as sent (methods are case-sensitive).
func (b *KeyBuilder) Method(m []byte) { b.piece(tagMethod, m) }

// Host adds the target host (and port), lower-case it first if it may vary in
// case; Request uses fasthttp's Host(), which keeps what the client sent.
func (b *KeyBuilder) Host(h []byte) { b.piece(tagHost, h) }

// Path adds the request path, which the caller normalises (fasthttp's
// URI().Path() is decoded and has dot segments resolved).
func (b *KeyBuilder) Path(p []byte) { b.piece(tagPath, p) }

// Query adds the raw query string (without '?') normalised by parameter
// order: "b=2&a=1" and "a=1&b=2" add the same bytes. Parameters are sorted as
// whole "name=value" strings; empty parameters ("a=1&&b") are dropped;
// percent-encoding is not decoded, so "%41" and "A" stay different.
func (b *KeyBuilder) Query(q []byte) {
	b.params = b.params[:0]
	start := 0
	for i := 0; i <= len(q); i++ {
		if i == len(q) || q[i] == '&' {
			if i > start {
				b.params = append(b.params, span{start, i})
			}
			start = i + 1
		}
	}
	slices.SortFunc(b.params, func(x, y span) int {
		return bytes.Compare(q[x.start:x.end], q[y.start:y.end])
	})
	b.length(tagQuery, len(b.params))
	for _, p := range b.params {
		b.piece(tagQuery, q[p.start:p.end])
	}
}

// Body adds the request body (hashed as part of the key, not stored). Add
// it for methods whose body selects the response (POST, PUT, PATCH, and
// the JSON-RPC POSTs of MCP); an empty body adds nothing.
func (b *KeyBuilder) Body(body []byte) {
	if len(body) > 0 {
		b.piece(tagBody, body)
	}
}

// Vary adds a request header named in the route's vary list. Pass the name
// in one fixed spelling (the configured one) and the value, nil when absent;
// absent and empty headers add the same bytes.
func (b *KeyBuilder) Vary(name, value []byte) {
	b.piece(tagVary, name)
	b.piece(tagVary, value)
}

// Identity adds one caller-identity header (see DefaultIdentityHeaders);
// absent headers may be skipped or added with a nil value, consistently.
func (b *KeyBuilder) Identity(name, value []byte) {
	b.piece(tagIdentity, name)
	b.piece(tagIdentity, value)
}

// Sum returns the key for the parts added since Reset. It does not reset.
func (b *KeyBuilder) Sum() Key {
	return Key(b.h.Sum(b.sum[:0]))
}

func (b *KeyBuilder) piece(tag byte, p []byte) {
	b.length(tag, len(p))
	b.h.Write(p)
}

func (b *KeyBuilder) length(tag byte, n int) {
	b.lenBuf[0] = tag
	m := binary.PutUvarint(b.lenBuf[1:], uint64(n))
	b.h.Write(b.lenBuf[:1+m])
}

// KeyOptions say which request parts beyond method, host, path, query and
// body select a cached response. The zero value keys by caller identity with
// DefaultIdentityHeaders and varies on nothing else.
type KeyOptions struct {
	// Vary lists request header names whose values select the response
	// (for example Accept, or a tenant header), in a fixed order.
	Vary []string
	// Public leaves the caller's identity out of the key, so every caller
	// shares one cached response. Only for tools whose answers do not depend
	// on who asks.
	Public bool
	// IdentityHeaders overrides DefaultIdentityHeaders() when non-nil.
	IdentityHeaders []string
}

// Request resets b and returns the key of req with body: method, host,
// path, sorted query, body (when non-empty), the Vary headers and, unless
// o.Public, the identity headers (every line of each) and the MCP session that are present. It does not allocate
// once b has grown. A nil o means the zero KeyOptions.
//
// body is the request body as the caller read it, not req.Body(): a server
// that streams request bodies (fasthttp's StreamRequestBody) leaves
// req.Body() empty once the stream was read, and a key without the body
// would give every body the same answer.
func (b *KeyBuilder) Request(req *fasthttp.Request, body []byte, o *KeyOptions) Key {
	if o == nil {
		o = &KeyOptions{}
	}
	b.Reset()
	b.Method(req.Header.Method())
	b.Host(req.Host())
	u := req.URI()
	b.Path(u.Path())
	// The path as the agent spelled it, when that differs from the decoded
	// one: ballast forwards escapes as sent (a%2Fb, a%3Bb stay so), and
	// the upstream may tell them from their decoded forms.
	if raw := u.PathOriginal(); !bytes.Equal(raw, u.Path()) {
		b.piece(tagRawPath, raw)
	}
	b.Query(u.QueryString())
	b.Body(body)
	for _, name := range o.Vary {
		b.Vary(s2b(name), req.Header.Peek(name))
	}
	if !o.Public {
		names := o.IdentityHeaders
		if names == nil {
			names = defaultIdentityHeaders[:]
		}
		// Every line of each header: an agent may send a credential
		// header twice, and an upstream that reads the second line must
		// not serve the same key to whoever shares only the first.
		for _, name := range names {
			for _, v := range req.Header.PeekAll(name) {
				if len(v) > 0 {
					b.Identity(s2b(name), v)
				}
			}
		}
		if v := req.Header.Peek(sessionHeader); len(v) > 0 {
			b.Identity(s2b(sessionHeader), v)
		}
	}
	return b.Sum()
}

// s2b views a string's bytes without copying; the hash only reads them.
func s2b(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
