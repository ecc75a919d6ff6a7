-- Shards whose last beat is older than the grace period: their worker is
-- gone (or stopped), and another may serve them.
-- With ARGV[2] = 'live', the others: the shards served now (jobctl checks
-- that a DDP or MA sweep's gang can be manned).
-- KEYS: 1 the shard beats hash (mop:shards)
-- ARGV: 1 grace period in ms, 2 'live' (optional)
-- Returns {'orphans', k...}.
local now, grace = now_ms(), tonumber(ARGV[1])
local live = ARGV[2] == 'live'
local beats = redis.call('HGETALL', KEYS[1])
local out = {'orphans'}
for i = 1, #beats, 2 do
  if (now - tonumber(beats[i + 1]) > grace) ~= live then
    out[#out + 1] = beats[i]
  end
end
return out
