-- Puts a sweep in the active set unless it is finished (the rule of
-- mop_reap: cancelled, or done with its test scoring recorded, and no
-- evaluation waiting or in flight).  Run once per deployment for every sweep
-- of the index, when the active set was never built (sweeps created by a
-- version that kept none); adding is idempotent and a finished sweep stays
-- finished, so several workers may do it at once.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 4 evals, 7 evaling,
--       9 active
-- ARGV: 1 the sweep id
-- Returns {'active'} | {'finished'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'test', 'created')
if not s[1] then return {'missing'} end
if (s[1] == 'cancelled' or (s[1] == 'done' and s[2] and s[2] ~= '')) and
    redis.call('LLEN', KEYS[4]) == 0 and redis.call('HLEN', KEYS[7]) == 0 then
  return {'finished'}
end
redis.call('ZADD', KEYS[9], tonumber(s[3]) or 0, ARGV[1])
return {'active'}
