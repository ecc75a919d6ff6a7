-- Marks a leased model failed (NaN loss, out of memory): it takes no more
-- leases and counts as finished, so the rest of the sweep goes on.  As with
-- release, the holder of an expired but unreaped lease may still report it.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 model m, 2 token, 3 reason
-- Returns {'failed', sweep_done} | {'lost'} | {'missing'}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
local p = ARGV[1] .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'token')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then return {'lost'} end
local now = int(now_ms())
redis.call('HSET', KEYS[2], p .. 'state', 'failed', p .. 'reason', ARGV[3], p .. 'token', '',
  p .. 'shard', '', p .. 'deadline', '')
redis.call('HSET', KEYS[1], 'updated', now)
local done = 0
if redis.call('HINCRBY', KEYS[1], 'live', -1) == 0 then
  done = 1
  if state ~= 'cancelled' then redis.call('HSET', KEYS[1], 'state', 'done', 'finished', now) end
end
wake_mop(KEYS[6], 1)
return {'failed', done}
