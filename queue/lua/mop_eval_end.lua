-- Ends an evaluation lease without a result: 'back' returns the entry to the
-- tail of the evals list (the worker could not evaluate it for a reason that
-- is not the epoch's, and others go first), 'drop' forgets it (there is
-- nothing to evaluate: a diag.sleep model, or a checkpoint that is gone for
-- good).  An epoch given back more than the sweep's max_stalls times is
-- dropped with the reason instead (requeue_eval in the prelude).  As with release, the holder of a lease past its deadline may still
-- end it while no reaper has put it back: nobody else holds it meanwhile.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 4 evals,
--       6 wake, 7 evaling
-- ARGV: 1 token, 2 back or drop, 3 why (for back; optional)
-- Returns {'ended'} | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local v = redis.call('HGET', KEYS[7], ARGV[1])
if not v then return {'lost'} end
redis.call('HDEL', KEYS[7], ARGV[1])
local entry = string.match(v, '^(%d+ %d+ %d+) ')
if ARGV[2] == 'back' and entry then
  local max_stalls = tonumber(redis.call('HGET', KEYS[1], 'max_stalls')) or 10
  if requeue_eval(KEYS[2], KEYS[4], entry, max_stalls, false, ARGV[3] or 'the worker could not evaluate it') then
    wake_mop(KEYS[6], 1)
  end
end
return {'ended'}
