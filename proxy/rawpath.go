package proxy

// Paths are matched decoded and normalized (fasthttp's ctx.Path: escapes
// decoded, dot segments and doubled slashes removed), so that a route's
// prefix cannot be dodged by spelling it differently. Forwarding that form
// is right for every path but one kind: an escaped slash, %2F, is data
// inside a segment (an object name "a/b" in a storage API, a repository
// "owner/name"), and decoding it makes it a separator the upstream reads
// differently. Such paths are forwarded as the agent sent them, the
// route's prefix rewritten byte for byte, but only when nothing else
// changed in normalizing them: the path as sent must decode to exactly the
// path the route matched, so routing and the upstream see the same path.

// appendRawUpstreamPath appends the upstream path for a request whose
// path as sent is raw and as matched is matched, keeping raw's escapes.
// It reports false, appending nothing, when raw holds no escaped slash or
// keeping its escapes is not safe (see above); the normalized path is
// then forwarded.
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
	dst = append(dst, t.basePath...)
	if len(rest) == 0 || rest[0] != '/' {
		dst = append(dst, '/')
	}
	for _, c := range rest { // bytes a path may not hold raw are escaped; escapes are kept
		if c == '%' || pathByte(c) {
			dst = append(dst, c)
		} else {
			dst = append(dst, '%', "0123456789ABCDEF"[c>>4], "0123456789ABCDEF"[c&15])
		}
	}
	return dst, true
}

// hasEscapedSlash reports whether p holds %2F or %2f.
func hasEscapedSlash(p []byte) bool {
	for i := 0; i+2 < len(p); i++ {
		if p[i] == '%' && p[i+1] == '2' && (p[i+2] == 'F' || p[i+2] == 'f') {
			return true
		}
	}
	return false
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
