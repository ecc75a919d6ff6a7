-- Decides a blocked job once its dependencies have moved: dead if one of them
-- is dead, cancelled or gone; released (waiting, or delayed if its delay has
-- not run out) when all are done; otherwise still blocked.  Idempotent, so both
-- the finishing worker and the reaper may call it.
-- KEYS: 1 job, 2 blocked, 3 wait, 4 delayed, 5 dead, 6 unique, 7 wake, 8 stats, then dependency job keys
-- ARGV: 1 id, then dependency ids
-- Returns {'noop'} | {'blocked'} | {'released', state} | {'dead', has_dependents}.
local id = ARGV[1]
if redis.call('HGET', KEYS[1], 'state') ~= 'blocked' then return {'noop'} end
local now = now_ms()
local pending = 0
for i = 9, #KEYS do
  local did = ARGV[i - 7]
  local st = redis.call('HGET', KEYS[i], 'state')
  local reason = nil
  if not st then
    reason = 'dependency ' .. did .. ' no longer exists'
  elseif st == 'dead' then
    reason = 'dependency ' .. did .. ' is dead: ' .. (redis.call('HGET', KEYS[i], 'dead_reason') or '')
  elseif st == 'cancelled' then
    reason = 'dependency ' .. did .. ' was cancelled'
  elseif st ~= 'done' then
    pending = pending + 1
  end
  if reason then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HINCRBY', KEYS[8], 'dead', 1)
    bury(KEYS[1], KEYS[5], KEYS[6], id, now, reason)
    return {'dead', has_dependents(KEYS[1])}
  end
end
if pending > 0 then return {'blocked'} end
redis.call('ZREM', KEYS[2], id)
local due = tonumber(redis.call('HGET', KEYS[1], 'due_ms') or '0')
if due > now then
  redis.call('HSET', KEYS[1], 'state', 'delayed')
  redis.call('ZADD', KEYS[4], int(due), id)
  return {'released', 'delayed'}
end
redis.call('HSET', KEYS[1], 'state', 'waiting')
redis.call('ZADD', KEYS[3], wait_score(redis.call('HGET', KEYS[1], 'priority'), id), id)
wake(KEYS[7])
return {'released', 'waiting'}
