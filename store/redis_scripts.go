package store

import (
	"fmt"

	"github.com/redis/go-redis/v9"
)

// The scripts read an encoded record (see codec.go) at fixed offsets, in
// Lua's 1-based positions: the state byte at 2, the token at 43..50, and
// Completed is state 2. The compile-time checks below fail the build if the
// codec's layout or the State values change without the scripts.
var (
	_ = [1]struct{}{}[stateOffset-1]     // the state byte at offset 1
	_ = [1]struct{}{}[tokenOffset-42]    // the token at offsets 42..49
	_ = [1]struct{}{}[int(Completed)-2]  // Completed == 2
	_ = [1]struct{}{}[int(JobQueued)-1]  // a job's state byte: JobQueued == 1
	_ = [1]struct{}{}[int(JobRunning)-2] // and JobRunning == 2
)

// claimScript takes KEYS[1] for a new claim when it is absent (ARGV[3] is
// empty) or still holds the claim identified by ARGV[3] (state byte and
// token, see claimID): it stores ARGV[1] with PX ARGV[2], publishes on the
// key when it replaced a record (waking the old claim's waiters), and
// returns 1. Otherwise it returns the current record, or 0 when the record
// expected is gone.
const claimScript = `
local cur = redis.call('GET', KEYS[1])
if ARGV[3] == '' then
  if cur then return cur end
else
  if not cur then return 0 end
  if string.sub(cur, 2, 2) .. string.sub(cur, 43, 50) ~= ARGV[3] then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if cur then redis.call('PUBLISH', KEYS[1], '') end
return 1
`

// completeScript replaces the claim with token ARGV[1] by the completed
// record ARGV[2] (or, for Replace, any record) with PX ARGV[3], publishes,
// and returns 1; it returns 0 when the claim is gone, taken over or
// already completed.
const completeScript = `
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 43, 50) ~= ARGV[1] or string.byte(cur, 2) == 2 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', KEYS[1], '')
return 1
`

// releaseScript deletes the claim with token ARGV[1], publishes, and
// returns 1; 0 when the claim is gone, taken over or completed.
const releaseScript = `
local cur = redis.call('GETRANGE', KEYS[1], 0, 49)
if cur == '' or string.sub(cur, 43, 50) ~= ARGV[1] or string.byte(cur, 2) == 2 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[1], '')
return 1
`

// sweepRecordScript deletes the record identified by ARGV[1] (see claimID)
// if it is still there, publishes, and returns 1.
const sweepRecordScript = `
local cur = redis.call('GETRANGE', KEYS[1], 0, 49)
if cur == '' or string.sub(cur, 2, 2) .. string.sub(cur, 43, 50) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', KEYS[1], '')
return 1
`

// putJobScript stores job ARGV[1] (id ARGV[3]) at KEYS[1] and adds it to
// the id set KEYS[2], unless it is new and the set already holds ARGV[2]
// ids: then it returns 0.
const putJobScript = `
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
`

// deleteJobScript removes job KEYS[1] (id ARGV[1]) from the store; with
// ARGV[2] set, only if its first 10 bytes (version, state, ExpiresAt) still
// equal ARGV[2]. It returns 1 when it removed the job.
const deleteJobScript = `
if ARGV[2] ~= '' and redis.call('GETRANGE', KEYS[1], 0, 9) ~= ARGV[2] then return 0 end
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return n
`

// leaseJobScript takes or renews the lease KEYS[2] of job KEYS[1] for owner
// ARGV[1] at now ARGV[2] (Unix milliseconds): unless the job is stored and
// final (its state byte, at 2, is neither JobQueued nor JobRunning), or the
// lease ("<until ms> <owner>") belongs to another owner and runs past now,
// it stores "ARGV[3] ARGV[1]" with PX ARGV[4] and returns 1; else 0.
const leaseJobScript = `
local st = redis.call('GETRANGE', KEYS[1], 1, 1)
if st ~= '' and string.byte(st) ~= 1 and string.byte(st) ~= 2 then return 0 end
local cur = redis.call('GET', KEYS[2])
if cur then
  local sp = string.find(cur, ' ', 1, true)
  local untilms = sp and tonumber(string.sub(cur, 1, sp - 1))
  if untilms and string.sub(cur, sp + 1) ~= ARGV[1] and untilms > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[2], ARGV[3] .. ' ' .. ARGV[1], 'PX', ARGV[4])
return 1
`

// redisScripts are one store's scripts. redis.Script runs EVALSHA and falls
// back to EVAL (which loads the script) on NOSCRIPT, so a restarted or new
// server needs nothing done.
type redisScripts struct {
	claim, complete, release, sweepRecord, putJob, deleteJob, leaseJob *redis.Script
}

func newRedisScripts() *redisScripts {
	return &redisScripts{
		claim:       redis.NewScript(claimScript),
		complete:    redis.NewScript(completeScript),
		release:     redis.NewScript(releaseScript),
		sweepRecord: redis.NewScript(sweepRecordScript),
		putJob:      redis.NewScript(putJobScript),
		deleteJob:   redis.NewScript(deleteJobScript),
		leaseJob:    redis.NewScript(leaseJobScript),
	}
}

// scriptInt reads a script's integer reply.
func scriptInt(v any) (int64, error) {
	n, ok := v.(int64)
	if !ok {
		return 0, fmt.Errorf("store: redis script returned %T, want an integer", v)
	}
	return n, nil
}
