package ratelimit

import "github.com/redis/go-redis/v9"

// The scripts implement GCRA (the generic cell rate algorithm) on one key
// holding the bucket's theoretical arrival time (TAT) in microseconds of the
// Redis server's clock (TIME), so every replica decides against the same
// clock. With emission interval T = 1/rate and tolerance tau = burst·T, a
// bucket at TAT holds (now + tau − TAT)/T tokens (at most burst; negative
// while reservations are queued): the token bucket of x/time/rate, stored
// as one number. The key expires (PX) when the bucket would be full again.
//
// Times are Lua numbers (doubles): microseconds since the epoch are exact up
// to 2^53 µs (year 2255), and TAT is stored with %.17g so it round-trips.

// reserveScript takes ARGV[3] units if the wait for them is at most ARGV[4]
// µs, and returns {1, wait µs, tokens left} or, refusing and taking
// nothing, {0, wait µs, tokens now}. ARGV[1] is T and ARGV[2] tau, in µs.
const reserveScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tau, n, maxWait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new = tat + n * T
local wait = new - tau - now
if wait < 0.001 then wait = 0 end
local tokens = (now + tau - tat) / T
if wait > maxWait then
  return {0, math.ceil(wait), tostring(tokens)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {1, math.ceil(wait), tostring(tokens - n)}
`

// cancelScript gives back the ARGV[2] units of a reservation whose caller
// would have proceeded ARGV[3] µs from now, as far as reservations made
// after it allow (x/time/rate's CancelAt): the TAT moves back by n·T minus
// what later reservations built on it. ARGV[1] is T, ARGV[4] tau.
const cancelScript = `
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if not cur then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, n, remaining, tau = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local mine = now + remaining + tau
local later = cur - mine
if later < 0 then later = 0 end
local restore = n * T - later
if restore <= 0 then return 0 end
local new = cur - restore
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
return 1
`

// adjustScript takes ARGV[2] more units (debt, capped at ARGV[4] units) or,
// when negative, gives back −ARGV[2] units (capped at the burst ARGV[3]):
// the TAT moves by delta·T, never below now (a full bucket).
const adjustScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, delta, burst, maxDebt = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
if delta > 0 then
  if delta > maxDebt then delta = maxDebt end
else
  if delta < -burst then delta = -burst end
end
local new = tat + delta * T
if new <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.17g', new), 'PX', math.ceil((new - now) / 1000) + 1)
end
return 1
`

// quotaScript returns the tokens the bucket holds now (at most the burst).
// ARGV[1] is T, ARGV[2] tau.
const quotaScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, tau = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
return tostring((now + tau - tat) / T)
`

// extendScript extends one credential's pause in an upstream's hash of
// pauses, KEYS[1]: field ARGV[1] becomes the Unix-millisecond time ARGV[2]
// unless it already holds a later time or ARGV[2] has passed (on the
// server's clock). Extending also drops the pauses that have ended, and
// the hash expires with the last one. It returns 1 when it extended.
const extendScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local untilMs = tonumber(ARGV[2])
if untilMs <= now then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '')
if cur and cur >= untilMs then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local last = untilMs
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local v = tonumber(all[i + 1]) or 0
  if v <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif v > last then
    last = v
  end
end
redis.call('PEXPIRE', KEYS[1], last - now)
return 1
`

// redisScripts are one limiter's scripts; redis.Script runs EVALSHA and
// falls back to EVAL (loading the script) on NOSCRIPT.
type redisScripts struct {
	reserve, cancel, adjust, quota *redis.Script
}

func newRedisScripts() *redisScripts {
	return &redisScripts{
		reserve: redis.NewScript(reserveScript),
		cancel:  redis.NewScript(cancelScript),
		adjust:  redis.NewScript(adjustScript),
		quota:   redis.NewScript(quotaScript),
	}
}
