-- Shards whose last beat is older than the grace period: their worker is
-- gone (or stopped), and another may serve them.
-- KEYS: 1 the shard beats hash (mop:shards)
-- ARGV: 1 grace period in ms
-- Returns {'orphans', k...}.
local now, grace = now_ms(), tonumber(ARGV[1])
local beats = redis.call('HGETALL', KEYS[1])
local out = {'orphans'}
for i = 1, #beats, 2 do
  if now - tonumber(beats[i + 1]) > grace then
    out[#out + 1] = beats[i]
  end
end
return out
