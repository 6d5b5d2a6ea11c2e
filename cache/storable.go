package cache

import (
	"bytes"

	"github.com/ballast-proxy/ballast/internal/ascii"
	"github.com/valyala/fasthttp"
)

// Storable reports whether a response may be stored. It never allows
//
//   - a status outside 200, 203, 204, 300, 301, 308, 404, 410 (RFC 9110's
//     heuristically cacheable codes, less 206 partial content, which this
//     cache cannot assemble, and 405, 414 and 501, which say more about the
//     request than the resource);
//   - a Set-Cookie header (it would hand one caller's session to others);
//   - Cache-Control: no-store;
//   - Cache-Control: private, unless allowPrivate (a route that keys by
//     caller identity, as it does by default, may allow it);
//   - Vary: * (no request could ever match it).
//
// Cache-Control: no-cache is allowed: ballast serves a stored response only
// under the route's explicit cache policy (fresh for ttl, or as a fallback
// when upstream failed). Validation is not checked here: store only
// responses that passed validation.
func Storable(status int, h *fasthttp.ResponseHeader, allowPrivate bool) bool {
	switch status {
	case 200, 203, 204, 300, 301, 308, 404, 410:
	default:
		return false
	}
	ok := true
	for k, v := range h.All() {
		switch {
		case ascii.EqualFoldLower(k, "set-cookie"):
			ok = false
		case ascii.EqualFoldLower(k, "vary"):
			for d := range Members(v) {
				if string(d) == "*" {
					ok = false
				}
			}
		case ascii.EqualFoldLower(k, "cache-control"):
			for d := range Members(v) {
				name, _, _ := bytes.Cut(d, []byte("="))
				name = bytes.TrimSpace(name)
				if ascii.EqualFoldLower(name, "no-store") || (!allowPrivate && ascii.EqualFoldLower(name, "private")) {
					ok = false
				}
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// RequestNoCache reports whether the agent asked for a response from
// upstream rather than from the cache: Cache-Control: no-cache or no-store
// (or max-age=0), or Pragma: no-cache without a Cache-Control header.
func RequestNoCache(h *fasthttp.RequestHeader) bool {
	cc := h.Peek(fasthttp.HeaderCacheControl)
	if len(cc) == 0 {
		for d := range Members(h.Peek(fasthttp.HeaderPragma)) {
			if ascii.EqualFoldLower(d, "no-cache") {
				return true
			}
		}
		return false
	}
	for d := range Members(cc) {
		name, val, _ := bytes.Cut(d, []byte("="))
		name = bytes.TrimSpace(name)
		if ascii.EqualFoldLower(name, "no-cache") || ascii.EqualFoldLower(name, "no-store") ||
			(ascii.EqualFoldLower(name, "max-age") && string(bytes.Trim(bytes.TrimSpace(val), `"`)) == "0") {
			return true
		}
	}
	return false
}

// RequestNoStore reports whether the agent's Cache-Control says no-store:
// its answer must not be stored (RFC 9111 §5.2.1.5), though a stored one
// may still be read.
func RequestNoStore(h *fasthttp.RequestHeader) bool {
	for _, cc := range h.PeekAll(fasthttp.HeaderCacheControl) {
		for d := range Members(cc) {
			if ascii.EqualFoldLower(d, "no-store") {
				return true
			}
		}
	}
	return false
}

// Members yields the comma-separated, whitespace-trimmed, non-empty
// members of a header value whose list may hold quoted strings
// (Cache-Control, Pragma, Vary, Cache-Status). A comma inside a quoted
// string (private="a,b") does not split, nor does one after a backslash
// escape inside it.
func Members(v []byte) func(yield func([]byte) bool) {
	return func(yield func([]byte) bool) {
		start, quoted := 0, false
		for i := 0; i <= len(v); i++ {
			if i < len(v) {
				switch v[i] {
				case '"':
					quoted = !quoted
					continue
				case '\\':
					if quoted && i+1 < len(v) { // an escape at the very end ends nothing
						i++
					}
					continue
				case ',':
					if quoted {
						continue
					}
				default:
					continue
				}
			}
			if d := bytes.TrimSpace(v[start:min(i, len(v))]); len(d) > 0 {
				if !yield(d) {
					return
				}
			}
			start = i + 1
		}
	}
}
