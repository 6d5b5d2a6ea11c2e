package bench

import (
	"bytes"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/valyala/fasthttp"
)

// The classes of answers ballast degraded (see degradedClass): not the
// route's work but what ballast put in its place after the route's
// upstream failed. A run that counted them as served would time the
// failure and the fallback, not the route.
const (
	// classFallback: the route's static_fallback answered
	// (X-Ballast-Fallback), whatever its status.
	classFallback = "fallback"
	// classStale: a stored answer served because the upstream failed or
	// could not be asked (ballast's Cache-Status member with
	// detail=stale-if-error). A fresh cache hit is no failure: it is the
	// route's cache at work (see userConfig.repeatNotes).
	classStale = "stale"
)

var (
	headerFallback    = []byte("X-Ballast-Fallback")
	headerCacheStatus = []byte("Cache-Status")
	staleDetail       = []byte("detail=" + cache.DetailStaleIfError)
)

// degradedClass is classFallback or classStale for an answer ballast
// degraded, "" for any other (the upstream's own, a cache hit, or no
// ballast at all). One pass over h's fields, which the client received
// with their names normalized (X-Ballast-Fallback, Cache-Status): no
// allocation, and a few tens of nanoseconds on a ballast answer.
func degradedClass(h *fasthttp.ResponseHeader) string {
	class := ""
	for k, v := range h.All() {
		switch {
		case bytes.Equal(k, headerFallback) && len(v) > 0:
			return classFallback
		case class == "" && bytes.Equal(k, headerCacheStatus) && staleMember(v):
			class = classStale // unless a static fallback says more
		}
	}
	return class
}

// staleMember reports whether a Cache-Status field line (RFC 9211: a list
// of members, each a cache's name and its parameters) holds ballast's
// member with detail=stale-if-error. Ballast adds its member as a line of
// its own, after any the upstream sent; another cache's member saying the
// same is that cache's business, not ballast's.
func staleMember(line []byte) bool {
	if !bytes.Contains(line, staleDetail) {
		return false // every answer of a route with a cache but this one
	}
	for len(line) > 0 {
		member, rest, _ := bytes.Cut(line, []byte{','})
		line = rest
		member = bytes.TrimLeft(member, " \t")
		name, params, _ := bytes.Cut(member, []byte{';'})
		if string(bytes.TrimRight(name, " \t")) != "ballast" {
			continue
		}
		for len(params) > 0 {
			var p []byte
			p, params, _ = bytes.Cut(params, []byte{';'})
			if bytes.Equal(bytes.Trim(p, " \t"), staleDetail) {
				return true
			}
		}
	}
	return false
}
