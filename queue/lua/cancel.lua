-- Cancels a job that has not finished.  A running job loses its lease here, so
-- the worker's next heartbeat learns of it and its ack is refused.
-- KEYS: 1 job, 2 wait, 3 delayed, 4 blocked, 5 active, 6 lease, 7 cancelled, 8 unique, 9 stats
-- ARGV: 1 id, 2 queue (as read by the client; checked here)
-- Returns {'cancelled', previous_state, has_dependents} | {'finished', state} | {'unknown'}.
local id = ARGV[1]
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return {'unknown'} end
if redis.call('HGET', KEYS[1], 'queue') ~= ARGV[2] then
  return redis.error_reply('ERR job ' .. id .. ' moved queue during cancel; retry')
end
if st == 'done' or st == 'dead' or st == 'cancelled' then return {'finished', st} end
local now = now_ms()
for k = 2, 5 do redis.call('ZREM', KEYS[k], id) end
redis.call('HDEL', KEYS[6], id)
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_ms', int(now))
redis.call('ZADD', KEYS[7], int(now), id)
free_unique(KEYS[8], redis.call('HGET', KEYS[1], 'unique'), id)
redis.call('HINCRBY', KEYS[9], 'cancelled', 1)
return {'cancelled', st, has_dependents(KEYS[1])}
