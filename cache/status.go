package cache

import (
	"strconv"
	"time"
)

// Fwd is the RFC 9211 fwd parameter: why the request went upstream.
type Fwd string

// The fwd values this cache reports (RFC 9211 §2.2).
const (
	// FwdURIMiss: nothing was stored for the request.
	FwdURIMiss Fwd = "uri-miss"
	// FwdStale: a stored response was found but it was stale.
	FwdStale Fwd = "stale"
	// FwdRequest: a fresh response was stored but the request's directives
	// (Cache-Control: no-cache from the agent) did not allow its use.
	FwdRequest Fwd = "request"
	// FwdBypass: the cache is configured not to handle this request (for
	// example fallback mode, which always goes upstream first, or a method
	// the route does not cache).
	FwdBypass Fwd = "bypass"
)

// DetailStaleIfError is the detail token for a stale response served
// because upstream failed.
const DetailStaleIfError = "stale-if-error"

// Status is one Cache-Status member (RFC 9211): how the cache handled this
// request. The zero value with Hit false and Fwd "" renders only the name.
//
// RFC 9211 defines hit as "not forwarded": a response served from the cache
// after the request went upstream and failed is not a hit but a forward
// with the stored response served, so stale-if-error renders as
//
//	ballast; fwd=stale; fwd-status=503; ttl=-42; detail=stale-if-error
//
// (fwd-status omitted when upstream sent no response: connect error,
// timeout), and a stale response served without trying upstream at all (an
// open breaker) as "ballast; hit; ttl=-42; detail=stale-if-error", a stale
// hit having a negative ttl as in RFC 9211 §3.
type Status struct {
	Hit       bool          // served from the cache without going upstream
	Fwd       Fwd           // why the request went upstream; "" when Hit
	FwdStatus int           // status upstream returned; 0 omits it
	TTL       time.Duration // freshness left (Lookup.Remaining); used when HasTTL
	HasTTL    bool
	Stored    bool   // the upstream response was stored
	Collapsed bool   // the request waited on another's identical upstream call
	Detail    string // an RFC 8941 token, e.g. DetailStaleIfError; "" omits it
}

// Hit is the status of a fresh response served from the cache.
func Hit(l Lookup) Status { return Status{Hit: true, TTL: l.Remaining, HasTTL: true} }

// Miss is the status of a response fetched upstream because nothing usable
// was stored (fwd=uri-miss, or fwd=stale when only a stale entry was).
func Miss(fwd Fwd, stored, collapsed bool) Status {
	return Status{Fwd: fwd, Stored: stored, Collapsed: collapsed}
}

// StaleIfError is the status of stale entry l served after upstream failed
// with fwdStatus (0 when it sent no response). forwarded is false when the
// request was never sent upstream (breaker open), which makes it a stale hit.
func StaleIfError(l Lookup, forwarded bool, fwdStatus int) Status {
	s := Status{TTL: l.Remaining, HasTTL: true, Detail: DetailStaleIfError}
	if forwarded {
		s.Fwd, s.FwdStatus = FwdStale, fwdStatus
	} else {
		s.Hit = true
	}
	return s
}

// Append appends s as one Cache-Status list member named name (a token;
// "ballast" by convention) to dst. Add the result as its own Cache-Status
// field line (fasthttp ResponseHeader.AddBytesV) so members from upstream
// caches are kept, as RFC 9211 asks. It does not allocate when dst has room.
func (s Status) Append(dst []byte, name string) []byte {
	dst = append(dst, name...)
	if s.Hit {
		dst = append(dst, "; hit"...)
	} else if s.Fwd != "" {
		dst = append(dst, "; fwd="...)
		dst = append(dst, s.Fwd...)
		if s.FwdStatus > 0 {
			dst = append(dst, "; fwd-status="...)
			dst = strconv.AppendInt(dst, int64(s.FwdStatus), 10)
		}
	}
	if s.HasTTL {
		dst = append(dst, "; ttl="...)
		dst = strconv.AppendInt(dst, ttlSeconds(s.TTL), 10)
	}
	if s.Stored {
		dst = append(dst, "; stored"...)
	}
	if s.Collapsed {
		dst = append(dst, "; collapsed"...)
	}
	if s.Detail != "" {
		dst = append(dst, "; detail="...)
		dst = append(dst, s.Detail...)
	}
	return dst
}

// ttlSeconds rounds toward negative infinity so that a response stale by
// any amount shows a negative ttl, and a fresh one never overstates.
func ttlSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d < 0 && d%time.Second != 0 {
		s--
	}
	return s
}

// AppendAge appends the Age header value for age: whole seconds, rounded
// down, never negative (RFC 9111 §5.1).
func AppendAge(dst []byte, age time.Duration) []byte {
	return strconv.AppendInt(dst, int64(max(age, 0)/time.Second), 10)
}
