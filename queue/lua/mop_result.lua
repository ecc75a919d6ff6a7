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
-- With the three outbox keys too (queue_mop_record_result_row), the row this
-- evaluation makes in cds_results, in the database the dataset came from, is
-- appended to that database's outbox in this same call, so a result that is
-- recorded can no longer be lost on its way to the database: workers write
-- the outbox's rows in order and remove each once the database took it
-- (outbox.lua, queue_outbox.c).  A DSN outbox not yet in the index is due at
-- once; one in the index keeps its time (a database being retried with
-- backoff is not tried sooner because a row arrived).
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models,
--       6 wake, 7 evaling, 8 results; optional: 10 results:outbox (index),
--       11 results:outbox:{<id>} (rows), 12 results:outbox:{<id>}:state
-- ARGV: 1 token, 2 model m, 3 epoch (from 1, as cds_results numbers it too),
--       4 metrics JSON, 5 validation top-1; with the outbox keys: 6 sweep id,
--       7 DSN (no password; kept once, in the state hash, not in each row),
--       8 the DSN's outbox id
-- A model waiting at a rung of early stopping for this epoch (state 'rung',
-- <m>.rung = epoch) gets the rule's decision here (prelude's es_decide):
-- idle again, or stopped with the reason; the decision and its line are
-- returned too ('' when there was none).
-- Returns {'best', previous best epoch or '', decision, why}
--       | {'kept', best epoch, decision, why} | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local m, epoch, top1 = ARGV[2], ARGV[3], tonumber(ARGV[5])
local v = redis.call('HGET', KEYS[7], ARGV[1])
local em, ee, deadline = string.match(v or '', '^(%d+) (%d+) %d+ (%d+)')
local now = now_ms()
if not em or em ~= m or ee ~= epoch or now > tonumber(deadline) then return {'lost'} end
redis.call('HDEL', KEYS[7], ARGV[1])
local p = m .. '.'
redis.call('HSET', KEYS[8], p .. epoch, ARGV[4])

-- The row as JSON; the spec and the metrics are JSON already (the spec was
-- checked at creation, the metrics come from the worker: a row that does not
-- parse is set aside by the worker that drains it, with the reason).
if KEYS[12] then
  local spec = redis.call('HGET', KEYS[2], p .. 'spec')
  local row = '{"sweep":' .. cjson.encode(ARGV[6]) .. ',"model":' .. int(tonumber(m)) ..
    ',"epoch":' .. int(tonumber(epoch)) .. ',"recorded_ms":' .. int(now) .. ',"spec":' .. (spec or 'null') ..
    ',"metrics":' .. ARGV[4] .. '}'
  redis.call('RPUSH', KEYS[11], row)
  redis.call('HSET', KEYS[12], 'dsn', ARGV[7])
  if not redis.call('ZSCORE', KEYS[10], ARGV[8]) then
    redis.call('ZADD', KEYS[10], int(now), ARGV[8])
  end
end

-- A model waiting at a rung of early stopping for this epoch: the rule
-- decides now, in the call that records the metric (never undone).
local decision, why = '', ''
local w = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'rung')
if w[1] == 'rung' and w[2] == epoch then
  local es = es_params(KEYS[1])
  if es then
    decision, why = es_decide(KEYS[1], KEYS[2], es, m, tonumber(epoch), ARGV[4],
      redis.call('HGET', KEYS[1], 'state'), now)
    redis.call('HSET', KEYS[1], 'updated', int(now))
    wake_mop(KEYS[6], 1)
  end
end

local b = redis.call('HMGET', KEYS[2], p .. 'best_top1', p .. 'best_epoch')
local best = tonumber(b[1])
if best == nil or top1 > best or (top1 == best and tonumber(epoch) < tonumber(b[2])) then
  redis.call('HSET', KEYS[2], p .. 'best_top1', ARGV[5], p .. 'best_epoch', epoch)
  return {'best', b[2] or '', decision, why}
end
return {'kept', b[2], decision, why}
