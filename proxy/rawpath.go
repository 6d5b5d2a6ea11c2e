package proxy

import "bytes"

// Paths are matched decoded and normalized (fasthttp's ctx.Path: escapes
// decoded, dot segments and doubled slashes removed), so that a route's
// prefix cannot be dodged by spelling it differently. The upstream gets
// the path as the agent sent it whenever that is safe: an escape is not
// its decoded character (%2F is data inside a segment, an object "a/b";
// %3B is not a path parameter's ';'; a signature covers the bytes). It is
// safe when nothing but decoding changed in normalizing: the path as sent
// must decode to exactly the path the route matched, so routing and the
// upstream see the same path. Otherwise the normalized path is escaped
// again (appendUpstreamPath) — never handed on decoded, which a second
// decoding would turn %252e%252e into "..".

// appendRawUpstreamPath appends the upstream path for a request whose
// path as sent is raw and as matched is matched, keeping raw's escapes.
// It reports false, appending nothing, when keeping them is not safe (see
// above); the normalized path is then forwarded.
func (r *route) appendRawUpstreamPath(dst []byte, t *target, raw, matched []byte) ([]byte, bool) {
	if len(raw) == 0 || raw[0] != '/' || !decodesTo(raw, matched) {
		return dst, false
	}
	rest := raw
	if r.strip {
		// The prefix is plain ASCII: raw must spell it the same way.
		n := r.stripLen()
		if len(raw) < n || len(matched) < n || string(raw[:n]) != string(matched[:n]) {
			return dst, false
		}
		// And the slash after it must be a separator, not an escaped
		// one: "/tool%2Fx" matched "/tool/" only once decoded.
		if len(raw) > n && raw[n] != '/' {
			return dst, false
		}
		rest = raw[n:]
	}
	return appendPath(appendBase(dst, t, rest), rest, true), true
}

// decodesTo reports whether percent-decoding raw gives exactly want. A
// malformed escape never matches.
func decodesTo(raw, want []byte) bool {
	j := 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			if i+2 >= len(raw) {
				return false
			}
			hi, ok1 := unhex(raw[i+1])
			lo, ok2 := unhex(raw[i+2])
			if !ok1 || !ok2 {
				return false
			}
			c = hi<<4 | lo
			i += 2
		}
		if j >= len(want) || want[j] != c {
			return false
		}
		j++
	}
	return j == len(want)
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// climbingSegment returns the segment of path (the decoded, normalized
// path the route matched) that an upstream more lenient than RFC 3986
// would resolve as ".." above the route's prefix, or nil when there is
// none. Normalizing resolved every "/"-separated dot segment already; what
// is left climbs only on an upstream that drops ";" path parameters
// before resolving dot segments (Tomcat, Jetty: "..;" and "..;x=1" are
// "..") or that reads "\" as "/" (IIS, Windows servers: "..\"). A path
// that climbs on such an upstream but stays inside the prefix, as
// "/a/..;/b" does, is forwarded unchanged; one that would leave it is
// refused rather than rewritten, since ballast cannot know how the
// upstream reads it. Envoy's normalize_path does not treat these
// spellings either (nor does nginx); this closes the gap for ballast's
// prefix routes.
func (r *route) climbingSegment(path []byte) []byte {
	if bytes.IndexByte(path, ';') < 0 && bytes.IndexByte(path, '\\') < 0 {
		return nil // the normal path: nothing but RFC 3986 dot segments
	}
	depth := 0
	rest := path[min(r.stripLen(), len(path)):]
	for len(rest) > 0 {
		end := 0
		for end < len(rest) && rest[end] != '/' && rest[end] != '\\' {
			end++
		}
		seg := rest[:end]
		name := seg
		if i := bytes.IndexByte(name, ';'); i >= 0 {
			name = name[:i]
		}
		switch string(name) {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return seg
			}
		default:
			depth++
		}
		if end == len(rest) {
			break
		}
		rest = rest[end+1:]
	}
	return nil
}
