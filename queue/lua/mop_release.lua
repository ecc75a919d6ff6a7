-- Gives a leased model back without a visit (the worker drains, or failed
-- for a reason that is not the model's): idle at its last committed version.
-- A lease past its deadline but not yet reaped may still be released by its
-- holder; nobody else can hold the model until a reaper frees it, so this
-- only frees it sooner.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 model m, 2 token
-- Returns {'released'} | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local p = ARGV[1] .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'token')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then return {'lost'} end
redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'token', '', p .. 'shard', '', p .. 'deadline', '',
  p .. 'progress', '')
redis.call('HSET', KEYS[1], 'updated', int(now_ms()))
wake_mop(KEYS[6], 1)
return {'released'}
