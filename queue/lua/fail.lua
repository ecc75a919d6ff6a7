-- Records a failed attempt.  Below max_attempts the job is retried after
-- min(cap, base * 2^(n-1)) * factor ms (factor in [0.5, 1], drawn by the
-- client since scripts must be deterministic); at max_attempts, or when the
-- failure is permanent, it goes to the dead-letter set with the reason.
-- KEYS: 1 active, 2 lease, 3 delayed, 4 dead, 5 stats, 6 job, 7 unique
-- ARGV: 1 id, 2 token, 3 reason, 4 factor, 5 '1' if permanent
-- Returns {'lost'} | {'retry', due_ms, delay_ms, attempts} | {'dead', has_dependents, attempts}.
local id = ARGV[1]
if redis.call('HGET', KEYS[2], id) ~= ARGV[2] then return {'lost'} end
local now = now_ms()
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
local attempts = redis.call('HINCRBY', KEYS[6], 'attempts', 1)
local reason = ARGV[3]
redis.call('HSET', KEYS[6], 'error', reason)
local maxa = tonumber(redis.call('HGET', KEYS[6], 'max_attempts'))
if ARGV[5] == '1' or attempts >= maxa then
  redis.call('HINCRBY', KEYS[5], 'dead', 1)
  bury(KEYS[6], KEYS[4], KEYS[7], id, now,
    string.format('failed %d of %d attempts: %s', attempts, maxa, reason))
  return {'dead', has_dependents(KEYS[6]), attempts}
end
local base = tonumber(redis.call('HGET', KEYS[6], 'backoff_base_ms'))
local cap = tonumber(redis.call('HGET', KEYS[6], 'backoff_cap_ms'))
local delay = math.floor(math.min(cap, base * 2 ^ (attempts - 1)) * tonumber(ARGV[4]))
local due = now + delay
redis.call('HSET', KEYS[6], 'state', 'delayed', 'due_ms', int(due))
redis.call('ZADD', KEYS[3], int(due), id)
redis.call('HINCRBY', KEYS[5], 'retried', 1)
return {'retry', int(due), int(delay), attempts}
