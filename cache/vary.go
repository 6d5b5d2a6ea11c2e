package cache

import (
	"bytes"

	"github.com/ballast-proxy/ballast/internal/ascii"
	"github.com/valyala/fasthttp"
)

// MaxVary is the most request headers a route's keys may vary on, its
// configured vary list and those learned from upstream answers together.
const MaxVary = 16

// VaryCovered reports whether every request header that h's Vary names is
// already part of each key o builds: listed in o.Vary or, unless o.Public,
// an identity header. A stored answer whose Vary names another header
// would be served to requests that differ in it (an answer compressed
// for one caller's Accept-Encoding, or one computed for another caller's
// credentials on a public route). "Vary: *" is Storable's to refuse. It
// does not allocate.
func (o *KeyOptions) VaryCovered(h *fasthttp.ResponseHeader) bool {
	for k, v := range h.All() {
		if !ascii.EqualFoldLower(k, "vary") {
			continue
		}
		for name := range Members(v) {
			if !bytes.Equal(name, []byte("*")) && !o.covers(name) {
				return false
			}
		}
	}
	return true
}

// WithVary returns a copy of o that also varies on each request header
// h's Vary names and o does not cover yet, and whether it could: it
// cannot when that would make more than MaxVary. o is not changed.
func (o *KeyOptions) WithVary(h *fasthttp.ResponseHeader) (*KeyOptions, bool) {
	out := *o
	out.Vary = append([]string(nil), o.Vary...)
	for k, v := range h.All() {
		if !ascii.EqualFoldLower(k, "vary") {
			continue
		}
		for name := range Members(v) {
			if bytes.Equal(name, []byte("*")) || out.covers(name) {
				continue
			}
			if len(out.Vary) == MaxVary {
				return o, false
			}
			out.Vary = append(out.Vary, string(name))
		}
	}
	return &out, true
}

// covers reports whether keys built with o include the request header
// name.
func (o *KeyOptions) covers(name []byte) bool {
	for _, n := range o.Vary {
		if bytes.EqualFold(name, s2b(n)) {
			return true
		}
	}
	if o.Public {
		return false
	}
	if bytes.EqualFold(name, s2b(sessionHeader)) {
		return true
	}
	ids := o.IdentityHeaders
	if ids == nil {
		ids = defaultIdentityHeaders[:]
	}
	for _, n := range ids {
		if bytes.EqualFold(name, s2b(n)) {
			return true
		}
	}
	return false
}
