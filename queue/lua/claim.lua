-- Phase 1 of a claim: pops up to n job ids of the highest priority from the
-- wait set and leases each with its own token.  Touches only queue-level keys;
-- phase 2 (start.lua) marks the job hashes, since their names are only known
-- once the ids are.
-- KEYS: 1 wait, 2 active, 3 lease, 4 delayed
-- ARGV: 1 lease_ms, 2 n, 3.. one token per job
-- Returns {ids, next_due_ms or '', now_ms}.
local now = now_ms()
local deadline = int(now + tonumber(ARGV[1]))
local popped = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[2]))
local ids = {}
for i = 1, #popped, 2 do
  local id = popped[i]
  ids[#ids + 1] = id
  redis.call('ZADD', KEYS[2], deadline, id)
  redis.call('HSET', KEYS[3], id, ARGV[2 + #ids])
end
local nextdue = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
return {ids, nextdue[2] or '', int(now)}
