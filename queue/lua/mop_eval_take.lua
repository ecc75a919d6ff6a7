-- Takes the oldest finished epoch waiting for evaluation, as a lease: the
-- entry moves from the evals list to the in-flight hash under the worker's
-- token, with the worker and a deadline.  The worker renews it
-- (mop_eval_renew) while it evaluates and ends it by recording the result
-- (mop_result) or giving it back (mop_eval_end); one whose deadline passes
-- goes back to the head of the list in mop_reap, so an evaluation outlives
-- the worker that died doing it.  No model lease is involved: any number of
-- epochs, of one model or many, are evaluated at once.
-- An entry that waits out the backoff of a failed attempt carries its due
-- time ("m epoch version due") and is passed over until then.  The list is
-- short (finished epochs not yet evaluated), so it is read whole.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 4 evals, 7 evaling
-- ARGV: 1 worker, 2 lease_ms, 3 token
-- Returns {'taken', "m epoch version", deadline} | {'none'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local now = now_ms()
local entry
for _, e in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  if eval_due(e) <= now then
    entry = e
    break
  end
end
if not entry then return {'none'} end
redis.call('LREM', KEYS[4], 1, entry)
entry = string.match(entry, '^(%d+ %d+ %d+)')
local deadline = int(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[7], ARGV[3], entry .. ' ' .. deadline .. ' ' .. ARGV[1])
return {'taken', entry, deadline}
