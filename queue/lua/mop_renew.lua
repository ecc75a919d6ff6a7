-- Moves the deadline of a lease that still holds.  A lease holds while the
-- model is leased with this token and the deadline has not passed; past the
-- deadline it is lost even before a reaper frees the model, so renew and
-- commit agree on when a lease ended.
-- The worker's progress through the visit rides along (JSON, or absent):
-- rows done of the shard's rows and samples per second, kept in the
-- model's progress field for jobctl status and its estimate of time left.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models
-- ARGV: 1 model m, 2 token, 3 lease_ms, 4 progress JSON (optional)
-- Returns {'renewed', deadline} | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local p = ARGV[1] .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'token', p .. 'deadline')
local now = now_ms()
if f[1] ~= 'leased' or f[2] ~= ARGV[2] or now > tonumber(f[3]) then return {'lost'} end
local deadline = int(now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[2], p .. 'deadline', deadline)
if ARGV[4] and ARGV[4] ~= '' then redis.call('HSET', KEYS[2], p .. 'progress', ARGV[4]) end
return {'renewed', deadline}
