-- Returns every model whose lease deadline has passed to idle, at its last
-- committed version (the visit is lost, not the model), and counts a stall
-- on it.  One script re-reads every deadline, so any number of workers may
-- run it at once without freeing a lease twice or one that was renewed.
-- A model that has stalled more than the sweep's max_stalls times (default
-- 10) fails instead, with the reason: a model that kills every worker that
-- takes it (out of memory, a crash) must not hold the sweep forever.
-- KEYS: the six sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: none
-- Returns {'reaped', n} | {'missing'}.
local sw = redis.call('HMGET', KEYS[1], 'models', 'max_stalls', 'state')
local nmodels = tonumber(sw[1])
if not nmodels then return {'missing'} end
local max_stalls = tonumber(sw[2]) or 10
local now = now_ms()
local n = 0
local chunk = 1000
for first = 0, nmodels - 1, chunk do
  local last = math.min(first + chunk, nmodels) - 1
  local f = {}
  for m = first, last do
    f[#f + 1] = int(m) .. '.state'
    f[#f + 1] = int(m) .. '.deadline'
  end
  local v = redis.call('HMGET', KEYS[2], unpack(f))
  for m = first, last do
    local i = (m - first) * 2
    if v[i + 1] == 'leased' and now > tonumber(v[i + 2]) then
      local p = int(m) .. '.'
      redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'token', '', p .. 'shard', '',
        p .. 'deadline', '')
      local stalls = redis.call('HINCRBY', KEYS[2], p .. 'stalls', 1)
      if stalls > max_stalls then
        redis.call('HSET', KEYS[2], p .. 'state', 'failed', p .. 'reason',
          string.format('stalled %d times: every worker that took it died or lost its lease', stalls))
        if redis.call('HINCRBY', KEYS[1], 'live', -1) == 0 and sw[3] ~= 'cancelled' then
          redis.call('HSET', KEYS[1], 'state', 'done', 'finished', int(now))
        end
      end
      n = n + 1
    end
  end
end
if n > 0 then
  redis.call('HSET', KEYS[1], 'updated', int(now))
  wake_mop(KEYS[6], 1)
end
return {'reaped', n}
