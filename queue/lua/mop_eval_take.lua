-- Takes the oldest finished epoch waiting for evaluation, as a lease: the
-- entry moves from the evals list to the in-flight hash under the worker's
-- token, with the worker and a deadline.  The worker renews it
-- (mop_eval_renew) while it evaluates and ends it by recording the result
-- (mop_result) or giving it back (mop_eval_end); one whose deadline passes
-- goes back to the head of the list in mop_reap, so an evaluation outlives
-- the worker that died doing it.  No model lease is involved: any number of
-- epochs, of one model or many, are evaluated at once.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 4 evals, 7 evaling
-- ARGV: 1 worker, 2 lease_ms, 3 token
-- Returns {'taken', "m epoch version", deadline} | {'none'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local entry = redis.call('LPOP', KEYS[4])
if not entry then return {'none'} end
local deadline = int(now_ms() + tonumber(ARGV[2]))
redis.call('HSET', KEYS[7], ARGV[3], entry .. ' ' .. deadline .. ' ' .. ARGV[1])
return {'taken', entry, deadline}
