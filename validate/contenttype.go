package validate

import (
	"bytes"
	"strings"

	"github.com/ballast-proxy/ballast/internal/ascii"
)

// mediaPattern is an allowed media type, lower-cased: "type/subtype", or
// "type/" for "type/*", or "" for "*/*".
type mediaPattern string

// parseMediaPattern validates and normalises one Config.ContentType entry.
func parseMediaPattern(s string) (mediaPattern, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "*/*" {
		return "", true
	}
	typ, sub, ok := strings.Cut(s, "/")
	if !ok || !isToken(typ) || typ == "*" {
		return "", false
	}
	if sub == "*" {
		return mediaPattern(typ + "/"), true
	}
	if !isToken(sub) {
		return "", false
	}
	return mediaPattern(s), true
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$&-^_.+*", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// mediaType returns the media type of a Content-Type value: the part before
// any ';', without surrounding whitespace. It does not allocate.
func mediaType(ct []byte) []byte {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return bytes.Trim(ct, " \t")
}

// matches reports whether the media type mt (not lower-cased) matches p.
func (p mediaPattern) matches(mt []byte) bool {
	if len(mt) == 0 {
		return false
	}
	if p == "" {
		return true
	}
	if p[len(p)-1] == '/' {
		return len(mt) > len(p) && ascii.EqualFoldLower(mt[:len(p)], string(p))
	}
	return ascii.EqualFoldLower(mt, string(p))
}

// IsStream reports whether a Content-Type value is a streaming media type,
// whose body is a sequence of events or records relayed as it arrives, and
// therefore gets only the head checks: server-sent events
// (text/event-stream), newline-delimited JSON (application/x-ndjson, as
// Ollama streams, and application/ndjson), JSON Lines (application/jsonl,
// application/x-jsonlines) and JSON text sequences (application/json-seq,
// RFC 7464). It does not allocate.
func IsStream(contentType []byte) bool {
	mt := mediaType(contentType)
	for _, s := range [...]string{"text/event-stream", "application/x-ndjson", "application/ndjson",
		"application/jsonl", "application/x-jsonlines", "application/json-seq"} {
		if ascii.EqualFoldLower(mt, s) {
			return true
		}
	}
	return false
}
