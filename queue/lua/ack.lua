-- Completes jobs whose token still holds.  A zombie (lease lost) is refused.
-- Acking is idempotent for the lease that completed the job: a worker whose
-- connection dropped after the ack was applied, and that sends it again,
-- is told the job is done rather than refused (the token is kept for that).
-- KEYS: 1 active, 2 lease, 3 done, 4 stats, then job key, unique key pairs
-- ARGV: id, token, result triples
-- Returns one integer per job: 0 refused, 1 done, 2 done and has dependents.
local now = now_ms()
local out = {}
local n = 0
for i = 5, #KEYS, 2 do
  local a = (i - 5) / 2 * 3
  local id, token, result = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local jkey, ukey = KEYS[i], KEYS[i + 1]
  if redis.call('HGET', KEYS[2], id) ~= token then
    out[#out + 1] = redis.call('HGET', jkey, 'acked_token') == token and 1 or 0
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HSET', jkey, 'state', 'done', 'finished_ms', int(now), 'result', result, 'acked_token', token)
    redis.call('ZADD', KEYS[3], int(now), id)
    free_unique(ukey, redis.call('HGET', jkey, 'unique'), id)
    n = n + 1
    out[#out + 1] = 1 + has_dependents(jkey)
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[4], 'done', n) end
return out
