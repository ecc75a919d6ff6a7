-- Puts a dead or cancelled job back in the wait set with fresh attempt and
-- stall counts (its last error is kept), taking its unique key back.
-- KEYS: 1 job, 2 dead, 3 cancelled, 4 wait, 5 unique, 6 wake
-- ARGV: 1 id
-- Returns {'ok'} | {'bad_state', state} | {'unique_taken', live_id} | {'unknown'}.
local id = ARGV[1]
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {'unknown'} end
if st ~= 'dead' and st ~= 'cancelled' then return {'bad_state', st} end
local unique = redis.call('HGET', KEYS[1], 'unique')
if unique and unique ~= '' then
  local live = redis.call('GET', KEYS[5])
  if live and live ~= id then return {'unique_taken', live} end
  redis.call('SET', KEYS[5], id)
end
redis.call('ZREM', KEYS[2], id)
redis.call('ZREM', KEYS[3], id)
redis.call('HSET', KEYS[1], 'state', 'waiting', 'attempts', '0', 'stalls', '0', 'due_ms', '0')
redis.call('HDEL', KEYS[1], 'finished_ms', 'dead_reason')
redis.call('ZADD', KEYS[4], wait_score(redis.call('HGET', KEYS[1], 'priority'), id), id)
wake(KEYS[6])
return {'ok'}
