-- Extends the leases a worker still holds.
-- KEYS: 1 active, 2 lease
-- ARGV: 1 lease_ms, then id, token pairs
-- Returns one integer per job: 1 extended, 0 lost (reaped, cancelled or never ours).
local deadline = int(now_ms() + tonumber(ARGV[1]))
local out = {}
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
