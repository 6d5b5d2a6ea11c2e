package cache

import (
	"bytes"
	"strconv"
	"time"

	"github.com/ballast-proxy/ballast/internal/ascii"
	"github.com/valyala/fasthttp"
)

// Lifetime is the freshness lifetime the upstream gave a response (RFC
// 9111 §4.2.1), read from its stored header lines (Entry.Header): 0 when
// it said no-cache (it may not be reused without asking the upstream
// again), else its s-maxage (a shared cache's own), else its max-age, else
// Expires minus storedAt, standing for the response's Date, which is not
// stored (an Expires that is not a valid date has passed already). Of a
// directive or an Expires given more than once, the first is used (RFC
// 9111 §4.2.1): "max-age=0, max-age=3600" is not an hour. ok is
// false when the response says none of these: the route's ttl alone
// decides then. A lifetime is never more than the route's ttl, which caps
// it (Cache.Get).
func Lifetime(header []byte, storedAt time.Time) (lifetime time.Duration, ok bool) {
	var (
		maxAge, sMaxAge       time.Duration = -1, -1
		sawMaxAge, sawSMaxAge bool
		expires               []byte
		noCache, sawExpiresLn bool
	)
	headerLines(header, func(name, value []byte) bool {
		switch {
		case ascii.EqualFoldLower(name, "cache-control"):
			for d := range Members(value) {
				dn, dv, _ := bytes.Cut(d, []byte("="))
				dn = bytes.TrimSpace(dn)
				switch {
				case ascii.EqualFoldLower(dn, "no-cache"):
					noCache = true
				case ascii.EqualFoldLower(dn, "s-maxage") && !sawSMaxAge:
					sMaxAge, sawSMaxAge = deltaSeconds(dv), true
				case ascii.EqualFoldLower(dn, "max-age") && !sawMaxAge:
					maxAge, sawMaxAge = deltaSeconds(dv), true
				}
			}
		case ascii.EqualFoldLower(name, "expires") && !sawExpiresLn:
			expires, sawExpiresLn = value, true
		}
		return true
	})
	switch {
	case noCache:
		return 0, true
	case sMaxAge >= 0:
		return sMaxAge, true
	case maxAge >= 0:
		return maxAge, true
	case sawExpiresLn:
		t, err := fasthttp.ParseHTTPDate(bytes.TrimSpace(expires))
		if err != nil {
			return 0, true
		}
		return max(t.Sub(storedAt), 0), true
	}
	return 0, false
}

// maxDeltaSeconds is the largest delta-seconds a cache need hold (RFC 9111
// §1.2.2): 2^31 seconds, about 68 years.
const maxDeltaSeconds = 2147483648 * time.Second

// deltaSeconds reads a directive's delta-seconds value (possibly quoted),
// or -1 when it is not one (digits only: "99999999999999999999x" is not
// one, however long). Values too large for a Duration saturate.
func deltaSeconds(v []byte) time.Duration {
	v = bytes.Trim(bytes.TrimSpace(v), `"`)
	for _, c := range v {
		if c < '0' || c > '9' {
			return -1 // ParseUint would report a long one out of range
		}
	}
	n, err := strconv.ParseUint(string(v), 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return time.Duration(1<<63 - 1)
		}
		return -1
	}
	if n > uint64((1<<63-1)/int64(time.Second)) {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(n) * time.Second
}
