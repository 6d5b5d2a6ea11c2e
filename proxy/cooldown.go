package proxy

import (
	"encoding/hex"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballast-proxy/ballast/cache"
	"github.com/valyala/fasthttp"
)

// maxCooldowns bounds the credentials an upstream keeps pauses for. When
// it is full of pauses that have not ended, a new credential's 429 pauses
// only the request that got it (its retry still waits for the hint).
const maxCooldowns = 10_000

// credential names the API key a request carries upstream: headerSum of
// its credentialHeaders after the route's header rules, so a key the route
// sets is everyone's and keys the agents bring are each their own. The
// requests that carry none share the sum of nothing.
type credential [12]byte

// credentialHeaders are the identity headers that carry API keys. Cookies
// are left out: they change as sessions do, and providers do not count
// quotas by them.
var credentialHeaders = slices.DeleteFunc(cache.DefaultIdentityHeaders(), func(h string) bool { return h == "Cookie" })

func credentialOf(h *fasthttp.RequestHeader) credential {
	return credential(headerSum(h, credentialHeaders))
}

// String is the credential's hex form, the field name the fleet shares.
func (c credential) String() string { return hex.EncodeToString(c[:]) }

// parseCredential reads String's form back.
func parseCredential(s string) (credential, bool) {
	var c credential
	if len(s) != hex.EncodedLen(len(c)) {
		return credential{}, false
	}
	if _, err := hex.Decode(c[:], []byte(s)); err != nil {
		return credential{}, false
	}
	return c, true
}

// cooldowns are an upstream's pauses after the provider said a key is rate
// limited until some instant (a 429's Retry-After, reset headers). Every
// request to the upstream with the same credential waits them out, on
// every route; requests with other keys do not, because providers limit
// per key and one tenant's quota must not stall the others. The zero value
// has no pauses. Safe for concurrent use.
type cooldowns struct {
	// last is the end of the longest pause, in Unix nanoseconds (0:
	// none was ever set). Before it, a request looks its credential up;
	// after it, nothing is paused and the request path reads only this.
	last atomic.Int64

	mu    sync.Mutex
	until map[credential]int64 // Unix nanoseconds
	// capped are the fleet's pauses (Unix nanoseconds) that were longer
	// than the cap when they were taken, and were taken for the cap only:
	// seeing the same pause again takes nothing, so a fleet pause of a year
	// is not renewed for the cap on every sync.
	capped map[credential]int64
}

// Remaining is how long requests carrying h's credential must still wait
// at now (0 when they need not).
func (c *cooldowns) Remaining(h *fasthttp.RequestHeader, now time.Time) time.Duration {
	n := now.UnixNano()
	if c.last.Load() <= n {
		return 0
	}
	cred := credentialOf(h)
	c.mu.Lock()
	u := c.until[cred]
	c.mu.Unlock()
	if u > n {
		return time.Duration(u - n)
	}
	return 0
}

// Extend pauses cred's requests until until, unless they are already
// paused at least as long, until is not after now, or the table is full
// of pauses that have not ended. It reports whether it extended.
func (c *cooldowns) Extend(cred credential, until, now time.Time) bool {
	extended, _ := c.extend(cred, until, now)
	return extended
}

// extend is Extend, reporting too whether the pause began: cred had none
// in force at now.
func (c *cooldowns) extend(cred credential, until, now time.Time) (extended, began bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.extendLocked(cred, until, now)
}

// Adopt takes a pause of the fleet's (one another replica published): cred's
// requests pause until until, but for at most limit from now. A pause
// longer than that is taken once, for limit: taking the same pause again
// (every sync reads it) does nothing. The memory of the pauses taken so is
// bounded like the pauses (maxCooldowns): when it is full of pauses not
// over, a long pause is still taken for limit, but not remembered, so the
// next sync may renew it. It reports whether it extended, and whether it
// cut the pause to limit.
func (c *cooldowns) Adopt(cred credential, until time.Time, limit time.Duration, now time.Time) (extended, capped bool) {
	u, n := until.UnixNano(), now.UnixNano()
	if u <= n {
		return false, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if until.Sub(now) <= limit {
		extended, _ = c.extendLocked(cred, until, now)
		return extended, false
	}
	if c.capped[cred] == u {
		return false, false
	}
	if c.capped == nil {
		c.capped = map[credential]int64{}
	}
	if _, ok := c.capped[cred]; !ok && len(c.capped) >= maxCooldowns {
		for k, v := range c.capped {
			if v <= n {
				delete(c.capped, k)
			}
		}
	}
	if _, ok := c.capped[cred]; ok || len(c.capped) < maxCooldowns {
		c.capped[cred] = u
	}
	extended, _ = c.extendLocked(cred, now.Add(limit), now)
	return extended, true
}

// extendLocked is extend with c.mu held.
func (c *cooldowns) extendLocked(cred credential, until, now time.Time) (extended, began bool) {
	u, n := until.UnixNano(), now.UnixNano()
	if u <= n {
		return false, false
	}
	cur, ok := c.until[cred]
	if ok && cur >= u {
		return false, false
	}
	began = !ok || cur <= n
	if c.until == nil {
		c.until = map[credential]int64{}
	}
	if _, ok := c.until[cred]; !ok && len(c.until) >= maxCooldowns {
		for k, v := range c.until {
			if v <= n {
				delete(c.until, k)
			}
		}
		if len(c.until) >= maxCooldowns {
			return false, false
		}
	}
	c.until[cred] = u
	for {
		cur := c.last.Load()
		if cur >= u || c.last.CompareAndSwap(cur, u) {
			return true, began
		}
	}
}

// InForce returns the pauses still in force at now, by credential.
func (c *cooldowns) InForce(now time.Time) map[credential]time.Time {
	n := now.UnixNano()
	if c.last.Load() <= n {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[credential]time.Time, len(c.until))
	for cred, u := range c.until {
		if u > n {
			out[cred] = time.Unix(0, u)
		}
	}
	return out
}

// Longest is how long the longest pause still lasts at now (0 when none
// does): the upstream's cool-down on /status and in ballast_cooldown_seconds.
func (c *cooldowns) Longest(now time.Time) time.Duration {
	if d := time.Duration(c.last.Load() - now.UnixNano()); d > 0 {
		return d
	}
	return 0
}
