-- Moves delayed jobs that are due into the wait set.
-- KEYS: 1 delayed, 2 wait, 3 wake, then job keys
-- ARGV: job ids
-- Returns the number promoted.
local now = now_ms()
local n = 0
for i = 4, #KEYS do
  local id = ARGV[i - 3]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HSET', KEYS[i], 'state', 'waiting')
    redis.call('ZADD', KEYS[2], wait_score(redis.call('HGET', KEYS[i], 'priority'), id), id)
    n = n + 1
  end
end
if n > 0 then wake(KEYS[3]) end
return n
