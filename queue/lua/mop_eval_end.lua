-- Ends an evaluation lease without a result:
--   'back'   returns the entry to the tail of the evals list, not counted:
--            the worker stops, or Redis failed it (others go first);
--   'retry'  a failed attempt (the checkpoint or a validation shard could
--            not be read, ...), counted as a queue job's attempts are: below
--            the sweep's max_attempts the entry waits out a backoff of
--            min(cap, base * 2^(n-1)) * factor in the list ("m e v due"); at
--            max_attempts the evaluation fails with the reason in the models
--            hash (<m>.eval_error.<e>) and the sweep goes on;
--   'drop'   forgets it: nothing to evaluate (a diag.sleep model), or,
--            with a reason, an epoch whose checkpoint is gone for good (the
--            reason goes to <m>.eval_error.<e>).
-- A model waiting at this epoch's rung of early stopping goes on without a
-- decision when its evaluation fails for good or is dropped (es_release).
-- As with release, the holder of a lease past its deadline may still end it
-- while no reaper has put it back: nobody else holds it meanwhile.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 4 evals,
--       6 wake, 7 evaling
-- ARGV: 1 token, 2 back, retry or drop, 3 why (for retry and drop; may be
--       ''), 4 backoff factor in [0.5, 1] (for retry)
-- Returns {'ended', '' | 'retry' | 'failed', attempts, delay_ms}
--       | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local v = redis.call('HGET', KEYS[7], ARGV[1])
if not v then return {'lost'} end
redis.call('HDEL', KEYS[7], ARGV[1])
local entry = string.match(v, '^(%d+ %d+ %d+) ')
if not entry then return {'ended', '', 0, 0} end
local m, e = string.match(entry, '^(%d+) (%d+) ')
local why = ARGV[3] or ''
if ARGV[2] == 'back' then
  redis.call('RPUSH', KEYS[4], entry)
  wake_mop(KEYS[6], 1)
  return {'ended', '', 0, 0}
end
if ARGV[2] == 'drop' then
  if why ~= '' then redis.call('HSET', KEYS[2], m .. '.eval_error.' .. e, why) end
  es_release(KEYS[2], m, e, why ~= '' and why or 'nothing to evaluate')
  wake_mop(KEYS[6], 1)
  return {'ended', '', 0, 0}
end
local now = now_ms()
local attempts = redis.call('HINCRBY', KEYS[2], m .. '.eval_attempts.' .. e, 1)
local max_attempts, base, cap = retry_settings(KEYS[1])
if attempts >= max_attempts then
  local failed = string.format('evaluation failed %d of %d attempts: %s', attempts, max_attempts, why)
  redis.call('HSET', KEYS[2], m .. '.eval_error.' .. e, failed)
  es_release(KEYS[2], m, e, failed)
  wake_mop(KEYS[6], 1)
  redis.call('HSET', KEYS[1], 'updated', int(now))
  return {'ended', 'failed', attempts, 0}
end
local delay = backoff_ms(attempts, base, cap, tonumber(ARGV[4]) or 1)
redis.call('HSET', KEYS[2], m .. '.eval_last_error.' .. e, why)
redis.call('RPUSH', KEYS[4], entry .. ' ' .. int(now + delay))
return {'ended', 'retry', attempts, delay}
