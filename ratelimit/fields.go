package ratelimit

import (
	"strconv"
	"time"
)

// defaultPolicyName names a policy whose name is empty.
const defaultPolicyName = "default"

// AppendRateLimitPolicy appends the value of an IETF RateLimit-Policy field
// (draft-ietf-httpapi-ratelimit-headers) for q under the policy name to dst,
// for example `"openai";q=50;w=1`. The name is written as a structured-field
// string: characters outside printable ASCII are dropped, `"` and `\` are
// escaped, and an empty name becomes "default". It allocates only when dst
// lacks capacity.
func AppendRateLimitPolicy(dst []byte, name string, q Quota) []byte {
	dst = appendPolicyName(dst, name)
	dst = append(dst, ";q="...)
	dst = strconv.AppendInt(dst, max(q.Limit, 0), 10)
	dst = append(dst, ";w="...)
	return strconv.AppendInt(dst, ceilSeconds(q.Window), 10)
}

// AppendRateLimit appends the value of an IETF RateLimit field for q under
// the policy name to dst, for example `"openai";r=0;t=3`: r is the units
// remaining, t the whole seconds (rounded up) until the bucket is full. It
// allocates only when dst lacks capacity.
func AppendRateLimit(dst []byte, name string, q Quota) []byte {
	dst = appendPolicyName(dst, name)
	dst = append(dst, ";r="...)
	dst = strconv.AppendInt(dst, max(q.Remaining, 0), 10)
	dst = append(dst, ";t="...)
	return strconv.AppendInt(dst, ceilSeconds(q.Reset), 10)
}

// AppendRateLimitFields appends both field values to dst, the policy first,
// and returns dst grown by both together with the two values, which are
// sub-slices of it (set them as the RateLimit-Policy and RateLimit response
// headers). With enough capacity in dst (128 bytes plus the name) it does
// not allocate.
func AppendRateLimitFields(dst []byte, name string, q Quota) (buf, policy, limit []byte) {
	start := len(dst)
	dst = AppendRateLimitPolicy(dst, name, q)
	mid := len(dst)
	dst = AppendRateLimit(dst, name, q)
	return dst, dst[start:mid:mid], dst[mid:]
}

// RetryAfterSeconds is d in whole seconds for a Retry-After field, rounded up
// so that a client waiting that long finds the units available; 0 when d ≤ 0.
func RetryAfterSeconds(d time.Duration) int64 { return ceilSeconds(d) }

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	s := int64(d / time.Second)
	if d%time.Second != 0 {
		s++
	}
	return s
}

func appendPolicyName(dst []byte, name string) []byte {
	dst = append(dst, '"')
	start := len(dst)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c < 0x20 || c > 0x7e {
			continue
		}
		if c == '"' || c == '\\' {
			dst = append(dst, '\\')
		}
		dst = append(dst, c)
	}
	if len(dst) == start {
		dst = append(dst, defaultPolicyName...)
	}
	return append(dst, '"')
}
