-- Records the evaluation of one epoch of one model and keeps its best epoch:
-- the results hash gets "<m>.<epoch>" = the metrics (JSON, from the worker),
-- and the model's best_top1 / best_epoch move when this epoch's validation
-- top-1 is higher (an equal score keeps the earlier epoch).  Evaluations of
-- two epochs of one model may finish on two workers in either order; doing
-- the comparison here keeps "best" right whatever the order.
-- KEYS: 1 models hash, 2 results hash
-- ARGV: 1 model m, 2 epoch, 3 metrics JSON, 4 validation top-1
-- Returns {'best', previous best epoch or ''} | {'kept', best epoch}.
local m, epoch, top1 = ARGV[1], ARGV[2], tonumber(ARGV[4])
local p = m .. '.'
redis.call('HSET', KEYS[2], p .. epoch, ARGV[3])
local b = redis.call('HMGET', KEYS[1], p .. 'best_top1', p .. 'best_epoch')
local best = tonumber(b[1])
if best == nil or top1 > best or (top1 == best and tonumber(epoch) < tonumber(b[2])) then
  redis.call('HSET', KEYS[1], p .. 'best_top1', ARGV[4], p .. 'best_epoch', epoch)
  return {'best', b[2] or ''}
end
return {'kept', b[2]}
