-- Gives a lease back at once (a worker told to stop now): the job returns to
-- the wait set, at its old place, counting neither an attempt nor a stall.
-- KEYS: 1 active, 2 lease, 3 wait, 4 job, 5 wake
-- ARGV: 1 id, 2 token
-- Returns 1 released, 0 not ours.
local id = ARGV[1]
if redis.call('HGET', KEYS[2], id) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HSET', KEYS[4], 'state', 'waiting')
redis.call('ZADD', KEYS[3], wait_score(redis.call('HGET', KEYS[4], 'priority'), id), id)
wake(KEYS[5])
return 1
