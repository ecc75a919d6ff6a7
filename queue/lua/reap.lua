-- Requeues one job whose lease has expired, re-checking the deadline here so
-- that two reapers racing on the same id requeue it once.  An expired lease
-- counts a stall, not an attempt; past max_stalls the job is dead-lettered.
-- KEYS: 1 active, 2 lease, 3 wait, 4 dead, 5 stats, 6 job, 7 unique, 8 wake
-- ARGV: 1 id
-- Returns {'alive'} | {'requeued', stalls} | {'dead', has_dependents} | {'gone'}.
local id = ARGV[1]
local now = now_ms()
local deadline = redis.call('ZSCORE', KEYS[1], id)
if not deadline or tonumber(deadline) > now then return {'alive'} end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
if redis.call('EXISTS', KEYS[6]) == 0 then return {'gone'} end
local stalls = redis.call('HINCRBY', KEYS[6], 'stalls', 1)
redis.call('HINCRBY', KEYS[5], 'stalled', 1)
local maxs = tonumber(redis.call('HGET', KEYS[6], 'max_stalls'))
if stalls > maxs then
  redis.call('HINCRBY', KEYS[5], 'dead', 1)
  bury(KEYS[6], KEYS[4], KEYS[7], id, now,
    string.format('stalled %d times: lease expired (last worker %s)', stalls,
      redis.call('HGET', KEYS[6], 'worker') or '?'))
  return {'dead', has_dependents(KEYS[6])}
end
redis.call('HSET', KEYS[6], 'state', 'waiting')
redis.call('ZADD', KEYS[3], wait_score(redis.call('HGET', KEYS[6], 'priority'), id), id)
wake(KEYS[8])
return {'requeued', stalls}
