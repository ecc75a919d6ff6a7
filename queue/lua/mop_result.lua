-- Records the evaluation of one epoch of one model, if the worker's
-- evaluation lease still holds (its token is in flight for this model and
-- epoch, deadline not passed; a lease lost to the reaper is refused, as its
-- epoch is being evaluated again elsewhere), ends that lease, and keeps the
-- model's best epoch: the results hash gets "<m>.<epoch>" = the metrics
-- (JSON, from the worker), and the model's best_top1 / best_epoch move when
-- this epoch's validation top-1 is higher (an equal score keeps the earlier
-- epoch).  Evaluations of two epochs of one model may finish on two workers
-- in either order; doing the comparison here keeps "best" right whatever the
-- order.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models,
--       7 evaling, 8 results
-- ARGV: 1 token, 2 model m, 3 epoch, 4 metrics JSON, 5 validation top-1
-- Returns {'best', previous best epoch or ''} | {'kept', best epoch}
--       | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local m, epoch, top1 = ARGV[2], ARGV[3], tonumber(ARGV[5])
local v = redis.call('HGET', KEYS[7], ARGV[1])
local em, ee, deadline = string.match(v or '', '^(%d+) (%d+) %d+ (%d+)')
if not em or em ~= m or ee ~= epoch or now_ms() > tonumber(deadline) then return {'lost'} end
redis.call('HDEL', KEYS[7], ARGV[1])
local p = m .. '.'
redis.call('HSET', KEYS[8], p .. epoch, ARGV[4])
local b = redis.call('HMGET', KEYS[2], p .. 'best_top1', p .. 'best_epoch')
local best = tonumber(b[1])
if best == nil or top1 > best or (top1 == best and tonumber(epoch) < tonumber(b[2])) then
  redis.call('HSET', KEYS[2], p .. 'best_top1', ARGV[5], p .. 'best_epoch', epoch)
  return {'best', b[2] or ''}
end
return {'kept', b[2]}
